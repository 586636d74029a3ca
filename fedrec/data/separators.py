"""The field separator of a delimited log: what a user typed, what the file name says, or what the
file itself shows.

A separator given on the command line arrives as typed: ``separator='\t'`` in a shell reaches the
loader as the two characters backslash and ``t``, never as a tab. So the spellings people use are
read here (``\t``, ``tab``, ``comma``, ...), a ``.tsv`` file means tabs, and with no separator
at all the first lines of the file decide (the one candidate that splits every sampled line into
the same number of fields, more than one).
"""

from __future__ import annotations

from pathlib import Path

from fedrec.data.errors import DataError

# Names and escapes a user may type for a separator, and what each one means.
SEPARATOR_NAMES = {
    "\\t": "\t",
    "tab": "\t",
    "tabs": "\t",
    "comma": ",",
    "semicolon": ";",
    "pipe": "|",
    "space": " ",
    "colon": ":",
    "double-colon": "::",
}
# Tried in this order when the file must tell: the first one that splits every sampled line
# into the same number (> 1) of fields wins.
CANDIDATES = ("\t", "::", ",", ";", "|", " ")
SNIFF_LINES = 50


def normalize_separator(separator: str | None) -> str | None:
    """The separator a user means: ``'\\t'`` and ``'tab'`` are a tab, ``'comma'`` a comma, ...;
    None or an empty string means "not given" (the file name or the file decides)."""
    if separator is None or separator == "":
        return None
    return SEPARATOR_NAMES.get(separator.strip().lower(), separator)


def resolve_separator(separator: str | None, path: Path, text: str) -> str:
    """The separator to split ``text`` (the contents of ``path``) with: the given one, else tab
    for a ``.tsv`` file, else the one the first lines agree on."""
    given = normalize_separator(separator)
    if given is not None:
        return given
    if path.suffix.lower() == ".tsv":
        return "\t"
    return sniff_separator(text, name=path.name)


def sniff_separator(text: str, *, name: str) -> str:
    """The candidate separator that splits the first non-blank lines into one common number of
    fields (more than one); a file none of them fits is an error that says what to set."""
    lines = [line for line in text.splitlines()[: SNIFF_LINES * 2] if line.strip()][:SNIFF_LINES]
    if not lines:
        raise DataError(f"{name}: no data rows")
    for candidate in CANDIDATES:
        widths = {len(line.split(candidate)) for line in lines}
        if len(widths) == 1 and widths.pop() > 1:
            return candidate
    shown = ", ".join(repr(c) for c in CANDIDATES)
    raise DataError(
        f"{name}: cannot tell the field separator from its first lines (tried {shown}); "
        "set dataset.options.separator (e.g. ',' or tab)"
    )
