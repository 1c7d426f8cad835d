"""Implicit neighbourhood models keep only each entity's k nearest: pruned block by block they equal the
dense similarity matrix pruned at once, they save and load as a sparse matrix, and their memory does not
grow with n²."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.models import create_model, load_model
from recforge.models.knn import nearest_neighbours, prune_top_k, similarity_matrix


def sorted_rows(matrix: sp.csr_matrix) -> np.ndarray:
    """Each row's stored values in descending order, rows concatenated."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return matrix.data[np.lexsort((-matrix.data, rows))]


@pytest.mark.parametrize("by_user", [False, True])
@pytest.mark.parametrize(("shrinkage", "min_support", "block"), [(0.0, 1, 2048), (10.0, 3, 97)])
def test_block_pruning_equals_pruning_the_dense_matrix(ml100k, by_user, shrinkage, min_support, block) -> None:
    binary = ml100k.to_csr("binary")
    values = binary if by_user else binary.T.tocsr()
    k = 20
    dense = prune_top_k(similarity_matrix(values, shrinkage, min_support, False, 4096), k)
    blocked = nearest_neighbours(values, shrinkage, min_support, block, k)
    assert blocked.shape == dense.shape and blocked.nnz == dense.nnz
    assert np.array_equal(blocked.indptr, dense.indptr) and blocked.diagonal().max() == 0
    # per row the same k largest similarities; which of several items tied at the k-th value is kept may
    # differ (rare items share values such as 1/√3), so the values are compared, and the items where untied
    assert np.allclose(sorted_rows(blocked), sorted_rows(dense), atol=1e-6)
    agree = (abs(blocked - dense) > 1e-6).getnnz(axis=1) == 0
    assert agree.mean() > 0.9


def test_implicit_item_knn_saves_sparse_neighbours_and_loads_them(ml100k, tmp_path) -> None:
    model = create_model("item_knn", feedback="implicit", similarity="cosine", k=20).fit(ml100k)
    assert not hasattr(model, "similarity_") and sp.issparse(model.neighbours_)
    path = model.save(tmp_path / "knn")
    assert not (path / "arrays.npz").exists() or "similarity" not in np.load(path / "arrays.npz").files
    loaded = load_model(path)
    users = np.arange(50)
    assert np.array_equal(loaded.score(users), model.score(users))
    items = np.array([0, 5, 300])
    dense = similarity_matrix(ml100k.to_csr("binary").T.tocsr(), model.config.shrinkage, 1, False, 4096)
    assert np.allclose(loaded._item_similarity(items), dense[items], atol=1e-6)  # all of them, not the k kept
    similar = loaded.similar_items(list(ml100k.items.lookup(items)), k=50)  # more than the 20 neighbours kept
    assert all(len(row) == 50 for row in similar.items)
    assert loaded._item_similarity(np.array([], dtype=np.int64)).shape == (0, ml100k.n_items)


def test_implicit_neighbours_of_a_wide_catalogue_never_take_n_squared_memory() -> None:
    """20,000 items: the dense float32 similarity matrix alone would be 1.6 GB; the block-pruned fit stays
    under a fifth of that (210 MiB measured; tracemalloc counts numpy's allocations)."""
    rng = np.random.default_rng(0)
    n_users, n_items, per_user = 3000, 20_000, 40
    rows = np.repeat(np.arange(n_users), per_user)
    values = sp.csr_matrix((np.ones(len(rows)), (rows, rng.integers(0, n_items, len(rows)))), shape=(n_users, n_items))
    values.data[:] = 1.0
    tracemalloc.start()
    neighbours = nearest_neighbours(values.T.tocsr(), 0.0, 1, 2048, 20)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert neighbours.shape == (n_items, n_items) and np.all(np.diff(neighbours.indptr) <= 20)
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MiB"
