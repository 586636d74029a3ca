"""``fedrec tune``: choose an algorithm's few settings on a validation split, then report test.

Settings chosen on the test items do not travel: they win on the data they were tuned on and tie
the popularity ranking elsewhere. So the candidates are scored on a **validation split carved
from the training data** (the dataset's own split rule applied again to its training log, with
another seed); the test items choose nothing. The winner is then trained on the whole training
log and scored once on the test split: that number is the one to report, and ``best.yaml`` in the
run directory holds the chosen ``algorithm`` settings to pass to ``fedrec simulate``.

The candidates run as federations in this process (:func:`run_als_in_process`: the devices'
code, the server rule and the round loop of ``fedrec simulate``, without Flower's messaging);
federated ALS is a few closed-form rounds, so a grid costs minutes on ML-100K.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.config.algorithm import AlgorithmSpec
from fedrec.data import DatasetSpec, Split, load_split, make_split
from fedrec.federation.in_process import InProcessTransport
from fedrec.federation.loop import FederationPlan, run_rounds
from fedrec.federation.server_step import StrategySpec
from fedrec.model.mf import random_item_arrays
from fedrec.model.spec import ModelSpec
from fedrec.nodes.sources import SplitUserSource
from fedrec.privacy import PrivacySpec
from fedrec.protocol.settings import LocalEvalSpec, RoundSettings

logger = logging.getLogger("fedrec")

# What the shipped ALS settings were chosen from (configs/algorithm/als.yaml); a command-line
# ``grid={...}`` replaces it whole (the config's grid is null so that Hydra replaces, not merges).
# A flat λ (ν = 0) and a frequency-scaled one (ν = 1, fedrec.training.als.solve), each with its
# own reg scale (λ·(n + α₀·M) is ~100-1000× reg on MovieLens-sized catalogues). Neither family
# wins everywhere: ν = 1 on MovieLens-shaped logs, ν = 0 on Last.fm (RESULTS.md, 2026-12-07).
DEFAULT_GRID: list[dict[str, list[Any]]] = [
    {"reg_exponent": [0.0], "reg": [1.0, 3.0, 10.0], "unobserved_weight": [0.1, 0.3, 1.0]},
    {"reg_exponent": [1.0], "reg": [0.003, 0.01, 0.03], "unobserved_weight": [0.1, 0.3, 1.0]},
]
VALIDATION_SEED_OFFSET = 1000  # the validation carve's seed: the test split's seed + this
# noise_shares is not a setting to tune: distributed DP needs SecAgg+ devices, which the
# in-process federation has not (its ε is central DP-ALS's; its noise s/t of it, docs/als.md)
TUNABLE = tuple(
    f.name for f in dataclasses.fields(AlgorithmSpec) if f.name not in ("name", "noise_shares")
)


@dataclass
class TuneJobConfig:
    """The schema of ``configs/tune.yaml``.

    ``grid``: field → candidate values; fields of ``algorithm`` (``reg``, ``unobserved_weight``,
    ``max_items``, ``clip_norm``, ``frequent_fraction``, ``gram_noise_scale``,
    ``covariance_start``, ...) and ``embedding_dim``. Every combination is one validation
    federation of ``rounds`` rounds.
    ``privacy``: tune DP-ALS at a budget (``privacy=user``, ``privacy.user_target_epsilon``).
    ``validation_carves``: how many validation splits (each carved with its own seed) every
    candidate is scored on; the choice goes by the mean. A random leave-one-out split holds one
    item per user, so one carve of a 943-user log scores a candidate on 943 items, and
    candidates a few thousandths of NDCG@10 apart are within its noise; k carves cut that noise
    by √k at k times the cost. Only for split rules that draw by seed: a temporal rule holds out
    the same items every time, and k > 1 is refused.
    """

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    algorithm: AlgorithmSpec = field(default_factory=lambda: AlgorithmSpec(name="als"))
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    grid: Any = None  # a dict of field → values; None: the DEFAULT_GRID pair
    rounds: int = 8
    metric: str = "ndcg@10"
    seed: int = 0
    validation_carves: int = 1


def validation_split(split: Split, carve: int = 0) -> Split:
    """The training log split again by the dataset's own rule: what tuning may look at
    (``carve``: which of several such splits, each with its own seed)."""
    return make_split(
        split.train,
        split.name,
        seed=split.seed + VALIDATION_SEED_OFFSET + carve,
        test_ratio=_test_ratio(split),
        num_negatives=split.negatives.shape[1],
    )


def _test_ratio(split: Split) -> float:
    total = len(split.train) + len(split.test)
    return min(max(len(split.test) / total, 0.01), 0.5)


def run_als_in_process(
    split: Split,
    algorithm: AlgorithmSpec,
    *,
    embedding_dim: int,
    rounds: int,
    privacy: PrivacySpec | None = None,
    seed: int = 0,
    metrics: tuple[str, ...] = ("ndcg@10", "recall@20", "hr@10"),
    users: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A federated (DP-)ALS run over ``split``'s users (every user every round), in process.

    Returns the last round's evaluation (averaged over the test users) and the final item table.
    """
    from fedrec.jobs.simulate import als_server_plan

    if algorithm.name != "als":
        raise ValueError(f"run_als_in_process runs algorithm=als, not '{algorithm.name}'")
    privacy = privacy or PrivacySpec()
    source = SplitUserSource(
        split, np.arange(split.train.num_users) if users is None else np.asarray(users)
    )
    plan = FederationPlan(
        settings=RoundSettings(
            model=ModelSpec(embedding_dim, 0.1),
            privacy=privacy,
            evaluation=LocalEvalSpec(full_metrics=list(metrics), sampled_metrics=[]),
            seed=seed,
            als=algorithm.als_spec(),
            algorithm="als",
        ),
        strategy=StrategySpec(),
        rounds=rounds,
        clients_per_round=len(source),
        eval_clients_per_round=len(source),
        seed=seed,
        eval_every_rounds=rounds,
        als=als_server_plan(algorithm, privacy, rounds=rounds, devices_per_round=len(source)),
    )
    initial = random_item_arrays(split.train.num_items, embedding_dim, init_std=0.1, seed=seed)
    last: dict[str, float] = {}

    def keep(record) -> None:
        if record.evaluation and record.server_round == rounds:
            last.update(record.evaluation)
            if record.user_level_epsilon is not None:
                last["user_level_epsilon"] = record.user_level_epsilon

    table = run_rounds(
        InProcessTransport(source, split_replies=False), plan, initial, on_round=keep
    )
    return last, table


def _same_held_out(first: Split, second: Split) -> bool:
    """Whether two carves hold out the same (user, item) pairs."""
    width = 1 + max(int(s.test.items.max(initial=0)) for s in (first, second))

    def pairs(split: Split) -> np.ndarray:
        return np.sort(split.test.users.astype(np.int64) * width + split.test.items)

    return np.array_equal(pairs(first), pairs(second))


def grid_of(value: Any) -> list[dict[str, list[Any]]]:
    """The config's ``grid`` as grids whose candidates are pooled: None (the default grids) or
    one ``{field: [values], ...}``."""
    if value is None:
        return [dict(grid) for grid in DEFAULT_GRID]
    if not isinstance(value, Mapping) or not all(
        isinstance(v, Sequence) and not isinstance(v, str) for v in value.values()
    ):
        raise ValueError(
            f"tune.grid={value!r}; expected a mapping of field → list of values, e.g. "
            "'grid={reg:[1,3,10],unobserved_weight:[0.1,0.3]}'"
        )
    return [{str(k): list(v) for k, v in value.items()}]


def candidates(base: AlgorithmSpec, dim: int, grid: dict[str, list[Any]]) -> list[dict]:
    """Every combination of the grid's values over the base settings (checked as configs)."""
    unknown = sorted(set(grid) - set(TUNABLE) - {"embedding_dim"})
    if unknown:
        raise ValueError(
            f"tune.grid: unknown field(s) {', '.join(unknown)}; accepted: "
            f"{', '.join((*TUNABLE, 'embedding_dim'))}"
        )
    for name, values in grid.items():
        if not isinstance(values, list | tuple) or not values:
            raise ValueError(f"tune.grid.{name} must be a non-empty list of values")
    names = list(grid)
    out = []
    for values in itertools.product(*(grid[n] for n in names)):
        chosen = dict(zip(names, values, strict=True))
        settings = {f: getattr(base, f) for f in TUNABLE} | {"embedding_dim": dim} | chosen
        AlgorithmSpec(name=base.name, **{f: settings[f] for f in TUNABLE})  # validates
        out.append(settings)
    return out


def run_candidate(
    split: Split,
    base: AlgorithmSpec,
    settings: dict,
    *,
    rounds: int,
    privacy: PrivacySpec,
    seed: int,
    metrics: tuple[str, ...] = ("ndcg@10", "recall@20", "hr@10"),
) -> dict[str, float]:
    """One candidate (a row of :func:`candidates`) trained on ``split``: its evaluation."""
    scores, _ = run_als_in_process(
        split,
        AlgorithmSpec(name=base.name, **{f: settings[f] for f in TUNABLE}),
        embedding_dim=int(settings["embedding_dim"]),
        rounds=rounds,
        privacy=privacy,
        seed=seed,
        metrics=metrics,
    )
    return scores


def score_on_validation(
    validation: Split | Sequence[Split],
    base: AlgorithmSpec,
    grid: list[dict],
    *,
    rounds: int,
    privacy: PrivacySpec,
    seed: int,
    metric: str,
) -> list[dict]:
    """Every candidate's validation ``metric``, as rows ``{**settings, "validation_<metric>"}``:
    its mean over the validation splits given (one, or several carves), each carve's score
    under ``"validation_<metric>_per_carve"``."""
    carves = [validation] if isinstance(validation, Split) else list(validation)
    rows = []
    for number, settings in enumerate(grid, 1):
        start = time.perf_counter()
        per_carve = []
        for carve in carves:
            scores = run_candidate(
                carve, base, settings, rounds=rounds, privacy=privacy, seed=seed, metrics=(metric,)
            )
            if metric not in scores:
                raise ValueError(f"tune.metric='{metric}' is not a full-ranking metric")
            per_carve.append(float(scores[metric]))
        mean = float(np.mean(per_carve))
        rows.append(
            {
                **settings,
                f"validation_{metric}": mean,
                f"validation_{metric}_per_carve": per_carve,
            }
        )
        logger.info(
            "candidate %d/%d %s: validation %s %.4f over %d carve(s) (%.1f s)",
            number,
            len(grid),
            settings,
            metric,
            mean,
            len(carves),
            time.perf_counter() - start,
        )
    return rows


def run_tune(cfg: TuneJobConfig, run_dir: str | Path) -> dict[str, float]:
    """Score every candidate on the validation split, train the best on the full training log,
    score it on the test split; write ``tune.json`` and ``best.yaml``."""
    if cfg.algorithm.name != "als":
        raise ValueError(
            "fedrec tune chooses algorithm=als's settings (closed-form rounds make a grid cheap); "
            "DP-SGD MF is tuned with benchmarks/tune_federated.py's validation mode"
        )
    if cfg.rounds < 1:
        raise ValueError(f"tune.rounds={cfg.rounds}; expected >= 1")
    if not 1 <= cfg.validation_carves <= 20:
        raise ValueError(f"tune.validation_carves={cfg.validation_carves}; expected 1..20")
    grid = [
        point
        for one in grid_of(cfg.grid)
        for point in candidates(cfg.algorithm, cfg.model.embedding_dim, one)
    ]
    split = load_split(cfg.dataset)
    carves = [validation_split(split, carve) for carve in range(cfg.validation_carves)]
    validation = carves[0]
    if len(carves) > 1 and _same_held_out(carves[0], carves[1]):
        raise ValueError(
            f"tune.validation_carves={cfg.validation_carves}: the split rule '{split.name}' "
            "holds out the same interactions whatever its seed (a temporal rule), so every carve "
            "would be the same split. Use validation_carves=1, or a rule that draws by seed "
            "(dataset.split.name=random_leave_one_out or random_ratio)"
        )
    logger.info(
        "tune: %d candidates on %d validation split(s) of the training log (%d users, %d "
        "held-out interactions each); the test split chooses nothing",
        len(grid),
        len(carves),
        len(validation.test_users),
        len(validation.test),
    )
    rows = score_on_validation(
        carves,
        cfg.algorithm,
        grid,
        rounds=cfg.rounds,
        privacy=cfg.privacy,
        seed=cfg.seed,
        metric=cfg.metric,
    )
    best = max(rows, key=lambda row: row[f"validation_{cfg.metric}"])
    test_scores = run_candidate(
        split, cfg.algorithm, best, rounds=cfg.rounds, privacy=cfg.privacy, seed=cfg.seed
    )
    dim = int(best["embedding_dim"])
    chosen = {f: best[f] for f in (*TUNABLE, "embedding_dim")}
    logger.info(
        "best on validation: %s; on the test split (chose nothing): %s",
        chosen,
        {k: round(v, 4) for k, v in test_scores.items()},
    )
    run_dir = Path(run_dir)
    (run_dir / "tune.json").write_text(
        json.dumps(
            {
                "dataset": split.train.source,
                "metric": cfg.metric,
                "rounds": cfg.rounds,
                "validation": {
                    "rule": split.name,
                    "seeds": [carve.seed for carve in carves],
                    "held_out_per_carve": len(validation.test),
                },
                "candidates": rows,
                "best": chosen,
                "test": test_scores,
            },
            indent=2,
        )
    )
    lines = [f"# chosen by fedrec tune on {split.train.source}'s validation split", "name: als"]
    lines += [f"{f}: {best[f]}" for f in TUNABLE]
    (run_dir / "best.yaml").write_text("\n".join(lines) + f"\n# model.embedding_dim: {dim}\n")
    return {f"validation_{cfg.metric}": best[f"validation_{cfg.metric}"], **test_scores}
