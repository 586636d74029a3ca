"""The client object an app embeds: one user, one SQLite store, the user's rights built in.

An app records interactions as they happen, asks the user for consent, and hands the client the
shared item table when a round comes; :meth:`FedrecClient.train_round` then runs the
on-device round (:func:`fedrec.training.trainers.train_one` with the closed-form trainer: the
Opacus round's contract and numbers) on the consented interactions and returns the update to
send. The deployment ClientApp drives the same object (:mod:`fedrec.client.device`), so an app,
a Flower SuperNode and a test all go through the same consent gate and the same sent-log.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.client.consent import (
    CATEGORIES,
    DEFAULT_CONSENT_VALID_FOR_S,
    ConsentEvent,
    ConsentRequired,
    ConsentStatus,
    check_categories,
    consent_status,
)
from fedrec.client.recommend import (
    ITEM_EMBEDDING,
    Explanation,
    Recommendation,
    nearest_own_items,
    scores,
    solve_own_factor,
    top_k,
)
from fedrec.client.rights import DeletionReport, PrivacyReport, export_record, privacy_report
from fedrec.client.store import (
    ITEM_TABLE,
    USER_ARRAYS,
    Interaction,
    LocalStore,
    SentRound,
    SentTensor,
)
from fedrec.protocol.seeds import EVAL_SEED, TRAIN_SEED, user_seed
from fedrec.protocol.settings import AlsSpec, RoundSettings
from fedrec.protocol.wire import NUM_EXAMPLES, RefusalReason, RoundRefused
from fedrec.training.state import DeviceState, LocalData
from fedrec.training.table_check import check_item_table
from fedrec.training.trainers import train_one


class NothingToTrain(RuntimeError):
    """The user consented, but no interaction of a consented category is stored yet."""


@dataclass(frozen=True)
class ClientUpdate:
    """What one round sends: the item-side changes (same names, shapes and dtypes as received)
    and scalar metrics. Never the user embedding, never item ids."""

    server_round: int
    item_update: dict[str, np.ndarray]
    metrics: dict[str, float]


class FedrecClient:
    """One user's on-device recommender.

    ``consent_valid_for_s``: how long a grant lasts before it must be renewed.
    ``holdout_latest``: the newest n interactions are kept out of training and used to score the
    model in federated evaluation (0: train on everything, evaluate nothing).
    ``clock``: unix seconds; tests pass their own.
    """

    def __init__(
        self,
        store: LocalStore,
        *,
        consent_valid_for_s: float = DEFAULT_CONSENT_VALID_FOR_S,
        holdout_latest: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not consent_valid_for_s > 0:
            raise ValueError(f"consent_valid_for_s={consent_valid_for_s}; expected > 0")
        if holdout_latest < 0:
            raise ValueError(f"holdout_latest={holdout_latest}; expected >= 0")
        self.store = store
        self.consent_valid_for_s = float(consent_valid_for_s)
        self.holdout_latest = int(holdout_latest)
        self.clock = clock

    @classmethod
    def open(
        cls, path: str | Path, *, num_items: int | None = None, **options: Any
    ) -> FedrecClient:
        """Open the store at ``path`` (created if ``num_items`` is given and it does not exist)."""
        return cls(LocalStore(path, num_items=num_items), **options)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> FedrecClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the log -------------------------------------------------------------------------------
    def record_interaction(
        self,
        item: int,
        *,
        category: str,
        rating: float | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Store one interaction; returns its id. It enters training only if the user consents
        to its ``category``. Checked before anything is written."""
        self._check_item(item)
        check_categories([category])
        if rating is not None and not math.isfinite(float(rating)):
            raise ValueError(f"rating={rating!r}; expected a finite number or None")
        at = self.clock() if timestamp is None else float(timestamp)
        if not math.isfinite(at):
            raise ValueError(f"timestamp={timestamp!r}; expected finite unix seconds")
        return self.store.add_interaction(int(item), category, rating, at)

    def interactions(self) -> list[Interaction]:
        return self.store.interactions()

    def _check_item(self, item: object) -> None:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise ValueError(f"item={item!r}; expected an integer item id")
        if not 0 <= int(item) < self.store.num_items:
            raise ValueError(f"item {item} outside the catalog [0, {self.store.num_items})")

    # -- consent -------------------------------------------------------------------------------
    def consent_status(self) -> ConsentStatus:
        return consent_status(self.store.consent_events(), self.clock())

    def grant_consent(
        self, categories: Iterable[str], *, valid_for_s: float | None = None
    ) -> ConsentStatus:
        """Opt in for these categories until ``now + valid_for_s`` (default: the client's)."""
        return self._consent("grant", check_categories(categories), valid_for_s)

    def renew_consent(self, *, valid_for_s: float | None = None) -> ConsentStatus:
        """Extend every category granted before (active or expired) by a new period."""
        status = self.consent_status()
        granted = [*status.active, *status.expired]
        if not granted:
            raise ConsentRequired("nothing to renew: the user never granted consent")
        return self._consent("renew", check_categories(granted), valid_for_s)

    def withdraw_consent(self, categories: Iterable[str] | None = None) -> ConsentStatus:
        """Opt out (of everything by default). Takes effect at once: a round in progress does
        not release its update (see :meth:`train_round`)."""
        chosen = CATEGORIES if categories is None else check_categories(categories)
        self.store.add_consent_event(ConsentEvent(self.clock(), "withdraw", tuple(chosen)))
        return self.consent_status()

    def _consent(
        self, action: str, categories: tuple[str, ...], valid_for_s: float | None
    ) -> ConsentStatus:
        period = self.consent_valid_for_s if valid_for_s is None else float(valid_for_s)
        if not period > 0:
            raise ValueError(f"valid_for_s={valid_for_s}; expected > 0")
        now = self.clock()
        self.store.add_consent_event(ConsentEvent(now, action, categories, now + period))
        return self.consent_status()

    # -- training and evaluation ---------------------------------------------------------------
    def local_data(
        self, status: ConsentStatus | None = None, *, rated_only: bool = False
    ) -> LocalData:
        """The consented interactions as the trainer's input: one example per item (its latest
        interaction), the newest ``holdout_latest`` held out as test items; ``rated_only`` (for
        rating prediction) keeps only interactions with a rating. Raises
        :class:`ConsentRequired` without consent and :class:`NothingToTrain` without data."""
        status = status or self.consent_status()
        if not status.participating:
            raise ConsentRequired("the user has not consented to training (or it expired)")
        latest: dict[int, Interaction] = {}
        for interaction in self.store.interactions():  # ordered by time: later ones win
            if status.allows(interaction.category) and not (
                rated_only and interaction.rating is None
            ):
                latest.pop(interaction.item, None)
                latest[interaction.item] = interaction
        if not latest:
            raise NothingToTrain(
                f"no stored interaction of a consented category ({', '.join(status.active)})"
            )
        used = list(latest.values())
        split = len(used) - self.holdout_latest if len(used) > self.holdout_latest else len(used)
        train, test = used[:split], used[split:]

        def ratings(rows: list[Interaction]) -> np.ndarray | None:
            if any(row.rating is None for row in rows):
                return None
            return np.array([row.rating for row in rows], dtype=np.float32)

        return LocalData(
            num_items=self.store.num_items,
            train_items=np.array([row.item for row in train], dtype=np.int64),
            train_ratings=ratings(train),
            test_items=np.array([row.item for row in test], dtype=np.int64),
            test_ratings=ratings(test),
        )

    def _check_item_arrays(self, item_arrays: dict[str, np.ndarray]) -> None:
        table = item_arrays.get(ITEM_EMBEDDING)
        if table is None or np.ndim(table) != 2 or table.shape[0] != self.store.num_items:
            shape = None if table is None else tuple(np.shape(table))
            raise RoundRefused(
                f"the item table '{ITEM_EMBEDDING}' has shape {shape}; this device's catalog "
                f"has {self.store.num_items} items",
                RefusalReason.CATALOG_MISMATCH,
            )

    def train_round(
        self, item_arrays: dict[str, np.ndarray], settings: RoundSettings
    ) -> ClientUpdate:
        """Train one round on the consented interactions and return the update to send.

        The user embedding, the privacy ledger and the sent-log are committed in one transaction
        *before* the update is returned, and only if every category used is still consented at
        that moment: a withdrawal during the round discards the update. Raises
        :class:`ConsentRequired`, :class:`NothingToTrain`, or the trainer's
        ``PrivacyBudgetExhausted`` (nothing trained, nothing to send); and ``RoundRefused``
        (:class:`~fedrec.training.table_check.ImplausibleTable`, with the reason) for a table that
        does not fit this device or looks crafted, before anything is trained.
        """
        self._check_item_arrays(item_arrays)
        check_item_table(item_arrays)
        status = self.consent_status()
        data = self.local_data(status, rated_only=settings.explicit)
        used = {row.category for row in self.store.interactions() if status.allows(row.category)}
        state = DeviceState(
            self.store.arrays(USER_ARRAYS), self.store.ledger(), self.store.rounds_trained
        )
        seed = user_seed(settings.seed, self.store.device_key, settings.server_round, TRAIN_SEED)
        if settings.algorithm == "als":  # the simulation's own ALS round, for a block of one
            from fedrec.training.als.trainer import als_one

            try:
                result = als_one(
                    item_arrays,
                    data,
                    state,
                    spec=settings.als,
                    explicit=settings.explicit,
                    seed=seed,
                )
            except ValueError as err:
                raise RoundRefused(str(err)) from None
        else:
            # The closed-form DP-SGD engine: train_round's contract and numbers
            # (tests/test_cohort.py checks it against Opacus), without building an Opacus engine
            # on the device; it cuts a round's peak memory by ~45 MB
            # (benchmarks/client_footprint.py).
            result = train_one(
                "closed_form",
                item_arrays,
                data,
                state,
                model_spec=settings.model,
                training=settings.training,
                privacy=settings.privacy,
                explicit=settings.explicit,
                seed=seed,
                server_round=settings.server_round,
            )
        metrics = {
            NUM_EXAMPLES: len(data.train_items) if settings.weight_by_examples else 1,
            "train_loss": result.loss,
            "epsilon": result.epsilon,
            "local_steps": result.steps,
        }
        tensors = tuple(
            SentTensor(name, tuple(int(n) for n in value.shape), value.dtype.str, value.nbytes)
            for name, value in sorted(result.item_update.items())
        )
        sent = SentRound(
            self.clock(),
            settings.server_round,
            tensors,
            metrics,
            sum(t.bytes for t in tensors) + 8 * len(metrics),
            settings.privacy.mode,
        )
        with self.store.transaction() as db:
            now_status = consent_status(self.store.read_consent_events(db), self.clock())
            if not used <= set(now_status.active):
                raise ConsentRequired("consent was withdrawn during the round: nothing is sent")
            self.store.save_round(
                db,
                user_arrays=result.state.user_arrays or {},
                ledger=result.state.ledger,
                rounds_trained=result.state.rounds_trained,
                sent=sent,
            )
            self.store.write_arrays(db, ITEM_TABLE, item_arrays)
        return ClientUpdate(settings.server_round, result.item_update, metrics)

    def evaluate(
        self, item_arrays: dict[str, np.ndarray], settings: RoundSettings
    ) -> dict[str, float]:
        """Per-user metrics on the held-out interactions (empty without a holdout). Needs
        consent, like training: the metrics are computed from the user's data and sent."""
        self._check_item_arrays(item_arrays)
        self.store.put_item_table(item_arrays)  # the newest shared table, for recommend()
        data = self.local_data(rated_only=settings.explicit)
        if len(data.test_items) == 0:
            return {}
        from fedrec.training.evaluate import evaluate_user

        return evaluate_user(
            item_arrays,
            data,
            DeviceState(self.store.arrays(USER_ARRAYS), self.store.ledger()),
            model_spec=settings.model,
            eval_spec=settings.evaluation,
            explicit=settings.explicit,
            num_negatives=settings.training.num_negatives,
            seed=user_seed(settings.seed, self.store.device_key, settings.server_round, EVAL_SEED),
        )

    # -- on-device recommendations -------------------------------------------------------------
    def _item_table(self, item_table: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        table = item_table if item_table is not None else self.store.arrays(ITEM_TABLE)
        if table is None:
            raise ValueError("no item table yet: pass item_table= or take part in a round first")
        self._check_item_arrays(table)
        return table

    def recommend(
        self,
        k: int = 10,
        *,
        item_table: dict[str, np.ndarray] | None = None,
        solve: AlsSpec | None = None,
    ) -> list[Recommendation]:
        """The top ``k`` items for this user, excluding every item they interacted with.

        Uses the kept user embedding and the latest item table (the one passed, else the one
        stored at the last round). With ``solve`` (an ALS table: the factor belongs to the
        table it is solved against), or for a user who has taken part in no round yet (a cold
        start), the user's factor is solved now, in closed form, from their own log against
        this table (:func:`~fedrec.client.recommend.solve_own_factor`); a user without any
        interaction gets the table's popularity order. Local only: nothing is sent, consent
        is not needed, and the solved factor is not stored."""
        table = self._item_table(item_table)
        own = [row.item for row in self.store.interactions()]
        user = self.store.arrays(USER_ARRAYS)
        if own and (solve is not None or user is None):
            user = solve_own_factor(table, own, solve or AlsSpec())
        return top_k(scores(table, user), k, sorted(set(own)))

    def explain(
        self, item: int, *, top: int = 3, item_table: dict[str, np.ndarray] | None = None
    ) -> Explanation:
        """ "Because you interacted with X and Y": the user's own items nearest to ``item``."""
        self._check_item(item)
        table = self._item_table(item_table)
        own = [row.item for row in self.store.interactions()]
        return nearest_own_items(int(item), own, table[ITEM_EMBEDDING], top)

    # -- the user's rights ---------------------------------------------------------------------
    def export(self) -> dict[str, Any]:
        """Everything stored about the user, as JSON-ready data (format: the README)."""
        return export_record(self.store, self.clock())

    def export_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.export(), indent=2), encoding="utf-8")
        return path

    def delete(self) -> DeletionReport:
        """Erase the log, embedding, ledger, consent records and sent-log from the file."""
        return DeletionReport(self.store.erase())

    def privacy_report(self) -> PrivacyReport:
        return privacy_report(self.store)
