"""The anime clustering study's retrieval as a recommender: a fitted embedding model's items grouped by
k-means or a Gaussian mixture, each user answered from the cluster nearest to their vector.

`ClusteredRecommender.around(model, n_clusters, method, rank)` wraps a fitted model that exposes
inner-product embeddings (EMBEDDINGS). A trained user's vector is their embedding; a user given only a
history (a new user with a few ratings) gets the model's own history vector (fold-in, or the two-tower's
weighted average of item embeddings: the study's cold start) and is then routed to a cluster like
anyone else. Within the cluster, items are ranked by popularity (the study's rule) or by the model's
score; items outside it are never recommended, so lists can be shorter than k. It evaluates, compares
and reports like any other model (`recforge compare` adds it with `[evaluation.clusters]`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from recforge.coldstart import EMBEDDINGS, HISTORY, KNOWN_USERS
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import CapabilityError
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions
from recforge.retrieval.clusters import ClusterRetriever


class ClusteredConfig(ModelConfig):
    n_clusters: int = 20
    method: Literal["kmeans", "gmm"] = "kmeans"
    rank: Literal["popularity", "score"] = "popularity"
    seed: int = 0


class ClusteredRecommender(Recommender):
    name = "clustered"
    Config = ClusteredConfig

    @classmethod
    def around(
        cls,
        model: Recommender,
        n_clusters: int = 20,
        method: Literal["kmeans", "gmm"] = "kmeans",
        rank: Literal["popularity", "score"] = "popularity",
        seed: int = 0,
    ) -> ClusteredRecommender:
        """Cluster a fitted embedding model's items (no refit of the model)."""
        if EMBEDDINGS not in model.capabilities:
            raise CapabilityError(f"{model.name} exposes no item embeddings to cluster")
        wrapper = cls(ClusteredConfig(n_clusters=n_clusters, method=method, rank=rank, seed=seed))
        wrapper.inner_ = model
        wrapper.capabilities = frozenset({KNOWN_USERS} | (model.capabilities & {HISTORY}))  # type: ignore[misc]
        for attribute in ("users_", "items_", "seen_", "known_users_", "rating_scale_", "fitted_on_"):
            setattr(wrapper, attribute, getattr(model, attribute))
        wrapper.fit_seconds_ = 0.0
        wrapper.training_log_ = []
        popularity = np.asarray(model.seen_.sum(axis=0), dtype=np.float64).ravel()
        wrapper.retriever_ = ClusterRetriever(n_clusters, method, rank, seed).fit(model.item_embeddings(), popularity)
        return wrapper

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        raise CapabilityError("a clustered recommender wraps a fitted model: use ClusteredRecommender.around(model)")

    def _scores_for(self, user_vectors: np.ndarray) -> np.ndarray:
        retriever = self.retriever_
        nearest = retriever.nearest_cluster(user_vectors)
        labels = retriever.clusters_.labels
        if self.config.rank == "score":  # type: ignore[attr-defined]
            scores = np.asarray(user_vectors, np.float32) @ retriever.item_vectors_.T
        else:
            scores = np.broadcast_to(np.log1p(retriever.popularity_).astype(np.float32), (len(nearest), len(labels)))
            scores = scores.copy()
        scores[labels[None, :] != nearest[:, None]] = -np.inf  # only the nearest cluster's items
        return scores

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._scores_for(self.inner_.user_embeddings(users))

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._scores_for(self.inner_.user_embeddings(users, history))

    def item_vectors(self) -> np.ndarray:
        return self.inner_.item_vectors()

    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.retriever_.clusters_.labels, minlength=self.config.n_clusters)  # type: ignore[attr-defined]

    def _get_arrays(self) -> dict[str, np.ndarray]:
        raise CapabilityError("a clustered recommender is not saved on its own; save the model it wraps")

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        raise CapabilityError("a clustered recommender is not loaded on its own")
