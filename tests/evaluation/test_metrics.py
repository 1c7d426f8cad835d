"""Metrics against hand-computed values and against trec_eval (through ir_measures) on random inputs."""

from __future__ import annotations

import math

import ir_measures
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_measures import AP, RR, P, R, Success, nDCG

from recforge.evaluation import metrics as M


def test_rating_metrics_hand_computed():
    truth, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 3.0, 2.0])
    assert M.mse(truth, pred) == pytest.approx(5 / 4)
    assert M.rmse(truth, pred) == pytest.approx(math.sqrt(5 / 4))
    assert M.mae(truth, pred) == pytest.approx(3 / 4)
    assert M.r2(truth, pred) == pytest.approx(1 - 5 / 5)  # SS_tot = 2.25+0.25+0.25+2.25 = 5
    assert M.r2(truth, np.full(4, truth.mean())) == pytest.approx(0.0)


def test_ranking_metrics_hand_computed():
    # one user, 3 relevant items; list hits at ranks 1 and 3 (gain 1), k = 3
    relevance = np.array([[1.0, 0.0, 1.0]])
    ideal = np.array([[1.0, 1.0, 1.0]])
    n_rel = np.array([3])
    assert M.precision_at_k(relevance, 3)[0] == pytest.approx(2 / 3)
    assert M.recall_at_k(relevance, n_rel, 3)[0] == pytest.approx(2 / 3)
    assert M.hit_rate_at_k(relevance, 3)[0] == 1.0
    assert M.reciprocal_rank_at_k(relevance, 3)[0] == 1.0
    assert M.average_precision_at_k(relevance, n_rel, 3)[0] == pytest.approx((1 + 2 / 3) / 3)
    dcg = 1 + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert M.ndcg_at_k(relevance, ideal, 3)[0] == pytest.approx(dcg / idcg)
    # IDCG is over min(|relevant|, k): with one relevant item a hit at rank 1 gives NDCG 1
    assert M.ndcg_at_k(np.array([[1.0, 0, 0]]), np.array([[1.0, 0, 0]]), 3)[0] == 1.0
    assert M.reciprocal_rank_at_k(np.array([[0, 0, 1.0]]), 2)[0] == 0.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=30) | st.just(10**9), min_size=1, max_size=20), st.integers(1, 25))
def test_single_target_metrics_equal_the_general_ones(ranks, k):
    """With one relevant item per query, the rank shortcuts agree with the list metrics (rank 10**9 = unranked)."""
    ranks = np.array(ranks, dtype=np.float64)
    relevance = np.zeros((len(ranks), k))
    listed = ranks < k
    relevance[np.flatnonzero(listed), ranks[listed].astype(int)] = 1.0
    ideal = np.zeros((len(ranks), k))
    ideal[:, 0] = 1.0
    np.testing.assert_allclose(M.ndcg_from_ranks(ranks, k), M.ndcg_at_k(relevance, ideal, k))
    np.testing.assert_allclose(M.hit_rate_from_ranks(ranks, k), M.hit_rate_at_k(relevance, k))
    np.testing.assert_allclose(
        M.reciprocal_rank_from_ranks(np.where(listed, ranks, np.inf)), M.reciprocal_rank_at_k(relevance, k)
    )
    assert M.topk_accuracy(ranks, k) == pytest.approx(listed.mean())


def test_curves_match_pointwise_metrics():
    rng = np.random.default_rng(0)
    relevance = (rng.random((20, 10)) < 0.3).astype(float)
    n_rel = relevance.sum(axis=1) + rng.integers(1, 4, size=20)
    ideal = (np.arange(10)[None, :] < n_rel[:, None]).astype(float)
    curves = M.curves(relevance, ideal, n_rel)
    for k in (1, 4, 10):
        assert curves["ndcg"][k - 1] == pytest.approx(M.ndcg_at_k(relevance, ideal, k).mean())
        assert curves["recall"][k - 1] == pytest.approx(M.recall_at_k(relevance, n_rel, k).mean())
        assert curves["precision"][k - 1] == pytest.approx(M.precision_at_k(relevance, k).mean())


def test_beyond_accuracy_hand_computed():
    recommended = np.array([[0, 1], [1, -1]])
    assert M.catalogue_coverage(recommended, 4) == 0.5
    assert M.novelty(recommended, np.array([0.5, 0.25, 1.0, 1.0])).tolist() == [1.5, 2.0]
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert M.intra_list_diversity(recommended, vectors).tolist() == [1.0, 0.0]
    assert M.average_popularity(recommended, np.array([10, 20, 0, 0])).tolist() == [15.0, 20.0]
    assert M.gini_index(np.array([[0, 0], [0, 0]]), 2) == pytest.approx(0.5)
    assert M.gini_index(np.array([[0, 1]]), 2) == pytest.approx(0.0)
    assert M.topk_accuracy(np.array([0, 3, np.inf, 9]), 5) == 0.5


@st.composite
def ranking_case(draw):
    n_items = draw(st.integers(3, 25))
    n_users = draw(st.integers(1, 6))
    k = draw(st.integers(1, n_items))
    graded = draw(st.booleans())
    users = []
    for _ in range(n_users):
        scores = draw(st.permutations(list(range(n_items))))  # distinct scores: no tie-breaking ambiguity
        n_rel = draw(st.integers(1, n_items))
        relevant = draw(st.lists(st.integers(0, n_items - 1), min_size=n_rel, max_size=n_rel, unique=True))
        grades = [draw(st.integers(1, 4)) if graded else 1 for _ in relevant]
        users.append((scores, dict(zip(relevant, grades, strict=True))))
    return n_items, k, users


@settings(max_examples=200, deadline=None)
@given(case=ranking_case())
def test_agrees_with_trec_eval(case):
    _n_items, k, users = case
    qrels = {f"u{u}": {f"i{i}": g for i, g in rel.items()} for u, (_, rel) in enumerate(users)}
    run = {f"u{u}": {f"i{i}": float(s) for i, s in enumerate(scores)} for u, (scores, _) in enumerate(users)}
    reference = {
        (m.query_id, str(m.measure)): m.value
        for m in ir_measures.iter_calc([nDCG @ k, P @ k, R @ k, RR @ k, AP @ k, Success @ k], qrels, run)
    }
    gains, ideal, n_rel = [], [], []
    for scores, rel in users:
        order = np.argsort(-np.asarray(scores))[:k]
        gains.append([rel.get(int(i), 0) for i in order])
        ideal.append(sorted(rel.values(), reverse=True)[:k] + [0] * max(0, k - len(rel)))
        n_rel.append(len(rel))
    gains, ideal, n_rel = np.array(gains, float), np.array(ideal, float), np.array(n_rel)
    ours = {
        "nDCG": M.ndcg_at_k(gains, ideal, k),
        "P": M.precision_at_k(gains, k),
        "R": M.recall_at_k(gains, n_rel, k),
        "RR": M.reciprocal_rank_at_k(gains, k),
        # trec_eval's AP@k divides by all relevant items; ours by min(|relevant|, k) (the RecSys convention)
        "AP": M.average_precision_at_k(gains, n_rel, k) * np.minimum(n_rel, k) / n_rel,
        "Success": M.hit_rate_at_k(gains, k),
    }
    for u in range(len(users)):
        for name, values in ours.items():
            assert values[u] == pytest.approx(reference[(f"u{u}", f"{name}@{k}")], abs=1e-9), name
