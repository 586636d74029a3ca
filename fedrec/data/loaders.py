"""Loaders for the interaction-log formats users bring, registered by the name a config uses."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedrec.data.errors import DataError
from fedrec.data.log import InteractionLog, build_log
from fedrec.data.parse import (
    TextTable,
    column,
    parse_floats,
    parse_ids,
    parse_timestamps,
    read_text,
    split_table,
)
from fedrec.data.separators import resolve_separator
from fedrec.registry import Registry

Loader = Callable[..., InteractionLog]
LOADERS: Registry[Loader] = Registry("dataset loader")

SHARED_DATA_ENV = "FEDREC_DATA_DIR"


def shared_data_dir() -> Path:
    """Where the MovieLens files live: ``$FEDREC_DATA_DIR`` or ``../shared/data`` beside the repo.

    The MovieLens license forbids redistribution, so they are never inside the repo or package.
    """
    override = os.environ.get(SHARED_DATA_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _resolve(path: str | os.PathLike[str] | None, default_name: str, what: str) -> Path:
    if path is None or str(path) == "":
        raise DataError(
            f"{what}: set dataset.path to the file or to the folder holding {default_name}"
        )
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        resolved = resolved / default_name
    if not resolved.exists():
        raise DataError(f"{resolved}: file not found ({what} expects {default_name})")
    return resolved


def _table_to_log(
    table: TextTable,
    *,
    user_column: str,
    item_column: str,
    rating_column: str | None,
    timestamp_column: str | None,
    numeric_ids: bool,
    on_duplicate: str,
) -> InteractionLog:
    users = parse_ids(table, column(table, user_column), "user", numeric=numeric_ids)
    items = parse_ids(table, column(table, item_column), "item", numeric=numeric_ids)
    ratings = None
    if rating_column:
        ratings = parse_floats(table, column(table, rating_column), "rating")
    timestamps = None
    if timestamp_column:
        timestamps = parse_timestamps(table, column(table, timestamp_column), "timestamp")
    return build_log(
        users, items, ratings, timestamps, source=table.name, on_duplicate=on_duplicate
    )


_ML_COLUMNS = ["user", "item", "rating", "timestamp"]


def _movielens(path: Path, separator: str, header: bool, names: list[str], on_duplicate: str):
    table = split_table(
        read_text(path, "latin-1"),
        name=path.name,
        separator=separator,
        column_names=None if header else names,
        header=header,
    )
    return _table_to_log(
        table,
        user_column=names[0],
        item_column=names[1],
        rating_column=names[2],
        timestamp_column=names[3],
        numeric_ids=True,
        on_duplicate=on_duplicate,
    )


@LOADERS.register("movielens_100k")
def load_movielens_100k(
    path: str | os.PathLike[str] | None = None, *, on_duplicate: str = "keep_latest"
) -> InteractionLog:
    """MovieLens 100K ``u.data``: tab-separated ``user item rating timestamp``, no header."""
    if path is None:
        path = shared_data_dir() / "ml-100k"
    resolved = _resolve(path, "u.data", "movielens_100k")
    return _movielens(resolved, "\t", False, _ML_COLUMNS, on_duplicate)


@LOADERS.register("movielens_1m")
def load_movielens_dat(
    path: str | os.PathLike[str] | None = None, *, on_duplicate: str = "keep_latest"
) -> InteractionLog:
    """MovieLens 1M / 10M ``ratings.dat``: ``user::item::rating::timestamp``, no header."""
    resolved = _resolve(path, "ratings.dat", "movielens_1m")
    return _movielens(resolved, "::", False, _ML_COLUMNS, on_duplicate)


LOADERS.register("movielens_10m")(load_movielens_dat)


@LOADERS.register("movielens_csv")
def load_movielens_csv(
    path: str | os.PathLike[str] | None = None, *, on_duplicate: str = "keep_latest"
) -> InteractionLog:
    """MovieLens latest / 20M / 25M ``ratings.csv``: header ``userId,movieId,rating,timestamp``."""
    resolved = _resolve(path, "ratings.csv", "movielens_csv")
    return _movielens(
        resolved, ",", True, ["userId", "movieId", "rating", "timestamp"], on_duplicate
    )


@LOADERS.register("generic")
def load_generic(
    path: str | os.PathLike[str] | None = None,
    *,
    separator: str | None = None,
    header: bool = True,
    user_column: str = "user",
    item_column: str = "item",
    rating_column: str | None = None,
    timestamp_column: str | None = None,
    columns: list[str] | None = None,
    encoding: str = "utf-8",
    numeric_ids: bool = False,
    on_duplicate: str = "keep_latest",
) -> InteractionLog:
    """Any CSV/TSV/Parquet log. Ids are kept as strings unless ``numeric_ids``.

    ``separator``: as typed (``','``, ``'\\t'`` or ``tab``, ``';'``, ``'::'``, ...; see
    :mod:`fedrec.data.separators`); None: tab for a ``.tsv`` file, else read from the file's first
    lines. Without a header, ``columns`` names the fields in order. A ``.parquet`` file needs
    pyarrow (``pip install fedrec[parquet]``).
    """
    if path is None or str(path) == "":
        raise DataError("generic: set dataset.path to the interaction file")
    resolved = Path(path).expanduser()
    if resolved.suffix == ".parquet":
        return _load_parquet(
            resolved, user_column, item_column, rating_column, timestamp_column, on_duplicate
        )
    text = read_text(resolved, encoding)
    table = split_table(
        text,
        name=resolved.name,
        separator=resolve_separator(separator, resolved, text),
        column_names=None if header else list(columns or []),
        header=header,
    )
    return _table_to_log(
        table,
        user_column=user_column,
        item_column=item_column,
        rating_column=rating_column,
        timestamp_column=timestamp_column,
        numeric_ids=numeric_ids,
        on_duplicate=on_duplicate,
    )


def _load_parquet(
    path: Path,
    user_column: str,
    item_column: str,
    rating_column: str | None,
    timestamp_column: str | None,
    on_duplicate: str,
) -> InteractionLog:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path.name}: reading Parquet needs pyarrow: pip install fedrec[parquet]"
        ) from None
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path.name}: not a readable Parquet file ({err})") from None

    def get(name: str) -> np.ndarray:
        if name not in table.column_names:
            raise DataError(
                f"{path.name}: no column '{name}' (found: {', '.join(table.column_names)})"
            )
        values = table.column(name).to_numpy(zero_copy_only=False)
        if table.column(name).null_count:
            raise DataError(
                f"{path.name}: column '{name}' has {table.column(name).null_count} empty values"
            )
        return values

    users = get(user_column).astype(str)
    items = get(item_column).astype(str)
    ratings = None
    if rating_column:
        try:
            ratings = get(rating_column).astype(np.float32)
        except ValueError:
            raise DataError(f"{path.name}: column '{rating_column}' is not numeric") from None
        if not np.isfinite(ratings).all():
            raise DataError(f"{path.name}: column '{rating_column}' has NaN or infinite ratings")
    timestamps = None
    if timestamp_column:
        raw = get(timestamp_column)
        timestamps = (
            raw.astype("datetime64[s]").astype(np.int64)
            if np.issubdtype(raw.dtype, np.datetime64)
            else raw.astype(np.int64)
        )
    return build_log(users, items, ratings, timestamps, source=path.name, on_duplicate=on_duplicate)
