"""The server's checkpoint: everything needed to continue a federation after the process died.

Written after every completed round, atomically (a temporary file, fsync, then ``os.replace``),
so the file on disk is always one whole round: a crash mid-write leaves the previous checkpoint.
It holds the item table, the server optimizer's state (FedAdam/FedYogi's moments ``m_t`` and
``v_t``), the round number, the random states the server draws from (Python's ``random``, which
Flower's node sampling uses, and the user-level DP generator with its release count), the ε per
client seen so far with the users whose budget stopped them, and the metric rows so far.
Resuming from it and running the remaining rounds gives the run an uninterrupted process would
have given (with seeded clients).

The file is an ``.npz`` of arrays plus one JSON document: nothing in it is pickled.
"""

from __future__ import annotations

import io
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"
_STATE_KEY = "__state__"
_ITEMS, _MOMENTS = "items/", "moments/"


@dataclass
class ServerCheckpoint:
    """The server after round ``server_round`` (0: after the untrained baseline)."""

    server_round: int
    item_arrays: dict[str, np.ndarray]
    moments: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # m_t, v_t
    python_random: Any = None  # random.getstate()
    user_level: dict[str, Any] | None = None  # generator state and releases of DP-FedAvg
    privacy_tally: dict[str, list] = field(default_factory=dict)  # PrivacyTally.to_json()
    rows: list[dict[str, float]] = field(default_factory=list)  # metrics.csv so far


def save_checkpoint(path: str | Path, checkpoint: ServerCheckpoint) -> None:
    """Write atomically: the old checkpoint stays whole until the new one is on disk."""
    path = Path(path)
    arrays = {f"{_ITEMS}{k}": v for k, v in checkpoint.item_arrays.items()}
    for moment, values in checkpoint.moments.items():
        arrays |= {f"{_MOMENTS}{moment}/{k}": v for k, v in values.items()}
    state = {
        "server_round": checkpoint.server_round,
        "python_random": checkpoint.python_random,
        "user_level": checkpoint.user_level,
        "privacy_tally": checkpoint.privacy_tally,
        "rows": checkpoint.rows,
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{_STATE_KEY: np.frombuffer(json.dumps(state).encode(), np.uint8)})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path) -> ServerCheckpoint:
    with np.load(Path(path), allow_pickle=False) as data:
        state = json.loads(bytes(data[_STATE_KEY]).decode())
        items = {k[len(_ITEMS) :]: data[k] for k in data.files if k.startswith(_ITEMS)}
        moments: dict[str, dict[str, np.ndarray]] = {}
        for key in data.files:
            if key.startswith(_MOMENTS):
                moment, name = key[len(_MOMENTS) :].split("/", 1)
                moments.setdefault(moment, {})[name] = data[key]
    return ServerCheckpoint(
        server_round=int(state["server_round"]),
        item_arrays=items,
        moments=moments,
        python_random=state["python_random"],
        user_level=state["user_level"],
        # A checkpoint written before the tally existed holds only [kind, key, ε] rows.
        privacy_tally=state.get("privacy_tally") or {"epsilon": state.get("epsilon_by_client", [])},
        rows=state["rows"],
    )


def capture(
    strategy: Any, server_round: int, item_arrays: dict[str, np.ndarray], rows: list[dict]
) -> ServerCheckpoint:
    """The checkpoint of a fedrec strategy (:func:`fedrec.server.strategy.make_strategy`)."""
    moments = {
        name: {k: np.asarray(v) for k, v in getattr(strategy, name).items()}
        for name in ("m_t", "v_t")
        if getattr(strategy, name, None)
    }
    user_level = None
    if hasattr(strategy, "user_level"):
        user_level = {"rng": strategy.rng.bit_generator.state, "releases": strategy.releases}
    version, internal, gauss = random.getstate()
    return ServerCheckpoint(
        server_round=server_round,
        item_arrays=dict(item_arrays),
        moments=moments,
        python_random=[version, list(internal), gauss],
        user_level=user_level,
        privacy_tally=strategy.privacy_tally.to_json(),
        rows=[dict(row) for row in rows],
    )


def restore(strategy: Any, checkpoint: ServerCheckpoint) -> None:
    """Put the strategy and Python's ``random`` back where the checkpoint left them."""
    for name, values in checkpoint.moments.items():
        setattr(strategy, name, {k: np.array(v) for k, v in values.items()})
    if checkpoint.user_level is not None:
        strategy.rng.bit_generator.state = checkpoint.user_level["rng"]
        strategy.releases = int(checkpoint.user_level["releases"])
    strategy.privacy_tally.restore_json(checkpoint.privacy_tally)
    if checkpoint.python_random is not None:
        version, internal, gauss = checkpoint.python_random
        random.setstate((version, tuple(internal), gauss))
