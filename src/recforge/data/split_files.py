"""A split as plain files, for any other tool to train and predict on: what `recforge data split` writes
and `recforge evaluate --lists ... --split` reads back.

A split folder holds one table per part of a `Split` (train, test, and valid / fold_in where the split has
them), each with external ids — user_id, item_id, and rating and timestamp (unix seconds) where the data
has them; data without timestamps (sequence files) gets `position` instead, each interaction's place in
its user's sequence from 0, the order splits read as time — as Parquet or CSV, and `split.json`: the
format, the split's name, seed and parameters, the data set's name, rating scale and fingerprint, and per
part its file, row count and sha256. Where the data has item or user features (titles, genres, a user's
age), `items` and `users` tables hold them by id for tools that use side information (in CSV a list such
as genres is one cell joined by "|"). `read_split` verifies every part against its sha256 before reading
it: an evaluation must run on the split the other tool was given, not on a file edited since.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recforge._io import atomic_path, sha256_file
from recforge.data.interactions import Interactions
from recforge.data.splits import PARTS, Split
from recforge.errors import DataFormatError

FORMAT = "recforge-split"
MANIFEST = "split.json"
FileFormat = Literal["parquet", "csv"]


def write_split(
    split: Split,
    folder: str | Path,
    *,
    file_format: FileFormat = "parquet",
    source: dict[str, Any] | None = None,
    validation: Split | None = None,
    recbole: bool = False,
) -> Path:
    """Write every part of `split` into `folder` (atomically: a reader sees the old folder or the whole new
    one); `source` (e.g. the config that made the split) is recorded in the manifest as it is. A
    `validation` carve-out of the training part (a split of `split.train`, for tuning) is written as a
    split folder of its own, `folder/validation`. With `recbole`, the split is also written as RecBole's
    atomic files in `folder/recbole` (`recforge.data.recbole_export`; it needs a valid part or the
    carve-out)."""
    if file_format not in ("parquet", "csv"):
        raise ValueError(f"file_format must be 'parquet' or 'csv', not {file_format!r}")
    recbole_frames = None
    if recbole:
        from recforge.data.recbole_export import recbole_parts, write_recbole

        recbole_frames = recbole_parts(split, validation)  # refused before anything is written
    folder = Path(folder)
    with atomic_path(folder, is_dir=True, ours=(MANIFEST,), kind="split folder") as tmp:
        exports = {}
        if recbole_frames is not None:
            exports["recbole"] = write_recbole(recbole_frames, split.data.name, tmp / "recbole")
        _write_parts(split, tmp, file_format, source, exports)
        if validation is not None:
            (tmp / "validation").mkdir()
            _write_parts(validation, tmp / "validation", file_format, {**(source or {}), "carved_from": "train"})
    return folder


def _write_parts(
    split: Split, tmp: Path, file_format: FileFormat, source: dict[str, Any] | None, exports: dict | None = None
) -> None:
    data = split.data
    frame = data.to_frame()
    if data.timestamp is None:  # the order splits read as time (leave-last-out's "last"): said, not implied
        frame["position"] = data.positions()
    parts: dict[str, Any] = {}
    for part in PARTS:
        rows = getattr(split, f"{part}_rows")
        if rows is None:
            continue
        name = f"{part}.{file_format}"
        table = frame.iloc[rows].reset_index(drop=True)
        if file_format == "parquet":
            table.to_parquet(tmp / name, index=False)
        else:
            table.to_csv(tmp / name, index=False)
        parts[part] = {"file": name, "rows": len(rows), "sha256": sha256_file(tmp / name)}
    side: dict[str, Any] = {}
    sides = (("items", data.items, data.item_features), ("users", data.users, data.user_features))
    for label, vocab, features in sides:
        if features is None or features.shape[1] == 0:
            continue
        name = f"{label}.{file_format}"
        key = f"{label[:-1]}_id"  # a feature of that name (the loader kept the id column) is the id again
        table = features.drop(columns=[key], errors="ignore").reset_index(drop=True)
        table.insert(0, key, vocab.ids)
        if file_format == "parquet":
            table.to_parquet(tmp / name, index=False)
        else:  # lists (genres) as one text cell, joined by "|"
            table = table.apply(lambda column: column.map(_cell) if column.dtype == object else column)
            table.to_csv(tmp / name, index=False)
        side[label] = {"file": name, "rows": len(table), "sha256": sha256_file(tmp / name)}
    manifest = {
        "format": FORMAT,
        "format_version": 1,
        "split": split.describe(),
        "data": {
            "name": data.name,
            "fingerprint": data.fingerprint(),
            "rating_scale": data.rating_scale,
            "users": data.n_users,
            "items": data.n_items,
            "id_types": {"user": _id_type(data.users.ids), "item": _id_type(data.items.ids)},
        },
        "parts": parts,
        "features": side,
        "source": source or {},
        "exports": {name: {**entry, "folder": name} for name, entry in (exports or {}).items()},
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file: str = Field(pattern=r"^[a-z_]+\.(parquet|csv)$")  # a name inside the folder, nothing else
    rows: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    rating_scale: tuple[float, float] | None = None
    id_types: dict[Literal["user", "item"], Literal["integer", "text"]]


class _Described(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = "split"
    seed: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: Literal["recforge-split"]
    format_version: int = Field(1, le=1)
    split: _Described
    data: _Data
    parts: dict[Literal["train", "valid", "test", "fold_in"], _Part]


def read_split(folder: str | Path) -> Split:
    """The `Split` a folder written by `write_split` holds, over the union of its parts (ids as written;
    the vocabularies' order may differ from the original data's, the interactions do not)."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataFormatError(f"not a split folder ({MANIFEST} missing; `recforge data split` writes one)", path=folder)
    try:
        manifest = _Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the manifest"
        raise DataFormatError(
            f"not a {FORMAT} manifest of this recforge: {where}: {first['msg']}", path=manifest_path
        ) from exc
    if "train" not in manifest.parts or "test" not in manifest.parts:
        raise DataFormatError("a split needs a train and a test part", path=manifest_path)
    frames, sizes = [], {}
    for part, entry in manifest.parts.items():
        if entry.file.split(".")[0] != part:
            raise DataFormatError(f"the {part} part names another part's file, {entry.file}", path=manifest_path)
        path = folder / entry.file
        if not path.is_file():
            raise DataFormatError(f"the {part} part's file is missing", path=path)
        if sha256_file(path) != entry.sha256:
            raise DataFormatError(
                f"changed since `recforge data split` wrote it (sha256 differs from {MANIFEST}): an evaluation "
                "must use the split the models were given; write the split again",
                path=path,
            )
        table = _read_part(path, manifest.data.id_types)
        if len(table) != entry.rows:  # pragma: no cover - the sha256 guards this
            raise DataFormatError(f"has {len(table)} rows, {MANIFEST} says {entry.rows}", path=path)
        frames.append(table)
        sizes[part] = len(table)
    frame = pd.concat(frames, ignore_index=True)
    scale = manifest.data.rating_scale
    data = Interactions.from_frame(
        frame,
        rating="rating" if "rating" in frame.columns else None,
        timestamp="timestamp" if "timestamp" in frame.columns else None,
        rating_scale=scale,
        name=manifest.data.name,
        source={"split_folder": str(folder)},
    )
    bounds = np.cumsum([0, *sizes.values()])
    rows = {part: np.arange(bounds[i], bounds[i + 1]) for i, part in enumerate(sizes)}
    reserved = {"data", "train", "test", "valid", "fold_in", "name", "seed"}
    return Split.from_rows(
        data,
        train=rows["train"],
        test=rows["test"],
        valid=rows.get("valid"),
        fold_in=rows.get("fold_in"),
        name=manifest.split.name,
        seed=manifest.split.seed,
        **{key: value for key, value in manifest.split.params.items() if key not in reserved},
    )


def same_interactions(a: Interactions, b: Interactions) -> bool:
    """Whether two interaction sets hold the same rows (ids, ratings, times), in any order and whatever
    their vocabularies: how a split folder is matched to the split an experiment makes. Numbers compare
    as float64 (4 is 4.0), other values as text.

    Both sides are put in the order of a 64-bit hash of each row (equal rows hash alike), so different
    hash multisets answer False at once and equal rows line up; only a hash collision between different
    rows can leave them unaligned, and then the rows are sorted by value (what this did every time before:
    6 s for 5M rows, against 2-3 s now)."""
    left, right = a.to_frame(), b.to_frame()
    if len(left) != len(right) or list(left.columns) != list(right.columns):
        return False
    left_columns, right_columns = _comparable(left), _comparable(right)
    left_hash, right_hash = _row_hashes(left_columns), _row_hashes(right_columns)
    left_order, right_order = np.argsort(left_hash), np.argsort(right_hash)  # equal hashes: equal rows, or a collision
    if not np.array_equal(left_hash[left_order], right_hash[right_order]):
        return False
    if _equal_columns([c[left_order] for c in left_columns], [c[right_order] for c in right_columns]):
        return True
    columns = list(left.columns)  # a collision: compare the rows sorted by value
    left = left.sort_values(columns, kind="stable").reset_index(drop=True)
    right = right.sort_values(columns, kind="stable").reset_index(drop=True)
    return _equal_columns(_comparable(left), _comparable(right))


def _comparable(frame: pd.DataFrame) -> list[np.ndarray]:
    """Each column as compared: numbers as float64 with one zero and one NaN, anything else as text."""
    columns = []
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype.kind in "iub":
            columns.append(values.astype(np.float64))
        elif values.dtype.kind == "f":
            numbers = values.astype(np.float64) + 0.0  # -0.0 is 0.0
            numbers[np.isnan(numbers)] = np.nan  # one NaN
            columns.append(numbers)
        else:
            columns.append(values.astype(str).astype(object))  # pandas hashes str objects, not numpy's "<U"
    return columns


def _row_hashes(columns: list[np.ndarray]) -> np.ndarray:
    hashes = np.zeros(len(columns[0]) if columns else 0, dtype=np.uint64)
    for values in columns:  # floats by their bits (one zero, one NaN: `_comparable`), text by pandas' hash
        column = pd.util.hash_array(values.view(np.uint64) if values.dtype == np.float64 else values, categorize=False)
        hashes = hashes * np.uint64(0x9E3779B97F4A7C15) ^ column
    return hashes


def _equal_columns(left: list[np.ndarray], right: list[np.ndarray]) -> bool:
    return all(
        np.array_equal(x, y, equal_nan=True) if x.dtype == np.float64 else bool((x == y).all())
        for x, y in zip(left, right, strict=True)
    )


def _read_part(path: Path, id_types: dict[str, str]) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        # text ids stay text ("007" is not 7); written by `write_split`, so the layout is known
        types = {f"{side}_id": str for side, kind in id_types.items() if kind == "text"}
        return pd.read_csv(path, dtype=types, keep_default_na=False, na_values={"rating": [""]})
    except (ValueError, OSError) as exc:  # pandas' parser errors are ValueErrors
        raise DataFormatError(f"cannot read it ({exc})", path=path) from exc


def _cell(value: Any) -> Any:
    return "|".join(map(str, value)) if isinstance(value, (list, tuple, np.ndarray)) else value


def _id_type(ids: np.ndarray) -> str:
    return "integer" if ids.dtype.kind in "iu" else "text"
