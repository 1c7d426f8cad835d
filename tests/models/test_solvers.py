"""The grouped Gaussian solves behind ALS, Bayesian MF and fold-in, against dense numpy, row by row."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.models._solvers import GroupedRows, gaussian_rows, gaussian_rows_by_sample, ridge


def _problem(seed: int, n_groups: int, n_partners: int, n_entries: int, d: int):
    rng = np.random.default_rng(seed)
    owners = rng.integers(0, n_groups, n_entries)
    partners = rng.integers(0, n_partners, n_entries)
    design = rng.normal(size=(n_partners, d))
    targets = rng.normal(size=n_entries)
    weights = rng.uniform(0.1, 3.0, n_entries)
    return rng, owners, partners, design, targets, weights


def _dense(owners, partners, design, targets, weights, precision, mean, scale, g):
    """A_g and b_g of group g built entry by entry."""
    mine = owners == g
    x, t, w = design[partners[mine]], targets[mine], scale * weights[mine]
    lam = precision if precision.ndim == 2 else precision[g]
    return lam + x.T @ (w[:, None] * x), lam @ mean + x.T @ (w * t)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_groups=st.integers(1, 12),
    n_entries=st.integers(0, 60),
    d=st.integers(1, 7),
    scale=st.floats(0.1, 5.0),
    per_group=st.booleans(),
    with_noise=st.booleans(),
)
def test_gaussian_rows_match_dense_solves(seed, n_groups, n_entries, d, scale, per_group, with_noise):
    rng, owners, partners, design, targets, weights = _problem(seed, n_groups, 9, n_entries, d)
    root = rng.normal(size=(n_groups, d, d)) if per_group else rng.normal(size=(d, d))
    precision = root @ np.swapaxes(root, -1, -2) + np.eye(d)
    mean = rng.normal(size=d)
    noise = rng.normal(size=(n_groups, d)) if with_noise else None
    groups = GroupedRows.build(owners, partners, n_groups)
    got = gaussian_rows(
        groups,
        torch.from_numpy(design),
        targets,
        torch.from_numpy(precision),
        torch.from_numpy(mean),
        scale=scale,
        weights=weights,
        noise=None if noise is None else torch.from_numpy(noise),
    ).numpy()
    for g in range(n_groups):
        matrix, rhs = _dense(owners, partners, design, targets, weights, precision, mean, scale, g)
        expected = np.linalg.solve(matrix, rhs)
        if noise is not None:  # x = mean + L^{-T} z has covariance A^{-1}
            expected = expected + np.linalg.solve(np.linalg.cholesky(matrix).T, noise[g])
        np.testing.assert_allclose(got[g], expected, rtol=1e-7, atol=1e-9)


def test_draws_have_the_posterior_covariance():
    """20,000 groups with the same entries, one seeded draw each: the draws' mean and covariance are the
    posterior's within five standard errors (a fixed seed: the test cannot flake)."""
    rng = np.random.default_rng(0)
    design = rng.normal(size=(5, 3))
    n = 20_000
    groups = GroupedRows.build(np.repeat(np.arange(n), 5), np.tile(np.arange(5), n), n)
    noise = torch.from_numpy(rng.standard_normal((n, 3)))
    precision = torch.eye(3, dtype=torch.float64)
    draws = gaussian_rows(groups, torch.from_numpy(design), np.ones(5 * n), precision, noise=noise).numpy()
    covariance = np.linalg.inv(np.eye(3) + design.T @ design)
    mean = covariance @ design.T @ np.ones(5)
    variances = np.diag(covariance)
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * np.sqrt(variances / n))
    covariance_error = np.sqrt((np.outer(variances, variances) + covariance**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - covariance), 5 * covariance_error)


def test_singular_groups_get_least_squares_instead_of_failing():
    design = np.array([[1.0, 0.0], [2.0, 0.0]])  # the second coordinate is never observed
    groups = GroupedRows.build(np.array([0, 0]), np.array([0, 1]), 2)  # group 1 is empty
    got = ridge(groups, torch.from_numpy(design), np.array([1.0, 2.0]), torch.zeros(2, 2, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got[0], [1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(got[1], [0.0, 0.0], atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_samples=st.integers(1, 5),
    n_groups=st.integers(1, 8),
    n_entries=st.integers(0, 40),
    d=st.integers(1, 5),
)
def test_solves_by_sample_match_one_gaussian_rows_call_per_sample(seed, n_samples, n_groups, n_entries, d):
    """The fold-in path: per sample its own design, targets, Λ, per-group mean and scale, one compiled call."""
    rng, owners, partners, _, _, _ = _problem(seed, n_groups, 9, n_entries, d)
    design = rng.normal(size=(n_samples, 9, d))
    targets = rng.normal(size=(n_samples, n_entries))
    root = rng.normal(size=(n_samples, d, d))
    precisions = root @ np.swapaxes(root, -1, -2) + np.eye(d)
    means = rng.normal(size=(n_samples, n_groups, d))
    scales = rng.uniform(0.1, 5.0, n_samples)
    groups = GroupedRows.build(owners, partners, n_groups)
    got = gaussian_rows_by_sample(groups, design, targets, precisions, means, scales)
    for s in range(n_samples):
        expected = gaussian_rows(
            groups,
            torch.from_numpy(design[s]),
            targets[s],
            torch.from_numpy(precisions[s]),
            torch.from_numpy(means[s]),
            scale=float(scales[s]),
        ).numpy()
        np.testing.assert_allclose(got[s], expected, rtol=1e-10, atol=1e-12)


def test_singular_groups_by_sample_get_least_squares_too():
    design = np.array([[[1.0, 0.0], [2.0, 0.0]], [[0.0, 1.0], [0.0, 2.0]]])  # one coordinate unobserved
    groups = GroupedRows.build(np.array([0, 0]), np.array([0, 1]), 2)  # group 1 is empty
    got = gaussian_rows_by_sample(
        groups, design, np.array([[1.0, 2.0], [1.0, 2.0]]), np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), np.ones(2)
    )
    np.testing.assert_allclose(got[:, 0], [[1.0, 0.0], [0.0, 1.0]], atol=1e-9)
    np.testing.assert_allclose(got[:, 1], 0.0, atol=1e-12)
