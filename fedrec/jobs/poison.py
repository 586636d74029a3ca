"""``fedrec poison``: malicious clients promote a target item; the server defends (or not).

One in-process federation (:mod:`fedrec.poisoning.run`) per config: ``attack=`` (``none``,
``boost``, ``pipattack``; ``attack.fraction``, ``attack.target_item``) and ``defense=``
(``none``, ``norm_bound``, ``median``, ``trimmed_mean``, ``krum``). Writes the target's exposure
and honest users' NDCG@10 per round to ``metrics.csv`` (and ``metrics.png``), and
``summary.json``. ``benchmarks/poisoning.py`` runs the grid of attacks × defenses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedrec.data import DatasetSpec, Split, load_split
from fedrec.federation.defenses import DefenseSpec
from fedrec.model import ModelSpec
from fedrec.model.mf import random_item_arrays
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.poisoning.poisoners import AttackSpec
from fedrec.poisoning.run import PoisonFederationSpec, run_poisoned_federation
from fedrec.privacy import PrivacySpec
from fedrec.run_dir import RunRecorder

logger = logging.getLogger("fedrec")


@dataclass
class PoisonJobConfig:
    """The schema of ``configs/poison.yaml``."""

    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="movielens_100k"))
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    federation: PoisonFederationSpec = field(default_factory=PoisonFederationSpec)
    attack: AttackSpec = field(default_factory=AttackSpec)
    defense: DefenseSpec = field(default_factory=DefenseSpec)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.privacy.user_level:
            raise ValueError(
                "fedrec poison runs devices on the cohort engine: privacy modes none and record"
            )


def run_poison(
    cfg: PoisonJobConfig, run_dir: str | Path, *, split: Split | None = None, plot: bool = True
) -> dict[str, float]:
    """Run the poisoned federation; return the last round's exposure, the target's median
    rank and NDCG@10.

    ``split``: the already loaded split of ``cfg.dataset`` (a benchmark grid loads it once);
    ``plot``: write ``metrics.png`` (a grid of many runs skips it to save time).
    """
    torch.set_num_threads(1)
    recorder = RunRecorder(run_dir)
    split = split if split is not None else load_split(cfg.dataset)
    fed = cfg.federation
    num_users = split.train.num_users
    if fed.num_clients == 0 or fed.num_clients >= num_users:
        users = np.arange(num_users)
    else:
        users = np.sort(np.random.default_rng(cfg.seed).choice(num_users, fed.num_clients, False))
    # Public side information the attacker is assumed to have (PipAttack's assumption).
    popularity = np.bincount(split.train.items, minlength=split.train.num_items)
    initial = random_item_arrays(
        split.train.num_items, cfg.model.embedding_dim, init_std=cfg.model.init_std, seed=cfg.seed
    )

    def on_round(row: dict[str, float]) -> None:
        recorder.append(row)
        logger.info(
            "round %d: exposure@10 %.3f (median rank %.0f), ndcg@10 %.4f",
            row["server_round"],
            row["exposure@10"],
            row["target_median_rank"],
            row["ndcg@10"],
        )

    rows = run_poisoned_federation(
        honest=SimulatedClients.from_split(split, users),
        initial_items=initial,
        recipe=LocalRecipe(cfg.model, fed.local, cfg.privacy),
        federation=fed,
        attack=cfg.attack,
        defense=cfg.defense,
        popularity=popularity,
        seed=cfg.seed,
        on_round=on_round,
    )
    if plot:
        recorder.plot("server_round", ["exposure@10", "target_median_rank", "ndcg@10"], "poisoning")
    final = rows[-1]
    recorder.write_summary(
        {
            "job": "poison",
            "attack": cfg.attack.__dict__,
            "defense": cfg.defense.__dict__,
            "honest_clients": len(users),
            "final": final,
            "engine": "in-process rounds, honest devices on the cohort engine",
        }
    )
    return {
        "exposure@10": final["exposure@10"],
        "target_median_rank": final["target_median_rank"],
        "ndcg@10": final["ndcg@10"],
        "target_item": final["target_item"],
        "malicious_clients": final["malicious_clients"],
    }
