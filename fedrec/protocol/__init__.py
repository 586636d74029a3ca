"""The wire between server and device, as plain Python: no torch, no Flower.

What the server sends each round (the item arrays and a flat config of ``section.key`` entries,
:mod:`fedrec.protocol.settings`), what a node answers (:mod:`fedrec.protocol.replies`), the keys
and flags both sides agree on (:mod:`fedrec.protocol.wire`), and the seeds a device derives
(:mod:`fedrec.protocol.seeds`). The server, the simulation's nodes, a deployed SuperNode and an
app embedding :mod:`fedrec.client` all speak it; only the Flower adapters put it in Flower's
records.
"""

from fedrec.protocol.arrays import check_received_arrays, expected_item_arrays
from fedrec.protocol.seeds import EVAL_SEED, TRAIN_SEED, user_seed
from fedrec.protocol.settings import (
    MAX_EMBEDDING_DIM,
    LocalEvalSpec,
    LocalTrainingSpec,
    RoundSettings,
    parse_round_config,
    round_config,
)
from fedrec.protocol.wire import RefusalReason, RoundRefused

__all__ = [
    "EVAL_SEED",
    "MAX_EMBEDDING_DIM",
    "TRAIN_SEED",
    "LocalEvalSpec",
    "LocalTrainingSpec",
    "RefusalReason",
    "RoundRefused",
    "RoundSettings",
    "check_received_arrays",
    "expected_item_arrays",
    "parse_round_config",
    "round_config",
    "user_seed",
]
