"""VectorIndex: every kind answers like exact search (exactly for flat / full-probe IVF / one cluster,
with high recall for HNSW), respects exclusions, and survives a round trip through its arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recforge.errors import ConfigError
from recforge.retrieval.ann import VectorIndex
from recforge.retrieval.topk import mask_items, topk


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(50, 16))
    items = (centres[rng.integers(0, 50, 4000)] + 0.5 * rng.normal(size=(4000, 16))).astype(np.float32)
    items *= rng.lognormal(0, 0.3, size=(4000, 1)).astype(np.float32)  # unequal norms: inner product != cosine
    queries = (centres[rng.integers(0, 50, 200)] + 0.5 * rng.normal(size=(200, 16))).astype(np.float32)
    exclude = sp.random(200, 4000, density=0.01, format="csr", random_state=1, dtype=np.float32)
    exclude.data[:] = 1
    return items, queries, exclude


def exact(items, queries, exclude, k=10):
    return topk(mask_items(queries @ items.T, exclude), k)[0]


def recall(found, truth):
    return np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(found, truth, strict=True)])


@pytest.mark.parametrize(
    ("config", "minimum"),
    [
        ({"kind": "exact"}, 1.0),
        ({"kind": "flat"}, 1.0),
        ({"kind": "ivf", "nlist": 16, "nprobe": 16}, 1.0),
        ({"kind": "hnsw", "ef_search": 128}, 0.97),
        ({"kind": "kmeans", "n_clusters": 1}, 1.0),
    ],
)
def test_each_kind_matches_exact_search_and_excludes(vectors, config, minimum):
    items, queries, exclude = vectors
    index = VectorIndex(config).build(items)
    found, scores = index.search(queries, 10, exclude)
    assert recall(found, exact(items, queries, exclude)) >= minimum
    rows = np.repeat(np.arange(len(found)), 10)
    assert not np.asarray(exclude[rows, np.maximum(found.ravel(), 0)]).ravel()[found.ravel() >= 0].any()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["exact", "flat", "ivf", "hnsw", "kmeans"])
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_search_one_answers_like_a_batch_row(vectors, kind, metric):
    """The per-request path returns exactly what the batch path returns for the same row."""
    items, queries, exclude = vectors
    index = VectorIndex({"kind": kind, "metric": metric, "n_clusters": 8, "nlist": 16}).build(items)
    batch_items, batch_scores = index.search(queries[:40], 10, exclude[:40])
    for row in range(40):
        seen = exclude[row].indices[::-1]  # any order, as a caller might pass it
        one_items, one_scores = index.search_one(queries[row], 10, seen)
        np.testing.assert_array_equal(one_items, batch_items[row])
        np.testing.assert_allclose(one_scores, batch_scores[row], rtol=1e-6)
    everything_but_three = np.arange(len(items) - 3)
    short, short_scores = index.search_one(queries[0], 10, everything_but_three)
    if kind in ("exact", "flat"):  # exhaustive kinds find the three remaining items, then pad
        assert sorted(short[:3]) == [len(items) - 3, len(items) - 2, len(items) - 1]
    assert np.all(short[3:] == -1) and np.all(np.isneginf(short_scores[3:]))
    with pytest.raises(ConfigError, match="dimensions"):
        index.search_one(queries[0][:5], 10)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "kmeans", "gmm"])
def test_round_trip_through_arrays(vectors, kind):
    items, queries, _ = vectors
    index = VectorIndex({"kind": kind, "n_clusters": 8, "nlist": 16}).build(items)
    again = VectorIndex.from_arrays(index.config, index.to_arrays())
    np.testing.assert_array_equal(again.search(queries, 10)[0], index.search(queries, 10)[0])


def test_cosine_metric_ranks_by_angle(vectors):
    items, queries, _ = vectors
    found, _ = VectorIndex({"kind": "exact", "metric": "cosine"}).build(items).search(queries, 5)
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    np.testing.assert_array_equal(found, topk(queries @ unit.T, 5)[0])


def test_heavy_exclusion_still_fills_k(vectors):
    items, queries, _ = vectors
    truth = exact(items, queries[:1], None, k=200)
    exclude = sp.csr_matrix((np.ones(190), ([0] * 190, truth[0][:190])), shape=(1, len(items)))
    found, _ = VectorIndex({"kind": "hnsw"}).build(items).search(queries[:1], 10, exclude)
    assert (found >= 0).all() and not set(found[0]) & set(truth[0][:190])


def test_bad_shapes_are_refused(vectors):
    items, _, _ = vectors
    index = VectorIndex().build(items)
    with pytest.raises(ConfigError, match="shape"):
        index.search(np.zeros((2, 3), np.float32), 5)
    with pytest.raises(ConfigError, match="non-empty"):
        VectorIndex().build(np.zeros((0, 4), np.float32))


def test_cluster_kinds_answer_from_the_nearest_cluster_only(vectors):
    items, queries, _ = vectors
    index = VectorIndex({"kind": "kmeans", "n_clusters": 8}).build(items)
    found, _ = index.search(queries, 10)
    retriever = index._clusters
    nearest = retriever.nearest_cluster(queries)
    labels = retriever.clusters_.labels
    assert all((labels[row[row >= 0]] == cluster).all() for row, cluster in zip(found, nearest, strict=True))
    assert 0.3 < recall(found, exact(items, queries, None)) < 1.0  # cheaper and approximate, not exact
