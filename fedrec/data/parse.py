"""Delimited text → typed columns, with errors that point at the file and line.

Written by hand rather than with ``np.loadtxt`` so that a bad row in a million gives
``ratings.dat line 1042: rating 'abc' is not a number`` instead of a traceback from numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedrec.data.errors import DataError

INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TextTable:
    """The cells of a delimited file, column-wise, with each row's 1-based line number."""

    name: str
    columns: dict[str, list[str]]
    line_numbers: np.ndarray

    def where(self, row: int) -> str:
        return f"{self.name} line {int(self.line_numbers[row])}"


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Read a whole file, naming the line of the first byte that is not valid ``encoding``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path.name} line {line}: byte 0x{raw[err.start]:02x} is not valid {encoding} "
            "(set the loader's encoding option if the file uses another one)"
        ) from None


def split_table(
    text: str,
    *,
    name: str,
    separator: str,
    column_names: list[str] | None,
    header: bool,
) -> TextTable:
    """Split text into named columns; ``column_names`` is required when there is no header.

    With a header, the columns are named by it; rows must have as many fields as the header.
    Blank lines are skipped (a trailing newline is normal). A row with the wrong number of fields
    is an error naming the line, since it usually means the separator is wrong.
    """
    if separator == "":
        raise ValueError("separator must not be empty")
    lines = text.splitlines()
    first_data = 0
    if header:
        while first_data < len(lines) and not lines[first_data].strip():
            first_data += 1
        if first_data == len(lines):
            raise DataError(f"{name}: empty file, expected a header line")
        column_names = [c.strip() for c in lines[first_data].split(separator)]
        first_data += 1
    if not column_names:
        raise ValueError("column_names are required when the file has no header")
    width = len(column_names)
    cells: list[list[str]] = [[] for _ in range(width)]
    line_numbers: list[int] = []
    for index in range(first_data, len(lines)):
        line = lines[index]
        if not line.strip():
            continue
        fields = line.split(separator)
        if len(fields) != width:
            shown = line if len(line) <= 80 else line[:77] + "..."
            raise DataError(
                f"{name} line {index + 1}: expected {width} fields separated by {separator!r} "
                f"({', '.join(column_names)}), found {len(fields)}: {shown!r}"
            )
        for column, value in zip(cells, fields, strict=True):
            column.append(value.strip())
        line_numbers.append(index + 1)
    if not line_numbers:
        raise DataError(f"{name}: no data rows")
    return TextTable(name, dict(zip(column_names, cells, strict=True)), np.asarray(line_numbers))


def column(table: TextTable, column_name: str) -> list[str]:
    try:
        return table.columns[column_name]
    except KeyError:
        found = ", ".join(table.columns)
        raise DataError(f"{table.name}: no column '{column_name}' (found: {found})") from None


def parse_ids(table: TextTable, values: list[str], what: str, *, numeric: bool) -> np.ndarray:
    """Ids as int64 (MovieLens formats) or as strings (generic logs, which may use any token)."""
    for row, value in enumerate(values):
        if value == "":
            raise DataError(f"{table.where(row)}: {what} id is empty")
    if not numeric:
        return np.asarray(values, dtype=str)
    try:
        parsed = np.asarray([int(v) for v in values], dtype=np.int64)
    except (ValueError, OverflowError):
        for row, value in enumerate(values):
            try:
                number = int(value)
            except ValueError:
                raise DataError(
                    f"{table.where(row)}: {what} id {value!r} is not an integer"
                ) from None
            if number > INT64_MAX or number < 0:
                raise DataError(f"{table.where(row)}: {what} id {value} is out of range") from None
        raise
    negative = np.flatnonzero(parsed < 0)
    if len(negative):
        row = int(negative[0])
        raise DataError(f"{table.where(row)}: {what} id {values[row]} is negative")
    return parsed


def parse_floats(table: TextTable, values: list[str], what: str) -> np.ndarray:
    try:
        parsed = np.asarray(values, dtype=np.float64)
    except ValueError:
        parsed = None
    if parsed is not None:
        with np.errstate(over="ignore"):
            narrowed = parsed.astype(np.float32)  # what is kept; beyond ±3.4e38 it becomes inf
        if np.isfinite(narrowed).all():
            return narrowed
    for row, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"{table.where(row)}: {what} {value!r} is not a number") from None
        if not np.isfinite(number):
            raise DataError(f"{table.where(row)}: {what} {value!r} is not a finite number")
        if not np.isfinite(np.float32(number)):
            raise DataError(f"{table.where(row)}: {what} {value!r} is out of range")
    raise AssertionError("unreachable: a value failed to parse but none was found")


def parse_timestamps(table: TextTable, values: list[str], what: str) -> np.ndarray:
    """Unix seconds as int64; ISO-8601 dates are accepted too and converted to seconds."""
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    seconds = np.empty(len(values), dtype=np.int64)
    for row, value in enumerate(values):
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is not None:  # an integer, so unix seconds: never re-read as a date
            if not -INT64_MAX <= number <= INT64_MAX:
                raise DataError(f"{table.where(row)}: {what} {value} is out of range")
            seconds[row] = number
            continue
        try:
            moment = np.datetime64(value, "s")
        except (ValueError, OverflowError):
            moment = np.datetime64("NaT")
        if np.isnat(moment):  # numpy reads "NaT" (and "") as not-a-time: no timestamp at all
            raise DataError(
                f"{table.where(row)}: {what} {value!r} is neither unix seconds nor an ISO date"
            )
        seconds[row] = moment.astype(np.int64)
    return seconds
