"""RP3β's item-item weights against the dense formula on small random graphs."""

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.models.rp3beta import rp3beta_weights


def _dense_reference(binary: np.ndarray, alpha: float, beta: float, k: int, normalize_rows: bool) -> np.ndarray:
    user_degree, item_degree = binary.sum(1), binary.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        user_to_item = np.nan_to_num(binary / user_degree[:, None]) ** alpha
        item_to_user = np.nan_to_num(binary.T / item_degree[:, None]) ** alpha
        landing = np.where(item_degree > 0, item_degree**-beta, 0.0)
    weights = (item_to_user @ user_to_item) * landing[None, :]
    np.fill_diagonal(weights, 0.0)
    kept = np.zeros_like(weights)
    for i, row in enumerate(weights):
        for j in np.argsort(-row, kind="stable")[: min(k, len(row) - 1)]:
            if row[j] > 0:
                kept[i, j] = row[j]
    if normalize_rows:
        sums = kept.sum(1, keepdims=True)
        kept = np.divide(kept, sums, out=np.zeros_like(kept), where=sums > 0)
    return kept


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_users=st.integers(1, 15),
    n_items=st.integers(1, 12),
    density=st.floats(0.05, 0.9),
    alpha=st.sampled_from([0.5, 1.0, 1.3]),
    beta=st.sampled_from([0.0, 0.5, 0.9]),
    normalize_rows=st.booleans(),
)
def test_weights_match_the_dense_formula(seed, n_users, n_items, density, alpha, beta, normalize_rows):
    rng = np.random.default_rng(seed)
    binary = (rng.random((n_users, n_items)) < density).astype(np.float64)
    k = n_items  # every neighbour: ties at the cut cannot differ between the two
    got = rp3beta_weights(sp.csr_matrix(binary), alpha, beta, k, normalize_rows).toarray()
    np.testing.assert_allclose(got, _dense_reference(binary, alpha, beta, k, normalize_rows), rtol=1e-5, atol=1e-7)


def test_top_k_keeps_the_largest_walks():
    binary = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=np.float64)
    full = rp3beta_weights(sp.csr_matrix(binary), 1.0, 0.5, 4, False).toarray()
    top1 = rp3beta_weights(sp.csr_matrix(binary), 1.0, 0.5, 1, False).toarray()
    assert (np.count_nonzero(top1, axis=1) <= 1).all()
    np.testing.assert_allclose(top1.max(1), full.max(1), rtol=1e-6)
    assert (np.diag(full) == 0).all()
