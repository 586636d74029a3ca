"""The settings of one round, as the server sends them and a device checks them.

The server flattens :class:`RoundSettings` into ``{"training.lr": 0.05, ...}`` (a Flower
ConfigRecord's shape) with :func:`round_config`; the device rebuilds and validates them with
:func:`parse_round_config`, which refuses unknown keys and out-of-range values instead of training
with them. :data:`ROUND_CONFIG_DOCS` says, for every key, its allowed values and meaning (the
app teams' reference table is generated from it, and a test keeps it complete).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fedrec.model.spec import OPTIMIZER_NAMES, ModelSpec
from fedrec.privacy.spec import PrivacySpec
from fedrec.protocol.wire import RoundRefused

MAX_EMBEDDING_DIM = 4096  # a device's own ceiling on the model size a server may ask for
ALGORITHMS = ("mf", "als")  # DP-SGD matrix factorization (the default), federated (DP-)ALS


@dataclass
class LocalTrainingSpec:
    """How a device trains in one round; sent by the server, checked by the device."""

    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    l2: float = 0.0
    num_negatives: int = 4

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(
                f"optimizer='{self.optimizer}'; accepted: {', '.join(OPTIMIZER_NAMES)}"
            )
        if not 1 <= self.epochs <= 100:
            raise ValueError(f"epochs={self.epochs}; expected 1..100")
        if not 1 <= self.batch_size <= 100_000:
            raise ValueError(f"batch_size={self.batch_size}; expected 1..100000")
        if not 0 < self.lr <= 10:
            raise ValueError(f"lr={self.lr}; expected 0 < lr <= 10")
        if self.l2 < 0 or self.num_negatives < 0:
            raise ValueError("l2 and num_negatives must be >= 0")


@dataclass
class LocalEvalSpec:
    """How a device scores itself. ``refit_epochs``: see
    :func:`fedrec.training.evaluate.evaluate_user`."""

    full_metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "recall@20", "hr@10"])
    sampled_metrics: list[str] = field(default_factory=lambda: ["hr@10", "ndcg@10"])
    rating_metrics: bool = False
    refit_epochs: int = 0
    refit_lr: float = 0.05


ALS_RELEASES = ("factors", "popularity", "covariance")


@dataclass
class AlsSpec:
    """How a device takes part in a federated ALS round (``algorithm: als``).

    The model is implicit-feedback ALS with a "gravity" term (Rendle et al. 2022's iALS; Chien et
    al. 2021's DP-ALS): observed pairs pull ``⟨u, v_j⟩`` to 1, every pair is pulled to 0 with
    weight ``unobserved_weight``, and ``reg`` is the ridge penalty (``reg_exponent`` ν > 0: a
    user's is ``reg·(their items + unobserved_weight·all items)^ν``, frequency-scaled as in
    :mod:`fedrec.training.als.solve`). ``max_items`` (> 0) bounds a
    user's released statistics to that many of their items, drawn at random each round (their
    own factor is still solved from all of them); ``clip_norm`` (> 0) bounds the user factor's
    L2 norm before statistics are built. Both bound one user's contribution, as DP-ALS's
    sensitivity analysis assumes; 0 means unbounded (no DP). ``item_grams`` false: the server
    solves with ``A_j ≈ n_j · G / N`` and asks for no per-item Gram, so the device sends none
    (data the server would discard does not leave the device).

    Distributed DP-ALS (on SecAgg+ only): ``noise_shares`` = t > 0 asks each device to add a
    1/t share of DP-ALS's noise (``noise_multiplier`` z and its Gram/count scales, with the
    bounds above) to its masked statistics (:func:`fedrec.privacy.als.noise_share`);
    ``release_counts`` says whether this round's item counts are released (other rounds send
    none).

    ``release``: what this round asks the device to send (the server's rule says, round by
    round). ``factors``: the ALS statistics above. A run with ``covariance_start`` begins with
    two other releases (:mod:`fedrec.training.als.covariance`): ``popularity``, the user's
    items weighted 1/√k (unit L2 norm), and ``covariance``, x̂x̂ᵀ over the user's items that the
    table trains (x̂ their indicator scaled to unit norm; Frobenius norm 1).
    """

    reg: float = 3.0  # the shipped defaults (configs/algorithm/als.yaml), chosen on validation
    unobserved_weight: float = 0.3
    reg_exponent: float = 0.0
    max_items: int = 0
    clip_norm: float = 0.0
    item_grams: bool = True
    noise_shares: int = 0
    noise_multiplier: float = 0.0
    gram_noise_scale: float = 4.0
    count_noise_scale: float = 1.0
    release_counts: bool = True
    release: str = "factors"

    def __post_init__(self) -> None:
        if self.release not in ALS_RELEASES:
            raise ValueError(f"als.release={self.release!r}; expected one of {ALS_RELEASES}")
        if not 0 < self.reg <= 1e6:
            raise ValueError(f"als.reg={self.reg}; expected 0 < reg <= 1e6")
        if not 0 <= self.unobserved_weight <= 1e6:
            raise ValueError(f"als.unobserved_weight={self.unobserved_weight}; expected >= 0")
        if not 0 <= self.reg_exponent <= 2:
            raise ValueError(f"als.reg_exponent={self.reg_exponent}; expected 0 <= ν <= 2")
        if not 0 <= self.max_items <= 1_000_000:
            raise ValueError(f"als.max_items={self.max_items}; expected 0..1000000")
        if not self.clip_norm >= 0:
            raise ValueError(f"als.clip_norm={self.clip_norm}; expected >= 0")
        for name in ("item_grams", "release_counts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"als.{name}={getattr(self, name)!r}; expected true or false")
        if not (
            self.noise_multiplier >= 0 and self.gram_noise_scale > 0 and self.count_noise_scale > 0
        ):
            raise ValueError(
                "als.noise_multiplier must be >= 0 and als.gram_noise_scale, "
                "als.count_noise_scale > 0"
            )
        if not 0 <= self.noise_shares <= 10_000_000:
            raise ValueError(f"als.noise_shares={self.noise_shares}; expected 0..10000000")
        if self.noise_shares and not (
            self.clip_norm > 0
            and self.max_items >= 1
            and min(self.noise_multiplier, self.gram_noise_scale, self.count_noise_scale) > 0
        ):
            raise ValueError(
                "als.noise_shares > 0 (distributed DP-ALS) needs clip_norm > 0, max_items >= 1 "
                "and noise_multiplier, gram_noise_scale, count_noise_scale > 0: a device's "
                "noise share is sized from them"
            )


@dataclass
class RoundSettings:
    """Everything a device needs for one round, typed and checked."""

    model: ModelSpec = field(default_factory=ModelSpec)
    training: LocalTrainingSpec = field(default_factory=LocalTrainingSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    evaluation: LocalEvalSpec = field(default_factory=LocalEvalSpec)
    als: AlsSpec = field(default_factory=AlsSpec)
    explicit: bool = False
    seed: int = -1  # -1: draw fresh randomness on the device
    server_round: int = 0
    weight_by_examples: bool = False
    algorithm: str = "mf"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm='{self.algorithm}'; accepted: {', '.join(ALGORITHMS)}")


SECTIONS = {
    "model": ModelSpec,
    "training": LocalTrainingSpec,
    "privacy": PrivacySpec,
    "evaluation": LocalEvalSpec,
    "als": AlsSpec,
}
SCALARS = {
    "explicit": bool,
    "seed": int,
    "server-round": int,
    "weight_by_examples": bool,
    "algorithm": str,
}
_SCALAR_FIELDS = {"explicit": "explicit", "seed": "seed", "server-round": "server_round"}
_SCALAR_FIELDS["weight_by_examples"] = "weight_by_examples"
_SCALAR_FIELDS["algorithm"] = "algorithm"
OPTIONAL_SCALARS = {"algorithm": "mf"}  # absent (a server of an earlier version): the default


def round_config(settings: RoundSettings) -> dict[str, Any]:
    """Flatten settings into ``{"training.lr": 0.05, ...}`` (a Flower ConfigRecord's shape).
    A setting that is None is left out: a ConfigRecord has no null, and absent means default."""
    flat: dict[str, Any] = {}
    for section in SECTIONS:
        for name, value in dataclasses.asdict(getattr(settings, section)).items():
            if value is not None:
                flat[f"{section}.{name}"] = value
    for key, attribute in _SCALAR_FIELDS.items():
        flat[key] = getattr(settings, attribute)
    return flat


def parse_round_config(config: dict[str, Any]) -> RoundSettings:
    """Rebuild and validate settings; any problem raises :class:`RoundRefused` with the reason."""
    grouped: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    scalars: dict[str, Any] = {}
    for key, value in config.items():
        section, _, name = key.partition(".")
        if section in SECTIONS and name:
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
            if name not in fields:
                raise RoundRefused(f"unknown config key '{key}'")
            grouped[section][name] = value
        elif key in SCALARS:
            scalars[key] = value
        else:
            raise RoundRefused(f"unknown config key '{key}'")
    for key, default in OPTIONAL_SCALARS.items():
        scalars.setdefault(key, default)
    missing = [key for key in SCALARS if key not in scalars]
    if missing:
        raise RoundRefused(f"config lacks {', '.join(missing)}")
    try:
        built = {section: cls(**grouped[section]) for section, cls in SECTIONS.items()}
        typed = {key: kind(scalars[key]) for key, kind in SCALARS.items()}
    except (TypeError, ValueError) as err:
        raise RoundRefused(f"bad config: {err}") from None
    model = built["model"]  # ModelSpec itself refuses init_std outside (0, 10] and dim < 1
    if model.embedding_dim > MAX_EMBEDDING_DIM:
        raise RoundRefused(
            f"model.embedding_dim={model.embedding_dim}; expected 1..{MAX_EMBEDDING_DIM}"
        )
    try:
        return RoundSettings(
            **built, **{attribute: typed[key] for key, attribute in _SCALAR_FIELDS.items()}
        )
    except ValueError as err:
        raise RoundRefused(f"bad config: {err}") from None


# key → (allowed values, meaning): the reference for app teams (docs/app-teams.md holds
# round_config_table() verbatim; tests/test_docs.py checks it, and that it covers every key).
ROUND_CONFIG_DOCS: dict[str, tuple[str, str]] = {
    "model.embedding_dim": (f"1..{MAX_EMBEDDING_DIM}", "columns of the item table"),
    "model.init_std": ("(0, 10]", "std of a fresh user embedding (and of the server's table)"),
    "training.epochs": ("1..100", "local epochs per round"),
    "training.batch_size": ("1..100000", "local batch size (DP-SGD: expected Poisson batch)"),
    "training.lr": ("(0, 10]", "local learning rate (the server may decay it per round)"),
    "training.optimizer": (", ".join(OPTIMIZER_NAMES), "local optimizer"),
    "training.l2": (">= 0", "L2 penalty on the parameters an example touches"),
    "training.num_negatives": (">= 0", "sampled negatives per positive (implicit feedback)"),
    "privacy.mode": (
        "none, record, user, both",
        "DP-SGD on the device (record), clipped update for the server's DP-FedAvg (user), or both",
    ),
    "privacy.noise_multiplier": (">= 0", "DP-SGD σ (unless solved from target_epsilon)"),
    "privacy.max_grad_norm": ("> 0", "DP-SGD per-example clipping norm C"),
    "privacy.delta": ("(0, 1)", "δ of every ε reported"),
    "privacy.target_epsilon": ("> 0; absent: no limit", "the user's record-level budget"),
    "privacy.solve_noise_multiplier": ("true, false", "the device solves σ from its budget"),
    "privacy.planned_rounds": (">= 0", "rounds the solved σ must last"),
    "privacy.accountant": ("rdp, prv", "Opacus accountant of the ledger"),
    "privacy.grad_sample_mode": ("ghost, hooks", "Opacus per-sample gradient mode"),
    "privacy.user_clip_norm": ("> 0", "L2 bound on the whole update (user-level DP)"),
    "privacy.user_noise_multiplier": (">= 0", "server noise z (user-level DP; informational)"),
    "privacy.user_target_epsilon": ("> 0; absent: none", "the run's user-level budget"),
    "privacy.solve_user_noise_multiplier": ("true, false", "the server solves z"),
    "evaluation.full_metrics": (
        "list of ndcg@K, hr@K, recall@K, precision@K, mrr@K",
        "full-ranking metrics the device reports",
    ),
    "evaluation.sampled_metrics": ("list, as full_metrics", "metrics against sampled negatives"),
    "evaluation.rating_metrics": ("true, false", "RMSE/MAE on held-out ratings"),
    "evaluation.refit_epochs": (">= 0", "refit a throw-away user embedding before scoring"),
    "evaluation.refit_lr": ("> 0", "learning rate of that refit"),
    "explicit": ("true, false", "ratings as targets (MSE) instead of implicit feedback"),
    "seed": ("integer; -1: fresh randomness", "the run's seed the device derives its own from"),
    "server-round": ("integer >= 0", "the round (0: the untrained baseline's evaluation)"),
    "weight_by_examples": ("true, false", "report the log size as num-examples (FedAvg weight)"),
    "algorithm": (", ".join(ALGORITHMS), "DP-SGD matrix factorization, or federated (DP-)ALS"),
    "als.reg": ("(0, 1e6]", "ALS ridge penalty λ"),
    "als.unobserved_weight": (">= 0", "ALS weight α₀ pulling every unobserved score to 0"),
    "als.reg_exponent": ("[0, 2]", "ν: λ scaled by (the row's count + α₀·all rows)^ν; 0: flat"),
    "als.max_items": ("0..1000000; 0: all", "items whose statistics a user releases per round"),
    "als.clip_norm": (">= 0; 0: none", "L2 bound on the user factor before statistics are built"),
    "als.item_grams": ("true, false", "send the per-item Grams als.lhs (false: none is used)"),
    "als.noise_shares": (
        "0..10000000; 0: none",
        "distributed DP-ALS (SecAgg+): add a 1/t share of the noise to the statistics",
    ),
    "als.noise_multiplier": (">= 0", "DP-ALS noise multiplier z the shares are sized from"),
    "als.gram_noise_scale": ("> 0", "the Gram's multiplier relative to z (shares)"),
    "als.count_noise_scale": ("> 0", "the count release's multiplier relative to z (shares)"),
    "als.release_counts": ("true, false", "distributed DP-ALS: this round releases item counts"),
    "als.release": (
        ", ".join(ALS_RELEASES),
        "what the round asks for (covariance_start runs begin with popularity, covariance)",
    ),
}


def round_config_keys() -> list[str]:
    """Every key :func:`round_config` can send, in order."""
    keys = [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    return [*keys, *SCALARS]


def round_config_table() -> str:
    """The server config's reference table (markdown): every key :func:`round_config` sends,
    its type, allowed values, default and meaning. ``docs/app-teams.md`` holds this very text
    (a test compares them)."""
    defaults = round_config(RoundSettings())
    rows = [
        "| key | type | allowed values | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key in round_config_keys():
        allowed, meaning = ROUND_CONFIG_DOCS[key]
        default = defaults.get(key, "absent")
        kind = _type_name(key)
        rows.append(f"| `{key}` | {kind} | {allowed} | `{default}` | {meaning} |")
    return "\n".join(rows)


def _type_name(key: str) -> str:
    section, _, name = key.partition(".")
    if section in SECTIONS and name:
        field_type = {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[name]
        return str(field_type).replace(" | None", " or absent").replace("|", "or")
    return SCALARS[key].__name__
