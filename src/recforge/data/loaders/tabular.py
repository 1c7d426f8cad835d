"""Any CSV/TSV/Parquet file of interactions, given an explicit column mapping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from recforge.data.columns import INTEGER, plain_numbers, rating_values, timestamp_values
from recforge.data.interactions import Interactions, whole_number_ids
from recforge.data.loaders._source import read_delimited, source_info, split_list
from recforge.errors import ConfigError, DataFormatError

_TEXT_TIMES = (
    "; text needs timestamp_format: 'iso' for ISO 8601 dates and times, or a strftime pattern such as "
    "'%Y-%m-%d %H:%M:%S'"
)
_FINER_TIMES = "pass timestamp_unit='ms' (or 'us', 'ns')"
log = logging.getLogger(__name__)


def _ids(values: pd.Series, like: np.ndarray | None = None) -> np.ndarray:
    """Ids read from text. Alone (`like` None) they are integers when every value is an integer literal
    ("42", "-3", also "10.0"), else text; a value written with a leading zero or a plus sign ("007",
    "00123": codes, SKUs, zip codes) keeps the whole column text, since as numbers "007" and "7" would
    become one id. A side table's key takes the type of the ids it joins (`like`: the log's ids): text
    for text ids; for integer ids each whole number is an integer and anything else (such as "007",
    another id) stays text, matching none."""
    as_text = values.astype(str).str.strip()
    if like is not None and like.dtype.kind not in "iu":
        return as_text.to_numpy(dtype=object)
    apart = _written_apart(as_text)
    if like is not None:
        numbers = pd.to_numeric(as_text.where(~apart), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(numbers) & (numbers % 1 == 0)
        if whole.all():
            return numbers.astype(np.int64)
        mixed = as_text.to_numpy(dtype=object)
        mixed[whole] = [int(n) for n in numbers[whole]]
        return mixed
    if apart.any():
        return as_text.to_numpy(dtype=object)
    integers = plain_numbers(as_text, INTEGER)
    if integers is not None:  # every value a plain integer literal: the common case, vectorised
        return integers
    numbers = pd.to_numeric(as_text, errors="coerce")
    if not numbers.isna().any() and (numbers % 1 == 0).all():
        return numbers.to_numpy(dtype=np.int64)
    return as_text.to_numpy(dtype=object)


def _written_apart(values: pd.Series) -> np.ndarray:
    """Which ids are written as no integer is ("007", "+7"): read as numbers each would merge with another
    ("7"). Arrow's vectorised regex: 5M ids in ~0.3 s."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = pa.array(values, type=pa.string(), from_pandas=True)
    return pc.match_substring_regex(array, r"^(\+|-?0[0-9])").to_numpy(zero_copy_only=False)


def load_table(
    path: str | Path,
    *,
    user: str,
    item: str,
    rating: str | None = None,
    timestamp: str | None = None,
    rating_scale: tuple[float, float] | None = None,
    unrated: float | None = None,
    sep: str | None = None,
    header: bool = True,
    columns: Sequence[str] | None = None,
    encoding: str = "utf-8",
    timestamp_format: str | None = None,
    on_missing: Literal["raise", "drop"] = "raise",
    name: str | None = None,
    items: str | Path | None = None,
    items_id: str | None = None,
    title: str | None = None,
    genres: str | None = None,
    genres_sep: str = "|",
    item_columns: Sequence[str] = (),
    users: str | Path | None = None,
    users_id: str | None = None,
    user_columns: Sequence[str] = (),
    missing_values: Sequence[str] = ("NA", "N/A", "NaN", "nan", "null", "None"),
    decimal: Literal[".", ","] = ".",
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s",
) -> Interactions:
    """Read interactions from a delimited text file (.csv, .tsv, .txt, .dat) or Parquet, naming the columns.

    A text file without a header row takes `header=False` and `columns`, the names of its fields in
    order (e.g. MovieLens 1M: `sep="::", header=False, columns=["user", "item", "rating", "time"]`).
    Without `sep`, a .tsv/.tab file is tab-separated and any other text file's separator is sniffed among
    comma, tab, semicolon and bar from its first 50 lines (a spreadsheet's semicolon export needs no
    option); a file that starts with a UTF-16 byte-order mark is read as UTF-16;
    `user`/`item`/... then refer to those names. Timestamps are integers (unix seconds) unless
    `timestamp_format` is given (a strftime pattern such as "%Y-%m-%d %H:%M:%S", or "iso" for any ISO 8601
    form, with or without time, offset or "Z"; times without an offset are read as UTC). A Parquet column of
    datetimes needs no format: it becomes unix seconds (UTC), sub-second parts dropped. Ratings outside
    `rating_scale` raise; a rating equal to `unrated` is a file's marker for "interacted, not rated" (the
    Kaggle anime files' -1) and is read as such, like an empty field. Rows with a missing user, item or
    timestamp raise, or are dropped with `on_missing="drop"` (the count is logged and kept in
    `source["dropped_missing"]`).

    `items` names an item catalogue (CSV/TSV/Parquet with a header) joined on `items_id` (default: the
    `item` column's name): its `title` column becomes the items' titles and its `genres` column, split on
    `genres_sep`, their genre lists (what the CLI, the service's page, genre features and title embeddings
    read), and its `item_columns` are kept as further item features under their own names: numbers when
    every non-empty value is one, else text (what a two-tower's item tower reads: numbers scaled, text with
    2-64 distinct values as categories). `users` names a user table joined on `users_id` (default: the `user`
    column's name) whose `user_columns` become user features the same way (age, country, plan, ...); an
    empty field or one of `missing_values` is a missing value there (add a file's own marker, e.g.
    "Unknown", so that a column of numbers stays numeric). A
    repeated id in either table raises; items or users it lacks keep missing features (counted in
    `source["items_without_catalogue_row"]` / `source["users_without_table_row"]`), and a table that matches
    no id raises.

    Numeric timestamps count `timestamp_unit`s: "s" (unix seconds, the default), or "ms", "us", "ns"
    (event logs' milliseconds and finer), floored to seconds; numbers later than the year 3000 read as
    seconds are refused, naming the option.

    `decimal=","` reads numbers written with a decimal comma ("4,5"; a European spreadsheet's export, whose
    separator is then a semicolon, sniffed) in the rating column and the tables' feature columns; without
    it such a value is refused, saying so.
    """
    path = Path(path)
    if decimal not in (".", ","):
        raise ConfigError(f"decimal must be '.' or ',', not {decimal!r}")
    if timestamp_unit != "s" and timestamp_format is not None:
        raise ConfigError("timestamp_unit counts numeric timestamps; timestamp_format reads text ones: pass one")
    if (item_columns or title or genres) and items is None:
        raise ConfigError("title=, genres= and item_columns= name columns of an item catalogue: also pass items=")
    if user_columns and users is None:
        raise ConfigError("user_columns= names columns of a user table: also pass users=")
    missing = tuple(missing_values)
    side_tables = []
    if items is not None:
        catalogue = (Path(items), items_id or item, title, genres, genres_sep, tuple(item_columns), missing, decimal)
        side_tables.append(_SideTable("item", *catalogue))
    if users is not None:
        side_tables.append(
            _SideTable("user", Path(users), users_id or user, None, None, "|", tuple(user_columns), missing, decimal)
        )
    wanted = [c for c in (user, item, rating, timestamp) if c is not None]
    if header and columns is not None:
        raise DataFormatError(
            "columns= names the fields of a file without a header row; also pass header=False", path=path
        )
    if not header:
        if not columns:
            raise DataFormatError(
                "a file without a header row (header=False) needs columns=[...] naming its fields", path=path
            )
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            raise DataFormatError(
                f"user/item/rating/timestamp name {unknown}, which are not among columns={list(columns)}", path=path
            )
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        if not header:
            raise DataFormatError(
                "Parquet files carry their column names; header=False applies to text files", path=path
            )
        frame = pd.read_parquet(path, columns=None)
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataFormatError(f"missing column(s) {missing}; have {list(frame.columns)}", path=path)
        if timestamp_format is None and _typed(frame, user, item, rating, timestamp):
            table, dropped = _typed_table(
                frame, path, user, item, rating, timestamp, (rating_scale, unrated), on_missing, timestamp_unit
            )
            return _finish(table, path, rating, timestamp, rating_scale, name, dropped, side_tables)
        for column in (user, item):  # a float column's "10.5" would otherwise become a text id
            if pd.api.types.is_float_dtype(frame[column]):
                rows = np.flatnonzero(frame[column].notna().to_numpy())
                at_row = lambda p, rows=rows: {"path": path, "line": int(rows[p]) + 1}  # noqa: E731
                whole_number_ids(frame[column].to_numpy()[rows], column, at_row)
        frame = frame[wanted].astype(str).where(frame[wanted].notna(), "")
        frame["_line"] = np.arange(1, len(frame) + 1)  # Parquet has no lines: report 1-based row numbers
    else:
        if sep is None and path.suffix.lower() in (".tsv", ".tab"):
            sep = "\t"
        names = wanted if header else list(columns)  # type: ignore[arg-type]
        frame = read_delimited(path, sep=sep, columns=names, header=header, encoding=encoding)
    required = [c for c in (user, item, timestamp) if c is not None]
    blank = frame[required].apply(lambda col: col.str.strip() == "").any(axis=1).to_numpy()
    dropped = 0
    if blank.any():
        if on_missing == "raise":
            row = int(np.flatnonzero(blank)[0])
            column = next(c for c in required if frame[c].iloc[row].strip() == "")
            raise DataFormatError(
                f"missing value ({int(blank.sum())} row(s) have one; pass on_missing='drop' to drop them)",
                path=path,
                line=int(frame["_line"].iloc[row]),
                column=column,
            )
        dropped = int(blank.sum())
        log.warning("%s: dropped %d row(s) with a missing user, item or timestamp", path, dropped)
        frame = frame[~blank].reset_index(drop=True)
    table = pd.DataFrame({"user_id": _ids(frame[user]), "item_id": _ids(frame[item])})

    def at_line(position: int) -> dict[str, Any]:
        return {"path": path, "line": int(frame["_line"].iloc[position])}

    if rating is not None:
        text = _with_decimal_points(frame[rating].str.strip(), decimal, rating, at_line)
        table["rating"] = rating_values(
            text.where(text != "", None), column=rating, locate=at_line, scale=rating_scale, unrated=unrated
        )
    if timestamp is not None:
        if timestamp_format is None:
            table["timestamp"] = timestamp_values(
                frame[timestamp].str.strip(),
                column=timestamp,
                locate=at_line,
                text_hint=_TEXT_TIMES,
                unit=timestamp_unit,
                unit_hint=_FINER_TIMES,
            )
        else:
            parsed = pd.to_datetime(
                frame[timestamp],
                format="ISO8601" if timestamp_format == "iso" else timestamp_format,
                errors="coerce",
                utc=True,
            )
            if parsed.isna().any():
                row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
                raise DataFormatError(
                    f"cannot parse {frame[timestamp].iloc[row]!r} as {timestamp_format}",
                    path=path,
                    line=int(frame["_line"].iloc[row]),
                    column=timestamp,
                )
            table["timestamp"] = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return _finish(table, path, rating, timestamp, rating_scale, name, dropped, side_tables)


@dataclass(frozen=True)
class _SideTable:
    """An item catalogue or a user table to join: its file, id column, and the columns kept as features."""

    side: Literal["item", "user"]
    path: Path
    key: str
    title: str | None
    genres: str | None
    genres_sep: str
    columns: tuple[str, ...]
    missing: tuple[str, ...]  # markers of a missing feature value besides an empty field
    decimal: str  # "." or ","


def _with_side_table(data: Interactions, table: _SideTable) -> Interactions:
    """`data` with the table's columns as item or user features, checked as described in load_table."""
    path, key = table.path, table.key
    named = [("title", table.title, "title"), ("genres", table.genres, "list")]
    named = [(out, column, kind) for out, column, kind in named if column is not None]
    named += [(column, column, "value") for column in table.columns]
    outs = [out for out, _, _ in named]
    twice = sorted({out for out in outs if outs.count(out) > 1})
    if twice:
        raise ConfigError(
            f"{path}: the {table.side} feature {twice[0]!r} is named twice (title=, genres= and "
            f"{table.side}_columns= each name one)"
        )
    wanted = list(dict.fromkeys([key, *(column for _, column, _ in named)]))
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        frame = pd.read_parquet(path)
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise DataFormatError(f"missing column(s) {missing}; have {list(frame.columns)}", path=path)
        frame = frame[wanted].astype(str).where(frame[wanted].notna(), "")
        frame["_line"] = np.arange(1, len(frame) + 1)  # Parquet has no lines: 1-based row numbers
    else:
        sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else None  # else sniffed, as the log's
        frame = read_delimited(path, sep=sep, columns=wanted, header=True)
    ids = pd.Series(_ids(frame[key], like=(data.items if table.side == "item" else data.users).ids))
    repeated = ids.duplicated(keep="first").to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataFormatError(
            f"{table.side} id {ids.iloc[row]!r} appears more than once in the table",
            path=path,
            line=int(frame["_line"].iloc[row]),
            column=key,
        )
    features = pd.DataFrame(index=pd.Index(ids.to_numpy(), name=f"{table.side}_id"))
    for out, column, kind in named:
        if kind == "title":
            features[out] = frame[column].to_numpy(dtype=object)
        elif kind == "list":
            features[out] = split_list(frame[column], table.genres_sep).to_numpy()
        else:
            features[out] = _feature_values(frame[column], table.missing, table.decimal)
    vocabulary = data.items if table.side == "item" else data.users
    known = pd.Index(vocabulary.ids)
    matched = known.isin(features.index)
    if not matched.any():
        raise DataFormatError(
            f"no id in column {key!r} matches a {table.side} of the interactions (table ids such as "
            f"{list(features.index[:3])}, interaction ids such as {list(known[:3])})",
            path=path,
            column=key,
        )
    if named:
        aligned = features.reindex(known)
        if table.genres is not None:  # no catalogue row: no genres rather than a missing value
            aligned["genres"] = [g if isinstance(g, list) else [] for g in aligned["genres"]]
        aligned = aligned.set_axis(known)
        data = data.with_features(**{f"{table.side}_features": aligned})
    source = dict(data.source)
    without = int((~matched).sum())
    if table.side == "item":
        source["catalogue"] = source_info(path.parent, [path.name])["sha256"]
        source["items_without_catalogue_row"] = without
    else:
        source["user_table"] = source_info(path.parent, [path.name])["sha256"]
        source["users_without_table_row"] = without
    if without:
        what = "item(s) of the interactions have no catalogue row" if table.side == "item" else "user(s) have no row"
        log.warning("%s: %d %s", path, without, what)
    return replace(data, source=source)


def _feature_values(text: pd.Series, missing: tuple[str, ...], decimal: str = ".") -> np.ndarray:
    """A table column as feature values: floats when every present value is a number (missing: NaN), else
    text (missing: None). Missing: an empty field or one of the `missing` markers."""
    stripped = text.str.strip()
    if decimal == ",":
        stripped = stripped.str.replace(_DECIMAL_COMMA, r"\1.\2", regex=True)
    present = (stripped != "") & ~stripped.isin(missing)
    numbers = pd.to_numeric(stripped.where(present, None), errors="coerce")
    if not (numbers.isna() & present).any():
        return numbers.to_numpy(dtype=np.float64)
    return stripped.where(present, None).to_numpy(dtype=object)


_DECIMAL_COMMA = r"^([+-]?[0-9]*),([0-9]+)$"  # "4,5", "-0,25", ",5": one comma before the fraction


def _with_decimal_points(text: pd.Series, decimal: str, column: str, locate: Any) -> pd.Series:
    """Numbers written with a decimal comma read with a point (`decimal=","`); otherwise the first such
    value is refused at its line, naming the option (rather than only "not a number")."""
    if decimal == ",":
        return text.str.replace(_DECIMAL_COMMA, r"\1.\2", regex=True)
    comma = text.str.fullmatch(_DECIMAL_COMMA).fillna(False).to_numpy(dtype=bool)
    if comma.any():
        row = int(np.flatnonzero(comma)[0])
        raise DataFormatError(
            f"not a number: {text.iloc[row]!r} ({int(comma.sum())} such row(s)); a decimal comma? pass decimal=','",
            column=column,
            **locate(row),
        )
    return text


def _finish(
    table: pd.DataFrame,
    path: Path,
    rating: str | None,
    timestamp: str | None,
    rating_scale: tuple[float, float] | None,
    name: str | None,
    dropped: int,
    side_tables: list[_SideTable],
) -> Interactions:
    """The interactions of `table`, with the features of the item catalogue and user table named."""
    source = source_info(path.parent, [path.name])
    source["dropped_missing"] = dropped
    data = Interactions.from_frame(
        table,
        rating="rating" if rating else None,
        timestamp="timestamp" if timestamp else None,
        rating_scale=rating_scale,
        name=name or path.stem,
        source=source,
    )
    for side_table in side_tables:
        data = _with_side_table(data, side_table)
    return data


def _typed(frame: pd.DataFrame, user: str, item: str, rating: str | None, timestamp: str | None) -> bool:
    """True when Parquet already stores ids as integers or strings and rating/timestamp as numbers: such a
    file is read column-wise without turning 10^7 cells into Python strings (the text path)."""
    types = pd.api.types

    def is_id(column: str) -> bool:
        return types.is_integer_dtype(frame[column]) or types.is_string_dtype(frame[column])

    return (
        is_id(user)
        and is_id(item)
        and (rating is None or types.is_numeric_dtype(frame[rating]))
        and (
            timestamp is None
            or types.is_integer_dtype(frame[timestamp])
            or types.is_float_dtype(frame[timestamp])
            or types.is_datetime64_any_dtype(frame[timestamp])
        )
    )


def _typed_table(
    frame: pd.DataFrame,
    path: Path,
    user: str,
    item: str,
    rating: str | None,
    timestamp: str | None,
    ratings: tuple[tuple[float, float] | None, float | None],
    on_missing: str,
    unit: str = "s",
) -> tuple[pd.DataFrame, int]:
    """The typed-Parquet twin of the text path: same checks, same errors (1-based row numbers); `ratings` is
    the rating scale and the unrated marker, `unit` the numeric timestamps' unit."""
    required = [c for c in (user, item, timestamp) if c is not None]
    blank = np.zeros(len(frame), dtype=bool)
    for column in required:
        values = frame[column]
        blank |= values.isna().to_numpy()
        if pd.api.types.is_string_dtype(values):
            blank |= values.fillna("").astype(str).str.strip().eq("").to_numpy()
    dropped = 0
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        if on_missing == "raise":
            column = next(c for c in required if pd.isna(frame[c].iloc[row]) or str(frame[c].iloc[row]).strip() == "")
            raise DataFormatError(
                f"missing value ({int(blank.sum())} row(s) have one; pass on_missing='drop' to drop them)",
                path=path,
                line=row + 1,
                column=column,
            )
        dropped = int(blank.sum())
        log.warning("%s: dropped %d row(s) with a missing user, item or timestamp", path, dropped)
        frame = frame[~blank]
    kept = np.flatnonzero(~blank)  # rows of the file, for errors after dropping

    def at_row(position: int) -> dict[str, Any]:
        return {"path": path, "line": int(kept[position]) + 1}

    table = pd.DataFrame({"user_id": _typed_ids(frame[user]), "item_id": _typed_ids(frame[item])})
    if rating is not None:
        table["rating"] = rating_values(
            frame[rating], column=rating, locate=at_row, scale=ratings[0], unrated=ratings[1]
        )
    if timestamp is not None:
        table["timestamp"] = timestamp_values(
            frame[timestamp], column=timestamp, locate=at_row, unit=unit, unit_hint=_FINER_TIMES
        )
    return table, dropped


def _typed_ids(values: pd.Series) -> np.ndarray:
    """Integer columns as int64; string columns by the text path's rule (integer literals become ints)."""
    return values.to_numpy(dtype=np.int64) if pd.api.types.is_integer_dtype(values) else _ids(values)
