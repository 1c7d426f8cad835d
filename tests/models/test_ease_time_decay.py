"""EASE on a time-decayed Gram matrix (the co-occurrences against a hand computation and a per-user loop,
the source order as the time order where there are no timestamps) scored from recency-weighted
histories, with item features as pseudo-users."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import recforge.models.ease as ease
from recforge import load
from recforge.data.interactions import Interactions, Sequences
from recforge.data.query import History, Query
from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.models.ease import ease_weights, feature_gram, recency_rows, time_decayed_gram
from tests.conftest import make_interactions


def _frame(rows: list[tuple[int, int, int]]) -> Interactions:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    return Interactions.from_frame(frame, timestamp="timestamp")


def test_a_hand_computed_history():
    # user 1 took items a, b, c in that order (listed out of order); user 2 took c then a
    data = _frame([(1, 30, 3), (1, 10, 1), (1, 20, 2), (2, 10, 9), (2, 30, 5)])
    gram = time_decayed_gram(data, tau=2.0)
    a, b, c = (data.items.position(item) for item in (10, 20, 30))
    near, far = math.exp(-1 / 2), math.exp(-2 / 2)
    expected = np.zeros((3, 3))
    expected[a, b] = expected[b, a] = near  # user 1: a-b one apart
    expected[b, c] = expected[c, b] = near  # user 1: b-c one apart
    expected[a, c] = expected[c, a] = far + near  # user 1: a-c two apart; user 2: c-a one apart
    expected[a, a], expected[b, b], expected[c, c] = 2, 1, 2  # users per item
    np.testing.assert_allclose(gram, expected)


def test_pairs_further_apart_than_four_tau_are_left_out():
    data = _frame([(1, 100 + position, position) for position in range(12)])
    gram = time_decayed_gram(data, tau=2.0)  # window 8 positions
    first, ninth, tenth = (data.items.position(100 + p) for p in (0, 8, 9))
    assert gram[first, ninth] == pytest.approx(math.exp(-8 / 2))
    assert gram[first, tenth] == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), tau=st.floats(0.3, 20.0), sums=st.sampled_from(["dense", "sparse"]))
def test_the_gram_matrix_matches_a_per_user_loop(seed, tau, sums):
    """Both ways of summing the pairs (dense bincount, sparse matrices), a few pairs at a time."""
    data = make_interactions(n_users=8, n_items=12, n=60, seed=seed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ease._PairSums, "PAIRS_PER_SUM", 7)
        patch.setattr(ease._PairSums, "DENSE_ITEMS", 4096 if sums == "dense" else 0)
        gram = time_decayed_gram(data, tau)
    expected = np.zeros((data.n_items, data.n_items))
    for user in np.unique(data.user_index):
        mine = np.flatnonzero(data.user_index == user)
        history = list(data.item_index[mine][np.lexsort((mine, data.timestamp[mine]))])  # time order, ties by row
        history = [item for place, item in enumerate(history) if item not in history[place + 1 :]]  # latest
        for first in range(len(history)):
            for second in range(first + 1, min(len(history), first + int(np.ceil(4 * tau)) + 1)):
                weight = math.exp(-(second - first) / tau)
                expected[history[first], history[second]] += weight
                expected[history[second], history[first]] += weight
        for item in np.unique(history):
            expected[item, item] += 1  # users per item
    np.testing.assert_allclose(gram, expected, atol=1e-12)
    stored = ease.sparse_time_decayed_gram(data, tau)  # the same matrix, never dense
    assert sp.issparse(stored)
    np.testing.assert_allclose(stored.toarray(), expected, atol=1e-12)
    binary = data.to_csr("binary").astype(np.float64)
    plain = (binary.T @ binary).toarray()
    np.testing.assert_array_equal(np.diag(gram), np.diag(plain))
    assert np.allclose(gram, gram.T) and np.linalg.eigvalsh(gram).min() > -1e-9 * len(gram)  # 4τ covers these


def test_the_model_solves_ease_on_the_decayed_gram_matrix():
    data = make_interactions(seed=3)
    model = create_model("ease", reg=50.0, dropout=0.3, time_decay=5.0).fit(data)
    expected = ease_weights(data.to_csr("binary"), 50.0, 0.3, gram=time_decayed_gram(data, 5.0))
    np.testing.assert_allclose(model.weights_, expected.astype(np.float32), rtol=1e-5, atol=1e-6)


def test_without_timestamps_the_source_order_is_the_time_order():
    data = make_interactions(seed=5)
    order = np.lexsort((np.arange(len(data)), data.timestamp))
    in_time_order = replace(data, user_index=data.user_index[order], item_index=data.item_index[order])
    dated = replace(in_time_order, timestamp=data.timestamp[order], rating=None)
    undated = replace(in_time_order, timestamp=None, rating=None)
    np.testing.assert_allclose(time_decayed_gram(undated, 3.0), time_decayed_gram(dated, 3.0))
    shuffled = np.random.default_rng(0).permutation(len(data))
    scrambled = replace(undated, user_index=undated.user_index[shuffled], item_index=undated.item_index[shuffled])
    assert not np.allclose(time_decayed_gram(scrambled, 3.0), time_decayed_gram(undated, 3.0))


def test_recency_rows_weigh_each_item_by_what_came_after_it():
    # one sequence a, b, a, c (items 0, 1, 0, 2) and one of a single item 1
    sequences = Sequences(indptr=np.array([0, 4, 5]), items=np.array([0, 1, 0, 2, 1]), rows=np.arange(5))
    rows = recency_rows(sequences, n_items=4, kappa=2.0).toarray()
    expected = np.array([[math.exp(-1 / 2), math.exp(-2 / 2), 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(rows, expected)


def test_history_decay_scores_a_known_user_from_their_recency_weighted_row():
    data = make_interactions(seed=4)
    model = create_model("ease", reg=20.0, history_decay=3.0).fit(data)
    weighted = recency_rows(data.sequences(), data.n_items, 3.0)
    np.testing.assert_allclose(model.score([0, 5]), (weighted[[0, 5]] @ model.weights_), rtol=1e-5)
    plain = create_model("ease", reg=20.0).fit(data)
    np.testing.assert_allclose(plain.weights_, model.weights_)  # the weights do not change, only the query
    assert not np.allclose(plain.score([0]), model.score([0]))


def _with_item_values(data: Interactions, values: list[list[str]]) -> Interactions:
    return replace(data, item_features=pd.DataFrame({"tags": values}))


def test_the_feature_gram_counts_shared_values():
    data = _frame([(1, 10, 1), (1, 20, 2), (2, 30, 3)])
    tagged = _with_item_values(data, [["a", "b"], ["b"], []])  # items 10, 20, 30 in index order
    np.testing.assert_array_equal(feature_gram(tagged, "tags"), [[2, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_the_feature_gram_is_added_into_a_given_array_in_blocks(monkeypatch):
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [10, 20, 30, 40, 50]})
    tags = [["a", "b"], ["b"], [], ["a", "c"], ["c", "b"]]  # items 10..50 in index order
    tagged = _with_item_values(Interactions.from_frame(frame), tags)
    shared = np.array([[len(set(x) & set(y)) for y in tags] for x in tags], dtype=float)
    monkeypatch.setattr(ease, "_BLOCK_ROWS", 2)  # three blocks of rows, the last one short
    base = np.arange(25, dtype=float).reshape(5, 5)
    out = base.copy()
    assert feature_gram(tagged, "tags", 3.0, out=out) is out
    np.testing.assert_array_equal(out, base + 3.0 * shared)


def test_item_features_join_the_gram_matrix_as_pseudo_users():
    data = make_interactions(seed=6)
    rng = np.random.default_rng(0)
    tagged = _with_item_values(data, [list(rng.choice(["x", "y", "z"], size=rng.integers(0, 3))) for _ in range(40)])
    model = create_model("ease", reg=30.0, item_features="tags", feature_weight=2.0).fit(tagged)
    binary = tagged.to_csr("binary")
    gram = (binary.T @ binary).toarray() + 2.0 * feature_gram(tagged, "tags")
    np.testing.assert_allclose(model.weights_, ease_weights(binary, 30.0, 0.6, gram=gram), rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="'genres' is not a column"):
        create_model("ease", item_features="genres").fit(tagged)


def test_an_update_appends_to_the_training_history_in_time_order(tmp_path):
    """A service update (`update_user`) scores the training items in time order with the added ones last:
    the same as scoring the whole time-ordered history, before and after a save/load round trip."""
    # user 1 took item 30, then 20, then 10 (item-index order would put them the other way round)
    data = _frame([(1, 30, 1), (1, 20, 2), (1, 10, 3), (2, 10, 1), (2, 40, 2), (3, 20, 1), (3, 40, 2)])
    model = create_model("ease", reg=1.0, dropout=0.0, history_decay=1.0).fit(data)
    user, position = data.users.position(1), data.items.position
    in_time = [position(30), position(20), position(10)]
    assert model.training_history(user).row_items(0).tolist() == in_time
    added = History.from_items([[position(40)]], data.n_items)
    expected = model.score(Query(np.array([-1]), History.from_items([[*in_time, position(40)]], data.n_items)))
    np.testing.assert_allclose(model.score_updated(model.update_user(user, added)), expected, rtol=1e-6)
    loaded = load(model.save(tmp_path / "ease"))
    assert loaded.training_history(user).row_items(0).tolist() == in_time


def test_a_blend_updates_in_the_time_order_of_its_order_aware_member():
    data = _frame([(1, 30, 1), (1, 20, 2), (1, 10, 3), (2, 10, 1), (2, 40, 2), (3, 20, 1), (3, 40, 2)])
    decayed = {"model": "ease", "params": {"reg": 1.0, "dropout": 0.0, "history_decay": 1.0}}
    plain = {"model": "ease", "params": {"reg": 1.0, "dropout": 0.0}, "weight": 0.5}
    blend = create_model("blend", members=[plain, decayed]).fit(data)
    user = data.users.position(1)
    in_time = [data.items.position(item) for item in (30, 20, 10)]
    assert blend.training_history(user).row_items(0).tolist() == in_time
    unordered = create_model("blend", members=[plain]).fit(data)
    assert unordered.training_history(user).row_items(0).tolist() == sorted(in_time)
