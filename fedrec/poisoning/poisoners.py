"""Malicious clients that promote a target item into honest users' top-10.

Both attacks know only what any client knows: the item table the server sends and the round's
training settings, plus public item popularity (e.g. sales ranks). Neither needs other users'
embeddings or data.

- ``boost``: fake users whose logs hold the most popular items and the (cold) target item train
  honestly with the device's own trainer, and upload that update multiplied by ``scale``
  (explicit boosting, Bhagoji et al. 2019, "Analyzing Federated Learning through an
  Adversarial Lens", ICML). The target row is pulled towards the fake users' taste, which is
  the popular items' direction, i.e. what many real users like.
- ``pipattack``: in the spirit of PipAttack (Zhang et al. 2022, "PipAttack: Poisoning Federated
  Recommender Systems for Manipulating Item Promotion", WSDM, arXiv 2110.10926): exploit
  popularity bias by making the target *look like a popular item in embedding space*. The
  attacker fits a popularity classifier on the received item table (public popularity as
  labels), and moves the target's row to the centroid of the popular items' rows pushed along
  the classifier's "popular" direction. To stay inconspicuous the upload is a benign update
  (an honest round on a popular-items log, as in ``boost`` but unscaled) whose target row is
  replaced by that move, capped at ``scale`` × the largest benign row norm. (The paper trains
  the target embedding with a promotion loss, a popularity-classifier loss and a distance
  constraint; this is its closed-form, one-step version.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedrec.membership.attacks import fit_logistic
from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.registry import Registry
from fedrec.training.state import DeviceState, LocalData

Update = dict[str, np.ndarray]
FAKE_KEY_BASE = 10_000_000  # fake users' keys, outside any dataset's user ids


@dataclass
class AttackSpec:
    """Mirrors ``configs/attack/*.yaml``.

    ``fraction``: malicious clients as a share of the honest ones (rounded, at least one when
    > 0). ``target_item``: the promoted item; -1 picks the least popular item with at least one
    training interaction (lowest id on ties). ``popular_items``: how many of the most popular
    items a fake log holds. ``scale``: ``boost`` multiplies its update by it; ``pipattack``
    caps its target row at it × the largest benign row norm.
    """

    kind: str = "none"
    fraction: float = 0.05
    target_item: int = -1
    popular_items: int = 30
    scale: float = 1.0

    def __post_init__(self) -> None:
        POISONERS.get(self.kind)
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"attack.fraction={self.fraction}; expected 0..1")
        if self.popular_items < 1 or not self.scale > 0:
            raise ValueError("attack.popular_items >= 1 and attack.scale > 0 expected")

    def num_malicious(self, honest: int) -> int:
        if self.kind == "none" or self.fraction == 0:
            return 0
        return max(1, round(self.fraction * honest))


@dataclass
class PoisonContext:
    """What the attacker holds: public popularity, its target, its fake devices."""

    spec: AttackSpec
    target_item: int
    popularity: np.ndarray  # training interactions per item (public side information)
    fakes: SimulatedClients
    recipe: LocalRecipe
    seed: int


Poisoner = Callable[[Update, PoisonContext, int], list[Update]]
POISONERS: Registry[Poisoner] = Registry("attack")


def pick_target(popularity: np.ndarray, requested: int) -> int:
    """The requested item, or the least popular item that has any interaction."""
    if requested >= 0:
        if requested >= len(popularity):
            raise ValueError(f"attack.target_item={requested}; the catalogue has {len(popularity)}")
        return requested
    seen = np.flatnonzero(popularity > 0)
    return int(seen[np.argmin(popularity[seen])])


def fake_clients(
    spec: AttackSpec, count: int, target: int, popularity: np.ndarray
) -> SimulatedClients:
    """``count`` fake devices, each with a log of the popular items and the target repeated as
    often (so half of its positives are the target)."""
    ranked = [int(i) for i in np.argsort(-popularity, kind="stable") if i != target]
    popular = np.array(ranked[: spec.popular_items], dtype=np.int64)
    log = np.concatenate([popular, np.full(len(popular), target, dtype=np.int64)])
    datas = {
        FAKE_KEY_BASE + j: LocalData(num_items=len(popularity), train_items=log.copy())
        for j in range(count)
    }
    return SimulatedClients(datas, {key: DeviceState() for key in datas})


@POISONERS.register("none")
def no_attack(sent: Update, context: PoisonContext, server_round: int) -> list[Update]:
    return []


@POISONERS.register("boost")
def boosted_fake_users(sent: Update, context: PoisonContext, server_round: int) -> list[Update]:
    """Honest rounds on fake logs, scaled by ``scale``."""
    updates = context.fakes.train(
        sent, context.recipe, server_round=server_round, seed=context.seed
    )
    return [{k: v * context.spec.scale for k, v in u.items()} for u in updates.values()]


@POISONERS.register("pipattack")
def popularity_mimicry(sent: Update, context: PoisonContext, server_round: int) -> list[Update]:
    """Benign-looking updates whose target row moves the target towards "popular"."""
    covers = context.fakes.train(sent, context.recipe, server_round=server_round, seed=context.seed)
    move_vector, move_bias = popular_direction(
        sent, context.target_item, context.popularity, context.spec.popular_items
    )
    uploads = []
    for cover in covers.values():
        rows = np.sqrt((cover[ITEM_EMBEDDING] ** 2).sum(1) + cover[ITEM_BIAS][:, 0] ** 2)
        cap = context.spec.scale * float(rows.max())
        move = np.concatenate([move_vector, [move_bias]])
        length = float(np.linalg.norm(move))
        if length > cap:
            move = move * (cap / length)
        upload = {k: v.copy() for k, v in cover.items()}
        upload[ITEM_EMBEDDING][context.target_item] = move[:-1]
        upload[ITEM_BIAS][context.target_item, 0] = move[-1]
        uploads.append(upload)
    return uploads


def popular_direction(
    sent: Update, target: int, popularity: np.ndarray, popular_items: int
) -> tuple[np.ndarray, float]:
    """The change that would put the target at the popular items' centroid, pushed one unit
    (in row-norm scale) along a popularity classifier's normal, fitted on the sent table."""
    table = np.asarray(sent[ITEM_EMBEDDING], dtype=np.float64)
    bias = np.asarray(sent[ITEM_BIAS], dtype=np.float64).reshape(-1)
    popular = np.argsort(-popularity, kind="stable")[:popular_items]
    labels = np.zeros(len(table))
    labels[popular] = 1.0
    design = np.hstack([table, bias[:, None], np.ones((len(table), 1))])
    weights = fit_logistic(design, labels, l2=1e-2, iterations=15)
    normal = weights[:-1] / max(np.linalg.norm(weights[:-1]), 1e-12)
    centroid = np.concatenate([table[popular].mean(0), [bias[popular].mean()]])
    scale = float(np.linalg.norm(table[popular], axis=1).mean())
    goal = centroid + scale * normal
    current = np.concatenate([table[target], [bias[target]]])
    move = goal - current
    return move[:-1], float(move[-1])
