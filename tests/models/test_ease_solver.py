"""EASE's closed form as solved in place (Cholesky factor and inverse written over the Gram matrix)
against the textbook formula with a plain inverse, and scoring in the weights' dtype."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data.interactions import Interactions
from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.models.ease import ease_weights


def _textbook(gram: np.ndarray, reg: float, dropout: float) -> np.ndarray:
    """B = I − P·diag(1/diag P), P = (G + Λ)⁻¹, Λ = diag(λ + p/(1−p)·G_ii); diag(B) = 0."""
    penalised = gram + np.diag(reg + dropout / (1 - dropout) * np.diag(gram))
    inverse = np.linalg.inv(penalised)
    weights = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights


@settings(max_examples=40, deadline=None)
@given(
    n_users=st.integers(1, 40),
    n_items=st.integers(1, 23),
    density=st.floats(0.05, 0.9),
    reg=st.floats(0.5, 100.0),
    dropout=st.sampled_from([0.0, 0.3, 0.6]),
    seed=st.integers(0, 2**16),
)
def test_the_in_place_solution_is_the_textbook_one(n_users, n_items, density, reg, dropout, seed):
    matrix = sp.random(n_users, n_items, density=density, format="csr", random_state=seed)
    matrix.data[:] = 1.0
    expected = _textbook((matrix.T @ matrix).toarray(), reg, dropout)
    weights = ease_weights(matrix, reg, dropout)
    single = ease_weights(matrix, reg, dropout, dtype="float32")
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(single, expected, rtol=2e-3, atol=1e-5)
    assert weights.flags.c_contiguous and single.dtype == np.float32


def test_a_given_gram_matrix_becomes_the_weights_in_its_own_memory():
    rng = np.random.default_rng(0)
    factors = rng.standard_normal((30, 5))
    gram = factors @ factors.T + np.eye(30)
    expected = _textbook(gram, 2.0, 0.3)
    weights = ease_weights(None, 2.0, 0.3, gram=gram)
    assert np.shares_memory(weights, gram)  # no second n_items² array
    np.testing.assert_allclose(weights, expected, rtol=1e-9, atol=1e-12)


def test_an_indefinite_gram_matrix_is_refused_with_advice():
    gram = np.array([[1.0, 5.0], [5.0, 1.0]])
    with pytest.raises(ConfigError, match="not positive definite; raise reg"):
        ease_weights(None, 0.1, gram=gram)


def test_scores_are_computed_in_the_weights_dtype():
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 20, 20, 30, 10, 30]})
    model = create_model("ease", reg=1.0).fit(Interactions.from_frame(frame))
    assert model.weights_.dtype == np.float32
    scores = model.score(np.arange(3))
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, model.seen_.toarray() @ model.weights_.astype(np.float64), rtol=1e-6)


def test_float32_by_default_ranks_as_float64_does(ml100k_ranking_split):
    from recforge.evaluation.protocols import FullRankingEvaluator

    split = ml100k_ranking_split
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,))
    assert create_model("ease").config.dtype == "float32"
    single, double = (create_model("ease", dtype=d).fit(split.train) for d in ("float32", "float64"))
    np.testing.assert_allclose(single.weights_, double.weights_, atol=2e-5)
    lists = [m.recommend(np.arange(split.train.n_users), 10, external_ids=False).item_index for m in (single, double)]
    assert (lists[0] == lists[1]).all(axis=1).mean() > 0.98  # the same top 10 for all but near-ties
    values = [evaluator.evaluate(m).summary["ndcg@10"] for m in (single, double)]
    assert abs(values[0] - values[1]) < 1e-4


def test_a_gram_matrix_float32_cannot_factorise_is_solved_in_float64():
    """Two items taken by exactly the same users and a reg of 1e-7: float32's Cholesky breaks down,
    float64's does not; the fit says so in its log and its weights are float64's."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(200):
        items = set(rng.choice(np.arange(2, 60), 8, replace=False).tolist()) | ({0, 1} if user % 2 else set())
        rows += [(user, item) for item in items]
    data = Interactions.from_frame(pd.DataFrame(rows, columns=["user_id", "item_id"]))
    with pytest.raises(ConfigError):
        ease_weights(data.to_csr("binary"), 1e-7, dtype="float32")
    fitted = create_model("ease", reg=1e-7, dropout=0.0).fit(data)
    assert fitted.training_log_[-1]["note"].startswith("float32 could not factorise")
    reference = ease_weights(data.to_csr("binary"), 1e-7, dtype="float64").astype(np.float32)
    np.testing.assert_array_equal(fitted.weights_, reference)
