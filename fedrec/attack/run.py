"""A federation with malicious clients, in-process: exposure of the target and honest NDCG@10.

Each round every honest user trains on the sent table (the cohort engine: the device's own
computation, per user), the malicious clients upload what their attack computes, and the server
aggregates all updates with the configured defense and applies ``items += server_lr ·
aggregate`` (FedAvg's rule in ``ValidatedFedAvg``). This runs in-process rather than through
Flower for speed; the server's rule and the devices' computation are the same.

Exposure: the share of honest users with the target item in their top 10 (among items they did
not train on), scored with the embedding each user keeps on their device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedrec.attack.poisoners import (
    POISONERS,
    AttackSpec,
    PoisonContext,
    fake_clients,
    pick_target,
)
from fedrec.audit.clients import LocalRecipe, SimulatedClients, Update
from fedrec.client.trainer import LocalEvalSpec, LocalTrainingSpec, evaluate_user
from fedrec.eval import average_over_users
from fedrec.server.defenses import DefenseSpec, aggregate


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
    users = np.stack([honest.states[key].user_arrays["user_embedding.weight"][0] for key in keys])
    scores = users @ items["item_embedding.weight"].T + items["item_bias.weight"][:, 0]
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


def honest_ndcg(items: Update, honest: SimulatedClients, recipe: LocalRecipe) -> float:
    spec = LocalEvalSpec(full_metrics=["ndcg@10"], sampled_metrics=[])
    return float(
        average_over_users(
            evaluate_user(
                items,
                honest.datas[key],
                honest.states[key],
                model_spec=recipe.model,
                eval_spec=spec,
                explicit=False,
                num_negatives=recipe.training.num_negatives,
                seed=key,
            )
            for key in honest.keys
        )["ndcg@10"]
    )


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
    items = {k: np.array(v, copy=True) for k, v in initial_items.items()}
    rows = []
    for server_round in range(0, federation.rounds + 1):
        if server_round:
            sent = {k: v.copy() for k, v in items.items()}
            updates = list(
                honest.train(sent, recipe, server_round=server_round, seed=seed).values()
            )
            malicious = poisoner(sent, context, server_round)
            step = aggregate(updates + malicious, defense)
            items = {
                k: (sent[k] + federation.server_lr * step[k]).astype(sent[k].dtype) for k in sent
            }
        last = server_round == federation.rounds
        if server_round % federation.eval_every_rounds == 0 or last:
            row = {
                "server_round": server_round,
                "target_item": target,
                "malicious_clients": count,
                "exposure@10": exposure(items, honest, target),
                "target_median_rank": _median(target_ranks(items, honest, target)),
                "ndcg@10": honest_ndcg(items, honest, recipe) if server_round else float("nan"),
            }
            rows.append(row)
            on_round(row)
    return rows
