"""`Interactions`: the one data object every loader produces and every split, model and metric consumes.

Interactions are kept as parallel arrays (user index, item index, optional rating, optional timestamp)
in the order the source gave them, next to the user and item vocabularies and optional feature tables.
A rating of NaN means "interacted but did not rate" (e.g. the anime data's -1): such rows count as
implicit feedback and are never used as a rating.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge._io import atomic_path
from recforge.data.columns import checked_scale, rating_values, timestamp_values
from recforge.data.vocabulary import Vocabulary
from recforge.errors import ConfigError, DataFormatError

FORMAT_VERSION = 1
_TEXT_TIMES = "; parse text with pandas.to_datetime first"
_FINER_TIMES = "convert them with pandas.to_datetime(values, unit='ms') first"


@dataclass(frozen=True)
class Sequences:
    """Per-user item sequences in time order (ties keep the source order), stored CSR-style.

    `items[indptr[u]:indptr[u+1]]` are user u's item indices, oldest first; `rows` gives, for each
    position, the row of the originating interaction.
    """

    indptr: np.ndarray
    items: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def __getitem__(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


@dataclass(frozen=True, eq=False)
class Interactions:
    """User-item interactions with vocabularies, optional ratings/timestamps and feature tables.

    Shapes: `user_index`, `item_index`, `rating`, `timestamp` are all (n_interactions,).
    `user_features` has one row per user index, `item_features` one row per item index (RangeIndex);
    an item table may carry `title` (str) and `genres` (list of str) among other columns.
    """

    users: Vocabulary
    items: Vocabulary
    user_index: np.ndarray
    item_index: np.ndarray
    rating: np.ndarray | None = None
    timestamp: np.ndarray | None = None
    user_features: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    rating_scale: tuple[float, float] | None = None
    name: str = "interactions"
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce = object.__setattr__
        coerce(self, "user_index", np.ascontiguousarray(self.user_index, dtype=np.int32))
        coerce(self, "item_index", np.ascontiguousarray(self.item_index, dtype=np.int32))
        n = len(self.user_index)
        if len(self.item_index) != n:
            raise ValueError("user_index and item_index differ in length")
        if self.rating is not None:
            coerce(self, "rating", np.ascontiguousarray(self.rating, dtype=np.float32))
            if len(self.rating) != n:
                raise ValueError("rating differs in length from user_index")
        if self.timestamp is not None:
            coerce(self, "timestamp", np.ascontiguousarray(self.timestamp, dtype=np.int64))
            if len(self.timestamp) != n:
                raise ValueError("timestamp differs in length from user_index")
        if n:
            if self.user_index.min() < 0 or self.user_index.max() >= len(self.users):
                raise ValueError("user_index out of the user vocabulary's range")
            if self.item_index.min() < 0 or self.item_index.max() >= len(self.items):
                raise ValueError("item_index out of the item vocabulary's range")
        for label, frame, vocab in (
            ("user_features", self.user_features, self.users),
            ("item_features", self.item_features, self.items),
        ):
            if frame is not None and len(frame) != len(vocab):
                raise ValueError(f"{label} has {len(frame)} rows for {len(vocab)} ids")
        if self.rating_scale is not None:
            coerce(self, "rating_scale", checked_scale(self.rating_scale))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        user: str = "user_id",
        item: str = "item_id",
        rating: str | None = None,
        timestamp: str | None = None,
        rating_scale: tuple[float, float] | None = None,
        item_features: pd.DataFrame | None = None,
        user_features: pd.DataFrame | None = None,
        name: str = "interactions",
        source: dict[str, Any] | None = None,
    ) -> Interactions:
        """Build from a long frame of interactions; feature frames are indexed by external id.

        Ratings must be finite numbers (NaN or None: interacted, not rated), inside `rating_scale` when it is
        given; timestamps whole unix seconds or datetimes (converted to unix seconds, naive ones read as
        UTC); ids integers or text (a float id column of whole numbers is read as integers). A bad value
        raises a DataFormatError naming the column and the frame's row. Feature rows for
        ids without interactions are ignored; ids without a feature row get missing values.
        """
        for column in (user, item, rating, timestamp):
            if column is not None and column not in frame.columns:
                raise DataFormatError(f"missing column {column!r}; have {list(frame.columns)}", column=column)

        def at_row(position: int) -> dict[str, Any]:
            label = frame.index[position]
            return {"row": label.item() if isinstance(label, np.generic) else label}

        for column in (user, item):
            missing = frame[column].isna().to_numpy()
            if missing.any():
                raise DataFormatError(
                    f"missing id ({int(missing.sum())} such row(s))", column=column, **at_row(int(np.argmax(missing)))
                )

        users, user_codes = Vocabulary.encode(whole_number_ids(frame[user].to_numpy(), user, at_row), name="user")
        items, item_codes = Vocabulary.encode(whole_number_ids(frame[item].to_numpy(), item, at_row), name="item")
        return cls(
            users=users,
            items=items,
            user_index=user_codes,
            item_index=item_codes,
            rating=None
            if rating is None
            else rating_values(frame[rating], column=rating, locate=at_row, scale=rating_scale),
            timestamp=None
            if timestamp is None
            else timestamp_values(
                frame[timestamp], column=timestamp, locate=at_row, text_hint=_TEXT_TIMES, unit_hint=_FINER_TIMES
            ),
            user_features=_align_features(user_features, users),
            item_features=_align_features(item_features, items),
            rating_scale=rating_scale,
            name=name,
            source=dict(source or {}),
        )

    # ----------------------------------------------------------------- basic properties
    def __len__(self) -> int:
        return len(self.user_index)

    def __repr__(self) -> str:
        return (
            f"Interactions({self.name!r}, users={self.n_users}, items={self.n_items}, "
            f"interactions={len(self)}, rated={self.n_rated})"
        )

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def is_rated(self) -> np.ndarray:
        """Boolean mask of rows that carry a real rating (all False without ratings)."""
        if self.rating is None:
            return np.zeros(len(self), dtype=bool)
        return ~np.isnan(self.rating)

    @property
    def n_rated(self) -> int:
        return int(self.is_rated.sum())

    def user_counts(self) -> np.ndarray:
        """Interactions per user index, shape (n_users,)."""
        return np.bincount(self.user_index, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        """Interactions per item index, shape (n_items,)."""
        return np.bincount(self.item_index, minlength=self.n_items)

    # ----------------------------------------------------------------- derived views
    def subset(self, rows: np.ndarray) -> Interactions:
        """Rows selected by a boolean mask or index array, in source order; vocabularies are kept."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if len(rows) != len(self):
                raise ValueError(f"mask has {len(rows)} entries for {len(self)} interactions")
            rows = np.flatnonzero(rows)  # already in order
        elif len(rows) > 1 and (rows[1:] < rows[:-1]).any():
            rows = np.sort(rows)
        return replace(
            self,
            user_index=self.user_index[rows],
            item_index=self.item_index[rows],
            rating=None if self.rating is None else self.rating[rows],
            timestamp=None if self.timestamp is None else self.timestamp[rows],
        )

    def explicit(self) -> Interactions:
        """Only the rows with a real rating (what explicit-feedback models train on)."""
        if self.rating is None:
            raise DataFormatError(f"{self.name} has no ratings; explicit models need rated interactions")
        rated = self.is_rated
        return self if rated.all() else self.subset(rated)

    def rated_triples(self, needed_by: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user indices int64, item indices int64, ratings float64) of the rated rows, the latest rating of
        a repeated pair only: what explicit models train on. `needed_by` names the model in the error."""
        if self.rating is None or self.n_rated == 0:
            raise ConfigError(f"{needed_by} needs rated interactions")
        rated = self.explicit()
        rows = rated.latest_per_pair()
        return (
            rated.user_index[rows].astype(np.int64),
            rated.item_index[rows].astype(np.int64),
            rated.rating[rows].astype(np.float64),
        )

    def compact(self) -> Interactions:
        """Drop users and items left without interactions and renumber; features follow their ids."""
        used_users = np.unique(self.user_index)
        used_items = np.unique(self.item_index)
        if len(used_users) == self.n_users and len(used_items) == self.n_items:
            return self
        user_map = np.full(self.n_users, -1, dtype=np.int32)
        user_map[used_users] = np.arange(len(used_users), dtype=np.int32)
        item_map = np.full(self.n_items, -1, dtype=np.int32)
        item_map[used_items] = np.arange(len(used_items), dtype=np.int32)
        return replace(
            self,
            users=Vocabulary(self.users.lookup(used_users), name=self.users.name),
            items=Vocabulary(self.items.lookup(used_items), name=self.items.name),
            user_index=user_map[self.user_index],
            item_index=item_map[self.item_index],
            user_features=_take_rows(self.user_features, used_users),
            item_features=_take_rows(self.item_features, used_items),
        )

    def with_features(
        self, *, user_features: pd.DataFrame | None = None, item_features: pd.DataFrame | None = None
    ) -> Interactions:
        """A copy with feature tables (indexed by external id) aligned to the vocabularies."""
        return replace(
            self,
            user_features=self.user_features if user_features is None else _align_features(user_features, self.users),
            item_features=self.item_features if item_features is None else _align_features(item_features, self.items),
        )

    def to_csr(self, value: Literal["binary", "rating", "count"] = "binary", dtype: Any = np.float32) -> sp.csr_matrix:
        """Users x items sparse matrix.

        binary: 1 for every (user, item) seen; count: number of interactions; rating: the user's latest
        rating of the item (rows without a rating are not allowed; call `explicit()` first).
        """
        shape = (self.n_users, self.n_items)
        if value in ("count", "binary"):
            data = np.ones(len(self), dtype=dtype)
            matrix = sp.csr_matrix((data, (self.user_index, self.item_index)), shape=shape)
            matrix.sum_duplicates()
            if value == "binary":
                matrix.data[:] = 1
            return matrix
        if self.rating is None or not self.is_rated.all():
            raise DataFormatError(
                f"{self.name}: to_csr('rating') needs every row rated; use .explicit() to keep rated rows"
            )
        rows = self.latest_per_pair()
        matrix = sp.csr_matrix(
            (self.rating[rows].astype(dtype), (self.user_index[rows], self.item_index[rows])), shape=shape
        )
        matrix.sort_indices()
        return matrix

    def latest_per_pair(self) -> np.ndarray:
        """Row indices keeping one row per (user, item): the latest by timestamp, ties by source order."""
        return self._latest_rows

    @cached_property
    def _latest_rows(self) -> np.ndarray:
        key = self.user_index.astype(np.int64) * self.n_items + self.item_index
        sorted_keys = np.sort(key)
        if len(key) < 2 or (sorted_keys[1:] != sorted_keys[:-1]).all():
            return np.arange(len(self))  # no repeated pair: every row is the latest of its pair
        time = self.timestamp if self.timestamp is not None else np.zeros(len(self), dtype=np.int64)
        order = np.lexsort((np.arange(len(self)), time, key))
        sorted_key = key[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = sorted_key[1:] != sorted_key[:-1]
        return np.sort(order[last])

    def sequences(self) -> Sequences:
        """Per-user item sequences ordered by timestamp (source order breaks ties, or is the order)."""
        position = np.arange(len(self))
        if self.timestamp is not None:
            order = np.lexsort((position, self.timestamp, self.user_index))
        else:
            order = np.lexsort((position, self.user_index))
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(self.user_counts(), out=indptr[1:])
        return Sequences(indptr=indptr, items=self.item_index[order], rows=order)

    def to_frame(self) -> pd.DataFrame:
        """Long frame with external ids: user_id, item_id and, when present, rating and timestamp."""
        columns: dict[str, Any] = {
            "user_id": self.users.lookup(self.user_index),
            "item_id": self.items.lookup(self.item_index),
        }
        if self.rating is not None:
            columns["rating"] = self.rating
        if self.timestamp is not None:
            columns["timestamp"] = self.timestamp
        return pd.DataFrame(columns)

    def positions(self) -> np.ndarray:
        """Each interaction's place in its user's sequence, from 0, in the data's order (the order splits
        read as time where there are no timestamps)."""
        order = np.argsort(self.user_index, kind="stable")
        starts = np.searchsorted(self.user_index[order], self.user_index[order])
        position = np.empty(len(self), dtype=np.int64)
        position[order] = np.arange(len(self)) - starts
        return position

    def fingerprint(self) -> str:
        """sha256 over ids, interaction arrays and rating scale: equal data gives an equal fingerprint."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for vocab in (self.users, self.items):
            digest.update(pd.util.hash_pandas_object(pd.Index(vocab.ids), index=False).to_numpy().tobytes())
        for array in (self.user_index, self.item_index, self.rating, self.timestamp):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        digest.update(repr(self.rating_scale).encode())
        return digest.hexdigest()

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write a directory of Parquet files (interactions, users, items) plus meta.json, atomically."""
        path = Path(path)
        with atomic_path(path, is_dir=True, ours=("meta.json",), kind="saved interactions folder") as tmp:
            _write_parquet(self.to_frame(), tmp / "interactions.parquet")
            for label, vocab, frame in (
                ("users", self.users, self.user_features),
                ("items", self.items, self.item_features),
            ):
                table = pd.DataFrame({"id": vocab.ids})
                if frame is not None:
                    table = pd.concat([table, frame.reset_index(drop=True)], axis=1)
                _write_parquet(table, tmp / f"{label}.parquet")
            meta = {
                "format": "recforge-interactions",
                "format_version": FORMAT_VERSION,
                "name": self.name,
                "rating_scale": self.rating_scale,
                "has_rating": self.rating is not None,
                "has_timestamp": self.timestamp is not None,
                "source": self.source,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Interactions:
        """Read a directory written by `save` (or by the Spark pipeline, which writes the same layout)."""
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise DataFormatError("not a recforge interactions directory (meta.json missing)", path=path)
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "recforge-interactions" or meta.get("format_version", 0) > FORMAT_VERSION:
            raise DataFormatError("unsupported interactions format or version", path=meta_path)
        frame = pd.read_parquet(path / "interactions.parquet")
        users_table = pd.read_parquet(path / "users.parquet")
        items_table = pd.read_parquet(path / "items.parquet")
        users = Vocabulary(users_table["id"].to_numpy(), name="user")
        items = Vocabulary(items_table["id"].to_numpy(), name="item")
        user_features = users_table.drop(columns="id") if users_table.shape[1] > 1 else None
        item_features = items_table.drop(columns="id") if items_table.shape[1] > 1 else None
        scale = meta.get("rating_scale")
        return cls(
            users=users,
            items=items,
            user_index=users.index(frame["user_id"].to_numpy()),
            item_index=items.index(frame["item_id"].to_numpy()),
            rating=frame["rating"].to_numpy(dtype=np.float32, na_value=np.nan) if meta.get("has_rating") else None,
            timestamp=frame["timestamp"].to_numpy(dtype=np.int64) if meta.get("has_timestamp") else None,
            user_features=_lists_from_arrow(user_features),
            item_features=_lists_from_arrow(item_features),
            rating_scale=None if scale is None else tuple(scale),
            name=meta.get("name", path.name),
            source=meta.get("source", {}),
        )

    def describe(self):
        """Counts, density, ratings histogram and per-user/per-item quantiles (see `DatasetDescription`)."""
        from recforge.data.describe import describe

        return describe(self)


def whole_number_ids(values: np.ndarray, column: str, locate: Any) -> np.ndarray:
    """The ids of `column`. A float column of whole numbers (what pandas makes of an integer id column
    that had a gap, or read with a float dtype) becomes int64, as the table loader reads "10.0": float ids
    would make every saved model's and the service's integer ids unknown ("1" is not 1.0 there). A float
    with a fraction is no id: refused, naming the row (`locate(position)`: the error's place)."""
    if values.dtype.kind != "f":
        return values
    whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**53)
    if not whole.all():
        bad = int(np.argmin(whole))
        raise DataFormatError(
            f"ids must be integers or text, not {float(values[bad])!r} (is {column!r} the id column?)",
            column=column,
            **locate(bad),
        )
    return values.astype(np.int64)


def _align_features(features: pd.DataFrame | None, vocab: Vocabulary) -> pd.DataFrame | None:
    """Reorder a frame indexed by external id to vocabulary order (missing ids get NA rows)."""
    if features is None:
        return None
    if features.index.has_duplicates:
        dupes = features.index[features.index.duplicated()].unique()[:5].tolist()
        raise DataFormatError(f"feature table has duplicate ids, e.g. {dupes}")
    return features.reindex(pd.Index(vocab.ids)).reset_index(drop=True)


def _take_rows(frame: pd.DataFrame | None, rows: np.ndarray) -> pd.DataFrame | None:
    return None if frame is None else frame.iloc[rows].reset_index(drop=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    try:
        frame.to_parquet(path, index=False)
    except (TypeError, ValueError) as exc:  # pyarrow refuses mixed-type object columns
        raise DataFormatError(f"cannot store as Parquet ({exc}); ids must all be int or all be str", path=path) from exc


def _lists_from_arrow(frame: pd.DataFrame | None) -> pd.DataFrame | None:
    """Parquet list columns come back as numpy arrays; turn them back into lists of str."""
    if frame is None:
        return None
    for column in frame.columns:
        if frame[column].dtype == object:
            sample = frame[column].dropna()
            if len(sample) and isinstance(sample.iloc[0], np.ndarray):
                frame[column] = frame[column].map(lambda v: list(v) if isinstance(v, np.ndarray) else v)
    return frame
