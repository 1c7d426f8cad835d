"""Train/validation/test splits. Every split is a set of row indices into one `Interactions`.

All split functions are deterministic for a given seed and vectorised (random keys plus a stable
sort give per-group ranks without Python loops). A `Split` refuses overlapping parts on construction.
Vocabularies are shared by all parts: users or items that appear only in test keep their index, and
models treat them as unknown (they have no training rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from recforge.data.describe import as_utc_date
from recforge.data.interactions import Interactions
from recforge.errors import ConfigError, LeakageError

PARTS = ("train", "valid", "test", "fold_in")


@dataclass(frozen=True, eq=False)
class Split:
    """Row indices of `data` for each part. `fold_in` holds held-out users' given history (user-disjoint
    splits): it is input at query time, never training data and never evaluated."""

    data: Interactions
    train_rows: np.ndarray
    test_rows: np.ndarray
    valid_rows: np.ndarray | None = None
    fold_in_rows: np.ndarray | None = None
    name: str = "split"
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.data)
        seen = np.zeros(n, dtype=np.int8)
        for part in PARTS:
            rows = getattr(self, f"{part}_rows")
            if rows is None:
                continue
            rows = np.sort(np.asarray(rows, dtype=np.int64))
            object.__setattr__(self, f"{part}_rows", rows)
            if len(rows) and (rows[0] < 0 or rows[-1] >= n):
                raise ValueError(f"{part} rows out of range for {n} interactions")
            if len(np.unique(rows)) != len(rows):
                raise ValueError(f"{part} rows contain duplicates")
            np.add.at(seen, rows, 1)
        if (seen > 1).any():
            raise LeakageError(f"split {self.name!r}: {int((seen > 1).sum())} row(s) belong to more than one part")

    @classmethod
    def from_rows(
        cls,
        data: Interactions,
        *,
        train: np.ndarray,
        test: np.ndarray,
        valid: np.ndarray | None = None,
        fold_in: np.ndarray | None = None,
        name: str = "split",
        seed: int | None = None,
        **params: Any,
    ) -> Split:
        return cls(
            data,
            np.asarray(train),
            np.asarray(test),
            None if valid is None else np.asarray(valid),
            None if fold_in is None else np.asarray(fold_in),
            name=name,
            seed=seed,
            params=params,
        )

    @cached_property
    def train(self) -> Interactions:
        return self.data.subset(self.train_rows)

    @cached_property
    def test(self) -> Interactions:
        return self.data.subset(self.test_rows)

    @cached_property
    def valid(self) -> Interactions | None:
        return None if self.valid_rows is None else self.data.subset(self.valid_rows)

    @cached_property
    def fold_in(self) -> Interactions | None:
        return None if self.fold_in_rows is None else self.data.subset(self.fold_in_rows)

    def sizes(self) -> dict[str, int]:
        return {p: len(getattr(self, f"{p}_rows")) for p in PARTS if getattr(self, f"{p}_rows") is not None}

    def __repr__(self) -> str:
        """Which split of which data, and its parts' sizes (the row arrays are what `*_rows` hold)."""
        sizes = ", ".join(f"{part}={size:,}" for part, size in self.sizes().items())
        seed = "" if self.seed is None else f", seed={self.seed}"
        return f"Split({self.name!r} of {self.data.name!r}, {sizes}{seed})"

    def describe(self) -> dict[str, Any]:
        """Name, seed, parameters and part sizes: what a report needs to state the split."""
        return {"name": self.name, "seed": self.seed, "params": self.params, "sizes": self.sizes()}

    def with_validation(self, splitter: Any, **kwargs: Any) -> Split:
        """Carve a validation part out of *training* rows only, with any split function of this module.

        The function's test part becomes validation; test rows are untouched.
        """
        if self.valid_rows is not None and len(self.valid_rows):
            raise ConfigError(f"split {self.name!r} already has a validation part")
        inner = splitter(self.train, **kwargs)
        return Split.from_rows(
            self.data,
            train=self.train_rows[inner.train_rows],
            valid=self.train_rows[inner.test_rows],
            test=self.test_rows,
            fold_in=self.fold_in_rows,
            name=f"{self.name} + validation ({inner.name})",
            seed=self.seed,
            **self.params,
            validation=inner.describe(),
        )

    def pairs_in_train(self, part: str = "test") -> np.ndarray:
        """Boolean mask over `part`'s rows: True where the same (user, item) pair is also in train."""
        other = getattr(self, part)
        if other is None:
            raise ValueError(f"split has no {part} part")
        n_items = self.data.n_items
        train_keys = self.train.user_index.astype(np.int64) * n_items + self.train.item_index
        keys = other.user_index.astype(np.int64) * n_items + other.item_index
        return np.isin(keys, train_keys)


# ----------------------------------------------------------------------------- helpers
def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _rank_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each row, its 0-based rank among rows of the same group when ordered by `keys` (then row order)."""
    order = np.lexsort((np.arange(len(groups)), keys, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - group_start
    return ranks


def _assign_by_rank(
    ranks: np.ndarray, n_test: np.ndarray, n_valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose rank is < n_test go to test, the next n_valid to validation, the rest to train."""
    test = ranks < n_test
    valid = ~test & (ranks < n_test + n_valid)
    train = ~test & ~valid
    return np.flatnonzero(train), np.flatnonzero(valid), np.flatnonzero(test)


def _time_keys(data: Interactions) -> np.ndarray:
    return data.timestamp if data.timestamp is not None else np.arange(len(data), dtype=np.int64)


def row_keys(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray | None, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per row from (user id, item id, timestamp, seed): splitmix64 over pandas'
    stable id hashes. Equal rows get equal keys whatever their position (exact duplicates are
    interchangeable), so any engine that calls this function on the same columns ranks rows the same."""
    with np.errstate(over="ignore"):
        key = pd.util.hash_array(np.asarray(user_ids)) ^ _mix(pd.util.hash_array(np.asarray(item_ids)) + np.uint64(1))
        if timestamps is not None:
            key = key ^ _mix(np.asarray(timestamps).astype(np.int64).view(np.uint64) + np.uint64(2))
        return _mix(key ^ _mix(np.full(len(key), seed, dtype=np.uint64) + np.uint64(3)))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection on uint64 that scatters nearby inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# ----------------------------------------------------------------------------- split functions
def random_split(data: Interactions, test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0) -> Split:
    """Rows drawn uniformly at random: round(n * test_fraction) to test, round(n * valid_fraction) to validation."""
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("valid_fraction", valid_fraction)
    n = len(data)
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    return Split.from_rows(
        data,
        test=order[:n_test],
        valid=order[n_test : n_test + n_valid] if valid_fraction else None,
        train=order[n_test + n_valid :],
        name=f"random {1 - test_fraction - valid_fraction:.0%}/{test_fraction:.0%}",
        seed=seed,
        kind="random",
        test_fraction=test_fraction,
        valid_fraction=valid_fraction,
    )


def stratified_split(
    data: Interactions, test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0
) -> Split:
    """Random split within each rating value, so train and test keep the same rating distribution.

    Each stratum (rating value; unrated rows form one stratum) sends round(size * fraction) rows (half to
    even) to test: the rows with the smallest `row_keys`. Keys hash each row's content, so the split does
    not depend on row order and the Spark pipeline reproduces it exactly.
    """
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("valid_fraction", valid_fraction)
    strata = (
        np.zeros(len(data), dtype=np.int64)  # implicit data: one stratum (a random split by row keys)
        if data.rating is None
        else np.unique(np.nan_to_num(data.rating, nan=-np.inf), return_inverse=True)[1].ravel()
    )
    keys = row_keys(data.users.lookup(data.user_index), data.items.lookup(data.item_index), data.timestamp, seed)
    ranks = _rank_within_groups(strata, keys)
    sizes = np.bincount(strata)[strata]
    n_test = np.rint(sizes * test_fraction)
    n_valid = np.rint(sizes * valid_fraction)
    train, valid, test = _assign_by_rank(ranks, n_test, n_valid)
    return Split.from_rows(
        data,
        train=train,
        test=test,
        valid=valid if valid_fraction else None,
        seed=seed,
        name=f"stratified by rating {1 - test_fraction - valid_fraction:.0%}/{test_fraction:.0%}",
        kind="stratified",
        test_fraction=test_fraction,
        valid_fraction=valid_fraction,
    )


def per_user_split(
    data: Interactions, test_fraction: float = 0.2, valid_fraction: float = 0.0, seed: int = 0, min_train: int = 1
) -> Split:
    """Each user's interactions split at random: round(n_u * test_fraction) to test, with at least
    `min_train` kept in training (users with <= min_train interactions stay entirely in training)."""
    _check_fraction("test_fraction", test_fraction)
    _check_fraction("valid_fraction", valid_fraction)
    counts = data.user_counts()[data.user_index]
    keys = np.random.default_rng(seed).random(len(data))
    ranks = _rank_within_groups(data.user_index, keys)
    room = np.maximum(counts - min_train, 0)
    n_test = np.minimum(np.rint(counts * test_fraction), room)
    n_valid = np.minimum(np.rint(counts * valid_fraction), room - n_test)
    train, valid, test = _assign_by_rank(ranks, n_test, n_valid)
    return Split.from_rows(
        data,
        train=train,
        test=test,
        valid=valid if valid_fraction else None,
        seed=seed,
        name=f"per-user random {1 - test_fraction - valid_fraction:.0%}/{test_fraction:.0%}",
        kind="per_user",
        test_fraction=test_fraction,
        valid_fraction=valid_fraction,
        min_train=min_train,
    )


def user_disjoint_split(
    data: Interactions,
    test_user_fraction: float = 0.2,
    fold_in_fraction: float = 0.5,
    seed: int = 0,
    by_time: bool = True,
) -> Split:
    """Whole users held out of training; each held-out user's history is cut into a fold-in part
    (given to the model at query time) and an evaluation part (test).

    The fold-in part is the user's earliest `fold_in_fraction` of interactions (by time, ties by
    source order) when `by_time`, else a random subset; both parts get at least one row, so only users
    with 2+ interactions can be held out.
    """
    _check_fraction("test_user_fraction", test_user_fraction)
    if not 0.0 < fold_in_fraction < 1.0:
        raise ConfigError(f"fold_in_fraction must be in (0, 1), got {fold_in_fraction}")
    rng = np.random.default_rng(seed)
    counts = data.user_counts()
    eligible = np.flatnonzero(counts >= 2)
    n_held = round(len(eligible) * test_user_fraction)
    held_users = np.sort(rng.choice(eligible, size=n_held, replace=False))
    held = np.isin(data.user_index, held_users)
    keys = _time_keys(data) if by_time else rng.random(len(data))
    ranks = _rank_within_groups(data.user_index, keys)
    user_counts = counts[data.user_index]
    n_fold_in = np.clip(np.rint(user_counts * fold_in_fraction), 1, user_counts - 1)
    fold_in = held & (ranks < n_fold_in)
    test = held & ~fold_in
    return Split.from_rows(
        data,
        train=np.flatnonzero(~held),
        test=np.flatnonzero(test),
        fold_in=np.flatnonzero(fold_in),
        seed=seed,
        name=f"user-disjoint {test_user_fraction:.0%} of users, fold-in {fold_in_fraction:.0%}"
        + (" (earliest)" if by_time else " (random)"),
        kind="user_disjoint",
        test_user_fraction=test_user_fraction,
        fold_in_fraction=fold_in_fraction,
        by_time=by_time,
    )


def temporal_split(
    data: Interactions, test_fraction: float = 0.2, valid_fraction: float = 0.0, cutoff: int | None = None
) -> Split:
    """Global time cut-off: interactions at or after `cutoff` are test (validation is the slice just before).

    Without `cutoff`, it is the timestamp quantile leaving about `test_fraction` of rows after it
    (all rows sharing the cut-off timestamp go to test, so the future never leaks into training).
    """
    if data.timestamp is None:
        raise ConfigError("temporal_split needs timestamps")
    ts = data.timestamp
    test_cut = int(cutoff) if cutoff is not None else int(np.quantile(ts, 1 - test_fraction, method="higher"))
    test = ts >= test_cut
    valid = np.zeros(len(data), dtype=bool)
    valid_cut = None
    if valid_fraction:
        valid_cut = int(np.quantile(ts, 1 - test_fraction - valid_fraction, method="higher"))
        valid = (ts >= valid_cut) & ~test
    return Split.from_rows(
        data,
        train=np.flatnonzero(~test & ~valid),
        test=np.flatnonzero(test),
        valid=np.flatnonzero(valid) if valid_fraction else None,
        name=f"temporal cut-off at {test_cut}" + (f" ({date} UTC)" if (date := as_utc_date(test_cut, True)) else ""),
        kind="temporal",
        cutoff=test_cut,
        valid_cutoff=valid_cut,
    )


def leave_last_out(data: Interactions, k: int = 1, valid_k: int = 0) -> Split:
    """Per user, by time (ties by source order): the last `k` interactions to test, the `valid_k` before
    them to validation. Users with no more than k + valid_k interactions stay entirely in training.

    `leave_last_out(data, 1, 1)` is the standard sequential leave-one-out protocol.
    """
    if k < 1 or valid_k < 0:
        raise ConfigError("leave_last_out needs k >= 1 and valid_k >= 0")
    counts = data.user_counts()[data.user_index]
    reverse_rank = counts - 1 - _rank_within_groups(data.user_index, _time_keys(data))
    enough = counts > k + valid_k
    test = enough & (reverse_rank < k)
    valid = enough & ~test & (reverse_rank < k + valid_k)
    return Split.from_rows(
        data,
        train=np.flatnonzero(~test & ~valid),
        test=np.flatnonzero(test),
        valid=np.flatnonzero(valid) if valid_k else None,
        name=f"leave-last-{k}-out" + (f" (+{valid_k} validation)" if valid_k else ""),
        kind="leave_last_out",
        k=k,
        valid_k=valid_k,
    )


def kfold_split(data: Interactions, n_folds: int = 5, fold: int = 0, seed: int = 0, per_user: bool = False) -> Split:
    """Fold `fold` of a k-fold cross-validation: the rows are shuffled once (by `seed`) and dealt into
    `n_folds` folds of equal size (±1); the fold is the test part, the other folds train. With
    `per_user`, each user's rows are dealt separately (a random start fold per user), so every user
    with at least `n_folds` interactions has about 1/n_folds of them in every fold. Every row is in
    exactly one test fold across the k splits of one seed."""
    if not 2 <= n_folds <= 100:
        raise ConfigError(f"n_folds must be in 2..100, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise ConfigError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    rng = np.random.default_rng(seed)
    keys = rng.random(len(data))
    if per_user:
        offset = rng.integers(0, n_folds, data.n_users)  # so small users do not all land in fold 0
        assigned = (_rank_within_groups(data.user_index, keys) + offset[data.user_index]) % n_folds
    else:
        assigned = np.empty(len(data), dtype=np.int64)
        assigned[np.argsort(keys, kind="stable")] = np.arange(len(data)) % n_folds
    test = assigned == fold
    return Split.from_rows(
        data,
        train=np.flatnonzero(~test),
        test=np.flatnonzero(test),
        seed=seed,
        name=f"{n_folds}-fold{' per user' if per_user else ''}, fold {fold + 1}",
        kind="kfold",
        n_folds=n_folds,
        fold=fold,
        per_user=per_user,
    )


SPLITTERS = {
    "random": random_split,
    "stratified": stratified_split,
    "per_user": per_user_split,
    "user_disjoint": user_disjoint_split,
    "temporal": temporal_split,
    "leave_last_out": leave_last_out,
    "kfold": kfold_split,
}


def make_split(data: Interactions, kind: str, **params: Any) -> Split:
    """Split by name (the keys of `SPLITTERS`), as experiment configs do."""
    if kind not in SPLITTERS:
        raise ConfigError(f"unknown split kind {kind!r}; choose one of {sorted(SPLITTERS)}")
    return SPLITTERS[kind](data, **params)
