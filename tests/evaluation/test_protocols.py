"""Evaluation protocols on hand-built cases and on real data, plus the leakage guards."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from recforge.coldstart import HISTORY, KNOWN_USERS, RATINGS
from recforge.data import Interactions
from recforge.data.splits import Split, leave_last_out, per_user_split, random_split
from recforge.errors import LeakageError
from recforge.evaluation.guards import check_fitted_on, check_split
from recforge.evaluation.protocols import (
    FullRankingEvaluator,
    RatingEvaluator,
    _gains_at,
    _ideal_gains,
    _ranks_of,
    next_item_evaluator,
)
from recforge.models.base import Recommender
from recforge.models.baselines import BiasBaseline, GlobalMean, MostPopular


class FixedScores(Recommender):
    """Test double: scores from a fixed matrix; predictions = score."""

    name = "fixed"
    capabilities = frozenset({KNOWN_USERS, RATINGS, HISTORY})

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__()
        self.matrix = scores
        self.history_calls = 0

    def _fit(self, train, options):
        pass

    def _score_known(self, users):
        return self.matrix[users].copy()

    def _score_history(self, history, users):
        self.history_calls += 1
        return self.matrix[users].copy()

    def _predict(self, users, items):
        return self.matrix[users, items]


def tiny() -> Interactions:
    # user 0: train items 0,1; test items 2,4. user 1: train item 3; test item 0
    frame = pd.DataFrame(
        {
            "user_id": [0, 0, 0, 0, 1, 1],
            "item_id": [0, 1, 2, 4, 3, 0],
            "rating": [5.0, 4.0, 3.0, 5.0, 2.0, 1.0],
            "timestamp": [1, 2, 3, 4, 1, 2],
        }
    )
    return Interactions.from_frame(frame, rating="rating", timestamp="timestamp", rating_scale=(1, 5))


def test_full_ranking_hand_computed():
    data = tiny()
    split = Split.from_rows(data, train=[0, 1, 4], test=[2, 3, 5])
    scores = np.array([[9, 8, 1, 7, 2], [0.5, 4, 3, 9, 1]], dtype=np.float32)
    model = FixedScores(scores).fit(split.train)
    result = FullRankingEvaluator(split.train, split.test, ks=(1, 2)).evaluate(model)
    # user 0 after excluding items 0,1: ranking 3 (7), 4 (2), 2 (1) -> relevance [0, 1, 1]
    # user 1 after excluding item 3: ranking 1 (4), 2 (3), 4 (1), 0 (0.5) -> relevant item 0 at rank 4
    per_user = result.per_user
    assert per_user.loc[0, "precision@2"] == 0.5 and per_user.loc[0, "recall@2"] == 0.5
    assert per_user.loc[0, "mrr@2"] == 0.5 and per_user.loc[1, "hit_rate@2"] == 0.0
    assert per_user.loc[0, "ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert result.topk_accuracy["top1_accuracy"] == 0.0
    assert result.topk_accuracy["top5_accuracy"] == 1.0  # every held-out pair ranks within the 5 items
    assert result.recommended.item_index[0].tolist() == [3, 4]
    # without exclusion the training items come back
    open_result = FullRankingEvaluator(split.train, split.test, ks=(2,), exclude_train=False).evaluate(model)
    assert open_result.recommended.item_index[0].tolist() == [0, 1]
    assert "nothing excluded" in open_result.protocol


def test_graded_relevance_uses_ratings_as_gains():
    data = tiny()
    split = Split.from_rows(data, train=[0, 1, 4], test=[2, 3, 5])
    model = FixedScores(np.array([[9, 8, 1, 7, 2], [0.5, 4, 3, 9, 1]], dtype=np.float32)).fit(split.train)
    result = FullRankingEvaluator(split.train, split.test, ks=(3,), relevance="graded").evaluate(model)
    dcg = 5 / np.log2(3) + 3 / np.log2(4)  # item 4 (rating 5) at rank 2, item 2 (rating 3) at rank 3
    idcg = 5 + 3 / np.log2(3)
    assert result.per_user.loc[0, "ndcg@3"] == pytest.approx(dcg / idcg)


def test_rating_evaluator_clips_to_the_scale():
    data = tiny()
    split = Split.from_rows(data, train=[0, 1, 4], test=[2, 3, 5])
    scores = np.zeros((2, 5), dtype=np.float32)
    scores[0, 2], scores[0, 4], scores[1, 0] = 9.0, 5.0, -3.0  # clipped to 5, 5, 1
    result = RatingEvaluator(split.train, split.test).evaluate(FixedScores(scores).fit(split.train))
    assert result.summary["rmse"] == pytest.approx(np.sqrt((2**2 + 0 + 0) / 3))
    assert result.per_user.loc[0, "mse"] == pytest.approx(2.0)


def test_sampled_protocol_is_named_as_such(ml100k):
    split = per_user_split(ml100k, 0.2, seed=0)
    model = MostPopular().fit(split.train)
    result = FullRankingEvaluator(split.train, split.test, ks=(10,), sampled_negatives=100).evaluate(model)
    assert result.protocol.startswith("sampled (100 negatives")
    full = FullRankingEvaluator(split.train, split.test, ks=(10,)).evaluate(model)
    # per held-out pair, ranking against 100 negatives is far easier than against the whole catalogue
    assert result.summary["hit_rate@10"] > 3 * full.topk_accuracy["top10_accuracy"] > 0


def test_next_item_protocol_passes_history_and_excludes_it(ml100k):
    split = leave_last_out(ml100k, k=1, valid_k=1)
    scores = np.random.default_rng(0).random((ml100k.n_users, ml100k.n_items)).astype(np.float32)
    model = FixedScores(scores).fit(split.train)
    evaluator = next_item_evaluator(split, ks=(10,))
    result = evaluator.evaluate(model)
    assert model.history_calls > 0
    valid_items = split.valid.item_index[np.argsort(split.valid.user_index)]
    assert not (result.recommended.item_index == valid_items[:, None]).any()  # validation item is history: excluded
    chance = (10 / (ml100k.n_items - ml100k.user_counts() + 1)).mean()  # a random scorer's expected hit rate
    assert result.summary["hit_rate@10"] < chance + 4 * np.sqrt(chance / ml100k.n_users)


def test_test_pairs_that_are_training_pairs_are_counted_in_the_notes(ml100k):
    """Seen items are excluded, so a test pair also in training can never be found: a test file taken from
    the training data scored 0 everywhere without a word. Now the notes count them (and ask when most are)."""
    split = per_user_split(ml100k, 0.2, seed=0)
    model = MostPopular().fit(split.train)
    clean = FullRankingEvaluator(split.train, split.test, ks=(10,)).evaluate(model)
    assert not any("also in the training data" in note for note in clean.notes)
    rows = np.random.default_rng(0).choice(len(split.train), 500, replace=False)
    mixed = Interactions(
        users=split.test.users,
        items=split.test.items,
        user_index=np.concatenate([split.test.user_index[:1500], split.train.user_index[rows]]),
        item_index=np.concatenate([split.test.item_index[:1500], split.train.item_index[rows]]),
    )
    notes = FullRankingEvaluator(split.train, mixed, ks=(10,)).evaluate(model).notes
    assert "500 of 2000 test pair(s) are also in the training data, whose items are excluded" in " ".join(notes)
    reused = split.train.subset(rows)
    notes = FullRankingEvaluator(split.train, reused, ks=(10,)).evaluate(model).notes
    assert any(note.startswith("500 of 500") and note.endswith("part of the training data?") for note in notes)


def test_popularity_on_ml100k_is_a_real_floor(ml100k):
    split = per_user_split(ml100k, 0.2, seed=0)
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,))
    popular = evaluator.evaluate(MostPopular().fit(split.train)).summary["ndcg@10"]
    constant = evaluator.evaluate(GlobalMean().fit(split.train)).summary["ndcg@10"]
    assert 0.18 < popular < 0.30 and popular > 2 * constant


def test_bias_baseline_matches_surprise_rmse_band(ml100k):
    from recforge.data.loaders import load_movielens_100k_fold

    fold = load_movielens_100k_fold("u1")
    model = BiasBaseline().fit(fold.train)
    rmse = RatingEvaluator(fold.train, fold.test).evaluate(model).summary["rmse"]
    # Surprise 1.1.5 BaselineOnly (ALS, reg_u=15, reg_i=10, 10 epochs) on the same fold: RMSE 0.959944
    assert rmse == pytest.approx(0.959944, abs=1e-5)


def test_guards_refuse_leaks(ml100k):
    split = random_split(ml100k, 0.2, seed=0)
    check_split(split)
    model = MostPopular().fit(ml100k)  # fitted on everything, test included
    with pytest.raises(LeakageError, match="fitted on data other than"):
        FullRankingEvaluator(split.train, split.test).evaluate(model)
    with pytest.raises(LeakageError, match="fitted on data other than"):
        check_fitted_on(model, split.train)
    doubled = Interactions.from_frame(
        pd.concat([ml100k.to_frame().head(500)] * 2), rating="rating", timestamp="timestamp"
    )
    with pytest.raises(LeakageError, match=r"pair\(s\) also appear in training, e.g. user"):
        check_split(random_split(doubled, 0.5, seed=0))
    leaky_time = Split.from_rows(ml100k, train=np.arange(1000), test=np.arange(1000, 2000), kind="temporal")
    with pytest.raises(LeakageError, match="test period"):
        check_split(leaky_time)


# ----------------------------------------------------------------------------- sparse per-batch lookups


@st.composite
def gains_and_lists(draw):
    n_rows, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    dense = draw(arrays(np.float64, (n_rows, n_items), elements=st.sampled_from([0.0, 0.0, 1.0, 2.5, 5.0, -1.0])))
    cut = draw(st.integers(1, n_items))
    lists = np.stack([np.random.default_rng(draw(st.integers(0, 99))).permutation(n_items)[:cut] for _ in dense])
    short = draw(arrays(np.int64, n_rows, elements=st.integers(0, cut)))
    lists[np.arange(cut)[None, :] >= (cut - short)[:, None]] = -1  # short lists end in -1
    return dense, lists, cut


@given(gains_and_lists())
@settings(max_examples=200, deadline=None)
def test_sparse_lookups_equal_the_dense_computation(case):
    dense, lists, cut = case
    gains = sp.csr_matrix(dense)
    expected_at = np.where(lists >= 0, np.take_along_axis(dense, np.maximum(lists, 0), axis=1), 0.0)
    np.testing.assert_array_equal(_gains_at(gains, lists), expected_at)
    np.testing.assert_array_equal(_ideal_gains(gains, cut), -np.sort(-dense, axis=1)[:, :cut])
    rows, items = np.nonzero(np.ones_like(dense))
    expected_rank = np.full(dense.shape, np.inf)
    for row, top in enumerate(lists):  # reference: a plain loop over a handful of rows
        for position, item in enumerate(top):
            if item >= 0:
                expected_rank[row, item] = position
    np.testing.assert_array_equal(_ranks_of(lists, rows, items), expected_rank[rows, items])
