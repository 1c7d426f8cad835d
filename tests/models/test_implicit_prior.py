"""Bayesian SVD++ (flipped): the regression prior's draws, and what implicit feedback changes in Bayesian MF."""

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.data.query import History
from recforge.models import create_model, load_model
from recforge.models.config import TrainOptions
from recforge.models.implicit_prior import RegressionPrior
from tests.conftest import make_interactions


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])  # both sides of the thin SVD
def test_draws_follow_the_matrix_normal_posterior(shape):
    """Mean (XᵀX + λI)⁻¹Xᵀ T and covariance Λ⁻¹ ⊗ (XᵀX + λI)⁻¹, checked on 40,000 draws; rank-deficient X
    (more features than rows) exercises the prior-only directions."""
    rng = np.random.default_rng(0)
    features = rng.random(shape) * (rng.random(shape) < 0.7)
    targets = rng.normal(size=(shape[0], 2))
    precision = np.array([[2.0, 0.6], [0.6, 1.0]])
    reg = 0.5
    prior = RegressionPrior(sp.csr_matrix(features), "test")
    row_cov = np.linalg.inv(features.T @ features + reg * np.eye(shape[1]))
    expected_mean = row_cov @ features.T @ targets
    draws = np.stack([prior.draw(targets, precision, reg, rng) for _ in range(40_000)])
    np.testing.assert_allclose(draws.mean(axis=0), expected_mean, atol=0.02)
    flat = draws.transpose(0, 2, 1).reshape(len(draws), -1)  # vec by columns: factor-major
    expected_cov = np.kron(np.linalg.inv(precision), row_cov)
    # each sample covariance's standard error is about sqrt((Σ_ii Σ_jj + Σ_ij²) / n): within 5 of them
    standard_error = np.sqrt((np.outer(np.diag(expected_cov), np.diag(expected_cov)) + expected_cov**2) / len(draws))
    assert np.all(np.abs(np.cov(flat, rowvar=False) - expected_cov) < 5 * standard_error)


def test_the_regularisation_draw_concentrates_where_the_weights_say():
    """λ | W ~ Gamma(1 + n/2, 1 + tr(WΛWᵀ)/2): weights drawn with λ = 4 give draws near 4."""
    rng = np.random.default_rng(1)
    precision = np.eye(3)
    weights = rng.normal(scale=0.5, size=(2000, 3))  # λ = 1/0.25
    draws = [RegressionPrior.draw_reg(weights, precision, rng) for _ in range(200)]
    assert 3.8 < np.mean(draws) < 4.2


@pytest.fixture(scope="module")
def data():
    return make_interactions(n_users=60, n_items=40, n=1500, seed=2, preference=True)


@pytest.fixture(scope="module")
def svdpp(data):
    params = {"n_factors": 4, "n_iterations": 20, "burn_in": 5, "n_kept": 5, "implicit_users": True}
    return create_model("bayesian_mf", **params, implicit_items=True).fit(data, TrainOptions(seed=0))


def test_a_history_without_ratings_places_a_new_user_by_their_items(svdpp):
    """Plain BMF gives every unrated history the same prior mean; with implicit feedback the items count."""
    history = History.from_items([[0, 1, 2], [30, 31, 32], [0, 1, 2]], svdpp.n_items)
    factors, biases = svdpp.fold_in(history)
    assert not np.allclose(factors[0], factors[1])
    np.testing.assert_allclose(factors[0], factors[2])
    assert np.isfinite(biases).all()


def test_the_implicit_weights_survive_a_save_and_are_required(svdpp, tmp_path):
    history = History.from_items([[3, 4]], svdpp.n_items, ratings=[[5.0, None]])
    path = svdpp.save(tmp_path / "svdpp")
    again = load_model(path)
    np.testing.assert_allclose(again.fold_in(history)[0], svdpp.fold_in(history)[0], rtol=1e-6)
    arrays, extras = svdpp.get_state()
    arrays.pop("implicit_weights")
    broken = create_model("bayesian_mf", **svdpp.config.model_dump())
    with pytest.raises(ValueError, match="implicit_weights"):
        broken.set_state(arrays, extras)


def test_a_matrix_too_large_for_the_thin_svd_is_refused_before_the_fit(data, monkeypatch):
    from recforge.errors import ConfigError
    from recforge.models import implicit_prior

    monkeypatch.setattr(implicit_prior, "MAX_RANK", 30)  # the fixture has 60 users and 40 items
    model = create_model("bayesian_mf", n_iterations=4, burn_in=1, n_kept=1, implicit_items=True)
    with pytest.raises(ConfigError, match=r"implicit_items needs a thin SVD of a 40 x 60 matrix.*30"):
        model.fit(data, TrainOptions(seed=0))
