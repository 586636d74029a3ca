"""How many users a chunk of the cohort engine stacks: as many as a share of the memory holds.

A chunk holds, per user, some item rows (the whole catalogue on the dense engine, the rows the
user touches on the sparse one) of a fixed number of bytes each; the chunk is as wide as its
widest user. A fixed user count either wastes memory on a small catalogue or runs out of it on a
large one, so the count follows the rows and the memory available now.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

# Users per chunk at most: past this, bigger chunks save no Python overhead worth the memory.
MAX_CHUNK_USERS = 1024
# The share of the available memory one worker's chunk may take: every core may run a worker.
MEMORY_SHARE = 0.5
# ... and no more than this: wider chunks were not faster (ML-1M shape, DP-SGD, one thread:
# the sparse engine made ~500 updates/s with 16-64 MiB chunks and ~385/s with 512 MiB-2 GiB
# ones, its padding growing with the widest user; after its step loop lost its per-user Python,
# 16 and 64 MiB again ran at the same rate, 3,020 users in 5 runs each), while the memory of the
# whole simulation grows with them: a chunk's temporaries take about twice its estimate (a
# 3,020-user node's round peaked 118 MB above its start with 16 MiB, 172-189 MB with 64 MiB).
CHUNK_MEMORY_CAP_BYTES = 16 << 20


def available_memory_bytes() -> int:
    """``MemAvailable`` from ``/proc/meminfo`` (Linux), else the free physical pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def chunk_budget_bytes() -> int:
    """One worker's share: half the available memory split between the cores, at most
    :data:`CHUNK_MEMORY_CAP_BYTES`."""
    share = available_memory_bytes() * MEMORY_SHARE / max(1, os.cpu_count() or 1)
    return int(min(share, CHUNK_MEMORY_CAP_BYTES))


def chunks_within(
    rows_per_user: Sequence[int], row_bytes: int, chunk_size: int = 0, memory_bytes: int = 0
) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of the users (in the caller's order).

    ``chunk_size`` > 0: that many users each. Otherwise the most users whose chunk
    (users × widest user's rows × ``row_bytes``) fits ``memory_bytes`` (0: a share of the
    memory available now), at least one and at most :data:`MAX_CHUNK_USERS`.
    """
    if chunk_size < 0 or memory_bytes < 0 or row_bytes <= 0:
        raise ValueError(
            f"chunk_size={chunk_size}, memory_bytes={memory_bytes}, row_bytes={row_bytes}: "
            "expected chunk_size and memory_bytes >= 0 and row_bytes > 0"
        )
    total = len(rows_per_user)
    if chunk_size > 0:
        for start in range(0, total, chunk_size):
            yield start, min(total, start + chunk_size)
        return
    budget = memory_bytes or chunk_budget_bytes()
    start = 0
    while start < total:
        widest, stop = 0, start
        while stop < total and stop - start < MAX_CHUNK_USERS:
            wider = max(widest, max(1, rows_per_user[stop]))
            if stop > start and (stop - start + 1) * wider * row_bytes > budget:
                break
            widest, stop = wider, stop + 1
        yield start, stop
        start = stop
