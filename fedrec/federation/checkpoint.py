"""The server's checkpoint: everything needed to continue a federation after the process died.

Written after every completed round, atomically (a temporary file, fsync, then ``os.replace``),
so the file on disk is always one whole round: a crash mid-write leaves the previous checkpoint.
It holds the item table, the server optimizer's state (FedAdam/FedYogi's moments ``m_t`` and
``v_t``), the round number, the server's noise generator with its release count (user-level DP;
client sampling is a function of the seed and the round, so it needs no state), the ε per user
seen so far with the users whose budget stopped them, and the metric rows so far. Resuming from
it and running the remaining rounds gives the run an uninterrupted process would have given
(with seeded clients).

The file is an ``.npz`` of arrays plus one JSON document: nothing in it is pickled.
"""

from __future__ import annotations

import io
import json
import os
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
    python_random: Any = None  # Python random state of checkpoints from Flower-sampled runs
    user_level: dict[str, Any] | None = None  # the rule's noise generator and its releases
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
    rule: Any, server_round: int, item_arrays: dict[str, np.ndarray], rows: list[dict]
) -> ServerCheckpoint:
    """The checkpoint of a :class:`~fedrec.federation.rule.ServerRule` after ``server_round``."""
    return ServerCheckpoint(
        server_round=server_round,
        item_arrays=dict(item_arrays),
        moments=rule.step.state(),
        user_level={"rng": rule.rng.bit_generator.state, "releases": rule.releases},
        privacy_tally=rule.tally.to_json(),
        rows=[dict(row) for row in rows],
    )


def restore(rule: Any, checkpoint: ServerCheckpoint) -> None:
    """Put the rule's optimizer, noise generator and tally back where the checkpoint left them."""
    rule.step.restore(checkpoint.moments)
    if checkpoint.user_level is not None:
        rule.rng.bit_generator.state = checkpoint.user_level["rng"]
        rule.releases = int(checkpoint.user_level["releases"])
    rule.tally.restore_json(checkpoint.privacy_tally)
