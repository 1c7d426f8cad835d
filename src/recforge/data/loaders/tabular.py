"""Any CSV/TSV/Parquet file of interactions, given an explicit column mapping."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.loaders._source import check_scale, parse_float, read_delimited, source_info
from recforge.errors import DataFormatError

log = logging.getLogger(__name__)


def _ids(values: pd.Series) -> np.ndarray:
    """Ids stay integers when every value is an integer literal, else strings."""
    as_text = values.astype(str).str.strip()
    numbers = pd.to_numeric(as_text, errors="coerce")
    if not numbers.isna().any() and (numbers % 1 == 0).all():
        return numbers.to_numpy(dtype=np.int64)
    return as_text.to_numpy(dtype=object)


def load_table(
    path: str | Path,
    *,
    user: str,
    item: str,
    rating: str | None = None,
    timestamp: str | None = None,
    rating_scale: tuple[float, float] | None = None,
    sep: str | None = None,
    encoding: str = "utf-8",
    timestamp_format: str | None = None,
    on_missing: Literal["raise", "drop"] = "raise",
    name: str | None = None,
) -> Interactions:
    """Read interactions from a delimited text file (.csv, .tsv, .txt) or Parquet, naming the columns.

    Timestamps are integers (unix seconds) unless `timestamp_format` is given (e.g. "%Y-%m-%d" or
    "iso"). Ratings outside `rating_scale` raise. Rows with a missing user, item or timestamp raise,
    or are dropped with `on_missing="drop"` (the count is logged and kept in `source["dropped_missing"]`).
    """
    path = Path(path)
    columns = [c for c in (user, item, rating, timestamp) if c is not None]
    if path.suffix.lower() in (".parquet", ".pq") or path.is_dir():
        frame = pd.read_parquet(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DataFormatError(f"missing column(s) {missing}; have {list(frame.columns)}", path=path)
        frame = frame[columns].astype(str).where(frame[columns].notna(), "")
        frame["_line"] = np.arange(1, len(frame) + 1)  # Parquet has no lines: report 1-based row numbers
    else:
        if sep is None:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        frame = read_delimited(path, sep=sep, columns=columns, header=True, encoding=encoding)
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
    if rating is not None:
        values = parse_float(frame, rating, path, missing=("",))
        if rating_scale is not None:
            check_scale(values, frame, rating, path, rating_scale, allow_missing=True)
        table["rating"] = values.astype(np.float32)
    if timestamp is not None:
        if timestamp_format is None:
            stamps = parse_float(frame, timestamp, path)
            table["timestamp"] = stamps.astype(np.int64)
        else:
            parsed = pd.to_datetime(
                frame[timestamp],
                format=None if timestamp_format == "iso" else timestamp_format,
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
    source = source_info(path.parent, [path.name])
    source["dropped_missing"] = dropped
    return Interactions.from_frame(
        table,
        rating="rating" if rating else None,
        timestamp="timestamp" if timestamp else None,
        rating_scale=rating_scale,
        name=name or path.stem,
        source=source,
    )
