"""The iALS conjugate-gradient kernel against dense linear algebra on small random problems."""

import numpy as np
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.models.ials import _CSR, IALSConfig, ImplicitALS


def _exact(weights: sp.csr_matrix, fixed: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Row by row: (YᵀY + reg_r I + Yᵀ diag(c) Y) x = Yᵀ (1 + c), c over the row's entries, in float64."""
    fixed = fixed.astype(np.float64)
    gram = fixed.T @ fixed
    solutions = []
    for r in range(weights.shape[0]):
        cols, c = (
            weights.indices[weights.indptr[r] : weights.indptr[r + 1]],
            weights.data[weights.indptr[r] : weights.indptr[r + 1]],
        )
        partners = fixed[cols]
        matrix = gram + reg[r] * np.eye(fixed.shape[1]) + partners.T @ (c[:, None] * partners)
        solutions.append(np.linalg.solve(matrix, partners.T @ (1.0 + c)))
    return np.array(solutions)


@settings(max_examples=25, deadline=None)
@given(
    n_rows=st.integers(1, 30),
    n_cols=st.integers(1, 25),
    density=st.floats(0.0, 1.0),
    d=st.integers(1, 8),
    alpha=st.floats(0.0, 40.0),
    reg_exponent=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_enough_cg_steps_reach_the_exact_solution(n_rows, n_cols, density, d, alpha, reg_exponent, seed):
    rng = np.random.default_rng(seed)
    weights = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng, dtype=np.float32)
    weights.data[:] = alpha * rng.random(weights.nnz)
    fixed = rng.normal(scale=0.5, size=(n_cols, d)).astype(np.float32)
    start = rng.normal(scale=0.5, size=(n_rows, d)).astype(np.float32)
    config = IALSConfig(n_factors=d, reg=2.0, alpha=alpha, reg_exponent=reg_exponent, cg_steps=3 * d)
    solved = ImplicitALS._solve(_CSR(weights), torch.from_numpy(fixed), torch.from_numpy(start), config).numpy()
    counts = np.diff(weights.indptr)
    reg = 2.0 * (counts + n_cols / (1.0 + alpha)) ** reg_exponent if reg_exponent else np.full(n_rows, 2.0)
    np.testing.assert_allclose(solved, _exact(weights, fixed, reg), rtol=2e-3, atol=2e-4)


def test_cg_warm_start_is_not_modified():
    weights = sp.random(20, 10, density=0.3, format="csr", random_state=0, dtype=np.float32)
    start = torch.randn(20, 4)
    before = start.clone()
    ImplicitALS._solve(_CSR(weights), torch.randn(10, 4), start, IALSConfig(n_factors=4))
    assert torch.equal(start, before)
