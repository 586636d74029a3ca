"""The server's step: how the round's combined update moves the item table.

``fedavg``: ``items += server_lr · update``; ``fedadam`` / ``fedyogi``: the adaptive server
optimizers of Reddi et al. (2021), with the update as their pseudo-gradient. The arithmetic is
Flower's (``flwr.serverapp.strategy.FedAdam`` / ``FedYogi``: the same moments, the same bias
correction), written here on plain arrays so that every runner (the Flower federation, SecAgg+,
the in-process audit, poisoning and tuning) applies one rule. The table keeps its dtype
(float32): the moments are float64, the step is cast once.

``server_lr_schedule`` / ``local_lr_schedule``: ``cosine`` decays the server's step and the
local learning rate it sends over the run (round r of R: ½(1 + cos(π(r − 1)/R))).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedrec.registry import Registry

Arrays = dict[str, np.ndarray]
SERVER_LR_SCHEDULES = ("constant", "cosine")


@dataclass
class StrategySpec:
    """Mirrors ``configs/strategy/*.yaml``.

    ``server_lr``: for FedAdam/FedYogi their eta; for FedAvg the factor on the averaged update
    (1 is plain FedAvg; the number of clients per round turns the mean of the item updates into
    their sum, the scale at which a centralized epoch would move the item table).
    """

    name: str = "fedavg"
    server_lr: float = 1.0
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    max_update_norm: float | None = None
    # cosine: round r of R uses server_lr · ½(1 + cos(π(r − 1)/R)), landing the item table on a
    # minimum instead of wherever a constant step leaves it (as training.lr_schedule does).
    server_lr_schedule: str = "constant"
    # The same schedule for the local learning rate the server sends each round
    # (federation.local.lr): late rounds then only fine-tune the users' own embeddings, which
    # the devices otherwise keep moving at full rate right up to the final evaluation.
    local_lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        SERVER_STEPS.get(self.name)
        if not self.server_lr > 0:
            raise ValueError(f"strategy.server_lr={self.server_lr}; expected > 0")
        if self.server_lr_schedule not in SERVER_LR_SCHEDULES:
            raise ValueError(
                f"strategy.server_lr_schedule='{self.server_lr_schedule}'; accepted: "
                f"{', '.join(SERVER_LR_SCHEDULES)}"
            )
        if self.local_lr_schedule not in SERVER_LR_SCHEDULES:
            raise ValueError(
                f"strategy.local_lr_schedule='{self.local_lr_schedule}'; accepted: "
                f"{', '.join(SERVER_LR_SCHEDULES)}"
            )


def server_lr_factor(schedule: str, server_round: int, rounds: int) -> float:
    """The factor on a learning rate in ``server_round`` (1-based) of ``rounds``; positive in
    every round (the last one's cosine factor is small, not zero)."""
    if schedule == "cosine" and rounds > 0:
        return 0.5 * (1 + math.cos(math.pi * (server_round - 1) / rounds))
    return 1.0


def config_for_round(sent_config: dict, spec: StrategySpec, server_round: int, rounds: int) -> dict:
    """A copy of the flat round config for ``server_round``: its number, and the local learning
    rate of ``strategy.local_lr_schedule``; round 0 (the baseline evaluation) keeps the base
    rate."""
    config = dict(sent_config)
    config["server-round"] = server_round
    if server_round >= 1 and "training.lr" in config:
        factor = server_lr_factor(spec.local_lr_schedule, server_round, rounds)
        config["training.lr"] = float(config["training.lr"]) * factor
    return config


class ServerStep:
    """Applies the combined update; keeps the optimizer state a checkpoint must hold."""

    def __init__(self, spec: StrategySpec, rounds: int) -> None:
        self.spec, self.rounds = spec, rounds

    def factor(self, server_round: int) -> float:
        return server_lr_factor(self.spec.server_lr_schedule, server_round, self.rounds)

    def apply(self, server_round: int, current: Arrays, update: Arrays) -> Arrays:
        raise NotImplementedError

    def state(self) -> dict[str, Arrays]:
        """Named moment arrays (FedAdam/FedYogi's ``m_t``, ``v_t``) for the checkpoint."""
        return {}

    def restore(self, moments: dict[str, Arrays]) -> None:
        if moments:
            raise ValueError(f"{self.spec.name} keeps no moments; the checkpoint holds some")


SERVER_STEPS: Registry[type[ServerStep]] = Registry("strategy")


@SERVER_STEPS.register("fedavg")
class FedAvgStep(ServerStep):
    def apply(self, server_round: int, current: Arrays, update: Arrays) -> Arrays:
        scale = self.spec.server_lr * self.factor(server_round)
        return {
            name: (value + scale * np.asarray(update[name])).astype(value.dtype, copy=False)
            for name, value in current.items()
        }


class _AdaptiveStep(ServerStep):
    def __init__(self, spec: StrategySpec, rounds: int) -> None:
        super().__init__(spec, rounds)
        self.m_t: Arrays = {}
        self.v_t: Arrays = {}

    def apply(self, server_round: int, current: Arrays, update: Arrays) -> Arrays:
        delta = {k: np.asarray(update[k], dtype=np.float64) for k in current}
        beta_1 = self.spec.beta_1
        if not self.m_t:
            self.m_t = {k: np.zeros_like(v) for k, v in delta.items()}
            self.v_t = {k: np.zeros_like(v) for k, v in delta.items()}
        self.m_t = {k: beta_1 * m + (1 - beta_1) * delta[k] for k, m in self.m_t.items()}
        self.v_t = {k: self._second_moment(v, delta[k]) for k, v in self.v_t.items()}
        eta = self.spec.server_lr * self.factor(server_round) * self._correction(server_round)
        return {
            k: (x + eta * self.m_t[k] / (np.sqrt(self.v_t[k]) + self.spec.tau)).astype(x.dtype)
            for k, x in current.items()
        }

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _correction(self, server_round: int) -> float:
        return 1.0

    def state(self) -> dict[str, Arrays]:
        return {"m_t": self.m_t, "v_t": self.v_t} if self.m_t else {}

    def restore(self, moments: dict[str, Arrays]) -> None:
        self.m_t = {k: np.array(v, dtype=np.float64) for k, v in moments.get("m_t", {}).items()}
        self.v_t = {k: np.array(v, dtype=np.float64) for k, v in moments.get("v_t", {}).items()}


@SERVER_STEPS.register("fedadam")
class FedAdamStep(_AdaptiveStep):
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        beta_2 = self.spec.beta_2
        return beta_2 * v + (1 - beta_2) * delta**2

    def _correction(self, server_round: int) -> float:
        # Flower's FedAdam: eta · sqrt(1 − β2^(t+1)) / (1 − β1^(t+1))
        beta_1, beta_2 = self.spec.beta_1, self.spec.beta_2
        return math.sqrt(1 - beta_2 ** (server_round + 1.0)) / (1 - beta_1 ** (server_round + 1.0))


@SERVER_STEPS.register("fedyogi")
class FedYogiStep(_AdaptiveStep):
    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.spec.beta_2) * delta**2 * np.sign(v - delta**2)
