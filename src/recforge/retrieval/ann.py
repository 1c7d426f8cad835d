"""Top-k search over item vectors behind one interface: exact (numpy) or approximate (faiss).

`VectorIndex.search(queries, k, exclude)` returns (item indices, scores), both (n, k), best first,
padded with -1 / -inf. Exclusion (seen items) is applied after search: the index is asked for
`k + the longest exclusion row` candidates so a user never loses slots to items they already have.
`search_one(query, k, exclude_items)` answers one query the same way without sparse matrices (the
service's per-request path).

Metrics: "ip" (inner product, what factor models rank by) or "cosine" (vectors L2-normalised first).
faiss kinds: "flat" (exact, faiss's BLAS), "ivf" (inverted lists over k-means cells; `nlist`, `nprobe`),
"hnsw" (graph; `m`, `ef_construction`, `ef_search`). "kmeans"/"gmm" is the two-tower issue's cluster
retrieval (`recforge.retrieval.clusters`): a query scans only the items of its nearest cluster.
HNSW searches inner products natively: the classic reduction to L2 (one extra coordinate
√(max‖v‖² − ‖v‖²)) puts every query far outside the data sphere and gave recall@10 of 0.05–0.29 on
100k synthetic items where native inner-product HNSW gets 0.97 (efSearch 128).

Indexes serialise to a flat uint8 array (faiss's own format, not pickle) stored in the model artifact.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

from recforge.errors import ConfigError
from recforge.retrieval.clusters import ClusterRetriever
from recforge.retrieval.topk import batched, mask_items, topk


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["exact", "flat", "ivf", "hnsw", "kmeans", "gmm"] = "exact"
    metric: Literal["ip", "cosine"] = "ip"
    nlist: int | None = Field(None, ge=1, description="IVF cells; default 4·√n")
    nprobe: int = Field(16, ge=1)
    # 16 beat 32 at equal recall on 64-d factors, 100k and 1M items (benchmarks/results/ann.md)
    m: int = Field(16, ge=4, description="HNSW neighbours per node")
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(128, ge=8)
    threads: int | None = Field(None, ge=1)
    n_clusters: int = Field(20, ge=1, description="kmeans/gmm: clusters; a query scans its nearest one")


class VectorIndex:
    """Build with `VectorIndex(config).build(item_vectors)`; query with `search`."""

    def __init__(self, config: IndexConfig | dict[str, Any] | None = None) -> None:
        self.config = config if isinstance(config, IndexConfig) else IndexConfig(**(config or {}))
        self._faiss_index: Any = None
        self._clusters: ClusterRetriever | None = None
        self._vectors: np.ndarray | None = None

    # ------------------------------------------------------------------ build
    def build(self, item_vectors: np.ndarray) -> VectorIndex:
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ConfigError(f"item vectors must be a non-empty (n, d) array, got shape {vectors.shape}")
        if self.config.metric == "cosine":
            vectors = _normalise(vectors)
        self._vectors = vectors
        self.n_items, self.dim = vectors.shape
        if self.config.kind in ("kmeans", "gmm"):
            self._clusters = ClusterRetriever(self.config.n_clusters, self.config.kind, rank="score")
            self._clusters.fit(vectors, np.ones(len(vectors)))
        elif self.config.kind != "exact":
            self._faiss_index = self._build_faiss(vectors)
        return self

    def _build_faiss(self, vectors: np.ndarray) -> Any:
        faiss = _faiss()
        c = self.config
        if c.threads:
            faiss.omp_set_num_threads(c.threads)
        if c.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
            index.add(vectors)
            return index
        if c.kind == "ivf":
            nlist = c.nlist or max(1, int(4 * np.sqrt(len(vectors))))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.add(vectors)
            index.nprobe = min(c.nprobe, nlist)
            return index
        index = faiss.IndexHNSWFlat(self.dim, c.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = c.ef_construction
        index.hnsw.efSearch = c.ef_search
        index.add(vectors)
        return index

    # ------------------------------------------------------------------ search
    def search(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None = None, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._vectors is None:
            raise ConfigError("the index is empty; call build(item_vectors) first")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        if self.config.metric == "cosine":
            queries = _normalise(queries)
        k = min(k, self.n_items)
        out_items = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        if exclude is not None:
            exclude = exclude.tocsr()
            if exclude.shape[0] != len(queries):
                raise ConfigError(f"exclude has {exclude.shape[0]} rows for {len(queries)} queries")
        for rows in batched(len(queries), batch_size):
            whole = exclude is None or (rows.start == 0 and rows.stop == exclude.shape[0])
            block = exclude if whole else exclude[rows.start : rows.stop]  # slicing costs ~20 µs a call
            items, scores = self._search_block(queries[rows], k, block)
            items, scores = self._exactly_k(queries[rows], k, block, items, scores)
            out_items[rows, : items.shape[1]], out_scores[rows, : items.shape[1]] = items, scores
        return out_items, out_scores

    def _exactly_k(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None, items: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows where the approximate search found fewer than min(k, unexcluded items) results (an HNSW graph
        or IVF cells that run dry, a cluster smaller than k) are answered by the exact scan instead."""
        if self._faiss_index is None and self._clusters is None:
            return items, scores
        excluded = np.zeros(len(queries), dtype=np.int64) if exclude is None else np.diff(exclude.indptr)
        wanted = np.minimum(k, self.n_items - excluded)
        short = np.flatnonzero((items >= 0).sum(axis=1) < wanted)
        if len(short):
            block = None if exclude is None else exclude[short]
            exact_items, exact_scores = topk(mask_items(queries[short] @ self._vectors.T, block), k)
            items, scores = items.copy(), scores.copy()
            items[short, : exact_items.shape[1]], scores[short, : exact_items.shape[1]] = exact_items, exact_scores
        return items, scores

    def search_one(self, query: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One query vector (d,) and the item indices to leave out: (items, scores), each (min(k, n),),
        best first, padded with -1 / -inf. The same answer as row 0 of `search`, without the sparse
        matrices a batch needs (the service's per-request path, ~0.1 ms cheaper per call)."""
        if self._vectors is None:
            raise ConfigError("the index is empty; call build(item_vectors) first")
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if query.shape[1] != self.dim:
            raise ConfigError(f"the query must have {self.dim} dimensions, got {query.shape[1]}")
        exclude = np.zeros(0, np.int64) if exclude is None else np.unique(np.asarray(exclude, dtype=np.int64))
        if self._clusters is not None:
            block = sp.csr_matrix((np.ones(len(exclude)), exclude, [0, len(exclude)]), shape=(1, self.n_items))
            items, scores = self.search(query, k, block)
            return items[0], scores[0]
        if self.config.metric == "cosine":
            query = _normalise(query)
        k = min(k, self.n_items)
        if self._faiss_index is None:  # exact
            scores = (query @ self._vectors.T).astype(np.float32, copy=False)
            scores[0, exclude] = -np.inf
            items, top = topk(scores, k)
            return items[0], top[0]
        scores, items = self._faiss_index.search(np.ascontiguousarray(query), min(self.n_items, k + len(exclude)))
        scores, items = scores[0].astype(np.float32), items[0]
        keep = items >= 0
        if len(exclude):
            position = np.minimum(np.searchsorted(exclude, items), len(exclude) - 1)
            keep &= exclude[position] != items
        items, scores = items[keep], scores[keep]
        if len(items) < min(k, self.n_items - len(exclude)):  # the graph ran dry: the exact scan answers
            scores = (query @ self._vectors.T).astype(np.float32, copy=False)
            scores[0, exclude] = -np.inf
            exact_items, exact_scores = topk(scores, k)
            return exact_items[0], exact_scores[0]
        order = np.argsort(-scores, kind="stable")[:k]
        out_items, out_scores = np.full(k, -1, dtype=np.int64), np.full(k, -np.inf, dtype=np.float32)
        out_items[: len(order)], out_scores[: len(order)] = items[order], scores[order]
        return out_items, out_scores

    def _search_block(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._clusters is not None:
            return self._clusters.recommend(queries, k, exclude)
        if self._faiss_index is None:  # exact
            return topk(mask_items(queries @ self._vectors.T, exclude), k)
        longest = 0 if exclude is None or exclude.nnz == 0 else int(np.diff(exclude.indptr).max())
        wanted = min(self.n_items, k + longest)
        scores, items = self._faiss_index.search(queries, wanted)
        scores = np.where(items >= 0, scores, -np.inf).astype(np.float32)
        if exclude is not None and exclude.nnz:
            scores = np.where(_excluded(exclude, items), -np.inf, scores)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        items = np.take_along_axis(items, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        items[~np.isfinite(scores)] = -1
        return items, scores

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"vectors": self._vectors}
        if self._clusters is not None:
            arrays |= {"labels": self._clusters.clusters_.labels, "centres": self._clusters.clusters_.centres}
        if self._faiss_index is not None:
            arrays["faiss"] = _faiss().serialize_index(self._faiss_index)
        return arrays

    @classmethod
    def from_arrays(cls, config: IndexConfig | dict[str, Any], arrays: dict[str, np.ndarray]) -> VectorIndex:
        index = cls(config)
        index._vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        index.n_items, index.dim = index._vectors.shape
        if "labels" in arrays:
            index._clusters = ClusterRetriever(index.config.n_clusters, index.config.kind, rank="score").restore(
                index._vectors, arrays["labels"], arrays["centres"]
            )
        if "faiss" in arrays:
            index._faiss_index = _faiss().deserialize_index(np.ascontiguousarray(arrays["faiss"], dtype=np.uint8))
            if index.config.kind == "hnsw":
                index._faiss_index.hnsw.efSearch = index.config.ef_search
            elif index.config.kind == "ivf":
                index._faiss_index.nprobe = index.config.nprobe
        return index


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("approximate search needs faiss: pip install 'recforge[ann]'") from exc
    return faiss


def _excluded(exclude: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """Boolean mask of `items` (rows aligned with `exclude`'s rows) that `exclude` marks: both sides become
    row * n_items + item keys and meet in one sorted search (sparse fancy indexing is ~10x slower)."""
    n_items = exclude.shape[1]
    rows = np.repeat(np.arange(exclude.shape[0], dtype=np.int64), np.diff(exclude.indptr))
    marked = np.sort(rows * n_items + exclude.indices)
    keys = np.arange(len(items), dtype=np.int64)[:, None] * n_items + np.maximum(items, 0)
    position = np.minimum(np.searchsorted(marked, keys), len(marked) - 1)
    return marked[position] == keys
