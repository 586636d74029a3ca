"""The package's layering, checked from the source: a low layer never imports a high one.

protocol → (model, privacy, data, eval) → training → nodes → federation → flower → jobs → cli;
the app teams' library (``fedrec.client``) sits beside nodes and is imported by neither the
server side nor the federation core; the protocol and the federation core import no torch and
no Flower.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedrec"

# module prefix → prefixes it must never import (at module level or inside functions)
FORBIDDEN = {
    "fedrec.protocol": [
        "fedrec.training",
        "fedrec.nodes",
        "fedrec.federation",
        "fedrec.flower",
        "fedrec.client",
        "fedrec.jobs",
        "fedrec.cli",
        "fedrec.config",
    ],
    "fedrec.training": [
        "fedrec.nodes",
        "fedrec.federation",
        "fedrec.flower",
        "fedrec.client",
        "fedrec.jobs",
        "fedrec.cli",
        "fedrec.config",
    ],
    "fedrec.nodes": [
        "fedrec.federation",
        "fedrec.flower",
        "fedrec.client",
        "fedrec.jobs",
        "fedrec.cli",
    ],
    "fedrec.federation": ["fedrec.flower", "fedrec.client", "fedrec.jobs", "fedrec.cli"],
    "fedrec.client": [
        "fedrec.federation",
        "fedrec.flower",
        "fedrec.nodes",
        "fedrec.jobs",
        "fedrec.cli",
        "fedrec.config",
    ],
    "fedrec.flower.server_app": ["fedrec.client", "fedrec.jobs", "fedrec.cli"],
    "fedrec.flower.transport": ["fedrec.client", "fedrec.jobs", "fedrec.cli"],
    "fedrec.flower.secagg_server": ["fedrec.client", "fedrec.jobs", "fedrec.cli"],
    "fedrec.flower": ["fedrec.jobs.sweep", "fedrec.cli"],
    "fedrec.config": ["fedrec.flower", "fedrec.jobs", "fedrec.cli", "fedrec.client"],
    "fedrec.jobs": ["fedrec.cli"],
    "fedrec.membership": ["fedrec.flower", "fedrec.client", "fedrec.jobs", "fedrec.cli"],
    "fedrec.poisoning": ["fedrec.flower", "fedrec.client", "fedrec.jobs", "fedrec.cli"],
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_no_low_layer_imports_a_high_one():
    broken = []
    for name, path in _modules():
        rules = [banned for prefix, banned in FORBIDDEN.items() if _under(name, prefix)]
        for imported in _imports(path):
            for banned in (b for rule in rules for b in rule):
                if _under(imported, banned):
                    broken.append(f"{name} imports {imported}")
    assert broken == []


def test_no_module_grows_past_400_lines():
    long = {name: n for name, path in _modules() if (n := len(path.read_text().splitlines())) > 400}
    assert long == {}


@pytest.mark.parametrize(
    "modules",
    [
        "fedrec.protocol.wire fedrec.protocol.settings fedrec.protocol.replies "
        "fedrec.protocol.seeds fedrec.protocol.arrays",
        "fedrec.federation.loop fedrec.federation.rule fedrec.federation.sampling",
    ],
)
def test_the_protocol_and_the_federation_core_load_without_torch_or_flower(modules):
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules.split())
        + "heavy = sorted(m for m in ('torch', 'flwr', 'opacus', 'ray') if m in sys.modules)\n"
        + "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
