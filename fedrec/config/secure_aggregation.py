"""``configs/secure_aggregation/*.yaml``: whether and how rounds go through Flower's SecAgg+.

The transport that runs it is :mod:`fedrec.flower.secagg_server`; this schema imports no Flower
until a workflow is built.
"""

from __future__ import annotations

from dataclasses import dataclass

SECURE_AGGREGATIONS = ("none", "secaggplus")
SERVER_SAW = "the unmasked weighted mean of each round's updates only (SecAgg+), never one update"
SERVER_SAW_ALS = (
    "the unmasked sum of each round's ALS statistics only (SecAgg+), never one device's"
)


@dataclass
class SecureAggregationSpec:
    """Mirrors ``configs/secure_aggregation/*.yaml``; the SecAgg+ keys are Flower's
    ``SecAggPlusWorkflow`` arguments.

    ``num_shares``/``reconstruction_threshold``: a value <= 1 is a share of the round's sampled
    devices (resp. of ``num_shares``), a larger one a count. A round survives as long as every
    device keeps ``reconstruction_threshold`` live neighbours. ``clipping_range``: each
    coordinate of an update is clipped to ±this before quantization (the devices count what
    gets clipped, ``secagg_clipped_values``). ``quantization_range``: integer levels over
    ``[-clipping_range, clipping_range]``, so one level is ``2·clipping_range/quantization_range``.
    ``max_weight``: the largest reply weight; 1 with fedrec's uniform weights (a larger value only
    costs precision). ``timeout_s``: how long each of the four stages waits for replies
    (0: ``federation.timeout_s``).
    """

    name: str = "none"
    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 1.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32
    max_weight: float = 1.0
    timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SECURE_AGGREGATIONS:
            raise ValueError(
                f"secure_aggregation.name='{self.name}'; accepted: {', '.join(SECURE_AGGREGATIONS)}"
            )
        if not self.clipping_range > 0 or self.timeout_s < 0:
            raise ValueError("secure_aggregation.clipping_range must be > 0 and timeout_s >= 0")
        if self.num_shares > 1 and (
            self.num_shares != int(self.num_shares) or int(self.num_shares) % 2 == 0
        ):
            # flwr 1.41's workflow sends the devices the even count, then builds neighbourhoods
            # of count + 1: every device fails in the share-keys stage (IndexError) and every
            # round halts.
            raise ValueError(
                f"secure_aggregation.num_shares={self.num_shares:g}: a count must be an odd "
                f"whole number (e.g. {int(self.num_shares) | 1}); Flower's SecAgg+ halts every "
                "round on an even one. A value <= 1 is a share of the round's devices"
            )
        if self.modulus_range > 2**32:
            raise ValueError(
                f"secure_aggregation.modulus_range={self.modulus_range}; expected <= 2**32"
            )
        if self.enabled:
            self.workflow(timeout_s=None)  # Flower's own checks, at config time

    @property
    def enabled(self) -> bool:
        return self.name != "none"

    @property
    def quantization_step(self) -> float:
        """One quantization level in update units: the aggregate's error bound per coordinate."""
        return 2 * self.clipping_range / self.quantization_range

    def workflow(self, timeout_s: float | None):
        """Flower's ``SecAggPlusWorkflow`` for these settings (its ValueError names a bad one)."""
        from flwr.server.workflow import SecAggPlusWorkflow

        def count_or_share(value: float) -> int | float:
            return int(value) if value > 1 else float(value)

        return SecAggPlusWorkflow(
            num_shares=count_or_share(self.num_shares),
            reconstruction_threshold=count_or_share(self.reconstruction_threshold),
            max_weight=self.max_weight,
            clipping_range=self.clipping_range,
            quantization_range=int(self.quantization_range),
            modulus_range=int(self.modulus_range),
            timeout=timeout_s,
        )

    def check_federation(self, *, clients_per_round: int) -> None:
        """Refuse a round size SecAgg+ cannot sum without overflow or cannot run at all."""
        if clients_per_round < 2:
            raise ValueError(
                "secure_aggregation=secaggplus needs federation.clients_per_round >= 2 "
                "(SecAgg+ masks updates against each other)"
            )
        if clients_per_round * self.quantization_range * self.max_weight >= self.modulus_range:
            raise ValueError(
                f"secure_aggregation: {clients_per_round} clients × quantization_range "
                f"{self.quantization_range} overflows modulus_range {self.modulus_range}; "
                "lower quantization_range or clients_per_round"
            )
