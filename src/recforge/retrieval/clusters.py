"""Cluster-based retrieval: group item embeddings with k-means or a Gaussian mixture, then answer a user
from the cluster nearest to their vector instead of scanning the whole catalogue.

This is the anime clustering study's retrieval: a user is assigned to the cluster whose centre has the
largest inner product with their vector (the same score the model ranks items by), and gets either the
most popular unseen items of that cluster (`rank="popularity"`, the study's rule) or that cluster's items
ordered by the model's score (`rank="score"`, a cheap approximate top-k). Accuracy is lost when a user's
relevant items sit in other clusters; `benchmarks/two_tower.py` measures how much, and how much faster
it is than a full scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from recforge.errors import ConfigError, NotFittedError
from recforge.retrieval.topk import mask_items, topk


@dataclass
class ClusterFit:
    """The clustering of one set of item vectors."""

    labels: np.ndarray  # (n_items,) cluster of each item
    centres: np.ndarray  # (n_clusters, dim) k-means centroids or mixture means
    score: float  # k-means inertia, or the mixture's BIC (lower is better for both)


def cluster_items(
    item_vectors: np.ndarray,
    n_clusters: int,
    method: Literal["kmeans", "gmm"] = "kmeans",
    seed: int = 0,
) -> ClusterFit:
    """k-means (inertia) or a diagonal-covariance Gaussian mixture (BIC) over item vectors."""
    vectors = np.asarray(item_vectors, dtype=np.float64)
    if not 1 <= n_clusters <= len(vectors):
        raise ConfigError(f"n_clusters must be in [1, {len(vectors)}], got {n_clusters}")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit(vectors)
        return ClusterFit(model.labels_.astype(np.int64), model.cluster_centers_, float(model.inertia_))
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        model = GaussianMixture(n_components=n_clusters, covariance_type="diag", reg_covar=1e-4, random_state=seed)
        labels = model.fit(vectors).predict(vectors)
        return ClusterFit(labels.astype(np.int64), model.means_, float(model.bic(vectors)))
    raise ConfigError(f"unknown clustering method {method!r}; choose 'kmeans' or 'gmm'")


def elbow(
    item_vectors: np.ndarray, ks: list[int], method: Literal["kmeans", "gmm"] = "kmeans", seed: int = 0
) -> dict[int, float]:
    """Inertia (k-means) or BIC (GMM) for each k, to pick k at the bend of the curve."""
    return {k: cluster_items(item_vectors, k, method, seed).score for k in ks}


class ClusterRetriever:
    """Top-k from the user's nearest cluster of items.

    `fit(item_vectors, popularity)` clusters the items; `recommend(user_vectors, k, exclude)` returns
    (items, scores) of shape (n_users, k), padded with -1 / -inf when the cluster has fewer than k
    unseen items (never silently filled from elsewhere).
    """

    def __init__(
        self,
        n_clusters: int = 20,
        method: Literal["kmeans", "gmm"] = "kmeans",
        rank: Literal["popularity", "score"] = "popularity",
        seed: int = 0,
    ) -> None:
        if rank not in ("popularity", "score"):
            raise ConfigError(f"rank must be 'popularity' or 'score', got {rank!r}")
        self.n_clusters, self.method, self.rank, self.seed = n_clusters, method, rank, seed

    def fit(self, item_vectors: np.ndarray, popularity: np.ndarray) -> ClusterRetriever:
        self.item_vectors_ = np.asarray(item_vectors, dtype=np.float32)
        self.popularity_ = np.asarray(popularity, dtype=np.float64)
        if len(self.popularity_) != len(self.item_vectors_):
            raise ConfigError(f"popularity has {len(self.popularity_)} entries for {len(self.item_vectors_)} items")
        return self._index(cluster_items(self.item_vectors_, self.n_clusters, self.method, self.seed))

    def restore(
        self, item_vectors: np.ndarray, labels: np.ndarray, centres: np.ndarray, popularity: np.ndarray | None = None
    ) -> ClusterRetriever:
        """A fitted retriever from saved labels and centres (no re-clustering)."""
        self.item_vectors_ = np.asarray(item_vectors, dtype=np.float32)
        self.popularity_ = np.ones(len(item_vectors)) if popularity is None else np.asarray(popularity, np.float64)
        return self._index(ClusterFit(np.asarray(labels, np.int64), np.asarray(centres, np.float64), float("nan")))

    def _index(self, fit: ClusterFit) -> ClusterRetriever:
        self.clusters_ = fit
        labels = fit.labels
        order = np.argsort(labels, kind="stable")
        self.members_ = np.split(order, np.cumsum(np.bincount(labels, minlength=self.n_clusters))[:-1])
        return self

    def nearest_cluster(self, user_vectors: np.ndarray) -> np.ndarray:
        if not hasattr(self, "clusters_"):
            raise NotFittedError("ClusterRetriever is not fitted; call fit(item_vectors, popularity)")
        return np.argmax(np.asarray(user_vectors, np.float32) @ self.clusters_.centres.T.astype(np.float32), axis=1)

    def recommend(
        self, user_vectors: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        user_vectors = np.asarray(user_vectors, np.float32)
        nearest = self.nearest_cluster(user_vectors)
        items = np.full((len(user_vectors), k), -1, dtype=np.int64)
        scores = np.full((len(user_vectors), k), -np.inf, dtype=np.float32)
        for cluster in np.unique(nearest):  # one vectorised block per cluster, not per user
            rows = np.flatnonzero(nearest == cluster)
            members = self.members_[cluster]
            if self.rank == "score":
                block = user_vectors[rows] @ self.item_vectors_[members].T
            else:
                block = np.broadcast_to(self.popularity_[members].astype(np.float32), (len(rows), len(members))).copy()
            if exclude is not None:
                block = mask_items(block, exclude[rows][:, members].tocsr())
            top_local, top_scores = topk(block, min(k, len(members)))
            found = top_local >= 0
            items[rows[:, None], np.arange(top_local.shape[1])] = np.where(found, members[np.maximum(top_local, 0)], -1)
            scores[rows[:, None], np.arange(top_local.shape[1])] = top_scores
        return items, scores

    def restricted_mask(self, users_nearest: np.ndarray, items: np.ndarray) -> np.ndarray:
        """For (user, item) pairs, whether the item lies in the user's nearest cluster (the study's
        "MSE restricted to the nearest cluster" keeps only these pairs)."""
        return self.clusters_.labels[items] == users_nearest
