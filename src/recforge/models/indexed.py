"""`IndexedRecommender(model, index)`: a factor model's top-k served from a vector index (cf. implicit's
`FaissModel`): exact and approximate search behind the same `recommend` the library, the CLI, Spark
scoring and the service call.

Each query row is routed as the model would route it (`recforge.coldstart`); rows the model serves from
a user vector (the trained user, a folded-in history, the feature tower) are searched in the index with
their seen items excluded, and say "+ann" in `served_by`; popularity rows are ranked exactly. The index
guarantees min(k, unseen items) results per row (it falls back to the exact scan where an approximate
search runs dry). `score`, `predict`, `similar_items` and the rest are the model's own (exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recforge import coldstart
from recforge.artifacts import index_writers
from recforge.coldstart import EMBEDDINGS
from recforge.data.query import History, Query
from recforge.errors import ConfigError
from recforge.models.base import Recommendations, Recommender
from recforge.retrieval.ann import VectorIndex
from recforge.retrieval.topk import batched, default_batch_size, mask_items, topk


class IndexedRecommender:
    """A fitted model with the EMBEDDINGS capability plus a `VectorIndex` built on its item embeddings."""

    def __init__(self, model: Recommender, index: VectorIndex) -> None:
        self.require_embeddings(model)
        if index.n_items != model.n_items:
            raise ConfigError(f"the index holds {index.n_items} items, the model {model.n_items}")
        self.model, self.index = model, index

    @classmethod
    def build(cls, model: Recommender, index: VectorIndex | dict[str, Any]) -> IndexedRecommender:
        """Build `index` (a VectorIndex or its config) on the model's item embeddings."""
        cls.require_embeddings(model)
        index = index if isinstance(index, VectorIndex) else VectorIndex(index)
        return cls(model, index.build(model.item_embeddings()))  # type: ignore[attr-defined]

    @staticmethod
    def require_embeddings(model: Recommender) -> None:
        """A ConfigError unless the model (fitted or not: capabilities belong to its class) scores by user
        and item embeddings, which is what an index searches."""
        if EMBEDDINGS not in model.capabilities:
            raise ConfigError(
                f"an index needs a model with user/item embeddings (such as als, ials, mf, bpr, bayesian_mf, "
                f"two_tower); {model.name} scores another way: leave out the config's [index]"
            )

    def __getattr__(self, name: str) -> Any:  # everything but recommend is the model's own
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"IndexedRecommender({self.model!r}, {self.index.config.kind})"

    def recommend(
        self,
        users: Query | np.ndarray | list[Any],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        history: History | None = None,
        external_ids: bool = True,
        batch_size: int | None = None,
        candidates: np.ndarray | list[Any] | None = None,
        exclude_items: np.ndarray | list[Any] | None = None,
    ) -> Recommendations:
        """Top-k like `Recommender.recommend`, vector rows answered by the index (rows per batch: the
        model's default when None, as there). Lists restricted to `candidates` or kept from
        `exclude_items` are scored exactly by the model instead: an approximate index cannot promise k
        results from a subset it was not built for."""
        model = self.model
        if candidates is not None or exclude_items is not None:
            return model.recommend(
                users,
                k,
                exclude_seen=exclude_seen,
                history=history,
                external_ids=external_ids,
                batch_size=batch_size,
                candidates=candidates,
                exclude_items=exclude_items,
            )
        batch_size = batch_size or default_batch_size(model.n_items)
        query, labels = model.query_and_labels(users, history, external_ids)
        model._check_users(query.users)
        width = min(k, model.n_items)
        item_index = np.full((len(query), width), -1, dtype=np.int64)
        scores = np.full((len(query), width), -np.inf, dtype=np.float32)
        paths = np.empty(len(query), dtype=object)
        notes = np.empty(len(query), dtype=object)
        for rows in batched(len(query), batch_size):
            part = query.take(rows) if len(query) > batch_size else query
            routing = coldstart.route(model, part)
            seen = model.seen_by(part) if exclude_seen else None
            found_items, found_scores = self._search(part, routing, k, seen)
            item_index[rows], scores[rows] = found_items, found_scores
            vector = routing.paths != coldstart.POPULARITY
            paths[rows] = np.where(vector, routing.paths.astype(str) + "+ann", routing.paths.astype(str))
            notes[rows] = routing.notes
        return model._package(labels, item_index, scores, paths, notes)

    def _search(self, query: Query, routing: coldstart.Routing, k: int, seen: Any) -> tuple[np.ndarray, np.ndarray]:
        model = self.model
        width = min(k, model.n_items)
        items = np.full((len(query), width), -1, dtype=np.int64)
        scores = np.full((len(query), width), -np.inf, dtype=np.float32)
        for path in (coldstart.MODEL, coldstart.HISTORY_PATH, coldstart.FEATURES, coldstart.FEATURES_HISTORY):
            rows = routing.rows(path)
            if not len(rows):
                continue
            part = query.take(rows)
            vectors = self._vectors(path, part)
            found = self.index.search(vectors, k, None if seen is None else seen[rows])
            items[rows, : found[0].shape[1]], scores[rows, : found[1].shape[1]] = found
        rows = routing.rows(coldstart.POPULARITY)
        if len(rows):
            popular = model.popularity_scores(len(rows))
            if seen is not None:
                mask_items(popular, seen[rows])
            found = topk(popular, k)
            items[rows, : found[0].shape[1]], scores[rows, : found[1].shape[1]] = found
        return items, scores

    def _vectors(self, path: str, part: Query) -> np.ndarray:
        """(n, d + 2) user embeddings of the rows of one path."""
        model: Any = self.model
        if path == coldstart.MODEL:
            return model.user_embeddings(part.users)
        if path == coldstart.HISTORY_PATH:
            return model.augmented(*model.history_vectors(part.history, part.users))
        history = part.history if path == coldstart.FEATURES_HISTORY else None
        return model.augmented(model.embed_users(part.features, history), np.zeros(len(part)))

    def recommend_vector(
        self, vector: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One user embedding (d + 2,) -> (items, scores), min(k, unexcluded) long: the single-query path the
        service takes per request (no sparse matrices)."""
        return self.index.search_one(vector, k, exclude)

    def save(
        self,
        path: Any,
        extra_files: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        catalogue: Any = None,
    ) -> Any:
        """The model's artifact with the index inside; `recforge.load` gives back an IndexedRecommender."""
        return self.model.save(
            path,
            extra_files={**index_writers(self.index), **(extra_files or {})},
            metadata=metadata,
            catalogue=catalogue,
        )
