"""How the server combines a round's item-side deltas: the plain mean, or a robust rule.

Each rule maps a list of updates (deltas, as our strategy receives them) to one aggregate; the
server then applies ``items += server_lr · aggregate``. One implementation serves both places
that aggregate: ``fedrec poison``'s in-process rounds and, with ``fedrec simulate defense=``,
the Flower strategy (``ValidatedDeltaMixin``), where it replaces the mean of the accepted
deltas. The rules are unweighted (as Flower's robust strategies): each update counts once. Flower's
robust strategies aggregate ``current + delta``; every rule here is translation-equivariant
(coordinate-wise median and trimmed mean, Krum's choice by pairwise distances), so applying it
to the deltas gives the same table. The rules are Flower's own functions where they are plain
(``trim_mean``, ``select_multikrum``) and FedMedian's ``np.median`` over the stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.privacy.user_level import clip_update, update_norm
from fedrec.registry import Registry

Update = dict[str, np.ndarray]


@dataclass
class DefenseSpec:
    """Mirrors ``configs/defense/*.yaml``.

    ``norm_bound``: updates whose L2 norm exceeds the bound are scaled down to it (``clip``)
    or rejected (``reject``, as the strategy's ``max_update_norm`` does); the bound is
    ``max_update_norm``, or, when that is null, ``norm_multiple`` × the median norm of the
    round's updates (the server cannot know a fixed scale in advance). ``trimmed_mean``: the
    fraction ``beta`` cut at each end, per coordinate (FedTrimmedAvg). ``krum``: Krum/MultiKrum
    with ``num_malicious`` assumed attackers and ``num_selected`` updates averaged.
    """

    name: str = "none"
    max_update_norm: float | None = None
    norm_multiple: float = 3.0
    action: str = "clip"
    beta: float = 0.1
    num_malicious: int = 5
    num_selected: int = 1

    def __post_init__(self) -> None:
        DEFENSES.get(self.name)
        if self.action not in ("reject", "clip"):
            raise ValueError(f"defense.action='{self.action}'; accepted: clip, reject")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"defense.max_update_norm={self.max_update_norm}; expected > 0")
        if not self.norm_multiple > 0:
            raise ValueError(f"defense.norm_multiple={self.norm_multiple}; expected > 0")
        if not 0 <= self.beta < 0.5:
            raise ValueError(f"defense.beta={self.beta}; expected 0 <= beta < 0.5")
        if self.num_malicious < 0 or self.num_selected < 1:
            raise ValueError("defense.num_malicious >= 0 and defense.num_selected >= 1 expected")


Aggregator = Callable[[Sequence[Update], DefenseSpec], Update]
DEFENSES: Registry[Aggregator] = Registry("defense")


def _stack(updates: Sequence[Update], name: str) -> np.ndarray:
    return np.stack([np.asarray(u[name]) for u in updates])


@DEFENSES.register("none")
def mean_update(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """FedAvg with uniform weights: the mean delta."""
    return {name: _stack(updates, name).mean(axis=0) for name in updates[0]}


@DEFENSES.register("norm_bound")
def norm_bounded_mean(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """The mean of the updates within the norm bound (rejected) or clipped to it."""
    norms = np.array([update_norm(u) for u in updates])
    bound = spec.max_update_norm or spec.norm_multiple * float(np.median(norms))
    if spec.action == "clip":
        kept = [
            clip_update(u, bound) if n > bound else u for u, n in zip(updates, norms, strict=True)
        ]
    else:
        kept = [u for u, n in zip(updates, norms, strict=True) if n <= bound]
    if not kept:
        return {name: np.zeros_like(value) for name, value in updates[0].items()}
    return mean_update(kept, spec)


@DEFENSES.register("median")
def median_update(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """FedMedian's rule: the coordinate-wise median."""
    return {name: np.median(_stack(updates, name), axis=0) for name in updates[0]}


@DEFENSES.register("trimmed_mean")
def trimmed_mean_update(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """FedTrimmedAvg's rule (Flower's ``trim_mean``): per coordinate, drop the ``beta``
    fraction at each end and average the rest."""
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

    return {name: trim_mean(_stack(updates, name), spec.beta) for name in updates[0]}


@DEFENSES.register("krum")
def krum_update(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """Krum (Blanchard et al. 2017) through Flower's ``select_multikrum``: the update(s) with
    the smallest summed distance to their n − f − 2 nearest neighbours, averaged."""
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum

    contents = [
        RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in u.items()})})
        for u in updates
    ]
    chosen = select_multikrum(contents, spec.num_malicious, spec.num_selected)
    picked = [{k: v.numpy() for k, v in c["arrays"].items()} for c in chosen]
    return mean_update(picked, spec)


def aggregate(updates: Sequence[Update], spec: DefenseSpec) -> Update:
    """The aggregate delta of ``updates`` under the configured defense."""
    if not updates:
        raise ValueError("no updates to aggregate")
    return DEFENSES.get(spec.name)(updates, spec)
