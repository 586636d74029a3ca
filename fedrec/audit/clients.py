"""Users whose rounds an audit (or a poisoning study) runs in-process, with their kept state.

An audit needs every participating user's own update, which a Flower round never exposes in
one place (and the cohort engine sums them per node), so the audit drives the devices' rounds
itself with :func:`fedrec.cohort.train_cohort`: per user the same computation as
``train_round`` (tested to float tolerance), stacked for speed. The server-side view is exactly
these update arrays; Flower's transport adds nothing an attacker could not see.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from fedrec.client.data_source import SplitUserSource
from fedrec.client.trainer import DeviceState, LocalData, LocalTrainingSpec
from fedrec.cohort import CohortMember, train_cohort
from fedrec.data import Split
from fedrec.model import ModelSpec
from fedrec.privacy import PrivacySpec
from fedrec.privacy.user_level import clip_update

Update = dict[str, np.ndarray]


@dataclass
class LocalRecipe:
    """How every simulated device trains: the settings the server sends."""

    model: ModelSpec
    training: LocalTrainingSpec
    privacy: PrivacySpec


def seed_for(seed: int, key: int, server_round: int, purpose: int) -> int:
    """A per-user, per-round, per-purpose seed (as ``fedrec.client.messages.user_seed``)."""
    sequence = np.random.SeedSequence([seed, key, server_round, purpose])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)


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

    def train(
        self,
        sent: Update,
        recipe: LocalRecipe,
        *,
        server_round: int,
        seed: int,
        purpose: int = 0,
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
                key, chosen[key], self.states[key], seed_for(seed, key, server_round, purpose)
            )
            for key in chosen
        ]
        result = train_cohort(
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

    def members(self, key: int, num_items: int) -> np.ndarray:
        """bool [items]: the items in user ``key``'s training log."""
        mask = np.zeros(num_items, dtype=bool)
        mask[self.datas[key].train_items] = True
        return mask
