"""The hydra entry point: configs compose, a run writes its directory, bad input fails clearly."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedrec.config import compose, config_dir

GROUPS = {
    "train": ["dataset", "model", "training", "eval"],
    "simulate": ["dataset", "model", "privacy", "federation", "strategy", "eval"],
}


def _overrides():
    for command, groups in GROUPS.items():
        for group in groups:
            for path in sorted((config_dir() / group).glob("*.yaml")):
                yield command, f"{group}={path.stem}"
    for path in sorted((config_dir() / "experiment").glob("*.yaml")):
        yield (
            "simulate" if "federated" in path.stem or "dp" in path.stem else "train",
            f"+experiment={path.stem}",
        )


@pytest.mark.parametrize(("command", "override"), list(_overrides()))
def test_every_config_composes_into_the_typed_schema(command, override):
    cfg = compose(command, [override])
    assert cfg.dataset.name and cfg.model.embedding_dim >= 1


@pytest.mark.parametrize(
    "preset", sorted(p.stem for p in (config_dir() / "sweep_preset").glob("*.yaml"))
)
def test_every_sweep_preset_composes_and_every_point_is_a_valid_federation(preset):
    from fedrec.jobs.sweep import run_points

    sweep = compose("sweep", [f"+sweep_preset={preset}"])
    points = run_points(sweep)
    assert {mode for mode, *_ in points} == {"none", *sweep.modes}
    for mode, eps, seed, overrides in points:
        cfg = compose("simulate", [*sweep.simulate_overrides, *overrides, f"seed={seed}"])
        assert cfg.privacy.mode == mode
        if mode == "record":
            assert cfg.privacy.target_epsilon == eps and cfg.privacy.solve_noise_multiplier
        if mode == "user":
            assert cfg.privacy.user_target_epsilon == eps


def test_a_typo_in_a_key_is_an_error():
    with pytest.raises(Exception, match="trainig|Could not override|not in"):
        compose("train", ["training.lr_rate=0.1"])


def run_cli(tmp_path, *args, command="train"):
    return subprocess.run(
        [sys.executable, "-m", "fedrec.cli", command, f"hydra.run.dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_writes_a_run_directory(tmp_path):
    done = run_cli(tmp_path, "training.epochs=2", "eval_every_epochs=1")
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["job"] == "train" and 0 < summary["final"]["ndcg@10"] <= 1
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,ndcg@10") and len(lines) == 3
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert "lr: 0.005" in (tmp_path / "config.yaml").read_text()


def test_bad_input_exits_with_a_message_not_a_traceback(tmp_path):
    done = run_cli(tmp_path, "dataset=generic", f"dataset.path={tmp_path / 'missing.csv'}")
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert "missing.csv: file not found" in output and "Traceback" not in output


def _play_count_log(path, separator):
    """12 users × 6 artists with play counts: ``user item plays``, the HetRec Last.fm shape."""
    rows = ["user", "item", "plays"]
    lines = [separator.join(rows)]
    for user in range(12):
        for item in range(6):
            if (user + item) % 3:
                lines.append(separator.join([f"u{user}", f"artist{item}", str(1 + user * item)]))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("file_name", "options"),
    [
        # what a shell passes for separator='\t' (backslash, t), and the same quoted for hydra
        ("plays.txt", ["dataset.options.separator=\\t"]),
        ("plays.txt", ["dataset.options.separator='\\t'"]),
        ("plays.txt", ["dataset.options.separator=tab"]),
        ("plays.tsv", []),  # .tsv means tabs
    ],
)
def test_a_tab_separated_log_loads_through_the_fedrec_command(tmp_path, file_name, options):
    _play_count_log(tmp_path / file_name, "\t")
    done = run_cli(
        tmp_path / "run",
        "dataset=generic",
        f"dataset.path={tmp_path / file_name}",
        "dataset.options.rating_column=plays",
        "dataset.positive_threshold=2",
        "dataset.split.name=random_leave_one_out",
        "dataset.split.num_negatives=1",
        "training.epochs=1",
        "eval_every_epochs=1",
        *options,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_items"] == 6 and summary["num_users"] == 11  # u0 has no count >= 2


def test_usage_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "fedrec.cli"], capture_output=True, text=True)
    assert "train" in done.stdout and Path(str(config_dir())).name in done.stdout


def test_multirun_sweeps(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrec.cli",
            "train",
            "-m",
            "training.epochs=1,2",
            f"hydra.sweep.dir={tmp_path}",
            "eval_every_epochs=1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    epochs = [len((p.parent / "metrics.csv").read_text().splitlines()) - 1 for p in summaries]
    assert epochs == [1, 2]


def test_client_library_imports_no_server_flower_torch_ray_or_hydra():
    """An app pays for what it uses: importing the library loads no Flower, Ray, hydra or the
    federation core, and no torch/Opacus until a round trains."""
    code = (
        "import sys, fedrec.client\n"
        "heavy = ('ray', 'hydra', 'omegaconf', 'flwr', 'torch', 'opacus')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith(('fedrec.federation', 'fedrec.flower', 'fedrec.jobs'))]\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_privacy_sweep_writes_table_and_pareto_plot_for_both_modes(tmp_path):
    tiny = (
        "simulate_overrides=['federation.num_clients=6','federation.clients_per_round=3',"
        "'federation.rounds=1','federation.eval_clients_per_round=6','federation.ray_cpus=2']"
    )
    done = run_cli(tmp_path, tiny, "epsilons=[2,inf]", "seeds=[0]", command="sweep")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with (tmp_path / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["run"], r["mode"], r["target_epsilon"]) for r in rows] == [
        ("federated", "none", "inf"),
        ("popularity", "none", "inf"),
        ("federated", "record", "2.0"),
        ("popularity", "record", "2.0"),
        ("federated", "user", "2.0"),
        ("popularity", "user", "2.0"),
    ]
    for row in rows[2:]:
        assert 1.5 < float(row["epsilon_spent"]) <= 2  # the budget holds, and is nearly spent
    assert all(row["guarantee"].startswith("record-level") for row in rows[2:4])
    assert all(row["guarantee"].startswith("user-level") for row in rows[4:6])
    summary = json.loads((tmp_path / "user_eps2_seed0" / "summary.json").read_text())
    assert summary["user_level"]["epsilon"] == float(rows[4]["epsilon_spent"])
    assert summary["user_level"]["sample_rate"] == 0.5  # 3 of 6 clients per round
    table = (tmp_path / "sweep.md").read_text()
    assert "| federated | record | record-level, max over users | 2 |" in table
    assert "| federated | user | user-level (server) | 2 |" in table
    assert "| federated | none | none (no DP) | inf |" in table
    assert "| popularity | record | record-level, max over users | 2 |" in table
    assert "| popularity | none | none (no DP) | inf |" in table
    assert "ndcg@10 / no DP" in table.splitlines()[0]
    assert (tmp_path / "pareto.png").stat().st_size > 5000


def test_sweep_gives_each_mode_its_own_recipe_and_the_budget_last():
    from fedrec.jobs.sweep import SweepJobConfig, run_points

    cfg = SweepJobConfig(
        modes=["record"],
        epsilons=[1.0, math.inf],
        seeds=[0],
        mode_overrides={"none": ["+experiment=a"], "record": ["+experiment=b", "privacy.x=1"]},
    )
    assert run_points(cfg) == [
        ("none", math.inf, 0, ["+experiment=a", "privacy=none"]),
        (
            "record",
            1.0,
            0,
            ["+experiment=b", "privacy.x=1", "privacy=budget", "privacy.target_epsilon=1.0"],
        ),
    ]
    with pytest.raises(ValueError, match="mode_overrides names \\['recrod'\\]"):
        SweepJobConfig(mode_overrides={"recrod": []})


def test_a_budget_recipe_replaces_the_modes_recipe_up_to_its_bound():
    from fedrec.jobs.sweep import BudgetRecipe, SweepJobConfig, recipe_for, run_points

    cfg = SweepJobConfig(
        modes=["record", "user"],
        epsilons=[1.0, 2.0, 4.0, 8.0],
        seeds=[0],
        mode_overrides={"record": ["+experiment=mf"]},
        budget_overrides={
            "record": [
                BudgetRecipe(4.0, ["+experiment=small"]),
                BudgetRecipe(1.0, ["+experiment=tiny"]),
            ]
        },
    )
    assert [recipe_for(cfg, "record", e) for e in cfg.epsilons] == [
        ["+experiment=tiny"],
        ["+experiment=small"],
        ["+experiment=small"],
        ["+experiment=mf"],
    ]
    assert recipe_for(cfg, "user", 1.0) == []
    assert run_points(cfg)[0] == (
        "record",
        1.0,
        0,
        ["+experiment=tiny", "privacy=budget", "privacy.target_epsilon=1.0"],
    )
    with pytest.raises(ValueError, match="budget_overrides names \\['none'\\]"):
        SweepJobConfig(budget_overrides={"none": []})
    with pytest.raises(ValueError, match="up_to must be a finite"):
        SweepJobConfig(budget_overrides={"record": [BudgetRecipe(math.inf, [])]})
    with pytest.raises(ValueError, match="unknown keys \\['upto'\\]; expected up_to, overrides"):
        SweepJobConfig(budget_overrides={"record": [{"upto": 4, "overrides": []}]})


def test_sweep_table_gives_the_first_metric_as_a_ratio_of_the_non_private_run():
    from fedrec.jobs.sweep import markdown

    def entry(mode: str, eps: float, ndcg: float, run: str = "federated") -> dict:
        return {
            "run": run,
            "recipe": "-",
            "mode": mode,
            "guarantee": mode,
            "target_epsilon": eps,
            "seeds": 1,
            "ndcg@10_mean": ndcg,
            "ndcg@10_std": 0.0,
            "epsilon_spent_mean": 0.0 if mode == "none" else eps,
            "wall_time_s_mean": 1.0,
        }

    summary = [
        entry("none", math.inf, 0.04),
        entry("record", 8, 0.03),
        entry("none", math.inf, 0.02, "popularity"),  # a reference row is not the baseline
        entry("record", 8, 0.01, "popularity"),
    ]
    lines = markdown(summary, ["ndcg@10"]).splitlines()
    assert lines[0].split(" | ")[6] == "ndcg@10 / no DP"
    assert [line.split(" | ")[6] for line in lines[2:]] == ["1.00", "0.75", "0.50", "0.25"]
    # no usable baseline (no ε = ∞ MF run, or it scored 0): no ratio rather than a division by 0
    alone = markdown([entry("record", 8, 0.03), summary[2]], ["ndcg@10"]).splitlines()
    assert [line.split(" | ")[6] for line in alone[2:]] == ["–", "–"]
    zero = markdown([entry("none", math.inf, 0.0), entry("record", 8, 0.0)], ["ndcg@10"])
    assert zero.splitlines()[3].split(" | ")[6] == "–"


def test_simulate_prints_each_event_once_and_logs_everything_in_the_run_dir(tmp_path):
    done = run_cli(
        tmp_path,
        "federation.num_clients=4",
        "federation.clients_per_round=4",
        "federation.rounds=1",
        "federation.ray_cpus=2",
        command="simulate",
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    console = (done.stdout + done.stderr).splitlines()
    discovery = [line for line in console if "discovery: 4 of 4 nodes take part" in line]
    assert len(discovery) == 1, "\n".join(console)  # one line per event, not two
    assert sum("round 1/1" in line for line in console) == 1
    assert not any("[DEBUG]" in line or "DEPRECATED FEATURE" in line for line in console)
    log = (tmp_path / "simulate.log").read_text()
    assert "discovery: 4 of 4 nodes" in log and "[flwr][DEBUG]" in log  # the full Flower log
    assert "DEPRECATED FEATURE" in log  # Flower's warnings are kept, off the console


def test_tune_takes_the_grid_its_docs_show_and_refuses_a_bad_one(tmp_path):
    # configs/tune.yaml and docs/als.md show 'grid={...}' with fields the default grid lacks:
    # it replaces the default grid whole (a merge into it was refused by Hydra before)
    done = run_cli(
        tmp_path / "ok",
        "rounds=1",
        "model.embedding_dim=8",
        "grid={reg:[1.0,3.0],frequent_fraction:[0.5]}",
        "validation_carves=2",
        "dataset.split.name=random_leave_one_out",
        command="tune",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ok" / "tune.json").read_text())
    assert [row["reg"] for row in report["candidates"]] == [1.0, 3.0]
    # each candidate scored on two carves (two seeds), chosen by their mean
    assert len(set(report["validation"]["seeds"])) == 2
    for row in report["candidates"]:
        per_carve = row["validation_ndcg@10_per_carve"]
        assert len(per_carve) == 2 and row["validation_ndcg@10"] == pytest.approx(
            sum(per_carve) / 2
        )
    assert any(len(set(r["validation_ndcg@10_per_carve"])) == 2 for r in report["candidates"])
    # a temporal rule holds out the same items whatever the seed: carves would repeat one split
    done = run_cli(tmp_path / "same", "rounds=1", "validation_carves=2", command="tune")
    assert done.returncode == 2
    assert "would be the same split" in done.stdout + done.stderr
    assert {row["frequent_fraction"] for row in report["candidates"]} == {0.5}
    assert (tmp_path / "ok" / "best.yaml").exists()
    assert compose("tune", []).grid is None  # the default grid: fedrec.jobs.tune.DEFAULT_GRID
    done = run_cli(tmp_path / "bad", "grid=5", command="tune")
    assert done.returncode == 2
    assert "expected a mapping of field" in done.stdout + done.stderr
