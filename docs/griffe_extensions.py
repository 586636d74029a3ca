"""Griffe extension for the API pages (mkdocstrings reads the source through griffe).

The docstrings cross-reference in Sphinx's style (``:class:`FedrecClient```), which Markdown would
show as a literal ``:class:`` before the name; :class:`SphinxRoles` keeps just the name, as code.

mkdocs.yml names it in the python handler's ``extensions``; this file is excluded from the built
site.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :class:`Name`, :func:`~pkg.mod.name`, :meth:`Cls.meth` ... (the ~ keeps only the last part)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _as_code(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Render Sphinx cross-reference roles in docstrings as plain inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
