"""A federation with malicious clients, in-process: exposure of the target and honest NDCG@10.

The one round loop (:func:`~fedrec.federation.loop.run_rounds`) over the in-process transport:
every round every honest user trains on the sent table (the device's own computation, per
user), the malicious clients add what their attack computes, and the one server rule validates
all updates, combines them with the configured defense and applies ``items += server_lr ·
aggregate``. In process rather than through Flower for speed; the server's rule and the
devices' computation are the ones a simulation runs.

Exposure: the share of honest users with the target item in their top 10 (among items they did
not train on), scored with the embedding each user keeps on their device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrec.federation.defenses import DefenseSpec
from fedrec.federation.in_process import InProcessTransport
from fedrec.federation.loop import FederationPlan, run_rounds
from fedrec.federation.server_step import StrategySpec
from fedrec.model.spec import ITEM_BIAS, ITEM_EMBEDDING, USER_EMBEDDING
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients, Update
from fedrec.poisoning.poisoners import (
    POISONERS,
    AttackSpec,
    PoisonContext,
    fake_clients,
    pick_target,
)
from fedrec.protocol.replies import NodeReply, UserOutcome
from fedrec.protocol.settings import LocalTrainingSpec, RoundSettings


@dataclass
class PoisonFederationSpec:
    """The honest federation: ``num_clients`` users (0: all), all training every round."""

    num_clients: int = 100
    rounds: int = 10
    server_lr: float = 40.0
    eval_every_rounds: int = 1
    local: LocalTrainingSpec = field(
        default_factory=lambda: LocalTrainingSpec(epochs=2, lr=0.01, optimizer="adam")
    )

    def __post_init__(self) -> None:
        if self.num_clients < 0 or self.rounds < 1 or self.eval_every_rounds < 1:
            raise ValueError(
                "federation.num_clients >= 0, rounds >= 1, eval_every_rounds >= 1 expected"
            )
        if not self.server_lr > 0:
            raise ValueError(f"federation.server_lr={self.server_lr}; expected > 0")


def target_ranks(items: Update, honest: SimulatedClients, target: int) -> np.ndarray:
    """The target's 0-based rank among each honest user's unseen items (users who trained on
    it, or have no kept embedding yet, are left out)."""
    keys = [key for key in honest.keys if honest.states[key].user_arrays is not None]
    keys = [key for key in keys if target not in honest.datas[key].train_items]
    if not keys:
        return np.zeros(0, dtype=np.int64)
    users = np.stack([honest.states[key].user_arrays[USER_EMBEDDING][0] for key in keys])
    scores = users @ items[ITEM_EMBEDDING].T + items[ITEM_BIAS][:, 0]
    ranks = np.empty(len(keys), dtype=np.int64)
    for row, key in enumerate(keys):
        user_scores = scores[row].copy()
        user_scores[honest.datas[key].train_items] = -np.inf
        ranks[row] = np.count_nonzero(user_scores > user_scores[target])
    return ranks


def exposure(items: Update, honest: SimulatedClients, target: int, k: int = 10) -> float:
    """Share of honest users whose top-k unseen items hold ``target`` (users who trained on
    it are left out: an item a user has is never recommended to them)."""
    ranks = target_ranks(items, honest, target)
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def run_poisoned_federation(
    *,
    honest: SimulatedClients,
    initial_items: Update,
    recipe: LocalRecipe,
    federation: PoisonFederationSpec,
    attack: AttackSpec,
    defense: DefenseSpec,
    popularity: np.ndarray,
    seed: int,
    on_round: Callable[[dict[str, float]], None] = lambda row: None,
) -> list[dict[str, float]]:
    """Run the rounds; return one row per evaluated round (round 0: the untrained table)."""
    target = pick_target(popularity, attack.target_item)
    count = attack.num_malicious(len(honest.keys))
    context = PoisonContext(
        spec=attack,
        target_item=target,
        popularity=popularity,
        fakes=fake_clients(attack, count, target, popularity),
        recipe=recipe,
        seed=seed + 1,
    )
    poisoner = POISONERS.get(attack.kind)
    rows: list[dict[str, float]] = []

    def report(server_round: int, items: Update) -> None:
        last = server_round == federation.rounds
        if server_round % federation.eval_every_rounds and not last:
            return
        row = {
            "server_round": server_round,
            "target_item": target,
            "malicious_clients": count,
            "exposure@10": exposure(items, honest, target),
            "target_median_rank": _median(target_ranks(items, honest, target)),
            "ndcg@10": honest.ndcg_at_10(items, recipe) if server_round else float("nan"),
        }
        rows.append(row)
        on_round(row)

    def poison(server_round: int, sent: Update, replies: list[NodeReply]) -> list[NodeReply]:
        crafted = poisoner(sent, context, server_round)
        return replies + [
            NodeReply(
                -1 - i,
                [UserOutcome(-1 - i, "trained")],
                {k: np.asarray(v, dtype=sent[k].dtype) for k, v in update.items()},
                1.0,
            )
            for i, update in enumerate(crafted)
        ]

    transport = InProcessTransport(honest, states=honest.states, poison=poison)
    plan = FederationPlan(
        settings=RoundSettings(
            model=recipe.model, training=recipe.training, privacy=recipe.privacy, seed=seed
        ),
        strategy=StrategySpec(name="fedavg", server_lr=federation.server_lr),
        rounds=federation.rounds,
        clients_per_round=len(honest),
        eval_clients_per_round=0,
        seed=seed,
        defense=defense,
    )
    report(0, initial_items)
    run_rounds(
        transport,
        plan,
        initial_items,
        observe=lambda server_round, sent, replies, items: report(server_round, items),
    )
    return rows
