"""`FactorModel`: the shared scoring, fold-in and state of every latent-factor model.

score(u, i) = μ + b_u + b_i + ⟨p_u, q_i⟩. Implicit models leave μ and the biases at zero. The augmented
embeddings [p_u, 1, μ + b_u] and [q_i, b_i, 1] reproduce the score as a pure inner product, so exact and
approximate (faiss) retrieval can work on any factor model without knowing its family.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from recforge.coldstart import EMBEDDINGS, HISTORY, KNOWN_USERS, RATINGS
from recforge.data.query import History
from recforge.models.base import Recommender, UserUpdate


class FoldInPenalty(NamedTuple):
    """L2 penalties of the explicit fold-in (and the MAP update of a user): on the factors, on the user
    bias, and whether they scale with the user's rating count (as ALS-WR and per-rating SGD train)."""

    reg: float = 0.1
    bias_reg: float = 0.01
    per_rating: bool = False


class FactorModel(Recommender):
    capabilities = frozenset({KNOWN_USERS, HISTORY, EMBEDDINGS})

    user_factors_: np.ndarray
    item_factors_: np.ndarray
    user_bias_: np.ndarray
    item_bias_: np.ndarray
    global_bias_: float = 0.0

    # -------------------------------------------------------------- scoring
    def _scores_from(self, factors: np.ndarray, bias: np.ndarray) -> np.ndarray:
        # copy=False: re-casting the (n_items, d) factors on every call cost more than the product itself
        scores = factors.astype(np.float32, copy=False) @ self.item_factors_.astype(np.float32, copy=False).T
        scores += (self.global_bias_ + bias)[:, None].astype(np.float32)
        scores += self.item_bias_.astype(np.float32, copy=False)[None, :]
        return scores

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._scores_from(self.user_factors_[users], self.user_bias_[users])

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._scores_from(*self.history_vectors(history, users))

    def history_vectors(self, history: History, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """User vectors and biases of query-time histories (default: `fold_in`; towers embed instead)."""
        return self.fold_in(history)

    def score_vectors(self, vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
        """(n, n_items) scores of arbitrary user vectors (d,) and biases (a folded-in or updated user)."""
        return self._scores_from(np.asarray(vectors, dtype=np.float32), np.asarray(biases, dtype=np.float64))

    # -------------------------------------------------------------- updates without retraining
    def update_user(self, user: int, added: History, previous: UserUpdate | None = None) -> UserUpdate:
        """A known user's vector after interactions added since training, computed aside (the model is not
        changed). Rated additions to an explicit model take a MAP step from the current vector:
        argmin Σ_added (r − μ − b_u − b_i − xᵀq_i)² + λ‖x − x₀‖² (λ as the fold-in penalty), so earlier
        evidence is the prior. Otherwise the user is refolded from all their items by the model's own
        history path (iALS's fold-in, BPR's objective, the two-tower's history tower). The update also keeps
        the user's history with the written ratings (training first, as history models do): scores come
        from the vector, explanations from that history."""
        self._require_fitted()
        vector = previous.vector if previous is not None else self.user_factors_[user]
        bias = previous.bias if previous is not None else float(self.user_bias_[user])
        items = self._items_after(user, added, previous)
        ratings = added.ratings
        # the first row's rated items and values, read off the CSR arrays (getrow builds a matrix)
        rated_items = ratings.indices[ratings.indptr[0] : ratings.indptr[1]] if ratings is not None else None
        if RATINGS in self.capabilities and rated_items is not None and len(rated_items):
            rated_values = ratings.data[ratings.indptr[0] : ratings.indptr[1]]
            q = self.item_factors_[rated_items].astype(np.float64)
            residual = rated_values - self.global_bias_ - bias - self.item_bias_[rated_items]
            reg, _, per_rating = self.fold_in_penalty_
            reg = max(float(reg), 1e-6) * (len(rated_items) if per_rating else 1)
            system = q.T @ q + reg * np.eye(q.shape[1])
            vector = np.linalg.solve(system, q.T @ residual + reg * vector.astype(np.float64))
        elif RATINGS not in self.capabilities:
            everything = History.from_items([items.tolist()], self.n_items)
            factors, biases = self.history_vectors(everything, np.array([user]))
            vector, bias = factors[0], float(biases[0])
        history = self._history_after(user, added, previous)
        return UserUpdate(user, items, history=history, vector=np.asarray(vector, dtype=np.float32), bias=bias)

    def start_user(self, added: History, previous: UserUpdate | None = None) -> UserUpdate:
        """A user the model was not trained with, after their writes: folded in (explicit models: ridge on
        their ratings; implicit ones: their items; towers: embedded) from the history kept so far, so the
        vector index can answer them like a trained user."""
        update = super().start_user(added, previous)
        factors, biases = self.history_vectors(update.history, np.array([-1]))
        return replace(update, vector=np.asarray(factors[0], dtype=np.float32), bias=float(biases[0]))

    def score_updated(self, update: UserUpdate) -> np.ndarray:
        return self.score_vectors(update.vector[None, :], np.array([update.bias]))

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        dots = np.einsum(
            "nd,nd->n", self.user_factors_[users].astype(np.float64), self.item_factors_[items].astype(np.float64)
        )
        return self.global_bias_ + self.user_bias_[users] + self.item_bias_[items] + dots

    def item_vectors(self) -> np.ndarray:
        return self.item_factors_

    def user_embeddings(self, users: np.ndarray | None = None, history: History | None = None) -> np.ndarray:
        """(n, d + 2) vectors whose inner product with `item_embeddings()` is the score."""
        if history is not None:
            factors, bias = self.history_vectors(history, np.full(len(history), -1) if users is None else users)
        else:
            index = np.arange(self.n_users) if users is None else np.asarray(users)
            factors, bias = self.user_factors_[index], self.user_bias_[index]
        return self.augmented(factors, bias)

    def augmented(self, factors: np.ndarray, biases: np.ndarray) -> np.ndarray:
        """User vectors (n, d) and biases (n,) as (n, d + 2) embeddings [p_u, 1, μ + b_u] for retrieval."""
        ones = np.ones((len(factors), 1), dtype=np.float32)
        return np.hstack([factors, ones, (self.global_bias_ + np.asarray(biases))[:, None]]).astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        ones = np.ones((self.n_items, 1), dtype=np.float32)
        return np.hstack([self.item_factors_, self.item_bias_[:, None], ones]).astype(np.float32)

    # -------------------------------------------------------------- fold-in
    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """User vectors and biases for query-time histories, solved against the fixed item factors.

        Default (explicit models): ridge regression of (r - μ - b_i) on [q_i, 1] over the rated items,
        with the L2 penalties the model was trained with (`fold_in_penalty_`, set by its fit; per rating
        when the training penalised per rating).
        Unrated history items are ignored; a query with no rated item gets a zero vector (its scores
        fall back to μ + b_i). Implicit models override this.
        """
        import torch

        from recforge.models._solvers import GroupedRows, ridge

        n, d = len(history), self.item_factors_.shape[1]
        if history.ratings is None or history.ratings.nnz == 0:
            return np.zeros((n, d), np.float32), np.zeros(n)
        ratings = history.ratings.tocoo()
        # only the rated items enter the solve: the design matrix is theirs, not the whole catalogue's
        touched, local = np.unique(ratings.col, return_inverse=True)
        groups = GroupedRows.build(ratings.row.astype(np.int64), local.astype(np.int64), n)
        factors = self.item_factors_[touched].astype(np.float64)
        design = torch.from_numpy(np.hstack([factors, np.ones((len(touched), 1))]))
        targets = ratings.data - self.global_bias_ - self.item_bias_[ratings.col]
        reg, bias_reg, per_rating = self.fold_in_penalty_
        penalty = torch.tensor([reg] * d + [bias_reg], dtype=torch.float64)
        if per_rating:
            counts = torch.from_numpy(np.maximum(groups.sizes, 1)).double()
            regularization = torch.diag_embed(counts[:, None] * penalty)
        else:
            regularization = torch.diag(penalty)
        solution = ridge(groups, design, targets, regularization).numpy()
        return solution[:, :d].astype(np.float32), solution[:, d]

    def implicit_fold_in(self, history: History, reg: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """iALS-style fold-in from interactions alone: minimise Σ_i c_i (p_i − xᵀq_i)² + reg‖x‖² over all
        items, with c = 1 + alpha for the query's items and p = 1 for them, 0 otherwise."""
        import torch

        from recforge.models._solvers import GroupedRows, gram, solve_spd, weighted_sum

        binary = history.binary.tocsr()
        if len(history) == 1:  # one user (a service write or request): numpy beats torch's batched set-up
            factors = self.item_factors_[binary.indices].astype(np.float64)
            system = self.item_gram() + alpha * (factors.T @ factors) + reg * np.eye(factors.shape[1])
            vector = np.linalg.solve(system, (1.0 + alpha) * factors.sum(axis=0))
            return vector[None, :].astype(np.float32), np.zeros(1)
        touched, local = np.unique(binary.indices, return_inverse=True)  # per query only its items' rows
        groups = GroupedRows(
            indptr=binary.indptr.astype(np.int64), cols=local.astype(np.int64), order=np.arange(binary.nnz)
        )
        weights = np.full(binary.nnz, alpha)
        Y = torch.from_numpy(self.item_factors_[touched].astype(np.float64))
        shared = torch.from_numpy(self.item_gram()) + reg * torch.eye(Y.shape[1], dtype=torch.float64)
        matrices = shared[None] + gram(groups, Y, weights)
        rhs = weighted_sum(groups, Y, 1.0 + weights)
        return solve_spd(matrices, rhs).numpy().astype(np.float32), np.zeros(len(history))

    def item_gram(self) -> np.ndarray:
        """QᵀQ of the item factors in float64, computed once per set of item factors: an O(items·d²)
        product a per-request fold-in must not repeat (the arrays are only ever replaced, never edited)."""
        cached = getattr(self, "_item_gram_cache", None)
        if cached is None or cached[0] is not self.item_factors_:
            factors = self.item_factors_.astype(np.float64)
            cached = (self.item_factors_, factors.T @ factors)
            self._item_gram_cache = cached
        return cached[1]

    # -------------------------------------------------------------- state
    def factor_columns(self) -> int | None:
        """How many columns the config says the factors have (checked when an artifact is loaded)."""
        value = getattr(self.config, "n_factors", None)
        return value if isinstance(value, int) else None

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "user_bias": self.user_bias_,
            "item_bias": self.item_bias_,
        }

    def _get_extras(self) -> dict[str, Any]:
        return {"global_bias": float(self.global_bias_), "fold_in": list(self.fold_in_penalty_)}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        users, items = arrays["user_factors"], arrays["item_factors"]
        expected = {
            "user_factors": (len(self.users_), items.shape[1] if items.ndim == 2 else -1),
            "item_factors": (len(self.items_), users.shape[1] if users.ndim == 2 else -1),
            "user_bias": (len(self.users_),),
            "item_bias": (len(self.items_),),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise ValueError(f"{name} has shape {arrays[name].shape}, the vocabularies and factors need {shape}")
        width = self.factor_columns()
        if width is not None and users.shape[1] != width:
            raise ValueError(f"the factors have {users.shape[1]} columns, the config asks for {width}")
        self.user_factors_ = arrays["user_factors"]
        self.item_factors_ = arrays["item_factors"]
        self.user_bias_ = arrays["user_bias"]
        self.item_bias_ = arrays["item_bias"]
        self.global_bias_ = extras["global_bias"]
        self.fold_in_penalty_ = FoldInPenalty(*extras["fold_in"])

    def _set_factors(
        self,
        user_factors: Any,
        item_factors: Any,
        user_bias: Any = None,
        item_bias: Any = None,
        global_bias: float = 0.0,
        fold_in: FoldInPenalty | None = None,
    ) -> None:
        """Store learned factors (and the penalties the explicit fold-in solves with, as trained)."""
        self.user_factors_ = np.ascontiguousarray(user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(item_factors, dtype=np.float32)
        self._item_gram_cache = None  # the same array object may come back with new values
        self.user_bias_ = np.zeros(len(self.user_factors_)) if user_bias is None else np.asarray(user_bias, np.float64)
        self.item_bias_ = np.zeros(len(self.item_factors_)) if item_bias is None else np.asarray(item_bias, np.float64)
        self.global_bias_ = float(global_bias)
        self.fold_in_penalty_ = fold_in or FoldInPenalty()
