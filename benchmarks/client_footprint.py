"""What the embedded client costs a device: peak memory, bytes sent, time per local round.

One user (165 interactions, ML-1M's mean) trains DP-SGD rounds through :class:`FedrecClient`
against an ML-1M-sized item table (3,706 items × 64), with the shipped federation settings
(2 local epochs, batch 32, Adam, privacy=record). Peak RSS is reported beyond a baseline taken
after importing torch (the interpreter and torch are there in any app that trains).

    python benchmarks/client_footprint.py [--rounds 5]

Prints a table; it does not append to RESULTS.md (numbers are quoted in the README).
"""

from __future__ import annotations

import argparse
import platform
import resource
import tempfile
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=3706)
    parser.add_argument("--interactions", type=int, default=165)
    args = parser.parse_args()
    baseline_mb = _rss_mb()  # interpreter + torch

    import numpy as np

    from fedrec.client import FedrecClient, LocalEvalSpec, LocalTrainingSpec, RoundSettings
    from fedrec.model.mf import MatrixFactorization, ModelSpec
    from fedrec.privacy.dp_sgd import PrivacySpec

    imported_mb = _rss_mb()
    items = MatrixFactorization(
        1, args.items, 64, generator=torch.Generator().manual_seed(0)
    ).item_state()
    settings = RoundSettings(
        model=ModelSpec(embedding_dim=64),
        training=LocalTrainingSpec(epochs=2, batch_size=32, lr=0.01, optimizer="adam"),
        privacy=PrivacySpec(mode="record"),
        evaluation=LocalEvalSpec(),
        explicit=False,
        seed=-1,
        server_round=0,
        weight_by_examples=False,
    )
    rng = np.random.default_rng(0)
    seconds, sent = [], []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "user.sqlite"
        with FedrecClient.open(path, num_items=args.items) as client:
            for item in rng.choice(args.items, args.interactions, replace=False):
                client.record_interaction(int(item), category="view")
            client.grant_consent(["view"])
            for server_round in range(1, args.rounds + 1):
                settings.server_round = server_round
                started = time.perf_counter()
                update = client.train_round(items, settings)
                seconds.append(time.perf_counter() - started)
                sent.append(sum(v.nbytes for v in update.item_update.values()))
            report = client.privacy_report()
        store_kb = path.stat().st_size / 1024
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}")
    print(f"item table {args.items} x 64, {args.interactions} interactions, {args.rounds} rounds")
    print("| figure | value |\n|---|---|")
    print(f"| RSS after interpreter + torch | {baseline_mb:.0f} MB |")
    print(f"| + fedrec.client imports (opacus, ...) | {imported_mb - baseline_mb:.0f} MB |")
    print(f"| peak RSS beyond interpreter + torch | {peak_mb - baseline_mb:.0f} MB |")
    print(f"| time per local round (first) | {seconds[0]:.2f} s |")
    print(f"| time per local round (median of rest) | {np.median(seconds[1:]):.2f} s |")
    print(f"| tensor bytes sent per round | {sent[0]:,} |")
    print(f"| bytes sent (report, {args.rounds} rounds, incl. metrics) | {report.bytes_sent:,} |")
    print(f"| ε after {args.rounds} rounds (δ=1e-5) | {report.epsilon:.2f} |")
    print(f"| store file size | {store_kb:.0f} KB |")


if __name__ == "__main__":
    main()
