"""Split properties: disjoint, complete, deterministic for a seed, and each split's own guarantees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data import Interactions
from recforge.data.splits import (
    Split,
    kfold_split,
    leave_last_out,
    per_user_split,
    random_split,
    stratified_split,
    temporal_split,
    user_disjoint_split,
)
from recforge.errors import LeakageError
from tests.conftest import make_interactions

data_strategy = st.builds(
    make_interactions,
    n_users=st.integers(1, 25),
    n_items=st.integers(1, 30),
    n=st.integers(1, 400),
    seed=st.integers(0, 10_000),
)
fractions = st.floats(0.05, 0.6)


def parts(split: Split) -> list[np.ndarray]:
    return [r for r in (split.train_rows, split.valid_rows, split.test_rows, split.fold_in_rows) if r is not None]


def assert_partition(split: Split) -> None:
    rows = np.concatenate(parts(split))
    assert len(rows) == len(np.unique(rows)), "parts overlap"
    assert np.array_equal(np.sort(rows), np.arange(len(split.data))), "parts do not cover every row"


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, test=fractions, seed=st.integers(0, 99))
def test_random_and_stratified(data, test, seed):
    for splitter in (random_split, stratified_split):
        split = splitter(data, test_fraction=test, valid_fraction=0.1, seed=seed)
        assert_partition(split)
        again = splitter(data, test_fraction=test, valid_fraction=0.1, seed=seed)
        assert all(np.array_equal(a, b) for a, b in zip(parts(split), parts(again), strict=True))
    split = stratified_split(data, test_fraction=test, seed=seed)
    for value in np.unique(data.rating):
        stratum = data.rating == value
        assert (split.test.rating == value).sum() == round(stratum.sum() * test)


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, test=fractions, seed=st.integers(0, 99), min_train=st.integers(1, 3))
def test_per_user_keeps_training_items(data, test, seed, min_train):
    split = per_user_split(data, test_fraction=test, valid_fraction=0.1, seed=seed, min_train=min_train)
    assert_partition(split)
    counts = data.user_counts()
    train_counts = split.train.user_counts()
    assert (train_counts >= np.minimum(counts, min_train)).all()
    assert np.array_equal(split.test_rows, per_user_split(data, test, 0.1, seed, min_train).test_rows)


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, users=fractions, fold_in=st.floats(0.1, 0.9), seed=st.integers(0, 99))
def test_user_disjoint(data, users, fold_in, seed):
    split = user_disjoint_split(data, test_user_fraction=users, fold_in_fraction=fold_in, seed=seed)
    assert_partition(split)
    train_users = set(np.unique(split.train.user_index))
    test_users = set(np.unique(split.test.user_index))
    assert not train_users & test_users
    assert test_users == set(np.unique(split.fold_in.user_index))  # every held-out user has both parts
    for user in test_users:  # fold-in part precedes the evaluation part in time
        assert (
            split.fold_in.timestamp[split.fold_in.user_index == user].max()
            <= split.test.timestamp[split.test.user_index == user].min()
        )


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, n_folds=st.integers(2, 7), seed=st.integers(0, 99), per_user=st.booleans())
def test_kfold_puts_every_row_in_exactly_one_test_fold(data, n_folds, seed, per_user):
    folds = [kfold_split(data, n_folds, f, seed=seed, per_user=per_user) for f in range(n_folds)]
    for split in folds:
        assert_partition(split)
    tested = np.concatenate([split.test_rows for split in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(data)))  # each row tested once
    sizes = np.array([len(split.test_rows) for split in folds])
    if per_user:  # each user's rows spread over the folds: at most one apart
        for user in np.unique(data.user_index):
            per_fold = [int((split.test.user_index == user).sum()) for split in folds]
            assert max(per_fold) - min(per_fold) <= 1
    else:
        assert sizes.max() - sizes.min() <= 1
    assert np.array_equal(folds[0].test_rows, kfold_split(data, n_folds, 0, seed=seed, per_user=per_user).test_rows)


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, test=fractions)
def test_temporal_never_leaks_the_future(data, test):
    split = temporal_split(data, test_fraction=test, valid_fraction=0.1)
    assert_partition(split)
    if len(split.test_rows) and len(split.train_rows):
        assert split.train.timestamp.max() < split.test.timestamp.min()
    if split.valid_rows is not None and len(split.valid_rows) and len(split.test_rows):
        assert split.valid.timestamp.max() < split.test.timestamp.min()


@settings(max_examples=60, deadline=None)
@given(data=data_strategy, k=st.integers(1, 3), valid_k=st.integers(0, 2))
def test_leave_last_out(data, k, valid_k):
    split = leave_last_out(data, k=k, valid_k=valid_k)
    assert_partition(split)
    counts = data.user_counts()
    eligible = counts > k + valid_k
    assert np.array_equal(split.test.user_counts(), np.where(eligible, k, 0))
    sequences = data.sequences()
    for user in np.flatnonzero(eligible)[:5]:
        rows = sequences.rows[sequences.indptr[user] : sequences.indptr[user + 1]]
        assert set(rows[-k:].tolist()) == set(split.test_rows[np.isin(split.test_rows, rows)].tolist())


def test_overlapping_parts_are_refused(small):
    with pytest.raises(LeakageError, match="more than one part"):
        Split.from_rows(small, train=np.arange(10), test=np.arange(5, 15))


def test_validation_carved_from_training_only(small):
    split = random_split(small, 0.2, seed=1).with_validation(random_split, test_fraction=0.25, seed=2)
    assert_partition(split)
    assert np.array_equal(split.test_rows, random_split(small, 0.2, seed=1).test_rows)
    assert len(split.valid_rows) == round(0.25 * (len(small) - len(split.test_rows)))


def test_temporal_split_names_its_cut_off_date_when_time_is_unix_seconds(ml100k):
    assert temporal_split(ml100k, 0.2).name == "temporal cut-off at 889237269 (1998-03-07 02:21 UTC)"
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 3], "t": [0, 1, 2, 3]})
    positions = Interactions.from_frame(frame, timestamp="t")  # a sequence file's positions are not dates
    assert temporal_split(positions, 0.5).name == "temporal cut-off at 2"


def test_a_split_prints_as_its_name_data_and_part_sizes():
    data = make_interactions(n_users=20, n_items=15, n=300, seed=1)
    split = per_user_split(data, test_fraction=0.2, seed=3).with_validation(per_user_split, test_fraction=0.1, seed=4)
    text = repr(split)
    sizes = split.sizes()
    assert text.startswith(f"Split({split.name!r} of {data.name!r}, ") and text.endswith(", seed=3)")
    assert all(f"{part}={size:,}" in text for part, size in sizes.items()) and "array" not in text
