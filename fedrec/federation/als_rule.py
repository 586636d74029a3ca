"""The server's half of federated (DP-)ALS: validate → classify → sum → (noise) → solve.

Replies carry sums of users' ALS statistics (:mod:`fedrec.training.als.statistics`) instead of
table deltas. The rule keeps the classification of :class:`~fedrec.federation.rule.ServerRule`
(every user's outcome in the round's record) and replaces what follows:

1. **validate** each reply's statistics (:mod:`~fedrec.federation.als_checks`): the names the
   round asked for (no ``als.lhs`` when the server does not use per-item Grams), shapes that fit
   the catalogue and the round's dimension, sorted unique item ids inside the catalogue, finite
   values, a symmetric PSD global Gram, PSD ``A_j``, whole counts of at most one per user, and
   under DP the sensitivity bounds (Gram trace, count total, ‖A‖, ‖b‖) times the users summed.
   A bad reply is refused and its users counted as rejected; the round goes on.
2. **sum** the accepted statistics into dense per-item sums.
3. with DP-ALS (:mod:`fedrec.privacy.als`), **noise** once per release and project to PSD; in
   the first round also release the noisy item counts, which choose the ``frequent_fraction`` of
   items the model trains; the rest keep a zero row and are ranked by that private popularity
   through their bias, below every trained item. Under distributed DP (``noise_shares``) the
   devices' shares are already in the SecAgg+ sum: the server adds only what dropped shares
   miss, checks only the sum's form, and keeps a second ε for what it saw itself.
4. **solve** every trained item's factor in closed form.

With ``covariance_start`` the first two rounds differ (:mod:`fedrec.training.als.covariance`):
round 1 sums (and noises) the users' unit-norm popularity, which chooses the frequent items; the
table carries their popularity direction d in column 0 (zero elsewhere): the items the next
release covers and what the devices deflate by. Round 2 rebuilds the deflated item covariance
from its sparse parts and noises it; d and its top eigenvectors are the first item table.

A round without accepted statistics is skipped (non-private), or, under DP, released from the
noise alone (whether a release happens must not depend on who took part).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.federation.als_checks import start_release_rejection, statistics_rejection
from fedrec.federation.record import RoundRecord
from fedrec.federation.rule import ServerRule
from fedrec.federation.server_step import StrategySpec
from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING
from fedrec.privacy.als import AlsPrivacyPlan, PrivacyStep, add_noise, topup_fraction
from fedrec.protocol.replies import NodeReply
from fedrec.protocol.settings import AlsSpec
from fedrec.training.als.covariance import (
    deflated_sum,
    direction_of,
    items_from_covariance,
    popularity_table,
)
from fedrec.training.als.solve import project_psd, solve_items, symmetrize
from fedrec.training.als.statistics import COUNTS, GRAM, ITEMS, LHS, RHS
from fedrec.training.table_check import TableLimits

logger = logging.getLogger("fedrec.server")

Arrays = dict[str, np.ndarray]
UNTRAINED_BIAS = -2.0  # below any trained item's score (|⟨u, v⟩| stays ~1 with targets 1)
# The top item's bias is popularity_weight; the median bias is no lower than UNTRAINED_BIAS. The
# devices' table check (fedrec.training.table_check) refuses a bias further above the median
# than max_bias_above_median, so a larger weight would make every device refuse the table.
MAX_POPULARITY_WEIGHT = TableLimits().max_bias_above_median + UNTRAINED_BIAS - 1.0


@dataclass
class AlsServerPlan:
    """What the server needs beyond the devices' settings."""

    spec: AlsSpec
    frequent_fraction: float = 1.0  # the share of items (by private count) the model trains
    privacy: AlsPrivacyPlan | None = None
    popularity_weight: float = 0.0  # a trained item's bias: this × its (private) count / the top
    covariance_start: bool = False  # rounds 1-2: popularity, then the covariance's eigenvectors

    def __post_init__(self) -> None:
        if not 0 < self.frequent_fraction <= 1:
            raise ValueError(f"frequent_fraction={self.frequent_fraction}; expected (0, 1]")
        if not 0 <= self.popularity_weight <= MAX_POPULARITY_WEIGHT:
            raise ValueError(
                f"algorithm.popularity_weight={self.popularity_weight}; expected 0.."
                f"{MAX_POPULARITY_WEIGHT:g}: the top item's bias would lie more than "
                f"{TableLimits().max_bias_above_median:g} above the median bias, and every "
                "device's table check would refuse the table as crafted"
            )
        if self.privacy is not None and (
            self.privacy.item_grams != self.spec.item_grams
            or self.privacy.covariance_start != self.covariance_start
        ):
            raise ValueError("the DP-ALS plan must account for exactly the sums the server uses")


class _Popularity:
    """The count release and the frequent set it chose, and whether the covariance start's
    covariance was released: the rule's state to checkpoint."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None
        self.covariance_done = False

    def state(self) -> dict[str, Arrays]:
        if self.counts is None:
            return {}
        return {"als": {"counts": self.counts, "covariance": np.array(self.covariance_done)}}

    def restore(self, moments: dict[str, Arrays]) -> None:
        saved = moments.get("als", {})
        counts = saved.get("counts")
        self.counts = None if counts is None else np.asarray(counts, dtype=np.float64)
        self.covariance_done = bool(saved.get("covariance", False))


class AlsRule(ServerRule):
    """One run's (DP-)ALS server: its noise generator, its release count and its private
    popularity (``step``, checkpointed with the moments)."""

    def __init__(self, plan: AlsServerPlan, *, rounds: int, min_replies: int, seed: int) -> None:
        super().__init__(StrategySpec(), rounds=rounds, min_replies=min_replies, seed=seed)
        self.plan = plan
        self.step = _Popularity()  # type: ignore[assignment]
        self.server_view: list[PrivacyStep] = []  # distributed DP: the releases as the server saw
        self._direction: np.ndarray | None = None  # the covariance round's d, from its table
        if plan.privacy is not None:
            self.min_replies = 0

    def round_config(self, server_round: int, config: dict) -> dict:
        """What the devices send this round: a covariance start's first two releases
        (``als.release``); under distributed DP-ALS, whether they add count noise shares (only
        in the round that releases the counts, the first)."""
        if self.plan.covariance_start:
            config = {**config, "als.release": self._release_now()}
        if self.plan.privacy is None or not self.plan.privacy.distributed:
            return config
        return {**config, "als.release_counts": self._releases_counts_now()}

    def _release_now(self) -> str:
        if not self.plan.covariance_start:
            return "factors"
        if self.step.counts is None:  # type: ignore[attr-defined]
            return "popularity"
        return "factors" if self.step.covariance_done else "covariance"  # type: ignore[attr-defined]

    def _releases_counts_now(self) -> bool:
        private = self.plan.privacy
        return private is not None and private.count_release and self.step.counts is None  # type: ignore[attr-defined]

    # -- 1 -------------------------------------------------------------------------------------
    def _rejection(self, reply: NodeReply, expected) -> str | None:
        if reply.arrays is None:
            return "trained users but no statistics"
        num_items, dim = expected[ITEM_EMBEDDING][0]
        private = self.plan.privacy
        release = self._release_now()
        if release != "factors":
            counts = self.step.counts  # type: ignore[attr-defined]
            return start_release_rejection(
                reply.arrays,
                release=release,
                num_items=num_items,
                users=len(reply.trained),
                trained=None if counts is None else self._frequent(counts),
                direction=self._direction,
            )
        return statistics_rejection(
            reply.arrays,
            num_items=num_items,
            dim=dim,
            users=len(reply.trained),
            plan=self.plan,
            noisy=private is not None and private.distributed,
        )

    # -- 2 to 4 --------------------------------------------------------------------------------
    def apply(
        self,
        server_round: int,
        current: Arrays,
        replies: Sequence[NodeReply],
        record: RoundRecord,
    ) -> Arrays | None:
        release = self._release_now()
        if release == "covariance":  # the d the devices deflated by: the table they received
            self._direction = direction_of(current[ITEM_EMBEDDING])[1]
        accepted = self._validate_and_classify(server_round, current, replies, record)
        private = self.plan.privacy
        if private is None and (not accepted or record.accepted < max(self.min_replies, 1)):
            record.skipped = 1
            logger.warning(
                "round %d skipped: %d accepted ALS statistics (%s); the model is unchanged",
                server_round,
                record.accepted,
                record.outcome_counts(),
            )
            return None
        num_items, dim = current[ITEM_EMBEDDING].shape
        if release != "factors":
            return self._start_release(release, current, accepted, record)
        lhs, rhs, counts, gram = _dense_sums(
            accepted, num_items, dim, item_grams=self.plan.spec.item_grams
        )
        if private is not None:
            count_release = self._releases_counts_now()
            epsilon = private.epsilon_of(private.run_history(self.releases + 1))
            fraction = 1.0
            if private.distributed:  # the devices' shares are in the sums; top up what's missing
                fraction = topup_fraction(record.accepted, private.noise_shares)
                record.server_noise_fraction = fraction
                seen = sum(len(r.trained) for r in replies if r.arrays is not None)
                if seen:  # a round whose sum never arrived showed the server no one's data
                    self.server_view += private.server_view_steps(seen, count_release)
                record.server_view_epsilon = private.epsilon_of(self.server_view)
            lhs, rhs, noisy_counts, gram = noisy_sums(
                private, lhs, rhs, counts, gram, self.rng, variance_fraction=fraction
            )
            gram = project_psd(gram)
            if count_release:
                self.step.counts = noisy_counts  # type: ignore[attr-defined]
            self.releases += 1
            record.user_level_epsilon = epsilon
            logger.info(
                "round %d: DP-ALS release of %d users' statistics, noise z=%.4g; user-level ε "
                "%.4g (δ=%g)",
                server_round,
                record.accepted,
                private.noise_multiplier,
                epsilon,
                private.delta,
            )
            if private.distributed:
                logger.info(
                    "round %d: %d devices' noise shares in the sum (t=%d), the server added "
                    "%.3g of the variance; ε against the server itself %.4g",
                    server_round,
                    record.accepted,
                    private.noise_shares,
                    fraction,
                    record.server_view_epsilon,
                )
        elif self.step.counts is None:  # type: ignore[attr-defined]
            self.step.counts = counts  # type: ignore[attr-defined]
        popularity = self.step.counts  # type: ignore[attr-defined]
        if popularity is None:  # DP-ALS without a count release trains every item
            popularity = np.zeros(num_items)
        seen = counts if private is None else popularity
        if self.plan.spec.item_grams:
            # noisy sums: post-processing; honest ones: a no-op; a crafted one cannot go indefinite
            lhs = project_psd(lhs)
        else:  # each item's users taken as a draw of average users
            per_user = gram / max(record.sampled, 1)  # N: the users asked, fixed by the plan
            lhs = np.maximum(seen, 0)[:, None, None] * per_user[None]
        trained = self._frequent(popularity)
        spec = self.plan.spec
        table = solve_items(
            lhs,
            rhs,
            gram,
            reg=spec.reg,
            unobserved_weight=spec.unobserved_weight,
            rows=trained,
            reg_exponent=spec.reg_exponent,
            counts=seen,
            num_users=record.sampled,
        )
        return self._table(table, popularity, trained, current)

    def _table(
        self, table: np.ndarray, popularity: np.ndarray, trained: np.ndarray, current: Arrays
    ) -> Arrays:
        """The released arrays: the factors, and biases that rank the untrained items by the
        (private) popularity below every trained one."""
        bias = np.zeros((len(popularity), 1))
        share = np.clip(popularity / max(float(np.max(popularity)), 1.0), 0, 1)
        bias[trained, 0] = self.plan.popularity_weight * share[trained]
        bias[~trained, 0] = UNTRAINED_BIAS + share[~trained]
        self.last_update = None
        return {
            ITEM_EMBEDDING: table.astype(current[ITEM_EMBEDDING].dtype),
            ITEM_BIAS: bias.astype(current[ITEM_BIAS].dtype),
        }

    def _start_release(
        self, release: str, current: Arrays, accepted: Sequence[NodeReply], record: RoundRecord
    ) -> Arrays:
        """A covariance start's round 1 (``popularity``) or 2 (``covariance``): sum, noise
        once (DP), and the table that follows."""
        num_items, dim = current[ITEM_EMBEDDING].shape
        private = self.plan.privacy
        if release == "popularity":
            popularity = np.zeros(num_items)
            for reply in accepted:
                popularity[np.asarray(reply.arrays[ITEMS], np.int64)] += reply.arrays[COUNTS]  # type: ignore[index]
            if private is not None:
                popularity = add_noise(popularity, private.stds["counts"], self.rng)
            self.step.counts = popularity  # type: ignore[attr-defined]
            trained = self._frequent(popularity)
            # a non-zero row (whatever the initial table) marks each item the covariance will
            # cover, and column 0 carries the popularity direction the devices deflate by
            table = popularity_table(popularity, trained, dim)
        else:
            popularity = self.step.counts  # type: ignore[attr-defined]
            trained = self._frequent(popularity)
            ids = np.flatnonzero(trained)
            direction = self._direction[ids]  # type: ignore[index]
            cov = deflated_sum([reply.arrays for reply in accepted], ids, direction)  # type: ignore[misc]
            edge = 0.0
            if private is not None:
                cov = symmetric_noise(cov, private.stds["covariance"], self.rng)
                edge = spectral_edge(private.stds["covariance"], len(ids))
            table = np.zeros((num_items, dim))
            table[ids] = items_from_covariance(cov, dim, edge, direction)
            self.step.covariance_done = True  # type: ignore[attr-defined]
        if private is not None:
            self.releases += 1
            record.user_level_epsilon = private.epsilon_of(private.run_history(self.releases))
            logger.info(
                "round %d: DP-ALS %s release of %d users, noise z=%.4g; user-level ε %.4g (δ=%g)",
                record.server_round,
                release,
                record.accepted,
                private.noise_multiplier,
                record.user_level_epsilon,
                private.delta,
            )
        return self._table(table, popularity, trained, current)

    def _frequent(self, popularity: np.ndarray) -> np.ndarray:
        fraction = self.plan.frequent_fraction
        if fraction >= 1:
            return np.ones(len(popularity), dtype=bool)
        keep = max(1, math.ceil(fraction * len(popularity)))
        mask = np.zeros(len(popularity), dtype=bool)
        mask[np.argsort(-popularity, kind="stable")[:keep]] = True
        return mask


def noisy_sums(
    private: AlsPrivacyPlan,
    lhs: np.ndarray | None,
    rhs: np.ndarray,
    counts: np.ndarray,
    gram: np.ndarray,
    rng: np.random.Generator,
    *,
    variance_fraction: float = 1.0,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """One DP-ALS release: i.i.d. Gaussian noise of ``private.stds`` on every entry of the dense
    sums (then symmetrised; the PSD projection follows: both post-processing). The per-item
    Grams are released only with ``private.item_grams``. ``variance_fraction``: the share of
    that variance the server adds (distributed DP: the devices' shares carry the rest)."""
    root = math.sqrt(variance_fraction)
    stds = {name: std * root for name, std in private.stds.items()}
    return (
        symmetrize(add_noise(lhs, stds["lhs"], rng)) if private.item_grams else lhs,
        add_noise(rhs, stds["rhs"], rng),
        add_noise(counts, stds["counts"], rng),
        symmetrize(add_noise(gram, stds["gram"], rng)),
    )


def symmetric_noise(matrix: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``matrix`` plus the Gaussian mechanism on all of its m×m entries (i.i.d. N(0, std²); a
    user's share has L2 norm = its Frobenius norm), then symmetrised (post-processing).

    The symmetric noise left has std ``std`` on the diagonal and ``std/√2`` off it: the scale of
    "Analyze Gauss" (Dwork, Talwar, Thakurta & Zhang, STOC 2014). Adding ``std`` to the upper
    triangle alone would be √2 more noise off the diagonal than the same guarantee needs."""
    return np.asarray(matrix, dtype=np.float64) + symmetrize(rng.normal(0.0, std, np.shape(matrix)))


def spectral_edge(std: float, size: int) -> float:
    """Where the spectrum of :func:`symmetric_noise`'s noise ends for an m×m matrix: 2·(std/√2)·√m
    (Wigner's semicircle; the off-diagonal scale sets it). A covariance eigenvalue below it is
    one the noise alone could have produced."""
    return math.sqrt(2.0) * std * math.sqrt(size)


def _dense_sums(
    accepted: Sequence[NodeReply], num_items: int, dim: int, *, item_grams: bool
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """The accepted statistics summed densely; the per-item Grams (items × d² values) only when
    the server uses them (``item_grams``)."""
    lhs = np.zeros((num_items, dim, dim)) if item_grams else None
    rhs = np.zeros((num_items, dim))
    counts = np.zeros(num_items)
    gram = np.zeros((dim, dim))
    for reply in accepted:
        arrays = reply.arrays
        assert arrays is not None
        items = np.asarray(arrays[ITEMS]).astype(np.int64)
        if lhs is not None:
            lhs[items] += arrays[LHS]
        rhs[items] += arrays[RHS]
        counts[items] += arrays[COUNTS]
        gram += arrays[GRAM]
    return lhs, rhs, counts, gram
