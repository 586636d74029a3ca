"""What every benchmark records with its numbers: the machine, the date, the exact command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS_MD = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def command_line() -> str:
    return " ".join(["python", shlex.quote(sys.argv[0]), *map(shlex.quote, sys.argv[1:])])


def append_results(title: str, body: str) -> None:
    """Append one dated section to benchmarks/RESULTS.md (newest last)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {title} — {stamp}\n\n"
        f"- command: `{command_line()}`\n- machine: {machine()}\n\n{body.rstrip()}\n"
    )
    if not RESULTS_MD.exists():
        RESULTS_MD.write_text(
            "# Benchmark results\n\nEach section is appended by a script in "
            "`benchmarks/`; numbers are never edited by hand.\n"
        )
    with RESULTS_MD.open("a") as handle:
        handle.write(section)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def grouped_profile(profiler, groups: dict[str, str]) -> list[list[str]]:
    """A cProfile's own time by group (``groups``: a fragment of a function or file name → the
    group's label; the first match wins), the rest as Python glue: rows of a markdown table."""
    import pstats

    stats = pstats.Stats(profiler).stats
    total = sum(tottime for (_, _, tottime, _, _) in stats.values())
    spent = dict.fromkeys(groups.values(), 0.0)
    for (filename, _, name), (_, _, tottime, _, _) in stats.items():
        for fragment, group in groups.items():
            if fragment in name or fragment in filename:
                spent[group] += tottime
                break
    spent["everything else (Python glue, indexing)"] = total - sum(spent.values())
    return [[group, f"{s:.2f}", f"{s / total:.0%}"] for group, s in spent.items()]
