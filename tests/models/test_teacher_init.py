"""The closed-form start of linear towers: reduced-rank ridge regression of a teacher's standardised scores."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.data.features import pooled_rows
from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.models.ensemble import standardised_rows
from recforge.models.two_tower.teacher_init import reduced_rank_fit


def _exact_fit(pooled: sp.csr_matrix, scores: np.ndarray, rank: int, reg: float) -> np.ndarray:
    """The textbook reduced-rank ridge fit: W = (XᵀX + λI)⁻¹XᵀZ, fitted values XW projected on their top-r
    right singular vectors."""
    x = pooled.toarray()
    weights = np.linalg.solve(x.T @ x + reg * np.eye(x.shape[1]), x.T @ standardised_rows(scores))
    _, _, right = np.linalg.svd(x @ weights)
    return x @ weights @ right[:rank].T @ right[:rank]


def _low_rank_teacher(
    rng: np.random.Generator, n_users: int, n_items: int, rank: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    seen = sp.random(n_users, n_items, density=0.15, random_state=np.random.RandomState(1), format="csr")
    seen.data[:] = 1.0
    seen = seen + sp.csr_matrix((np.ones(n_users), (np.arange(n_users), np.arange(n_users) % n_items)), seen.shape)
    mixing = rng.standard_normal((n_items, rank)) @ rng.standard_normal((rank, n_items))
    scores = seen @ mixing + 0.05 * rng.standard_normal((n_users, n_items))
    return seen.tocsr(), scores


def test_matches_the_exact_reduced_rank_fit():
    rng = np.random.default_rng(0)
    seen, scores = _low_rank_teacher(rng, 300, 60, 4)
    pooled = pooled_rows(seen, "sqrt")
    history, items = reduced_rank_fit(pooled, lambda users: scores[users], rank=4, reg=0.1)
    ours = pooled @ history @ items.T
    exact = _exact_fit(pooled, scores, 4, 0.1)
    assert np.linalg.norm(ours - exact) <= 1e-6 * np.linalg.norm(exact)
    np.testing.assert_allclose(items.T @ items, np.eye(4), atol=1e-10)  # orthonormal item vectors


def test_more_towers_width_than_users_leaves_zero_vectors():
    rng = np.random.default_rng(1)
    seen, scores = _low_rank_teacher(rng, 5, 30, 3)
    history, items = reduced_rank_fit(pooled_rows(seen, "sqrt"), lambda users: scores[users], rank=8, reg=0.1)
    assert history.shape == items.shape == (30, 8)
    assert np.all(items[:, 5:] == 0) and np.all(np.isfinite(history))


def test_width_beyond_the_catalogue_is_a_config_error():
    rng = np.random.default_rng(2)
    seen, scores = _low_rank_teacher(rng, 20, 6, 2)
    with pytest.raises(ConfigError, match="width 8 exceeds the number of items 6"):
        reduced_rank_fit(pooled_rows(seen, "sqrt"), lambda users: scores[users], rank=8, reg=0.1)


@pytest.mark.parametrize(
    ("params", "needs"),
    [
        ({"user_tower": {"output_activation": "tanh"}}, "output_activation = 'none'"),
        ({"teacher": None}, "a teacher"),
        ({"history_dim": 32}, "history_dim = user_tower.output_dim"),
        ({"item_tower": {"hidden": (16,)}}, "item_tower.id_dim = item_tower.output_dim"),
    ],
)
def test_teacher_init_names_what_the_towers_lack(params, needs):
    with pytest.raises(ValueError, match="teacher_init starts linear towers; it needs .*" + needs.replace("(", r"\(")):
        create_model("two_tower", preset="distilled-linear", **params)


def test_zero_epochs_needs_teacher_init():
    with pytest.raises(ValueError, match="n_epochs = 0 leaves the towers untrained"):
        create_model("two_tower", n_epochs=0)


def test_a_catalogue_narrower_than_the_towers_is_refused_before_the_teacher_fits(monkeypatch):
    from recforge.models.two_tower import model as two_tower_model
    from tests.conftest import make_interactions

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was fitted")

    monkeypatch.setattr(two_tower_model.TwoTower, "_distillation", no_teacher)
    with pytest.raises(ConfigError, match="width 256 exceeds the number of items 40"):
        create_model("two_tower", preset="distilled-linear").fit(make_interactions(n_items=40))
