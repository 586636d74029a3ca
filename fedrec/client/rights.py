"""The user's rights over their store: see everything (export), know what left (privacy report),
and erase it (the deletion report says what was removed).

The export format is documented in the README ("The embeddable client"); ``FORMAT`` and
``FORMAT_VERSION`` name it, and :func:`parse_export` reads it back into typed records, so an app
can check an export (or move a user's record) without guessing at its shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fedrec.client.consent import ConsentEvent, consent_status
from fedrec.client.store import (
    SCHEMA_VERSION,
    USER_ARRAYS,
    Interaction,
    LocalStore,
    SentRound,
    SentTensor,
)
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.modes import PRIVACY_MODES

FORMAT, FORMAT_VERSION = "fedrec.client.export", 1


def export_record(store: LocalStore, now: float) -> dict[str, Any]:
    """Everything the store holds about its user, as JSON-ready data."""
    status = consent_status(store.consent_events(), now)
    user = store.arrays(USER_ARRAYS)
    ledger = store.ledger()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": now,
        "store": {
            "schema_version": SCHEMA_VERSION,
            "num_items": store.num_items,
            "rounds_trained": store.rounds_trained,
        },
        "interactions": [
            {k: v for k, v in asdict(row).items() if k != "id"} for row in store.interactions()
        ],
        "consent": {
            "history": [
                asdict(event) | {"categories": list(event.categories)}
                for event in store.consent_events()
            ],
            "active": status.active,
            "expired": status.expired,
        },
        "user_embedding": None
        if user is None
        else {
            name: {"dtype": value.dtype.str, "shape": list(value.shape), "values": value.tolist()}
            for name, value in user.items()
        },
        "privacy_ledger": None if ledger is None else ledger.to_dict(),
        "sent_rounds": [_sent_dict(sent) for sent in store.sent_rounds()],
    }


def _sent_dict(sent: SentRound) -> dict[str, Any]:
    return asdict(sent) | {"tensors": [asdict(t) | {"shape": list(t.shape)} for t in sent.tensors]}


@dataclass(frozen=True)
class ExportedRecord:
    """An export read back: the same typed records the store holds."""

    interactions: list[Interaction]
    consent_history: list[ConsentEvent]
    privacy_ledger: PrivacyLedger | None
    sent_rounds: list[SentRound]


def parse_export(data: dict[str, Any]) -> ExportedRecord:
    """Read an export (``json.load`` of the file) back; another format raises ``ValueError``."""
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"not a {FORMAT} version {FORMAT_VERSION} export (format={data.get('format')!r}, "
            f"format_version={data.get('format_version')!r})"
        )
    ledger = data["privacy_ledger"]
    return ExportedRecord(
        interactions=[Interaction(0, **row) for row in data["interactions"]],
        consent_history=[
            ConsentEvent(**(event | {"categories": tuple(event["categories"])}))
            for event in data["consent"]["history"]
        ],
        privacy_ledger=None if ledger is None else PrivacyLedger.from_dict(ledger),
        sent_rounds=[
            SentRound(
                **(
                    sent
                    | {
                        "tensors": tuple(
                            SentTensor(**(t | {"shape": tuple(t["shape"])}))
                            for t in sent["tensors"]
                        )
                    }
                )
            )
            for sent in data["sent_rounds"]
        ],
    )


@dataclass(frozen=True)
class DeletionReport:
    """How many records of each kind an erase removed."""

    removed: dict[str, int]

    def text(self) -> str:
        parts = [f"{count} {kind.replace('_', ' ')}" for kind, count in self.removed.items()]
        return (
            "Erased from this device's store: " + ", ".join(parts) + ". The file was rebuilt, so "
            "they cannot be read back from it. Kept: the shared item table (not about you)."
        )


@dataclass(frozen=True)
class PrivacyReport:
    """What this device has given away, as data (:meth:`as_dict`) and in words (:meth:`text`).

    ``modes``: the privacy modes of the rounds sent. ``epsilon`` is the record-level ε of the
    device's ledger (at ``delta``) when every round sent was under DP-SGD (modes ``record``,
    ``both``); infinite when any round left without it; 0 when nothing was sent. ``user_level``:
    some rounds were clipped here for user-level DP, whose noise the server adds (its ε is the
    server's, about the released model, and does not bound what the server itself saw)."""

    modes: list[str]
    epsilon: float
    delta: float | None
    accountant: str | None
    user_level: bool
    rounds: list[int]
    bytes_sent: int
    tensors: list[SentTensor]  # every distinct (name, shape, dtype) that left the device
    metrics: list[str]  # the scalar metric names that left with them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "rounds_taken_part": len(self.rounds),
            "tensors": [asdict(t) | {"shape": list(t.shape)} for t in self.tensors],
        }

    def text(self) -> str:
        if not self.rounds:
            return "Nothing has left this device: it has not taken part in any training round."
        shown = "; ".join(
            f"{t.name} ({' × '.join(map(str, t.shape))}, {_DTYPES.get(t.dtype, t.dtype)})"
            for t in self.tensors
        )
        lines = [
            f"This device took part in {len(self.rounds)} training round(s) "
            f"(federation rounds {', '.join(map(str, self.rounds))}) and sent "
            f"{self.bytes_sent:,} bytes in all.",
            f"Each round it sent the change of the shared item table: {shown}; and "
            f"{len(self.metrics)} numbers ({', '.join(self.metrics)}).",
            "Your interactions, your item ids and your own embedding never left the device.",
        ]
        if math.isfinite(self.epsilon):
            lines.append(
                f"Privacy: record-level differential privacy, ε = {self.epsilon:.3g} at "
                f"δ = {self.delta:g} ({self.accountant} accountant), over all rounds so far. "
                "Everything this device sent reveals little about any single interaction of "
                "yours; a smaller ε means less."
            )
        else:
            lines.append(
                "Privacy: some or all rounds were sent WITHOUT record-level differential "
                "privacy, so nothing bounds (ε = ∞) what those updates, as sent, reveal about "
                "your interactions."
            )
        if self.user_level:
            lines.append(
                "Some rounds were clipped on this device for user-level privacy; the server adds "
                "the noise, so that guarantee protects you from whoever sees the trained model, "
                "not from the server."
            )
        return "\n".join(lines)


_DTYPES = {"<f4": "float32", "<f8": "float64"}


def privacy_report(store: LocalStore) -> PrivacyReport:
    """Built from the sent-log and the ledger, i.e. from what was actually sent and charged."""
    sent = store.sent_rounds()
    ledger = store.ledger()
    modes = [PRIVACY_MODES.get(name) for name in dict.fromkeys(s.privacy_mode for s in sent)]
    tensors: dict[tuple, SentTensor] = {}
    metrics: dict[str, None] = {}
    for round_sent in sent:
        for tensor in round_sent.tensors:
            tensors.setdefault((tensor.name, tensor.shape, tensor.dtype), tensor)
        metrics.update(dict.fromkeys(round_sent.metrics))
    epsilon = 0.0
    if sent:
        record_level = ledger is not None and all(mode.record_level for mode in modes)
        epsilon = ledger.epsilon if record_level else math.inf  # type: ignore[union-attr]
    return PrivacyReport(
        modes=[mode.name for mode in modes],
        epsilon=epsilon,
        delta=ledger.delta if ledger else None,
        accountant=ledger.accountant if ledger else None,
        user_level=any(mode.user_level for mode in modes),
        rounds=[s.server_round for s in sent],
        bytes_sent=sum(s.bytes_sent for s in sent),
        tensors=list(tensors.values()),
        metrics=list(metrics),
    )
