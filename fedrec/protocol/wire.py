"""The record names, metric keys and flags of fedrec's messages, and why a device refuses.

Server → device: an ArrayRecord ``arrays`` (the item side) and a ConfigRecord ``config``.
Device → server: the item-side *changes* in ``arrays`` (training only) and a MetricRecord
``metrics``. A reply without arrays says why in its flags: the user declined (no consent,
nothing consented to train on), has spent their budget, or the device refused the request; a
refusal carries a :class:`RefusalReason` code so that the server's log says why, while the
details (which may concern the device) stay in the device's own log.
"""

from __future__ import annotations

from enum import IntEnum

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
# Simulation only: a ConfigRecord naming the Ray node that computed a block's reply, so that a
# run on a Ray cluster can say where its work ran. Deployed devices never send it.
WORKER_KEY = "worker"
NUM_EXAMPLES = "num-examples"  # the weight key Flower's strategies average by
BUDGET_EXHAUSTED = "budget_exhausted"  # a train reply without arrays: the user's ε is spent
# Train replies without arrays in which the user declines the round: no consent, or nothing
# consented to train on. Not a fault and not a hostile update; the server counts them apart.
CONSENT_MISSING, NO_TRAINING_DATA = "consent_missing", "no_training_data"
DECLINED = (CONSENT_MISSING, NO_TRAINING_DATA)
# A train reply without arrays: the device refused the server's request; REFUSAL_REASON holds
# the code (a RefusalReason), the details are in the device's log.
ROUND_REFUSED = "round_refused"
REFUSAL_REASON = "refusal_reason"
# A train reply under user-level DP from a node that speaks for many users: its arrays are the
# *sum* of this many users' item updates, each clipped to privacy.user_clip_norm on the node.
USERS_SUMMED = "users_summed"


class RefusalReason(IntEnum):
    """Why a device refused a round, as a code that travels to the server (never the details)."""

    BAD_SETTINGS = 1
    CATALOG_MISMATCH = 2
    IMPLAUSIBLE_TABLE = 3
    STORE_MISSING = 4
    STORE_UNUSABLE = 5
    NODE_MISCONFIGURED = 6

    @property
    def meaning(self) -> str:
        """What the code means, in the words a server operator needs."""
        return _MEANINGS[self]

    @classmethod
    def describe(cls, code: object) -> str:
        try:
            return cls(int(code)).meaning  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return f"unknown reason code {code!r}"


_MEANINGS = {
    RefusalReason.BAD_SETTINGS: "the round's settings were refused (unknown key or a value out "
    "of the device's range)",
    RefusalReason.CATALOG_MISMATCH: "the item table does not fit the device's catalog (names, "
    "number of items or embedding size differ)",
    RefusalReason.IMPLAUSIBLE_TABLE: "the item table failed the device's plausibility check "
    "(it looks crafted)",
    RefusalReason.STORE_MISSING: "the SuperNode's node config names a store file that does not "
    "exist",
    RefusalReason.STORE_UNUSABLE: "the SuperNode's store cannot be used (damaged, not a fedrec "
    "store, or another schema version)",
    RefusalReason.NODE_MISCONFIGURED: "the SuperNode's node config names neither a store nor a "
    "partition",
}


class RoundRefused(ValueError):
    """The server asked for something the device will not do; the message says what, and
    ``reason`` is the code that travels back."""

    reason = RefusalReason.BAD_SETTINGS

    def __init__(self, message: str, reason: RefusalReason | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
