"""``fedrec store``: create a SuperNode's user store, and show what one holds.

A deployed SuperNode serves one user from their SQLite store (node config ``store=<path>``).
``create`` makes it for a catalog of ``num_items`` items, optionally imports the user's own
interactions from a CSV file (header ``item,timestamp`` and optionally ``rating``,
``category``; one user's rows) and records consent for categories the user agreed to.
``show`` prints what the store holds, without the interactions themselves.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedrec.client.consent import CATEGORIES
from fedrec.client.local_client import FedrecClient


def create_store(
    path: str | Path,
    *,
    num_items: int,
    interactions: str | Path | None = None,
    consent: Sequence[str] = (),
    default_category: str = "view",
) -> dict[str, Any]:
    """Create the store (refusing an existing file) and return :func:`show_store`'s summary.
    A bad CSV row is an error naming its line, and nothing is written."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists: a store is created once (see fedrec store show)")
    if num_items < 1:
        raise ValueError(f"--num-items {num_items}; expected >= 1")
    unknown = [c for c in [*consent, default_category] if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; accepted: {', '.join(CATEGORIES)}")
    rows = _read_rows(Path(interactions), num_items, default_category) if interactions else []
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FedrecClient.open(path, num_items=num_items) as client:
            for item, timestamp, rating, category in rows:
                client.record_interaction(
                    item, category=category, rating=rating, timestamp=timestamp
                )
            if consent:
                client.grant_consent(list(consent))
    except BaseException:
        path.unlink(missing_ok=True)  # all or nothing
        raise
    return show_store(path)


def _read_rows(path: Path, num_items: int, default_category: str) -> list[tuple]:
    rows = []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"item", "timestamp"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with item,timestamp (rating, category)")
        for line, row in enumerate(reader, start=2):
            try:
                item, timestamp = int(row["item"]), float(row["timestamp"])
                rating = float(row["rating"]) if row.get("rating") not in (None, "") else None
            except ValueError as err:
                raise ValueError(f"{path}:{line}: {err}") from None
            category = row.get("category") or default_category
            if not 0 <= item < num_items:
                raise ValueError(f"{path}:{line}: item {item} outside the catalog [0, {num_items})")
            if category not in CATEGORIES:
                raise ValueError(f"{path}:{line}: category '{category}' unknown")
            rows.append((item, timestamp, rating, category))
    return rows


def show_store(path: str | Path) -> dict[str, Any]:
    """What the store holds: catalog size, interactions per category, consent, rounds, ε."""
    with FedrecClient.open(path) as client:
        interactions = client.interactions()
        status = client.consent_status()
        ledger = client.store.ledger()
        return {
            "store": str(Path(path).absolute()),
            "num_items": client.store.num_items,
            "interactions": dict(Counter(row.category for row in interactions)),
            "consent": sorted(status.active),
            "rounds_sent": [s.server_round for s in client.store.sent_rounds()],
            "epsilon": ledger.epsilon if ledger else None,
        }
