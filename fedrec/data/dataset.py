"""The front door of the data stage: a dataset spec in, a split ready to train and score out."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from fedrec.data.feedback import apply_feedback_mode, drop_sparse_users
from fedrec.data.loaders import LOADERS
from fedrec.data.log import InteractionLog
from fedrec.data.splits import Split, make_split
from fedrec.data.synthetic import load_synthetic

LOADERS.register("synthetic")(load_synthetic)


@dataclass
class SplitSpec:
    name: str = "leave_one_out"
    test_ratio: float = 0.2
    num_negatives: int = 99
    seed: int = 0


@dataclass
class DatasetSpec:
    """What to load and how to turn it into targets; mirrors ``configs/dataset/*.yaml``.

    ``options`` go to the loader (for ``generic``: separator, header, column names, encoding;
    for ``synthetic``: preset, seed); an option the loader does not take is an error.
    """

    name: str = "synthetic"
    path: str | None = None
    mode: str = "implicit"
    positive_threshold: float | None = None
    min_user_interactions: int = 2
    on_duplicate: str = "keep_latest"
    options: dict[str, Any] = field(default_factory=dict)
    split: SplitSpec = field(default_factory=SplitSpec)


def load_log(spec: DatasetSpec) -> InteractionLog:
    """Load, apply the feedback mode, and drop users too sparse to split."""
    loader = LOADERS.get(spec.name)
    accepted = set(inspect.signature(loader).parameters) - {"path", "on_duplicate"}
    unknown = sorted(set(spec.options) - accepted)
    if unknown:
        raise ValueError(
            f"dataset '{spec.name}' takes no option {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(accepted)) or '(none)'}"
        )
    log = loader(spec.path, on_duplicate=spec.on_duplicate, **dict(spec.options))
    log = apply_feedback_mode(log, spec.mode, positive_threshold=spec.positive_threshold)
    return drop_sparse_users(log, spec.min_user_interactions)


def load_split(spec: DatasetSpec) -> Split:
    log = load_log(spec)
    return make_split(
        log,
        spec.split.name,
        seed=spec.split.seed,
        test_ratio=spec.split.test_ratio,
        num_negatives=spec.split.num_negatives,
    )
