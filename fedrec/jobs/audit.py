"""``fedrec audit``: what an honest-but-curious (or active) server learns about which items each
user interacted with, per privacy mode and budget, next to the accuracy the budget leaves.

For each setting (``none``; ``record`` and ``user`` at every ε in ``epsilons``) a short
federation runs in-process (:mod:`fedrec.membership.run`), and every round the server attacks every
participant's update. Writes ``audit.csv``, ``audit.md`` and ``audit.png`` in the run directory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fedrec.data import DatasetSpec, load_split
from fedrec.membership.active import CRAFTED_TABLES
from fedrec.membership.attacks import ATTACKS
from fedrec.membership.report import markdown, plot, rows, write_csv
from fedrec.membership.run import AuditFederationSpec, AuditSetting, run_setting, setting_privacy
from fedrec.model import ModelSpec
from fedrec.model.mf import random_item_arrays
from fedrec.nodes.simulated import LocalRecipe, SimulatedClients
from fedrec.privacy import PrivacySpec
from fedrec.run_dir import RunRecorder

logger = logging.getLogger("fedrec")
AUDIT_MODES = ("none", "record", "user")


@dataclass
class AuditJobConfig:
    """The schema of ``configs/audit.yaml``. ``privacy`` holds the shared settings (δ, C, the
    user-level clip norm, the accountant); each setting replaces its mode and budget."""

    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(name="movielens_100k"))
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    federation: AuditFederationSpec = field(default_factory=AuditFederationSpec)
    modes: list[str] = field(default_factory=lambda: list(AUDIT_MODES))
    epsilons: list[float] = field(default_factory=lambda: [16.0, 8.0, 4.0, 1.0])
    attacks: list[str] = field(
        default_factory=lambda: ["update_norm", "user_direction", "shadow_classifier"]
    )
    crafted_table: str | None = "bias_silencing"  # null: no active-server row
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(AUDIT_MODES))
        if unknown:
            raise ValueError(f"audit modes {unknown}; accepted: {', '.join(AUDIT_MODES)}")
        for name in self.attacks:
            ATTACKS.get(name)
        if not self.attacks:
            raise ValueError("audit.attacks must name at least one attack")
        if self.crafted_table is not None:
            CRAFTED_TABLES.get(self.crafted_table)
        if any(not (e > 0 and math.isfinite(e)) for e in self.epsilons):
            raise ValueError("audit.epsilons must be positive, finite numbers ('none' is ε = ∞)")


def settings(cfg: AuditJobConfig) -> list[AuditSetting]:
    points = [AuditSetting("none", math.inf)] if "none" in cfg.modes else []
    for mode in (m for m in cfg.modes if m != "none"):
        points += [AuditSetting(mode, eps) for eps in sorted(cfg.epsilons, reverse=True)]
    return points


def run_audit(cfg: AuditJobConfig, run_dir: str | Path) -> dict[str, float]:
    """Run every setting; return the best AUC without DP and at the smallest record-level ε."""
    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    recorder = RunRecorder(run_dir)
    split = load_split(cfg.dataset)
    fed = cfg.federation
    needed = fed.num_clients + fed.shadow_clients
    if needed > split.train.num_users:
        raise ValueError(
            f"federation.num_clients + shadow_clients = {needed}; the dataset has "
            f"{split.train.num_users} users"
        )
    order = np.random.default_rng(cfg.seed).permutation(split.train.num_users)
    participant_ids, shadow_ids = order[: fed.num_clients], order[fed.num_clients : needed]
    initial = random_item_arrays(
        split.train.num_items, cfg.model.embedding_dim, init_std=cfg.model.init_std, seed=cfg.seed
    )
    outcomes = []
    for setting in settings(cfg):
        started = time.perf_counter()
        logger.info("audit setting: %s, target ε %g", setting.mode, setting.target_epsilon)
        recipe = LocalRecipe(
            cfg.model, fed.local, setting_privacy(setting, cfg.privacy, fed.rounds)
        )
        outcome = run_setting(
            setting,
            participants=SimulatedClients.from_split(split, participant_ids),
            shadows=SimulatedClients.from_split(split, shadow_ids),
            initial_items=initial,
            recipe=recipe,
            federation=fed,
            attacks=list(cfg.attacks),
            crafted_table=cfg.crafted_table,
            seed=cfg.seed,
            log=logger.info,
        )
        outcomes.append(outcome)
        recorder.append(
            {
                "mode": setting.mode,
                "target_epsilon": setting.target_epsilon,
                "epsilon_spent": outcome.epsilon_spent,
                "ndcg@10": outcome.ndcg_at_10,
                **{
                    f"{view}_auc_{a}": float(np.mean(v))
                    for view, tally in outcome.views.items()
                    for a, v in tally.aucs.items()
                },
                "seconds": time.perf_counter() - started,
            }
        )
    table = rows(outcomes, list(cfg.attacks))
    for row in table:
        row["delta"] = cfg.privacy.delta
    write_csv(table, run_dir / "audit.csv")
    (run_dir / "audit.md").write_text(markdown(table, list(cfg.attacks)))
    plot(table, run_dir / "audit.png")
    recorder.write_summary(
        {
            "job": "audit",
            "dataset": split.train.source,
            "participants": fed.num_clients,
            "shadow_clients": fed.shadow_clients,
            "rounds": fed.rounds,
            "bound": (
                "AUC ≤ ∫ min(1, e^ε x + δ, 1 − e^−ε (1 − δ − x)) dx (fedrec.membership.bounds)"
            ),
            "rows": table,
        }
    )
    return headline(table)


def headline(table: list[dict]) -> dict[str, float]:
    """The numbers the issue's goals are stated in."""
    result: dict[str, float] = {}
    for row in table:
        if row["view"] != "update":
            continue
        if row["mode"] == "none":
            result["auc_no_dp"] = row["best_auc"]
            result["ndcg@10"] = row["ndcg@10"]
        if row["mode"] == "record":
            key = f"auc_record_eps{row['target_epsilon']:g}"
            result[key] = row["best_auc"]
    return result
