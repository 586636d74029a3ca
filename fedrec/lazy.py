"""Lazy package exports: ``from fedrec.privacy import PrivacySpec`` without importing Opacus.

The torch-free parts of the library (the wire protocol, the config schemas, an app's settings)
import specs from packages whose other modules need torch or Opacus. A package ``__init__`` that
imported all of them eagerly would pull those in for every such import; with this, a name is
imported from its module the first time it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``exports`` (name → defining module)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
