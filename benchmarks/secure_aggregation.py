"""SecAgg+ against plain FedAvg, measured in the same run: time and bytes per round, NDCG@10.

The same users, seeds and item table go through plain FedAvg, through SecAgg+ at the default
quantization (2**22 levels over ±clipping_range) and through a coarse one, so the ratios isolate
the protocol's cost (four message stages, key agreement, masks over the whole item table) and
the table shows what quantization does to the ranking quality.

Bytes client → server are measured by a client mod at the outermost position (what leaves the
device): the payload of every training reply, i.e. array bytes plus config-record bytes/strings
(keys, ciphertexts, masked vectors) plus 8 bytes per numeric scalar; Flower's framing is not
counted. Time per round is the server's wall time of the training rounds without evaluation.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_results, markdown_table  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import run_simulate  # noqa: E402

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


def payload_bytes(content) -> int:
    """The bytes of a RecordDict's payload: arrays, bytes/str values, 8 per numeric scalar."""
    total = sum(len(a.data) for r in content.array_records.values() for a in r.values())
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                total += len(item) if isinstance(item, bytes | str) else 8
    return total


class UploadMeter:
    """Client mod: append the payload size of every training reply to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            with open(self.path, "a") as handle:
                handle.write(f"{payload_bytes(reply.content)}\n")
        return reply


def run(name: str, overrides: list[str], rounds: int, workdir: Path) -> dict[str, float]:
    run_dir = workdir / name
    run_dir.mkdir()
    meter = run_dir / "upload_bytes.txt"
    run_simulate(compose("simulate", overrides), run_dir, client_mods=[UploadMeter(str(meter))])
    with open(run_dir / "metrics.csv") as handle:
        rows = {int(r["server_round"]): r for r in csv.DictReader(handle)}
    summary = json.loads((run_dir / "summary.json").read_text())
    uploaded = sum(int(line) for line in meter.read_text().split())
    train_only = [float(rows[r]["seconds"]) for r in range(1, rounds)]  # no evaluation in these
    return {
        "seconds": sum(train_only) / len(train_only),
        "bytes": uploaded / rounds,
        "ndcg": float(rows[rounds]["ndcg@10"]),
        "sampled_ndcg": float(rows[rounds]["sampled_ndcg@10"]),
        "clipped": summary["secure_aggregation"].get("clipped_values", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--coarse-levels", type=int, default=2**8)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    base = [
        "dataset=ml100k",
        f"federation.num_clients={args.clients}",
        f"federation.clients_per_round={args.clients}",  # all: the same users in every row
        f"strategy.server_lr={0.4 * args.clients:g}",
        f"federation.rounds={args.rounds}",
        f"federation.eval_every_rounds={args.rounds}",  # only round 0 and the last evaluate
        "federation.local.epochs=1",
        "federation.state_store=false",
        "model.embedding_dim=16",
    ]
    secagg = ["secure_aggregation=secaggplus", "secure_aggregation.clipping_range=1.0"]
    variants = {
        "plain FedAvg": base,
        "SecAgg+ (2^22 levels)": [*base, *secagg],
        f"SecAgg+ ({args.coarse_levels} levels)": [
            *base,
            *secagg,
            f"secure_aggregation.quantization_range={args.coarse_levels}",
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run(name, o, args.rounds, Path(tmp)) for name, o in variants.items()}
    plain = results["plain FedAvg"]
    table = markdown_table(
        [
            "aggregation",
            "s / round",
            "× time",
            "bytes up / round",
            "× bytes",
            "NDCG@10",
            "sampled NDCG@10",
            "clipped",
        ],
        [
            [
                name,
                f"{r['seconds']:.2f}",
                f"{r['seconds'] / plain['seconds']:.2f}",
                f"{r['bytes']:,.0f}",
                f"{r['bytes'] / plain['bytes']:.2f}",
                f"{r['ndcg']:.4f}",
                f"{r['sampled_ndcg']:.4f}",
                str(r["clipped"]),
            ]
            for name, r in results.items()
        ],
    )
    print(table)
    if not args.no_write:
        append_results(
            "Secure aggregation: SecAgg+ against plain FedAvg",
            f"- setting: ML-100K (../shared/data), {args.clients} users, all of them every "
            f"round, {args.rounds} rounds, server_lr {0.4 * args.clients:g}, 1 local epoch, dim "
            "16, no DP, per-user engine on "
            "Flower's simulation (2 workers); same seeds and users in every row. SecAgg+: "
            "num_shares all, threshold 0.5, clipping_range 1.0 (clipped: update values beyond "
            "it, counted on the devices).\n"
            "- s / round: server wall time of the training rounds without evaluation; bytes "
            "up: payload of every training reply a device sends (arrays, config bytes/strings, "
            "8 B per scalar), summed over devices and divided by rounds. NDCG@10 after the last "
            "round (federated evaluation, all users).\n\n" + table,
        )


if __name__ == "__main__":
    main()
