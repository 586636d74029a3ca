"""``fedrec train``: the centralized, non-private reference on one split."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedrec.data import DatasetSpec, load_split
from fedrec.eval import EvalSpec, evaluate_scores
from fedrec.model import MatrixFactorization, ModelSpec, TrainSpec, fit_centralized
from fedrec.run_dir import RunRecorder

logger = logging.getLogger(__name__)


@dataclass
class TrainJobConfig:
    """The schema of ``configs/train.yaml``: a typo in any key is an error, not a default."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    training: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    eval_every_epochs: int = 5
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default


def score_function(model: MatrixFactorization):
    def score(users):
        return model.score_all_items(torch.as_tensor(users, dtype=torch.long)).numpy()

    return score


def run_train(cfg: TrainJobConfig, run_dir: str | Path) -> dict[str, float]:
    """Train, evaluate every ``eval_every_epochs`` and at the end; return the final metrics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    recorder = RunRecorder(run_dir)
    started = time.perf_counter()
    split = load_split(cfg.dataset)
    explicit = cfg.dataset.mode == "explicit"
    logger.info(
        "data: %d users, %d items, %d train / %d test interactions (%s)",
        split.train.num_users,
        split.train.num_items,
        len(split.train),
        len(split.test),
        split.train.source,
    )

    def on_epoch(epoch: int, loss: float, model: MatrixFactorization) -> None:
        if epoch % max(cfg.eval_every_epochs, 1) and epoch != cfg.training.epochs:
            recorder.append({"epoch": epoch, "loss": loss})
            return
        metrics = evaluate_scores(score_function(model), split, cfg.eval)
        recorder.append({"epoch": epoch, "loss": loss, **metrics})
        shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "num_users")
        logger.info("epoch %d: loss %.4f, %s", epoch, loss, shown)

    fit_centralized(
        split.train, cfg.model, cfg.training, explicit=explicit, seed=cfg.seed, on_epoch=on_epoch
    )
    final = {k: v for k, v in recorder.rows[-1].items() if k not in ("epoch",)}
    metric_names = [k for k in final if k not in ("loss", "num_users")]
    recorder.plot("epoch", ["loss", *metric_names], "centralized MF")
    recorder.write_summary(
        {
            "job": "train",
            "dataset": split.train.source,
            "data_notes": list(split.train.notes),
            "num_users": split.train.num_users,
            "num_items": split.train.num_items,
            "final": final,
            "wall_time_s": time.perf_counter() - started,
        }
    )
    return final
