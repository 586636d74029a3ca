"""The model's settings, without torch: a device parses them from the server's round config
and an app builds them, neither of which needs the model itself."""

from __future__ import annotations

from dataclasses import dataclass

# The parameters by name (their names in the torch model's state dict, on the wire and in
# every store): the user side stays on the device, the item side is shared.
USER_EMBEDDING, USER_BIAS = "user_embedding.weight", "user_bias.weight"
ITEM_EMBEDDING, ITEM_BIAS, GLOBAL_BIAS = (
    "item_embedding.weight",
    "item_bias.weight",
    "global_bias.weight",
)
USER_SIDE = (USER_EMBEDDING, USER_BIAS)
ITEM_SIDE = (ITEM_EMBEDDING, ITEM_BIAS, GLOBAL_BIAS)
# The optimizers a training spec may name (fedrec.model.training maps each to torch's class).
OPTIMIZER_NAMES = ("sgd", "adam", "adagrad")


@dataclass
class ModelSpec:
    """Mirrors ``configs/model/*.yaml``. ``init_std`` scales the random initial embeddings."""

    embedding_dim: int = 64
    init_std: float = 0.1

    def __post_init__(self) -> None:
        # The bounds a device also enforces (fedrec.protocol.settings): a config outside them is
        # refused here, before any federation starts, instead of by every device mid-run.
        if self.embedding_dim < 1:
            raise ValueError(f"model.embedding_dim={self.embedding_dim}; expected >= 1")
        if not 0 < self.init_std <= 10:
            raise ValueError(f"model.init_std={self.init_std}; expected 0 < init_std <= 10")
