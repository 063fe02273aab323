"""Reading interaction files into :class:`RawInteractions`, with one-line errors for bad input.

Every loader returns a frame with the columns `user`, `item` and `weight` (float64, finite and
non-negative) plus, where the source has them, item display names. Validation is vectorized:
each check is one mask over a column, and the message names the file, the column and the first
offending row (with how many rows share the problem), so a user can open the file and fix it.

Row numbers in messages: for files with a header, "data row N" counts data rows from 1, the
header not counted; for header-less files (`u.data`) "line N" is the line of the file; for
Parquet "row N" counts rows from 1.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_datetime64_any_dtype,
    is_integer_dtype,
    is_numeric_dtype,
    is_string_dtype,
    is_timedelta64_dtype,
)

from mfstudy.config import (
    DataSource,
    Lastfm2kSource,
    MovieLens100kSource,
    MovieLensLatestSmallSource,
    SketchfabSource,
    SyntheticSource,
    TableSource,
)
from mfstudy.data._download import dataset_dir
from mfstudy.data._interactions import RawInteractions
from mfstudy.data._synthetic import generate_synthetic
from mfstudy.errors import DataError

__all__ = [
    "load",
    "load_lastfm_2k",
    "load_movielens_100k",
    "load_movielens_latest_small",
    "load_sketchfab",
    "load_table",
]

PathLike = str | os.PathLike[str]

_HEADER_ROWS = "data row {n} (1-based, header not counted)"
#: What pandas reads as missing by default, kept for weights and names when id columns are
#: read as plain text (`keep_default_na=False` applies to every column).
_NA_TEXT = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
            "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan",
            "null"]  # fmt: skip
_LINES = "line {n}"
_PARQUET_ROWS = "row {n} (1-based)"


# --------------------------------------------------------------------------- reading


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a file")
    if not path.is_file():
        where = path.parent.expanduser().absolute()
        raise DataError(f"{path}: file not found (looked for {path.name} in {where})")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")


def _read_text(path: Path, **kwargs: Any) -> pd.DataFrame:
    """`pd.read_csv` whose failures become one-line DataErrors naming the file."""
    _require_file(path)
    try:
        # low_memory=False: dtypes inferred over the whole column, never chunk by chunk (which
        # can give an id column of mixed ints and strings that cannot be sorted).
        return pd.read_csv(path, low_memory=False, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no columns to read)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from None
    except UnicodeDecodeError as exc:
        enc = kwargs.get("encoding", "utf-8")
        raise DataError(
            f"{path}: not valid {enc} text at byte {exc.start}; re-save the file as {enc}"
        ) from None
    except OSError as exc:
        # e.g. a file without read permission: exists, so _require_file let it through.
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _header(path: Path, **kwargs: Any) -> list[str]:
    """The column names of a text file with a header, read without the data."""
    return [str(c) for c in _read_text(path, nrows=0, **kwargs).columns]


def _check_columns(path: Path, found: Sequence[str], needed: Sequence[str], hint: str = "") -> None:
    missing = [c for c in needed if c not in found]
    if missing:
        what = "column" if len(missing) == 1 else "columns"
        names = ", ".join(repr(c) for c in missing)
        listed = ", ".join(repr(c) for c in found) or "none"
        raise DataError(f"{path}: {what} {names} not found; columns found: {listed}{hint}")


_SEPARATORS = (",", ";", "\t", "|")


def _separator_hint(found: Sequence[str], sep: str, sep_key: str | None) -> str:
    """A hint when the header was read as one column that holds another common separator.

    That is what a file written with `;` looks like when read with `,`: the bare
    "column not found" would leave the user to work out why.
    """
    if len(found) != 1:
        return ""
    for other in _SEPARATORS:
        if other != sep and other in found[0]:
            fix = f": set {sep_key}={other!r}" if sep_key else ""
            return f"; the header looks separated by {other!r}, not {sep!r}{fix}"
    return ""


def _read_with_header(
    path: Path, needed: Sequence[str], sep_key: str | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Read a file with a header, after checking the header holds the `needed` columns.

    Every column is parsed, not only the needed ones: with `usecols` pandas silently accepts
    rows with too many fields, which is how an unquoted separator inside a name shows up.
    `sep_key` is the config key that sets the separator, named in the hint of a wrong one.
    """
    found = _header(path, **kwargs)
    _check_columns(path, found, needed, _separator_hint(found, kwargs.get("sep", ","), sep_key))
    frame = _read_text(path, **kwargs)
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    return frame


# --------------------------------------------------------------------------- validation


def _fail(path: Path, label: str, rows: str, mask: np.ndarray, problem: str) -> DataError:
    first = int(np.argmax(mask))
    n_bad = int(np.count_nonzero(mask))
    more = f" ({n_bad} rows in all)" if n_bad > 1 else ""
    return DataError(f"{path}: {label}, {rows.format(n=first + 1)}: {problem}{more}")


def _weights(path: Path, col: pd.Series, label: str, rows: str) -> np.ndarray:
    """The weight column as finite non-negative float64 that fits float32 (the matrices' type),
    or a DataError on the first bad row."""
    if (
        is_bool_dtype(col.dtype)
        or is_datetime64_any_dtype(col.dtype)
        or is_timedelta64_dtype(col.dtype)
    ):
        # True/False would count as 1/0 and the zeros be stored as interactions; timestamps
        # would become nanosecond counts: weights in the billions. Neither silently.
        raise DataError(f"{path}: {label} holds {col.dtype} values; weights must be numbers")
    if is_numeric_dtype(col.dtype):
        w = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        num = pd.to_numeric(col, errors="coerce")
        bad = (num.isna() & col.notna()).to_numpy()
        if bad.any():
            value = col.iloc[int(np.argmax(bad))]
            raise _fail(path, label, rows, bad, f"weight {value!r} is not a number")
        w = num.to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(w)
    if missing.any():
        raise _fail(path, label, rows, missing, "missing weight (empty or NaN)")
    infinite = np.isinf(w)
    if infinite.any():
        raise _fail(path, label, rows, infinite, f"weight {w[np.argmax(infinite)]} is not finite")
    negative = w < 0
    if negative.any():
        raise _fail(path, label, rows, negative, f"negative weight {w[np.argmax(negative)]:g}")
    too_big = w > np.finfo(np.float32).max
    if too_big.any():
        value = w[np.argmax(too_big)]
        raise _fail(path, label, rows, too_big, f"weight {value:g} overflows float32 (max 3.4e+38)")
    return w


def _interactions(
    path: Path,
    frame: pd.DataFrame,
    *,
    user: str,
    item: str,
    weight: str | None,
    rows: str,
    labels: dict[str, str] | None = None,
    integer_ids: bool = False,
    text_ids: bool = False,
) -> pd.DataFrame:
    """Validate the id and weight columns of `frame` and return `user`, `item`, `weight`.

    With `integer_ids` (the public datasets, whose ids are numbers) every id must be an
    integer: one stray string would otherwise turn the whole column into text and silently
    change the ids and their order. With `text_ids` (table sources by default) ids are
    opaque text: integer columns become their digits, any other non-text type is refused.
    """
    labels = labels or {}

    def label(c: str) -> str:
        return labels.get(c, f"column {c!r}")

    ids = {}
    for c in (user, item):
        na = frame[c].isna().to_numpy()
        if text_ids:
            na = na | (frame[c] == "").to_numpy()  # an empty field, read as text
        if na.any():
            raise _fail(path, label(c), rows, na, "missing id")
        if integer_ids:
            ids[c] = _integer_ids(path, frame[c], label(c), rows)
        elif text_ids:
            ids[c] = _text_ids(path, frame[c], label(c))
        else:
            ids[c] = frame[c]
    if weight is None:
        w = np.ones(len(frame), dtype=np.float64)
    else:
        w = _weights(path, frame[weight], label(weight), rows)
    out = pd.DataFrame({"user": ids[user].to_numpy(), "item": ids[item].to_numpy(), "weight": w})
    return out


def _integer_ids(path: Path, col: pd.Series, label: str, rows: str) -> pd.Series:
    """An id column (without missing values) as int64, or a DataError on the first non-integer."""
    if is_integer_dtype(col.dtype):
        return col.astype(np.int64)
    num = pd.to_numeric(col, errors="coerce")
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(values) | (np.floor(values) != values)
    if bad.any():
        value = col.iloc[int(np.argmax(bad))]
        raise _fail(path, label, rows, bad, f"id {value!r} is not an integer")
    return pd.Series(values.astype(np.int64), index=col.index, name=col.name)


def _names(ids: pd.Series, names: pd.Series) -> pd.Series:
    """Raw item id -> display name; the first name of an id wins, missing names become ""."""
    keep = ids.notna().to_numpy() & ~ids.duplicated(keep="first").to_numpy()
    return (
        pd.Series(names.to_numpy()[keep], index=pd.Index(ids.to_numpy()[keep]), name="item_name")
        .fillna("")
        .astype(str)
    )


# --------------------------------------------------------------------------- loaders


def load_sketchfab(path: PathLike) -> RawInteractions:
    """The blog recipe's Sketchfab likes: `modelname|mid|uid`, fields quoted with a backslash.

    Ids are kept as strings (they are hex hashes; reading them as numbers would corrupt any
    that happen to look like `123e4`). Every row weighs 1.
    """
    p = Path(path)
    frame = _read_with_header(
        p,
        ["modelname", "mid", "uid"],
        sep="|",
        quoting=csv.QUOTE_MINIMAL,
        quotechar="\\",
        dtype=str,
        encoding="utf-8",
    )
    out = _interactions(p, frame, user="uid", item="mid", weight=None, rows=_HEADER_ROWS)
    return RawInteractions(
        frame=out, source=str(p), item_names=_names(frame["mid"], frame["modelname"])
    )


def load_movielens_100k(path: PathLike | None = None) -> RawInteractions:
    """MovieLens 100k: `u.data` (user, item, rating, time; tab, no header), `u.item` titles."""
    folder = dataset_dir("movielens-100k", path)
    data = folder / "u.data"
    frame = _read_text(
        data,
        sep="\t",
        header=None,
        names=["user", "item", "rating", "timestamp"],
        index_col=False,
        quoting=csv.QUOTE_NONE,
    )
    labels = {
        "user": "field 1 (user id)",
        "item": "field 2 (item id)",
        "rating": "field 3 (rating)",
    }
    out = _interactions(
        data,
        frame,
        user="user",
        item="item",
        weight="rating",
        rows=_LINES,
        labels=labels,
        integer_ids=True,
    )
    items = _read_text(
        folder / "u.item",
        sep="|",
        header=None,
        usecols=[0, 1],
        names=["id", "title"],
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
    )
    return RawInteractions(
        frame=out, source=str(data), item_names=_names(items["id"], items["title"])
    )


def load_movielens_latest_small(path: PathLike | None = None) -> RawInteractions:
    """MovieLens latest-small: `ratings.csv` (userId,movieId,rating,...), `movies.csv` titles."""
    folder = dataset_dir("movielens-latest-small", path)
    ratings = folder / "ratings.csv"
    frame = _read_with_header(ratings, ["userId", "movieId", "rating"], encoding="utf-8")
    out = _interactions(
        ratings,
        frame,
        user="userId",
        item="movieId",
        weight="rating",
        rows=_HEADER_ROWS,
        integer_ids=True,
    )
    movies = _read_with_header(folder / "movies.csv", ["movieId", "title"], encoding="utf-8")
    return RawInteractions(
        frame=out, source=str(ratings), item_names=_names(movies["movieId"], movies["title"])
    )


def load_lastfm_2k(path: PathLike | None = None) -> RawInteractions:
    """hetrec2011 last.fm: `user_artists.dat` play counts, `artists.dat` names (UTF-8, tab).

    Quoting is off: artist names such as `"Weird Al" Yankovic` carry literal double quotes.
    """
    folder = dataset_dir("lastfm-2k", path)
    plays = folder / "user_artists.dat"
    opts: dict[str, Any] = {"sep": "\t", "quoting": csv.QUOTE_NONE, "encoding": "utf-8"}
    frame = _read_with_header(plays, ["userID", "artistID", "weight"], **opts)
    out = _interactions(
        plays,
        frame,
        user="userID",
        item="artistID",
        weight="weight",
        rows=_HEADER_ROWS,
        integer_ids=True,
    )
    artists = _read_with_header(folder / "artists.dat", ["id", "name"], **opts)
    return RawInteractions(
        frame=out, source=str(plays), item_names=_names(artists["id"], artists["name"])
    )


_COMPRESSION = {".gz", ".bz2", ".xz", ".zst", ".zip"}
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def _table_format(source: TableSource) -> str:
    if source.format is not None:
        return source.format
    suffixes = [s.lower() for s in source.path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    fmt = _FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(
            f"{source.path}: cannot tell the format from the file name; set data.format to "
            "csv, tsv or parquet"
        )
    return fmt


def _read_parquet(path: Path, needed: list[str]) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _require_file(path)
    try:
        found = pq.read_schema(path).names
        _check_columns(path, found, needed)
        frame = pd.read_parquet(path, columns=needed)
    except (pa.ArrowException, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable Parquet file ({first_line})") from None
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    return frame


def _text_ids(path: Path, col: pd.Series, label: str) -> pd.Series:
    """An id column (without missing values) as text: strings as they are, integers as their
    digits; any other type (floats, timestamps, lists: typed Parquet columns) is refused rather
    than turned into a guess."""
    if is_integer_dtype(col.dtype):
        return col.astype(str).astype(object)
    # pandas calls an object column of lists "string" too: check the values themselves.
    if is_string_dtype(col.dtype) and col.map(lambda v: v is None or isinstance(v, str)).all():
        return col.astype(object)
    raise DataError(
        f"{path}: {label} holds {col.dtype} values; ids must be strings or integers "
        "(set data.id_type=integer to read whole numbers)"
    )


def load_table(source: TableSource) -> RawInteractions:
    """Any CSV, TSV or Parquet file with one row per interaction, columns named by `source`."""
    p = source.path
    needed = [source.user_col, source.item_col]
    for extra in (source.weight_col, source.item_name_col):
        if extra is not None and extra not in needed:
            needed.append(extra)
    fmt = _table_format(source)
    integer = source.id_type == "integer"
    id_cols = [source.user_col, source.item_col]
    if fmt == "parquet":
        frame = _read_parquet(p, needed)
        rows = _PARQUET_ROWS
    else:
        sep = source.sep if source.sep is not None else ("," if fmt == "csv" else "\t")
        # Ids as text unless told otherwise: inferred numbers would merge `007` with `7`, and one
        # `3.0` would turn every id of the column into a float. Nor are `NA`, `null` or `nan`
        # missing values in an id column: they are ids (only an empty field is missing).
        opts: dict[str, Any] = {}
        if not integer:
            others = [c for c in needed if c not in id_cols]
            opts = {
                "dtype": dict.fromkeys(id_cols, str),
                "keep_default_na": False,
                "na_values": dict.fromkeys(others, _NA_TEXT),
            }
        frame = _read_with_header(p, needed, sep_key="data.sep", sep=sep, encoding="utf-8", **opts)
        rows = _HEADER_ROWS
    out = _interactions(
        p,
        frame,
        user=source.user_col,
        item=source.item_col,
        weight=source.weight_col,
        rows=rows,
        integer_ids=integer,
        text_ids=not integer,
    )
    names = None
    if source.item_name_col is not None:
        names = _names(out["item"], frame[source.item_name_col])
    return RawInteractions(frame=out, source=str(p), item_names=names)


def load(source: DataSource, seed: int = 0) -> RawInteractions:
    """Read (or generate, for `synthetic`) the interactions a study config names.

    `seed` is used only by the synthetic generator; file sources are deterministic.
    """
    if isinstance(source, SyntheticSource):
        return generate_synthetic(source, seed)
    if isinstance(source, SketchfabSource):
        return load_sketchfab(source.path)
    if isinstance(source, MovieLens100kSource):
        return load_movielens_100k(source.path)
    if isinstance(source, MovieLensLatestSmallSource):
        return load_movielens_latest_small(source.path)
    if isinstance(source, Lastfm2kSource):
        return load_lastfm_2k(source.path)
    if isinstance(source, TableSource):
        return load_table(source)
    raise DataError(f"unknown data source {type(source).__name__}")
