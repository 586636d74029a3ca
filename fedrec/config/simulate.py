"""The schema of ``configs/simulate.yaml`` (``fedrec simulate``, ``flwr run``, the sweep's runs)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fedrec.config.algorithm import AlgorithmSpec
from fedrec.config.faults import FaultSpec
from fedrec.config.secure_aggregation import SecureAggregationSpec
from fedrec.data import DatasetSpec
from fedrec.eval import EvalSpec
from fedrec.federation.defenses import DefenseSpec
from fedrec.federation.server_step import StrategySpec
from fedrec.model.spec import ModelSpec
from fedrec.privacy.spec import PrivacySpec
from fedrec.protocol.settings import LocalTrainingSpec
from fedrec.registry import Registry

WEIGHTINGS = ("uniform", "examples")
TRAINERS = ("auto", "opacus", "closed_form", "sparse")


@dataclass(frozen=True)
class Engine:
    """How a simulation lays its users out on Flower nodes, and the trainer ``auto`` means."""

    nodes: Callable[[FederationSpec, int], int]  # (federation, users) -> simulation nodes
    trainer: str


ENGINES: Registry[Engine] = Registry("federation.engine")
# One node per user: the deployment's shape, one Opacus engine per user.
ENGINES.register("per_user")(Engine(lambda fed, users: users, "opacus"))
# cohort_nodes nodes, each a block of users trained stacked in closed form.
ENGINES.register("cohort")(Engine(lambda fed, users: min(fed.cohort_nodes, users), "sparse"))


@dataclass
class FederationSpec:
    """Mirrors ``configs/federation/*.yaml``: who takes part, how often, how they train.

    ``num_clients`` 0 means every user of the dataset; ``eval_clients_per_round`` -1 means every
    client, 0 none. ``clients_per_round`` is a number of users on every engine (with user-level
    DP, the expected number: users are then Poisson-sampled). ``weighting``: ``uniform``
    (default; a client's log size stays on the device) or ``examples`` (FedAvg by log size, which
    tells the server each user's count). ``local`` is how each device trains in a round: the very
    settings the server sends. ``timeout_s``: how long the server waits for a round's replies;
    ``min_replies``: a round with fewer accepted updates is skipped (not with user-level DP).
    ``state_store``: simulated devices keep their state in ``device_states.sqlite`` in the run
    directory (what makes ``resume=`` possible) rather than in the simulation's memory.

    ``engine``: ``per_user`` (one Flower node per user, the deployment's shape) or ``cohort``
    (``cohort_nodes`` nodes, each playing a block of users; the same per-user DP-SGD and the same
    results). ``trainer``: the local-training implementation
    (:data:`fedrec.training.trainers.TRAINERS`); ``auto`` is Opacus on per-user nodes and, on
    cohort nodes, the stacked closed form on the rows each user touches (``sparse``: the same
    numbers without DP, the same distribution with DP-SGD and SGD; DP-SGD with Adam runs the
    dense ``closed_form``, the per-step reference). ``cohort_chunk`` users are stacked at a time;
    0 sizes each chunk from the memory available.

    ``ray_address``: empty, the simulation starts its own Ray on this machine with ``ray_cpus``
    cores; ``auto`` or ``host:port`` / ``ray://host:10001`` attaches to a running Ray cluster
    (``ray start --head`` / ``ray start --address=...`` on each machine), whose nodes then host
    the simulation's workers (one per ``client_cpus`` cores of every Ray node). The cluster
    decides its own cores, so ``ray_cpus`` must stay 0 with it.
    """

    num_clients: int = 0
    clients_per_round: int = 20
    rounds: int = 10
    local: LocalTrainingSpec = field(default_factory=LocalTrainingSpec)
    weighting: str = "uniform"
    eval_clients_per_round: int = -1
    refit_epochs: int = 0
    refit_lr: float = 0.05
    global_bias_init: float = 0.0
    eval_every_rounds: int = 1
    timeout_s: float = 3600.0
    min_replies: int = 1
    state_store: bool = True
    client_cpus: float = 1.0
    ray_cpus: int = 0  # 0: all cores
    ray_address: str = ""  # "": a local Ray of our own; auto / host:port: an existing cluster
    engine: str = "per_user"
    trainer: str = "auto"
    cohort_nodes: int = 2
    cohort_chunk: int = 0  # users stacked at a time; 0: as many as the memory holds

    def __post_init__(self) -> None:
        ENGINES.get(self.engine)
        for name, value, accepted in (
            ("weighting", self.weighting, WEIGHTINGS),
            ("trainer", self.trainer, TRAINERS),
        ):
            if value not in accepted:
                raise ValueError(f"federation.{name}='{value}'; accepted: {', '.join(accepted)}")
        if self.num_clients < 0:
            raise ValueError(f"federation.num_clients={self.num_clients}; expected >= 0")
        if self.cohort_nodes < 1 or self.cohort_chunk < 0:
            raise ValueError(
                "federation.cohort_nodes must be >= 1 and federation.cohort_chunk >= 0 "
                "(0: from the memory available)"
            )
        if self.ray_address and self.ray_cpus:
            raise ValueError(
                f"federation.ray_cpus={self.ray_cpus} with federation.ray_address="
                f"'{self.ray_address}': a Ray cluster's cores are set by `ray start --num-cpus` "
                "on each of its machines; leave ray_cpus at 0"
            )
        if self.client_cpus <= 0:
            raise ValueError(f"federation.client_cpus={self.client_cpus}; expected > 0")

    @property
    def resolved_trainer(self) -> str:
        return ENGINES.get(self.engine).trainer if self.trainer == "auto" else self.trainer

    def nodes(self, users: int) -> int:
        """How many simulation nodes play ``users`` users on this engine."""
        return ENGINES.get(self.engine).nodes(self, users)


@dataclass
class SimulateJobConfig:
    """The schema of ``configs/simulate.yaml``."""

    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    algorithm: AlgorithmSpec = field(default_factory=AlgorithmSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    federation: FederationSpec = field(default_factory=FederationSpec)
    strategy: StrategySpec = field(default_factory=StrategySpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    faults: FaultSpec = field(default_factory=FaultSpec)
    secure_aggregation: SecureAggregationSpec = field(default_factory=SecureAggregationSpec)
    seed: int = 0
    resume: str = ""  # a run directory: continue that run after its last checkpointed round
    # How the server combines the round's updates: none (the strategy's mean) or a robust rule
    # (configs/defense/, the rules fedrec poison measures); per-user nodes only.
    defense: DefenseSpec = field(default_factory=DefenseSpec)
