"""Reliability under faults: rounds kept or lost, updates refused, and whether any ε or stored
row went missing, for injected dropouts, stragglers, hostile updates and a server crash.

Every scenario is the same small DP federation (synthetic data, every user every round) so the
clean run is each faulty run's baseline: the wall time ratio is the time overhead, and the
clean run's ledgers are what an interrupted run must reach. Two checks must read 0:

- ε under-counted: for every user, the ε its device would have to report for the rounds it
  actually trained in (each training is logged by a client mod *inside* the fault injector, so a
  device that dropped after training counts as trained), recomputed with Opacus' accountant from
  scratch, minus the ε its ledger holds, summed over users where positive. For the crash: the
  clean run's ε per user minus the resumed run's.
- store rows lost: trainings logged minus (user, round) snapshots in the run's state store; for
  the crash, snapshots present before the resume and missing after it.

    python benchmarks/reliability.py                 # simulation scenarios
    python benchmarks/reliability.py --deployment    # ... and a loopback deployment
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from opacus.accountants import RDPAccountant

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import append_results, markdown_table  # noqa: E402
from loopback import run_fedrec_cli  # noqa: E402

from fedrec.config import compose  # noqa: E402
from fedrec.jobs.simulate import STATE_STORE_FILE, prepare_federation, run_simulate  # noqa: E402
from fedrec.nodes.state_store import DeviceStateStore  # noqa: E402
from fedrec.protocol.wire import ARRAYS_KEY, CONFIG_KEY  # noqa: E402

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


class TrainingLog:
    """Client mod: log (round, partition) once the device's training handler has returned, i.e.
    once it trained and charged its ledger. Put inside the fault injector."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        if msg.metadata.message_type == "train" and not reply.has_error():
            line = json.dumps(
                {
                    "round": int(msg.content[CONFIG_KEY]["server-round"]),
                    "partition": int(context.node_config["partition-id"]),
                    "arrays": bool(reply.content.array_records),
                }
            )
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        return reply


class Hostile:
    """Client mod: replace some clients' updates by garbage (a wrong shape, NaN, a huge norm)."""

    KINDS = ("shape", "nan", "huge")

    def __init__(self, partitions: list[int]) -> None:
        self.partitions = partitions

    def __call__(self, msg, context, call_next):
        reply = call_next(msg, context)
        partition = int(context.node_config["partition-id"])
        if (
            msg.metadata.message_type != "train"
            or partition not in self.partitions
            or not reply.content.array_records
        ):
            return reply
        kind = self.KINDS[self.partitions.index(partition) % len(self.KINDS)]
        arrays = {k: v.numpy().copy() for k, v in reply.content[ARRAYS_KEY].items()}
        if kind == "shape":
            arrays["item_bias.weight"] = np.zeros((3, 1), np.float32)
        elif kind == "nan":
            arrays["item_embedding.weight"][0, 0] = np.nan
        else:
            arrays["item_embedding.weight"] *= np.float32(1e6)
        reply.content[ARRAYS_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        return reply


def base_overrides(args) -> list[str]:
    return [
        "privacy=record",
        f"federation.num_clients={args.clients}",
        f"federation.clients_per_round={args.clients}",
        f"federation.rounds={args.rounds}",
        "federation.local.epochs=1",
        f"federation.eval_every_rounds={args.rounds}",
        "federation.eval_clients_per_round=0",
        "federation.ray_cpus=2",
        # 4 workers on 2 cores: a sleeping straggler holds one of them, not half the federation
        "federation.client_cpus=0.5",
        "strategy.max_update_norm=50",
    ]


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as handle:
        return [row for row in csv.DictReader(handle) if int(row["server_round"]) > 0]


def snapshot_rows(run_dir: Path) -> set[tuple[int, int]]:
    with sqlite3.connect(run_dir / STATE_STORE_FILE) as db:
        return set(db.execute("SELECT user_key, server_round FROM device_state"))


def ledgers(run_dir: Path) -> dict[int, float]:
    with DeviceStateStore(run_dir / STATE_STORE_FILE) as store:
        return {user: ledger.epsilon for user, ledger in store.ledgers().items()}


def epsilon_owed(cfg, source, trainings: list[dict]) -> dict[int, float]:
    """ε each device must report for the rounds it logged as trained, from scratch."""
    owed: dict[int, float] = {}
    for partition in sorted({t["partition"] for t in trainings}):
        rounds = sum(t["partition"] == partition for t in trainings)
        key, data = source.local_data({"partition-id": partition})
        size = len(data.train_items)
        batches = math.ceil(size / min(cfg.federation.local.batch_size, size))
        accountant = RDPAccountant()
        accountant.history = [
            (
                cfg.privacy.noise_multiplier,
                1 / batches,
                rounds * cfg.federation.local.epochs * batches,
            )
        ]
        owed[key] = accountant.get_epsilon(delta=cfg.privacy.delta)
    return owed


def in_process(name: str, overrides: list[str], folder: Path, mods=()) -> dict:
    run_dir = folder / name
    cfg = compose("simulate", overrides)
    log = run_dir / "trainings.jsonl"
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    run_simulate(cfg, run_dir, client_mods=[TrainingLog(str(log)), *mods])
    wall = time.perf_counter() - started
    trainings = [json.loads(line) for line in log.read_text().splitlines()]
    _, source, _ = prepare_federation(cfg)
    owed = epsilon_owed(cfg, source, trainings)
    held = ledgers(run_dir)
    stored = snapshot_rows(run_dir)
    logged = {(int(source.users[t["partition"]]), t["round"]) for t in trainings}
    return {
        "run_dir": run_dir,
        "rows": rows_of(run_dir),
        "wall_s": wall,
        "under": sum(max(0.0, owed[k] - held.get(k, 0.0)) for k in owed),
        "rows_lost": len(logged - stored),
        "ledgers": held,
    }


def crash_and_resume(overrides: list[str], folder: Path, crash_round: int, clean: dict) -> dict:
    run_dir = folder / "crash"

    def cli(args: list[str], log: str) -> tuple[int, float]:
        started = time.perf_counter()
        code = run_fedrec_cli(["simulate", *args], folder / log, timeout_s=1200)
        return code, time.perf_counter() - started

    code, first = cli(
        [*overrides, f"faults.server_crash_round={crash_round}", f"hydra.run.dir={run_dir}"],
        "crash.log",
    )
    assert code == -signal.SIGKILL, f"the crashing run ended with {code}; see {folder}/crash.log"
    before_rows, before = snapshot_rows(run_dir), ledgers(run_dir)
    code, second = cli([f"resume={run_dir}", f"hydra.run.dir={folder / 'resume'}"], "resume.log")
    assert code == 0, f"the resumed run failed; see {folder}/resume.log"
    after = ledgers(run_dir)
    with (
        np.load(run_dir / "item_table.npz") as resumed,
        np.load(clean["run_dir"] / "item_table.npz") as reference,
    ):
        gap = max(float(np.abs(resumed[k] - reference[k]).max()) for k in reference.files)
    return {
        "run_dir": run_dir,
        "rows": rows_of(run_dir),
        "wall_s": first + second,
        "under": sum(max(0.0, clean["ledgers"][k] - after.get(k, 0.0)) for k in clean["ledgers"])
        + sum(max(0.0, before[k] - after.get(k, 0.0)) for k in before),
        "rows_lost": len(before_rows - snapshot_rows(run_dir)),
        "model_gap": gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=45.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--deployment", action="store_true", help="also run the loopback deployment scenario"
    )
    parser.add_argument("--nodes", type=int, default=10, help="SuperNodes in the deployment")
    args = parser.parse_args()
    base = base_overrides(args)
    timeout = f"federation.timeout_s={args.timeout_s}"
    with tempfile.TemporaryDirectory(prefix="fedrec-reliability-") as tmp:
        folder = Path(tmp)
        results: list[tuple[str, str, dict]] = []
        clean = in_process("clean", [*base, timeout], folder)
        results.append(("clean (baseline)", "none", clean))
        scenarios = [
            (
                "dropouts",
                "20% of train messages fail (half after training)",
                ["faults.dropout_rate=0.2", "faults.seed=1"],
                (),
            ),
            (
                "stragglers",
                f"5% reply after the {args.timeout_s:g} s timeout",
                ["faults.straggler_rate=0.05", "faults.seed=2"],
                (),
            ),
            (
                "dropouts + stragglers, min_replies",
                "30% drop, 5% late; rounds need 70% replies",
                [
                    "faults.dropout_rate=0.3",
                    "faults.straggler_rate=0.05",
                    "faults.seed=3",
                    f"federation.min_replies={int(0.7 * args.clients)}",
                ],
                (),
            ),
            (
                "hostile updates",
                "3 clients send a wrong shape / NaN / norm x1e6",
                [],
                (Hostile([0, 1, 2]),),
            ),
        ]
        for number, (name, injected, extra, mods) in enumerate(scenarios):
            result = in_process(f"scenario{number}", [*base, timeout, *extra], folder, mods)
            results.append((name, injected, result))
        crash_round = max(2, args.rounds // 2 + 1)
        crashed = crash_and_resume([*base, timeout], folder, crash_round, clean)
        results.append(
            (
                "server SIGKILL + resume",
                f"server killed once round {crash_round}'s replies were in",
                crashed,
            )
        )
        if args.deployment:
            from reliability_deployment import run_deployment

            deployed = run_deployment(
                folder / "deployment",
                nodes=args.nodes,
                rounds=3,
                per_round=args.nodes - 2,
                timeout_s=120,
            )
            results.append(
                (
                    f"loopback deployment, {args.nodes} SuperNodes",
                    "; ".join(deployed["events"]),
                    deployed | {"baseline_s": None, "planned_rounds": 3},
                )
            )
        table = []
        for name, injected, result in results:
            rows = result["rows"]
            skipped = sum(int(r["skipped"]) for r in rows)
            completed = len(rows) - skipped
            lost = result.get("planned_rounds", args.rounds) - completed
            table.append(
                [
                    name,
                    injected,
                    f"{completed} / {lost}",
                    str(sum(int(r["failed"]) for r in rows)),
                    str(sum(int(r["timed_out"]) for r in rows)),
                    str(sum(int(r["rejected"]) for r in rows)),
                    f"{result['under']:.3g}",
                    str(result["rows_lost"]),
                    f"{result['wall_s']:.0f} s"
                    + (
                        ""
                        if "baseline_s" in result
                        else f" ({result['wall_s'] / clean['wall_s']:.2f}x)"
                    ),
                ]
            )
        header = [
            "scenario",
            "faults injected",
            "rounds completed / lost",
            "updates failed",
            "timed out",
            "rejected",
            "ε under-counted",
            "store rows lost",
            "wall time (vs clean)",
        ]
        text = markdown_table(header, table)
        print(text)
        print(f"resumed model vs clean model: max |Δ| = {crashed['model_gap']:.2e}")
    if not args.no_write:
        append_results(
            "Reliability: faults, hostile updates, server crash and resume",
            f"- setting: synthetic data, {args.clients} users all training every round, "
            f"{args.rounds} rounds, DP-SGD σ = 1 (record level), FedAvg, "
            "strategy.max_update_norm 50, per-user engine on Flower's simulation (4 workers of "
            "0.5 CPU on 2 cores), "
            f"round timeout {args.timeout_s:g} s (stragglers reply 1 s after it).\n"
            "- rounds lost: skipped rounds (fewer accepted updates than federation.min_replies, "
            "default 1) plus rounds missing from metrics.csv; a resumed run re-runs the round the "
            "crash interrupted, so it loses none.\n"
            "- ε under-counted: Σ over users of max(0, ε owed − ε in the ledger), ε owed "
            "recomputed with Opacus from the trainings a client mod logged inside the fault "
            "injector (crash: from the clean run and the pre-crash ledgers). Must be 0.\n"
            "- store rows lost: logged trainings without a (user, round) snapshot in the run's "
            "state store (crash: snapshots present before the resume and gone after). Must be 0.\n"
            f"- resumed model vs the clean run's: max |Δ| = {crashed['model_gap']:.2e}.\n"
            "- timed out counts every reply that missed the timeout: a sleeping straggler holds "
            "a simulation worker, so replies queued behind it can miss it too.\n"
            + (
                f"- deployment: {args.nodes} SuperNodes on 127.0.0.1 (insecure), each serving one "
                "user's SQLite store (FedrecClient, consent given), 3 rounds of "
                f"{args.nodes - 2} sampled users, timeout 120 s, DP-SGD, dim 8; a fresh "
                "flwr-clientapp process per message. ε under-counted: sent rounds missing from "
                "the store's ledger; store rows lost: interactions gone or integrity_check not "
                "ok.\n"
                if args.deployment
                else ""
            )
            + f"\n{text}",
        )


if __name__ == "__main__":
    main()
