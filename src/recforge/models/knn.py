"""Neighbourhood models: item-based and user-based k-nearest neighbours.

Similarities (between "entities": items for ItemKNN, users for UserKNN), computed over the co-rating
support of each pair, as Surprise does:
- cosine:           Σ r_a r_b / √(Σ r_a² Σ r_b²)
- pearson:          cosine of ratings centred by each entity's own mean
- adjusted_cosine:  cosine of ratings centred by the *other side's* mean (the user mean for items)
- pearson_baseline: cosine of residuals from the regularised baseline μ + b_u + b_i (Koren 2010)
and, with implicit feedback, plain cosine of binary vectors over all users. A shrinkage s multiplies
each similarity by (n − 1)/(n − 1 + s), n being the pair's co-support.

Explicit prediction follows KNNBaseline: r̂_ui = b_ui + Σ_j s_ij (r_uj − b_uj) / Σ_j s_ij over the k most
similar neighbours the user rated (only positive similarities contribute). Implicit scoring sums the
similarities of each item's k nearest neighbours over the user's items (ItemKNN) or of the user's k
nearest users over their items (UserKNN).

Similarities are computed block-wise with sparse products. Explicit prediction keeps them dense (float32:
the k most similar among the items a user rated can be any of them), for catalogues (or user bases) of up
to a few tens of thousands; implicit scoring only ever uses each entity's k nearest, so each block is
pruned as it is computed and the model holds n·k similarities, never n x n.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recforge.coldstart import HISTORY, KNOWN_USERS, RATINGS
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import ConfigError
from recforge.models.base import Recommender, csr_arrays, stored_csr
from recforge.models.baselines import fit_biases
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.memory import require_pairwise_memory
from recforge.retrieval.topk import batched

Similarity = Literal["cosine", "pearson", "adjusted_cosine", "pearson_baseline"]


class KNNConfig(ModelConfig):
    k: int = Field(40, ge=1, description="neighbours used per prediction")
    similarity: Similarity = "pearson_baseline"
    shrinkage: float = Field(100.0, ge=0)
    min_support: int = Field(1, ge=1, description="pairs co-rated by fewer entities get similarity 0")
    feedback: Literal["explicit", "implicit"] = "explicit"
    reg_user: float = Field(15.0, ge=0, description="baseline shrinkage of user biases")
    reg_item: float = Field(10.0, ge=0, description="baseline shrinkage of item biases")
    baseline_iterations: int = Field(10, ge=1)
    block_size: int = Field(2048, ge=1, description="entities per block when computing similarities")


def _centred(
    ratings: sp.csr_matrix, how: str, row_mean: np.ndarray, col_mean: np.ndarray, baseline: np.ndarray | None
) -> sp.csr_matrix:
    """Entity x profile rating matrix with the centring the similarity needs (data only at ratings)."""
    matrix = ratings.tocoo(copy=True)
    if how == "pearson":
        matrix.data = matrix.data - row_mean[matrix.row]
    elif how == "adjusted_cosine":
        matrix.data = matrix.data - col_mean[matrix.col]
    elif how == "pearson_baseline":
        assert baseline is not None
        matrix.data = matrix.data - baseline
    return matrix.tocsr()


class SimilarityRows:
    """The rows of `values` prepared once (float64 values, their support mask and squares, row norms) for
    similarity blocks, which a model asking for a few rows again and again (similar items) reuses."""

    def __init__(self, values: sp.csr_matrix) -> None:
        self.values = values.tocsr().astype(np.float64)
        self.mask = self.values.copy()
        self.mask.data = np.ones_like(self.mask.data)
        self.squares = self.values.multiply(self.values).tocsr()
        self.row_norms = np.sqrt(np.asarray(self.squares.sum(axis=1)).ravel())

    def blocks(
        self, shrinkage: float, min_support: int, common_support: bool, block: int, only: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row indices, dense float64 similarities of those rows to every row, zero on each row's own
        entity), block by block over every row, or over the rows `only` names. With `common_support`,
        norms are taken over the co-rated columns of each pair (Surprise's definition)."""
        values, mask, squares = self.values, self.mask, self.squares
        wanted = np.arange(values.shape[0]) if only is None else np.asarray(only, dtype=np.int64)
        for part in batched(len(wanted), block):  # in place where it can be: each temporary is block x n float64
            rows = wanted[part]
            similarity = (values[rows] @ values.T).toarray()  # the numerator, divided in place below
            if common_support:
                denominator = (squares[rows] @ mask.T).toarray()  # Σ over co-rated columns of a's squares
                denominator *= (mask[rows] @ squares.T).toarray()
                np.sqrt(denominator, out=denominator)
            else:
                denominator = np.multiply(self.row_norms[rows][:, None], self.row_norms[None, :])
            np.divide(similarity, denominator, out=similarity, where=denominator > 0)
            similarity[denominator <= 0] = 0.0
            del denominator
            support = (mask[rows] @ mask.T).toarray()
            similarity[support < min_support] = 0.0
            if shrinkage:
                support -= 1
                np.maximum(support, 0, out=support)
                similarity *= support
                support += shrinkage
                np.divide(similarity, support, out=similarity, where=support > 0)
            del support
            similarity[np.arange(len(rows)), rows] = 0.0
            yield rows, similarity


def similarity_matrix(
    values: sp.csr_matrix, shrinkage: float, min_support: int, common_support: bool, block: int
) -> np.ndarray:
    """Dense (n, n) float32 similarity between the rows of `values` (zero diagonal)."""
    n = values.shape[0]
    result = np.zeros((n, n), dtype=np.float32)
    for rows, similarity in SimilarityRows(values).blocks(shrinkage, min_support, common_support, block):
        result[rows] = similarity
    return result


def nearest_neighbours(values: sp.csr_matrix, shrinkage: float, min_support: int, block: int, k: int) -> sp.csr_matrix:
    """The k largest positive similarities of each row of `values` as a sparse (n, n) float32 matrix,
    pruned block by block: the dense n x n matrix never exists, so memory is n·k plus one block of rows
    (at most ~64 MB of float64 per temporary: fewer rows per block as n grows)."""
    n = values.shape[0]
    block = max(1, min(block, (64 << 20) // (8 * max(n, 1))))
    blocks = SimilarityRows(values).blocks(shrinkage, min_support, False, block)
    parts = [prune_top_k(similarity, k) for _, similarity in blocks]
    if not parts:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.vstack(parts, format="csr").astype(np.float32)


def prune_top_k(similarity: np.ndarray, k: int) -> sp.csr_matrix:
    """Keep the k largest positive similarities of each row, as a sparse matrix (rows may be a block of a
    square matrix: k is bounded by the number of columns less one, the row's own item)."""
    n_rows, n_cols = similarity.shape
    k = min(k, n_cols - 1) if n_cols > 1 else 0
    if k <= 0:
        return sp.csr_matrix(similarity.shape, dtype=np.float32)
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(similarity, top, axis=1)
    keep = values > 0
    rows = np.repeat(np.arange(n_rows), k)[keep.ravel()]
    return sp.csr_matrix((values[keep], (rows, top[keep])), shape=similarity.shape, dtype=np.float32)


class _NeighbourModel(Recommender):
    """Shared machinery; `by_user` chooses whether the entities are users (UserKNN) or items (ItemKNN)."""

    Config = KNNConfig
    by_user = False

    def __init__(self, config: KNNConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        if self.config.feedback == "implicit":  # type: ignore[attr-defined]
            self.capabilities = type(self).capabilities - {RATINGS}
        else:  # KNNBaseline predicts ratings; ranking by predicted rating made poor top-N lists
            self.capabilities = frozenset({RATINGS})
        self.item_rows_: SimilarityRows | None = None  # implicit similar items: the fitted data, prepared once

    def ranking_refusal(self) -> str:
        if self.config.feedback == "explicit":  # type: ignore[attr-defined]
            return (
                f"{self.name} is configured for rating prediction (feedback='explicit', KNNBaseline); ranked by "
                f"predicted rating it made poor top-N lists on ML-100K (item_knn NDCG@10 0.056, user_knn 0.001, vs "
                f"0.365 and 0.399 with implicit neighbours). For recommendations create it with feedback='implicit'"
            )
        return super().ranking_refusal()

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: KNNConfig = self.config  # type: ignore[assignment]
        explicit = c.feedback == "explicit"
        self.item_rows_ = None
        if explicit and (train.rating is None or train.n_rated == 0):
            raise ConfigError(f"{self.name} with feedback='explicit' needs ratings; use feedback='implicit'")
        if explicit:
            n = train.n_users if self.by_user else train.n_items
            # measured peak: the float32 similarities, their negation and argpartition's int64 indices in
            # prune_top_k, and per block of rows a few float64 temporaries (with co-rated norms)
            require_pairwise_memory(self.name, n, 16, "user" if self.by_user else "item", 32 * min(c.block_size, n) * n)
            rated = train.explicit()
            rows = rated.latest_per_pair()
            users, items = rated.user_index[rows].astype(np.int64), rated.item_index[rows].astype(np.int64)
            ratings = rated.rating[rows].astype(np.float64)
            self.mean_ = float(ratings.mean())
            self.user_bias_, self.item_bias_ = fit_biases(
                users,
                items,
                ratings,
                train.n_users,
                train.n_items,
                self.mean_,
                c.reg_user,
                c.reg_item,
                c.baseline_iterations,
            )
            shape = (train.n_users, train.n_items)
            self.ratings_ = sp.csr_matrix((ratings, (users, items)), shape=shape)
            residual = ratings - self.mean_ - self.user_bias_[users] - self.item_bias_[items]
            self.residuals_ = sp.csr_matrix((residual, (users, items)), shape=shape)
            entity_matrix = self.ratings_ if self.by_user else self.ratings_.T.tocsr()
            counts = np.maximum(entity_matrix.getnnz(axis=1), 1)
            row_mean = np.asarray(entity_matrix.sum(axis=1)).ravel() / counts
            other = entity_matrix.T.tocsr()
            col_mean = np.asarray(other.sum(axis=1)).ravel() / np.maximum(other.getnnz(axis=1), 1)
            baseline = None
            if c.similarity == "pearson_baseline":
                coo = entity_matrix.tocoo()
                u, i = (coo.row, coo.col) if self.by_user else (coo.col, coo.row)
                baseline = self.mean_ + self.user_bias_[u] + self.item_bias_[i]
            profile = _centred(entity_matrix, c.similarity, row_mean, col_mean, baseline)
            self.similarity_ = similarity_matrix(profile, c.shrinkage, c.min_support, True, c.block_size)
            self.neighbours_ = prune_top_k(self.similarity_, c.k)
        else:  # only the k nearest are ever used: kept sparse, never n x n
            binary = self.seen_ if self.by_user else self.seen_.T.tocsr()
            self.neighbours_ = nearest_neighbours(binary, c.shrinkage, c.min_support, c.block_size, c.k)

    # -------------------------------------------------------------- explicit prediction
    def _baseline(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.mean_ + self.user_bias_[users] + self.item_bias_[items]

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.config.feedback != "explicit":  # type: ignore[attr-defined]
            raise ConfigError(f"{self.name} fitted on implicit feedback does not predict ratings")
        out = np.empty(len(users))
        entities, partners = (users, items) if self.by_user else (items, users)
        # for item-based: row of S for item i, candidate neighbours = items rated by user u
        candidates = self.residuals_.T.tocsr() if self.by_user else self.residuals_
        rated = candidates.copy()
        rated.data = np.ones_like(rated.data)
        chunk = max(1, (64 << 20) // (8 * max(1, self.similarity_.shape[0])))
        for rows in batched(len(users), chunk):
            sims = self.similarity_[entities[rows]].astype(np.float64)
            mask = rated[partners[rows]].toarray() > 0
            deviations = candidates[partners[rows]].toarray()
            out[rows] = self._weighted_average(sims, mask, deviations) + self._baseline(users[rows], items[rows])
        return out

    def _predict_cold(self, items: np.ndarray) -> np.ndarray:
        """A user with no ratings has no neighbours and no bias of their own: the baseline μ + b_i."""
        if self.config.feedback != "explicit":  # type: ignore[attr-defined]
            raise ConfigError(f"{self.name} fitted on implicit feedback does not predict ratings")
        return self.mean_ + self.item_bias_[items]

    def _weighted_average(self, sims: np.ndarray, mask: np.ndarray, deviations: np.ndarray) -> np.ndarray:
        """Mean deviation over each row's k most similar candidates (positive similarities only)."""
        k = min(self.config.k, sims.shape[1])  # type: ignore[attr-defined]
        masked = np.where(mask, sims, -np.inf)
        top = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(masked, top, axis=1)
        weights = np.where(np.isfinite(weights) & (weights > 0), weights, 0.0)
        values = np.take_along_axis(deviations, top, axis=1)
        total = weights.sum(axis=1)
        return np.divide((weights * values).sum(axis=1), total, out=np.zeros(len(total)), where=total > 0)

    # -------------------------------------------------------------- ranking scores (implicit neighbours)
    def _score_known(self, users: np.ndarray) -> np.ndarray:
        if self.by_user:
            return np.asarray((self.neighbours_[users] @ self.seen_).todense(), dtype=np.float32)
        return np.asarray((self.seen_[users] @ self.neighbours_).todense(), dtype=np.float32)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        if self.config.feedback == "implicit":  # type: ignore[attr-defined]
            return csr_arrays("neighbours", self.neighbours_)
        return {
            "similarity": self.similarity_,
            "user_bias": self.user_bias_,
            "item_bias": self.item_bias_,
            **csr_arrays("residuals", self.residuals_),
        }

    def _get_extras(self) -> dict[str, Any]:
        return {"mean": getattr(self, "mean_", 0.0)}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.mean_ = extras["mean"]
        self.item_rows_ = None
        if "similarity" not in arrays:  # implicit: the sparse neighbours
            n = len(self.users_) if self.by_user else len(self.items_)
            self.neighbours_ = stored_csr(arrays, "neighbours", (n, n))
            return
        self.similarity_ = arrays["similarity"]  # explicit (and implicit artifacts saved before 2026-12-03)
        self.neighbours_ = prune_top_k(self.similarity_, self.config.k)  # type: ignore[attr-defined]
        if "user_bias" in arrays:
            self.user_bias_, self.item_bias_ = arrays["user_bias"], arrays["item_bias"]
            self.residuals_ = stored_csr(arrays, "residuals", (len(self.users_), len(self.items_)))


class ItemKNN(_NeighbourModel):
    name = "item_knn"
    capabilities = frozenset({KNOWN_USERS, HISTORY, RATINGS})
    by_user = False

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return np.asarray((history.binary @ self.neighbours_).todense(), dtype=np.float32)

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """Linear in the binary history: the full scores minus each left-out item's neighbour row."""
        return self._score_history(history, np.array([-1])) - self.neighbours_[left_out].toarray()

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """Every item's similarity to `items`: stored (explicit), or computed for those rows on demand
        (implicit keeps only the k nearest, and a similar-items list may ask for more)."""
        c: KNNConfig = self.config  # type: ignore[assignment]
        if c.feedback == "explicit":
            return self.similarity_[items].copy()
        if self.item_rows_ is None:  # prepared on the first request, reused by the next ones
            self.item_rows_ = SimilarityRows(self.seen_.T.tocsr())
        blocks = self.item_rows_.blocks(c.shrinkage, c.min_support, False, c.block_size, items)
        rows = [similarity.astype(np.float32) for _, similarity in blocks]
        return np.concatenate(rows) if rows else np.zeros((0, self.n_items), np.float32)


class UserKNN(_NeighbourModel):
    name = "user_knn"
    capabilities = frozenset({KNOWN_USERS, RATINGS})
    by_user = True
