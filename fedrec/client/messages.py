"""The message schema between server and device, as plain dicts (Flower types stay at the edge).

Server → device, per round: the item-side arrays and a flat config of ``section.key`` entries
built by :func:`round_config`. The device parses it with :func:`parse_round_config`, which
refuses unknown keys and out-of-range values instead of training with them.
Device → server: the item-side *changes* (same names, shapes and dtypes as received) and scalar
metrics; never the user embedding, item ids, or the log size (unless example weighting is on).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.client.trainer import LocalEvalSpec, LocalTrainingSpec
from fedrec.model.mf import ITEM_SIDE, ModelSpec
from fedrec.privacy.dp_sgd import PrivacySpec

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
NUM_EXAMPLES = "num-examples"  # the weight key Flower's strategies average by
BUDGET_EXHAUSTED = "budget_exhausted"  # a train reply without arrays: the user's ε is spent
# Train replies without arrays in which the user declines the round: no consent, or nothing
# consented to train on. Not a fault and not a hostile update; the server counts them apart.
CONSENT_MISSING, NO_TRAINING_DATA = "consent_missing", "no_training_data"
DECLINED = (CONSENT_MISSING, NO_TRAINING_DATA)
# A train reply without arrays: the device refused the server's request (absurd settings, a
# table it did not expect). The reason stays in the device's log; the server counts it.
ROUND_REFUSED = "round_refused"
# A cohort node's train reply under user-level DP: its arrays are the *sum* of this many users'
# item updates, each clipped to privacy.user_clip_norm on the node (not a mean, not one user).
USERS_SUMMED = "users_summed"
MAX_EMBEDDING_DIM = 4096  # a device's own ceiling on the model size a server may ask for


class RoundRefused(ValueError):
    """The server asked for something the device will not do; the reason says what."""


@dataclass
class RoundSettings:
    """Everything a device needs for one round, typed and checked."""

    model: ModelSpec
    training: LocalTrainingSpec
    privacy: PrivacySpec
    evaluation: LocalEvalSpec
    explicit: bool
    seed: int  # -1: draw fresh randomness on the device
    server_round: int
    weight_by_examples: bool


_SECTIONS = {
    "model": ModelSpec,
    "training": LocalTrainingSpec,
    "privacy": PrivacySpec,
    "evaluation": LocalEvalSpec,
}
_SCALARS = {"explicit": bool, "seed": int, "server-round": int, "weight_by_examples": bool}


def round_config(settings: RoundSettings) -> dict[str, Any]:
    """Flatten settings into ``{"training.lr": 0.05, ...}`` (a Flower ConfigRecord's shape)."""
    flat: dict[str, Any] = {}
    for section in _SECTIONS:
        for name, value in dataclasses.asdict(getattr(settings, section)).items():
            if value is not None:  # a ConfigRecord has no null; absent means the default
                flat[f"{section}.{name}"] = value
    flat.update(
        {
            "explicit": settings.explicit,
            "seed": settings.seed,
            "server-round": settings.server_round,
            "weight_by_examples": settings.weight_by_examples,
        }
    )
    return flat


def parse_round_config(config: dict[str, Any]) -> RoundSettings:
    """Rebuild and validate settings; any problem raises :class:`RoundRefused` with the reason."""
    grouped: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    scalars: dict[str, Any] = {}
    for key, value in config.items():
        section, _, name = key.partition(".")
        if section in _SECTIONS and name:
            fields = {f.name for f in dataclasses.fields(_SECTIONS[section])}
            if name not in fields:
                raise RoundRefused(f"unknown config key '{key}'")
            grouped[section][name] = value
        elif key in _SCALARS:
            scalars[key] = value
        else:
            raise RoundRefused(f"unknown config key '{key}'")
    missing = [key for key in _SCALARS if key not in scalars]
    if missing:
        raise RoundRefused(f"config lacks {', '.join(missing)}")
    try:
        built = {section: cls(**grouped[section]) for section, cls in _SECTIONS.items()}
        typed = {key: kind(scalars[key]) for key, kind in _SCALARS.items()}
    except (TypeError, ValueError) as err:
        raise RoundRefused(f"bad config: {err}") from None
    model = built["model"]  # ModelSpec itself refuses init_std outside (0, 10] and dim < 1
    if model.embedding_dim > MAX_EMBEDDING_DIM:
        raise RoundRefused(
            f"model.embedding_dim={model.embedding_dim}; expected 1..{MAX_EMBEDDING_DIM}"
        )
    return RoundSettings(
        model=built["model"],
        training=built["training"],
        privacy=built["privacy"],
        evaluation=built["evaluation"],
        explicit=typed["explicit"],
        seed=typed["seed"],
        server_round=typed["server-round"],
        weight_by_examples=typed["weight_by_examples"],
    )


def check_received_arrays(
    arrays: dict[str, np.ndarray], settings: RoundSettings, *, num_items: int
) -> None:
    """Refuse (:class:`RoundRefused`) an item side this device did not expect: other names than
    the item side of the model the settings describe, other shapes than ``num_items`` rows of
    ``embedding_dim`` (biases: one column), a dtype other than float32/64, or non-finite values.
    Checked before anything is trained, so a bad table costs no privacy and crashes nothing."""
    expected = {"item_embedding.weight": (num_items, settings.model.embedding_dim)}
    expected["item_bias.weight"] = (num_items, 1)
    if settings.explicit:
        expected["global_bias.weight"] = (1, 1)
    if set(arrays) != set(expected) or not set(expected) <= set(ITEM_SIDE):
        raise RoundRefused(f"item arrays {sorted(arrays)}; expected {sorted(expected)}")
    for name, shape in expected.items():
        value = arrays[name]
        if tuple(value.shape) != shape:
            raise RoundRefused(f"'{name}' has shape {tuple(value.shape)}; expected {shape}")
        if value.dtype not in (np.float32, np.float64):  # FedAdam/FedYogi send float64
            raise RoundRefused(f"'{name}' has dtype {value.dtype}; expected float32 or float64")
        if not np.isfinite(value).all():
            raise RoundRefused(f"'{name}' holds NaN or infinite values")


def user_seed(settings: RoundSettings, user_key: int, purpose: int) -> int | None:
    """A per-user, per-round seed for reproducible simulations; None means fresh randomness."""
    if settings.seed < 0:
        return None
    import numpy as np

    sequence = np.random.SeedSequence([settings.seed, user_key, settings.server_round, purpose])
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> 1)
