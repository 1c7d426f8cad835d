"""What a model is asked to score: `Query` (who) and `History` (interactions given at query time).

A query row describes one user by any mix of
- `users`: the user's index in the model's vocabulary, or -1 for someone the model never saw;
- `history`: interactions given now (a new user's ratings, fresh clicks, the next-item protocol's past);
- `features`: user features (age, occupation, ...) for models with a user-feature tower.
Every model's `score`/`recommend` takes a `Query`; `recforge.coldstart` decides which path serves each
row (the trained user, the history, the features, or popularity) and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.data.interactions import Interactions, Sequences
from recforge.data.vocabulary import Vocabulary
from recforge.errors import ConfigError

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class History:
    """Interactions supplied at query time, one row per query.

    `binary` (n_queries, n_items) marks every item the query interacted with; `ratings` holds the
    rated ones (explicit value), or None when the source has no ratings; `sequences` lists each
    query's items in time order (for sequential models).
    """

    binary: sp.csr_matrix
    ratings: sp.csr_matrix | None
    sequences: Sequences

    def __len__(self) -> int:
        return self.binary.shape[0]

    @classmethod
    def from_interactions(cls, data: Interactions, users: np.ndarray) -> History:
        """The rows of `data` belonging to `users` (user indices of data's vocabulary), one query each."""
        users = np.asarray(users, dtype=np.int64)
        position = np.full(data.n_users, -1, dtype=np.int64)
        position[users] = np.arange(len(users))
        keep = position[data.user_index] >= 0
        part = data.subset(keep)
        query = position[part.user_index]
        remapped = Interactions(
            users=Vocabulary(np.arange(len(users)), "query"),
            items=data.items,
            user_index=query,
            item_index=part.item_index,
            rating=part.rating,
            timestamp=part.timestamp,
            rating_scale=data.rating_scale,
        )
        ratings = remapped.explicit().to_csr("rating") if remapped.rating is not None else None
        return cls(binary=remapped.to_csr("binary"), ratings=ratings, sequences=remapped.sequences())

    @classmethod
    def from_items(
        cls, item_lists: list[list[int]], n_items: int, ratings: list[list[float | None]] | None = None
    ) -> History:
        """Queries given as lists of item indices (in time order), with optional ratings (None = unrated)."""
        n = len(item_lists)
        lengths = np.array([len(items) for items in item_lists], dtype=np.int64)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (
            np.concatenate([np.asarray(i, dtype=np.int64) for i in item_lists]) if indptr[-1] else np.zeros(0, np.int64)
        )
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ConfigError("history item index out of range")
        query = np.repeat(np.arange(n), lengths)
        # canonical CSR straight from sorted unique (query, item) keys: no COO round trip (a service write
        # builds two of these; through COO they were most of its cost)
        keys = np.unique(query * n_items + items)
        binary = _csr(keys, n, n_items, np.ones(len(keys), np.float32))
        rating_matrix = None
        if ratings is not None:
            values = np.array([np.nan if r is None else r for row in ratings for r in row], dtype=np.float32)
            if len(values) != len(items):
                raise ConfigError("ratings must match the item lists one for one")
            rated = np.flatnonzero(~np.isnan(values))
            # the latest rating of a repeated item wins: keep the last occurrence per (query, item)
            rated_keys = query[rated] * n_items + items[rated]
            unique_keys, last_from_end = np.unique(rated_keys[::-1], return_index=True)
            kept = rated[len(rated) - 1 - last_from_end]
            rating_matrix = _csr(unique_keys, n, n_items, values[kept])
        sequences = Sequences(indptr=indptr, items=items, rows=np.arange(len(items)))
        return cls(binary=binary, ratings=rating_matrix, sequences=sequences)

    def take(self, rows: np.ndarray | slice) -> History:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        starts = self.sequences.indptr[rows]
        lengths = self.sequences.indptr[rows + 1] - starts
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        positions = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths) + np.repeat(starts, lengths)
        sequences = Sequences(indptr=indptr, items=self.sequences.items[positions], rows=self.sequences.rows[positions])
        return History(self.binary[rows], None if self.ratings is None else self.ratings[rows], sequences)

    @classmethod
    def empty(cls, n: int, n_items: int) -> History:
        """n queries without interactions."""
        return cls.from_items([[] for _ in range(n)], n_items)

    def row_items(self, row: int) -> np.ndarray:
        """Item indices of one query (in time order, repeats kept)."""
        return self.sequences.items[self.sequences.indptr[row] : self.sequences.indptr[row + 1]]

    def row_ratings(self, row: int) -> list[float | None]:
        """The ratings of `row_items(row)`, position by position (None where unrated, or everywhere when the
        history has no ratings)."""
        items = self.row_items(row)
        if self.ratings is None or not len(items):
            return [None] * len(items)
        rated = self.ratings.getrow(row)
        values = dict(zip(rated.indices.tolist(), rated.data.tolist(), strict=True))
        return [values.get(int(i)) for i in items]

    def lengths(self) -> np.ndarray:
        """(n,) number of distinct items per query."""
        return np.diff(self.binary.indptr)


def _csr(keys: np.ndarray, n_rows: int, n_columns: int, values: np.ndarray) -> sp.csr_matrix:
    """A canonical CSR matrix from sorted unique flat keys (row * n_columns + column) and their values.
    Indices are int32 when they fit, as scipy would choose: handed int64, scipy scans them to decide,
    which was a third of building a one-row history (a service write builds two)."""
    rows = keys // n_columns
    index_dtype = np.int32 if max(n_columns, len(keys)) < _INT32_MAX else np.int64
    indptr = np.zeros(n_rows + 1, dtype=index_dtype)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    columns = (keys - rows * n_columns).astype(index_dtype)
    matrix = sp.csr_matrix((values, columns, indptr), shape=(n_rows, n_columns))
    matrix.has_canonical_format = True
    return matrix


@dataclass(frozen=True)
class Query:
    """Rows to score: `users` (n,) user indices (-1 = not a user the model knows), with an optional
    `history` (n rows) and optional `features` (a frame of n rows; None values mean unknown)."""

    users: np.ndarray
    history: History | None = None
    features: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        users = np.asarray(self.users, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "users", users)
        if self.history is not None and len(self.history) != len(users):
            raise ConfigError(f"the history has {len(self.history)} rows for {len(users)} queries")
        if self.features is not None:
            if len(self.features) != len(users):
                raise ConfigError(f"the features have {len(self.features)} rows for {len(users)} queries")
            object.__setattr__(self, "features", self.features.reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def known(cls, users: np.ndarray | list[int]) -> Query:
        """Users the model was trained on, scored from what it learned."""
        return cls(np.asarray(users, dtype=np.int64))

    @classmethod
    def from_history(cls, history: History, users: np.ndarray | None = None) -> Query:
        """Queries described by their interactions; `users` (default all -1) says who they are, if known."""
        return cls(np.full(len(history), -1) if users is None else np.asarray(users, np.int64), history)

    @classmethod
    def from_items(
        cls,
        item_lists: list[list[int]],
        n_items: int,
        ratings: list[list[float | None]] | None = None,
        users: np.ndarray | None = None,
    ) -> Query:
        """Queries given as item-index lists in time order (ratings optional, None = unrated)."""
        return cls.from_history(History.from_items(item_lists, n_items, ratings), users)

    @classmethod
    def from_features(cls, features: pd.DataFrame, history: History | None = None) -> Query:
        """New users described by features (and optionally a history)."""
        return cls(np.full(len(features), -1), history, features)

    @classmethod
    def from_interactions(cls, data: Interactions, users: np.ndarray) -> Query:
        """Known `users` (indices of data's vocabulary) with their rows of `data` as the history."""
        users = np.asarray(users, dtype=np.int64)
        return cls(users, History.from_interactions(data, users))

    def take(self, rows: np.ndarray | slice) -> Query:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        return Query(
            self.users[rows],
            None if self.history is None else self.history.take(rows),
            None if self.features is None else self.features.iloc[rows].reset_index(drop=True),
        )

    def has_history(self) -> np.ndarray:
        """(n,) bool: the row carries at least one interaction."""
        if self.history is None:
            return np.zeros(len(self), dtype=bool)
        return self.history.lengths() > 0

    def has_features(self) -> np.ndarray:
        """(n,) bool: the row carries at least one known feature value."""
        if self.features is None or self.features.shape[1] == 0:
            return np.zeros(len(self), dtype=bool)
        return self.features.notna().any(axis=1).to_numpy()
