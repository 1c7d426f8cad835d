"""ADMM SLIM's weights against independent solutions: each column of the non-negative problem by scipy's
bounded-variable least squares (exact, active-set; scipy 1.17's `nnls` returned a suboptimal point on a
case with an item nobody took, so it is not the reference), EASE/EDLAE's closed form when the constraint
and the L1 term are off, and the L1 problem's optimality (KKT) conditions."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear

from recforge.models import create_model
from recforge.models.ease import ease_weights, sparse_time_decayed_gram, time_decayed_gram
from recforge.models.slim import admm_slim_weights, neighbourhood_slim_weights
from tests.conftest import make_interactions

TIGHT = {"max_iterations": 5000, "tolerance": 1e-9}


def random_history(seed: int, n_users: int, n_items: int, density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n_users, n_items)) < density).astype(np.float64)


def bounded_reference(history: np.ndarray, reg: float, dropout: float) -> np.ndarray:
    """Column j: min ‖x_j − X b‖² + Σ_i λ_i b_i² over b ≥ 0 with b_j = 0: least squares on X stacked over
    diag(√λ), bounded below by 0."""
    gram_diagonal = (history**2).sum(axis=0)
    penalty = reg + dropout / (1 - dropout) * gram_diagonal
    n = history.shape[1]
    weights = np.zeros((n, n))
    for j in range(n):
        others = np.flatnonzero(np.arange(n) != j)
        design = np.vstack([history[:, others], np.diag(np.sqrt(penalty[others]))])
        target = np.concatenate([history[:, j], np.zeros(len(others))])
        weights[others, j] = lsq_linear(design, target, bounds=(0, np.inf), method="bvls", tol=1e-12).x
    return weights


cases = {
    "seed": st.integers(0, 2**16),
    "n_users": st.integers(2, 25),
    "n_items": st.integers(2, 10),
    "density": st.floats(0.1, 0.8),
    "reg": st.sampled_from([0.5, 2.0, 10.0]),
    "dropout": st.sampled_from([0.0, 0.5]),
}


@settings(max_examples=40, deadline=None)
@given(**cases)
def test_nonnegative_weights_solve_each_column_by_bounded_least_squares(seed, n_users, n_items, density, reg, dropout):
    history = random_history(seed, n_users, n_items, density)
    got, _ = admm_slim_weights(history.T @ history, reg, dropout, **TIGHT)
    expected = bounded_reference(history, reg, dropout)
    np.testing.assert_allclose(got.toarray(), expected, atol=2e-4)
    assert (got.data > 0).all() and (got.diagonal() == 0).all()


@settings(max_examples=30, deadline=None)
@given(**cases)
def test_without_constraint_or_l1_it_is_edlae(seed, n_users, n_items, density, reg, dropout):
    history = random_history(seed, n_users, n_items, density)
    got, _ = admm_slim_weights(history.T @ history, reg, dropout, nonnegative=False, **TIGHT)
    expected = ease_weights(sp.csr_matrix(history), reg, dropout)
    np.testing.assert_allclose(got.toarray(), expected, atol=2e-4)


@settings(max_examples=30, deadline=None)
@given(**cases, l1=st.sampled_from([0.5, 2.0]), nonnegative=st.booleans())
def test_l1_weights_meet_the_optimality_conditions(seed, n_users, n_items, density, reg, dropout, l1, nonnegative):
    """Gradient of the smooth part g = 2((G + Λ)B − G): where B_ij ≠ 0, g_ij = −λ₁·sign(B_ij); where
    B_ij = 0, |g_ij| ≤ λ₁ (or g_ij ≥ −λ₁ when only non-negative weights are allowed); diagonal excluded."""
    history = random_history(seed, n_users, n_items, density)
    gram = history.T @ history
    weights, _ = admm_slim_weights(gram, reg, dropout, l1, nonnegative, **TIGHT)
    weights = weights.toarray().astype(np.float64)
    penalty = reg + dropout / (1 - dropout) * np.diag(gram)
    gradient = 2 * ((gram + np.diag(penalty)) @ weights - gram)
    off = ~np.eye(len(gram), dtype=bool)
    active = off & (weights != 0)
    np.testing.assert_allclose(gradient[active], -l1 * np.sign(weights[active]), atol=5e-3)
    zero = off & (weights == 0)
    if nonnegative:
        assert (gradient[zero] >= -l1 - 5e-3).all()
    else:
        assert (np.abs(gradient[zero]) <= l1 + 5e-3).all()


def test_l1_makes_the_weights_sparser_and_stops_early():
    history = random_history(0, 200, 40, 0.2)
    gram = history.T @ history
    counts = [admm_slim_weights(gram, 10.0, 0.0, l1)[0].nnz for l1 in (0.0, 5.0, 20.0)]
    assert counts[0] > counts[1] > counts[2] > 0
    _, iterations = admm_slim_weights(gram, 10.0, 0.0, max_iterations=500, tolerance=1e-3)
    assert iterations < 500  # the stopping rule fires before the cap


@settings(max_examples=30, deadline=None)
@given(
    **cases,
    neighbours=st.integers(1, 9),
    budget=st.sampled_from([1, 7, 4096]),
    cached=st.sampled_from([0, 3, 4096]),
    nonnegative=st.booleans(),
)
def test_neighbourhood_weights_solve_each_column_over_its_support(
    seed, n_users, n_items, density, reg, dropout, neighbours, budget, cached, nonnegative
):
    """fsSLIM: column j's weights live on its m most co-occurring items and are the bounded (or, signed,
    the plain) ridge solution over just those columns; batches of any size, and any number of popular items
    whose Gram block is cached (none, some, all), give the same weights."""
    history = random_history(seed, n_users, n_items, density)
    got, _ = neighbourhood_slim_weights(
        sp.csr_matrix(history),
        neighbours,
        reg,
        dropout,
        nonnegative=nonnegative,
        support_budget=budget,
        cached_items=cached,
        **TIGHT,
    )
    got = got.toarray()
    gram = history.T @ history
    penalty = reg + dropout / (1 - dropout) * np.diag(gram)
    m = min(neighbours, n_items - 1)
    for j in range(n_items):
        support = np.flatnonzero(got[:, j])
        assert j not in support and len(support) <= m
        assert (gram[support, j] > 0).all()  # only items that co-occur with j
        others = np.delete(gram[:, j], j)
        assert (gram[support, j] >= np.sort(others)[::-1][m - 1]).all()  # among its m most co-occurring
        if not len(support):
            continue
        # the values are optimal over the chosen support: bounded least squares restricted to it
        design = np.vstack([history[:, support], np.diag(np.sqrt(penalty[support]))])
        target = np.concatenate([history[:, j], np.zeros(len(support))])
        bounds = (0, np.inf) if nonnegative else (-np.inf, np.inf)
        expected = lsq_linear(design, target, bounds=bounds, method="bvls", tol=1e-12).x
        np.testing.assert_allclose(got[support, j], expected, atol=2e-4)


def test_neighbourhoods_of_every_item_are_the_dense_problem():
    history = random_history(3, 40, 15, 0.3)
    dense, _ = admm_slim_weights(history.T @ history, 2.0, 0.5, **TIGHT)
    for budget in (14, 4096):  # one column per batch, and all at once
        sparse, _ = neighbourhood_slim_weights(sp.csr_matrix(history), 14, 2.0, 0.5, support_budget=budget, **TIGHT)
        np.testing.assert_allclose(sparse.toarray(), dense.toarray(), atol=1e-5)


def test_time_decayed_neighbourhoods_of_every_item_are_the_dense_time_decayed_problem():
    """With a stored Gram matrix (the time-decayed one, sparse) the neighbourhood solve reads its entries:
    all items as neighbours is dense time-decayed SLIM, and the model accepts both options together."""
    data = make_interactions(n_users=40, n_items=15, n=300, seed=4)
    decayed = time_decayed_gram(data, 3.0)
    dense, _ = admm_slim_weights(decayed, 2.0, 0.5, **TIGHT)
    for cached in (0, 4096):
        sparse, _ = neighbourhood_slim_weights(
            data.to_csr("binary"), 14, 2.0, 0.5, gram=sparse_time_decayed_gram(data, 3.0), cached_items=cached, **TIGHT
        )
        np.testing.assert_allclose(sparse.toarray(), dense.toarray(), atol=1e-5)
    model = create_model("slim", neighbours=14, time_decay=3.0, reg=2.0, **TIGHT).fit(data)
    np.testing.assert_allclose(model.weights_.toarray(), dense.toarray(), atol=1e-5)


def test_neighbourhoods_of_two_hundred_solve_after_the_thread_count_was_set():
    """torch 2.13's batched LU (MKL) hangs on matrices of ~200 rows once torch.set_num_threads has run,
    as every fit's thread policy does; the neighbourhood solve inverts through Cholesky instead. Run in a
    subprocess so that a regression fails on the timeout instead of hanging the suite."""
    script = textwrap.dedent(
        """
        import numpy as np, scipy.sparse as sp, torch
        from recforge.models.slim import neighbourhood_slim_weights
        rng = np.random.default_rng(0)
        history = sp.csr_matrix((rng.random((400, 260)) < 0.3).astype(np.float32))
        torch.set_num_threads(torch.get_num_threads())
        weights, _ = neighbourhood_slim_weights(history, 220, 10.0, 0.5, max_iterations=3)
        print("solved", weights.nnz)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "solved" in done.stdout, done.stderr[-2000:]
