"""Users simulated in this process, with the state each one's device keeps.

The in-process transport (:mod:`fedrec.federation.in_process`) serves them as a
:class:`~fedrec.nodes.block.BlockNode` source (``local_data``/``len``) and keeps their states in
the very ``states`` dict held here, so a study can also run *counterfactual* rounds from the same
states (:meth:`SimulatedClients.train` with ``commit=False``: the membership audit's in/out game
and crafted tables) through the same registered trainer
(:data:`fedrec.training.trainers.TRAINERS`, the closed form: per user the same computation as the
Opacus round, stacked for speed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from fedrec.data import Split
from fedrec.model import ModelSpec
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy import PrivacySpec
from fedrec.privacy.user_level import clip_update
from fedrec.protocol.seeds import derived_seed
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.training.state import CohortMember, DeviceState, LocalData
from fedrec.training.trainers import TRAINERS

Update = dict[str, np.ndarray]
# Seed purposes of rounds run here (1 and 2 are the devices' own train/evaluate purposes).
SHADOW, GAME, ACTIVE, ACTIVE_GAME = 0, 3, 4, 5


@dataclass
class LocalRecipe:
    """How every simulated device trains: the settings the server sends."""

    model: ModelSpec
    training: LocalTrainingSpec
    privacy: PrivacySpec


@dataclass
class SimulatedClients:
    """Users keyed by their id in the split, each with the state their device would keep."""

    datas: dict[int, LocalData]
    states: dict[int, DeviceState] = field(default_factory=dict)

    @classmethod
    def from_split(cls, split: Split, users: Iterable[int]) -> SimulatedClients:
        users = np.asarray(list(users), dtype=np.int64)
        source = SplitUserSource(split, users)
        datas = dict(source.local_data({"partition-id": p}) for p in range(len(users)))
        return cls(datas, {key: DeviceState() for key in datas})

    @property
    def keys(self) -> list[int]:
        return list(self.datas)

    def __len__(self) -> int:
        return len(self.datas)

    def local_data(self, node_config, run_config=None) -> tuple[int, LocalData]:
        """User ``partition-id`` (their position in :attr:`keys`), as a block node reads it."""
        key = self.keys[int(node_config["partition-id"])]
        return key, self.datas[key]

    def train(
        self,
        sent: Update,
        recipe: LocalRecipe,
        *,
        server_round: int,
        seed: int,
        purpose: int = SHADOW,
        datas: dict[int, LocalData] | None = None,
        commit: bool = True,
    ) -> dict[int, Update]:
        """Every user's released update for one round against the ``sent`` item arrays.

        ``datas`` replaces some users' logs for this call (the in/out game); ``commit=False``
        leaves the kept states untouched (a counterfactual round: the game, a crafted table);
        a counterfactual user who cannot train (e.g. a log one item shorter solves another σ
        and would pass the budget) is left out of the result, while in a real round every user
        must train.
        With user-level DP the device clips its whole update to ``user_clip_norm`` before it
        leaves (as ``train_round`` does); the cohort engine itself trains without that step.
        """
        privacy = recipe.privacy
        device_privacy = privacy
        if privacy.user_level:
            device_privacy = replace(privacy, mode="record" if privacy.record_level else "none")
        chosen = datas or self.datas
        members = [
            CohortMember(
                key, chosen[key], self.states[key], derived_seed(seed, key, server_round, purpose)
            )
            for key in chosen
        ]
        result = TRAINERS.get("closed_form")(
            sent,
            members,
            model_spec=recipe.model,
            training=recipe.training,
            privacy=device_privacy,
            explicit=False,
            server_round=server_round,
            keep_updates=True,
        )
        failed = [o for o in result.outcomes if o.status != "trained"]
        if failed and commit:
            raise RuntimeError(
                f"{len(failed)} simulated users did not train (e.g. user {failed[0].key}: "
                f"{failed[0].status} {failed[0].reason}); the audit needs every update"
            )
        if commit:
            for outcome in result.outcomes:
                self.states[outcome.key] = outcome.state
        updates = result.updates
        if privacy.user_level:
            updates = {k: clip_update(u, privacy.user_clip_norm) for k, u in updates.items()}
        return updates

    def ndcg_at_10(self, items: Update, recipe: LocalRecipe) -> float:
        """Full-ranking NDCG@10 over these users, each scored with the embedding their device
        keeps (as the devices score a model in a federation's evaluation)."""
        from fedrec.eval import average_over_users
        from fedrec.protocol.settings import LocalEvalSpec
        from fedrec.training.evaluate import evaluate_user

        spec = LocalEvalSpec(full_metrics=["ndcg@10"], sampled_metrics=[])
        metrics = average_over_users(
            evaluate_user(
                items,
                self.datas[key],
                self.states[key],
                model_spec=recipe.model,
                eval_spec=spec,
                explicit=False,
                num_negatives=recipe.training.num_negatives,
                seed=key,
            )
            for key in self.keys
        )
        return float(metrics["ndcg@10"])

    def members(self, key: int, num_items: int) -> np.ndarray:
        """bool [items]: the items in user ``key``'s training log."""
        mask = np.zeros(num_items, dtype=bool)
        mask[self.datas[key].train_items] = True
        return mask
