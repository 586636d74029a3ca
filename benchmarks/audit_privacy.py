"""The interaction-membership audit on ML-100K, recorded in RESULTS.md (``fedrec audit``).

Usage: ``python benchmarks/audit_privacy.py [hydra overrides of configs/audit.yaml ...]``

Runs :func:`fedrec.jobs.audit.run_audit` (every setting: no DP, record-level and user-level at
each ε, the active crafted-table round), writes the run directory under ``runs/audit/`` and
appends the table and the goals of issue 9, as measured, to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
import time
from pathlib import Path

from common import append_results

from fedrec.config import compose
from fedrec.jobs.audit import run_audit


def main(overrides: list[str]) -> None:
    cfg = compose("audit", overrides)
    run_dir = Path("runs/audit") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    started = time.perf_counter()
    result = run_audit(cfg, run_dir)
    wall = time.perf_counter() - started
    table = (run_dir / "audit.md").read_text()
    print(table)
    no_dp = result.get("auc_no_dp", math.nan)
    eps1 = result.get("auc_record_eps1", math.nan)
    fed = cfg.federation
    body = [
        f"- setting: ML-100K implicit, {fed.num_clients} audited users (all training every "
        f"round, {fed.rounds} rounds, Adam lr {fed.local.lr}, {fed.local.epochs} local epochs, "
        f"dim {cfg.model.embedding_dim}), {fed.shadow_clients} other users as the server's "
        f"shadow clients; FedAvg server_lr {fed.server_lr:g}; δ = {cfg.privacy.delta:g}; "
        f"in-process rounds on the cohort engine (per user the device's computation); "
        f"{wall / 60:.1f} min; run directory `{run_dir}` (audit.csv, audit.md, audit.png)",
        "- AUC: per-user ROC AUC (the user's training items against every other item), "
        "averaged over users and rounds; the best attack per row in bold. The in/out game: "
        "one training item per user scored in the real update and in a counterfactual round "
        "without it (pooled over users and rounds), the game the bound is about. Bound: "
        "AUC ≤ ∫₀¹ min(1, e^ε·x + δ, 1 − e^−ε·(1 − δ − x)) dx (the (ε, δ) privacy region, "
        "Kairouz et al. 2015 Thm 2.1; = e^ε/(1+e^ε) at δ = 0).",
        f"- goal 'the audit can fail: no DP reaches AUC ≥ 0.9': best AUC {no_dp:.3f} → "
        f"{'met' if no_dp >= 0.9 else 'NOT met'}",
        f"- goal 'record-level ε = 1 keeps AUC ≤ 0.6': best AUC {eps1:.3f} → "
        f"{'met' if eps1 <= 0.6 else 'NOT met'}",
        "",
        table,
    ]
    append_results("Interaction-membership audit (ML-100K)", "\n".join(body))


if __name__ == "__main__":
    main(sys.argv[1:])
