"""EASE (Steck 2019) and its dropout-emphasised form EDLAE (Steck 2020): closed-form item-item models.

B = argmin ‖X − XB‖² + λ‖B‖² subject to diag(B) = 0, solved by P = (XᵀX + λI)⁻¹ and
B = I − P·diag(1/diag(P)) (then zero the diagonal). Scores for a user are their history row times B,
so new users with a history are scored without any fold-in. Memory is n_items² floats: fine up to a few
tens of thousands of items.

With `time_decay` τ the Gram matrix XᵀX counts two items of one user by how close they are in the user's
time-ordered history: exp(−d/τ) for items d positions apart (0 beyond 4τ), the diagonal still the item's
user count. People rate and buy in sessions, and items taken together are more alike than items months
apart; XᵀX weighs both the same. On ML-100K's per-user 80/20 split, where the held-out items are interleaved
in time with the training ones, τ = 50 lifted EDLAE from NDCG@10 0.4526 to 0.4584 (chosen on validation;
docs/models.md). `history_decay` scores from a recency-weighted history row (next-item prediction), and
`item_features` adds a list column of item features to the Gram matrix as extra pseudo-users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recforge.coldstart import HISTORY, KNOWN_USERS
from recforge.data.interactions import Interactions, Sequences
from recforge.data.query import History
from recforge.errors import ConfigError
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.memory import require_memory, require_pairwise_memory


class EASEConfig(ModelConfig):
    reg: float = Field(250.0, gt=0, description="λ on the item-item weights")
    dropout: float = Field(
        0.6,
        ge=0,
        lt=1,
        description="p of EDLAE's emphasised dropout: item i's penalty grows "
        "by p/(1-p)·|users of i| (Steck 2020); 0 = plain EASE",
    )
    dtype: str = Field(
        "float32",
        pattern="^(float32|float64)$",
        description="precision of the factorisation (float32: the same rankings to 5 digits on MovieLens and "
        "Beauty, 1.4-1.8x faster, 12 bytes per item pair at the peak against 20; a Gram matrix float32 "
        "cannot factorise is solved in float64)",
    )
    time_decay: float | None = Field(
        None,
        gt=0,
        description="τ in positions: items d positions apart in a user's time-ordered history co-occur with "
        "weight exp(−d/τ) (none beyond 4τ); None = every pair counts 1 (XᵀX)",
    )
    item_features: str | None = Field(
        None,
        description="a list column of the item features (e.g. `attributes`, `genres`) whose values join the Gram "
        "matrix as feature_weight·FFᵀ (F the items' multi-hot values): side information as extra rows of X",
    )
    feature_weight: float = Field(1.0, gt=0, description="α of α·FFᵀ: how many users a shared value counts as")
    history_decay: float | None = Field(
        None,
        gt=0,
        description="κ in positions: a user's history row weighs each item exp(−i/κ), i the interactions "
        "after it (the latest 1), when scoring; None = every item 1. For next-item prediction",
    )


_BLOCK_ROWS = 2048  # rows per block where a full n_items² temporary would double the memory


def time_decayed_gram(train: Interactions, tau: float) -> np.ndarray:
    """XᵀX (n_items, n_items) of the binary user-item matrix with each off-diagonal co-occurrence weighted by
    exp(−d/τ), d the distance of the two items in the user's history in time order (by timestamp, source
    order breaking ties or, in files without timestamps, being the order, as `Interactions.sequences()`
    reads it; a repeated item at its latest position), pairs further apart than 4τ left out; the diagonal
    stays the item's user count. Each user adds an exponential-kernel matrix of their items' positions,
    positive semi-definite but for the cut-off's tail (e^-4 of the weight), which the ridge covers.
    One vectorised pass per distance; the weighted pairs are summed a few million at a time, by bincount
    into the dense matrix for catalogues up to 4,096 items, as sorted sparse matrices above that (their
    scattered adds into a large dense matrix cost three times as long on ml-latest-small's 9,724 items)."""
    pairs, counts = _decayed_pairs(train, tau, dense=train.n_items <= _PairSums.DENSE_ITEMS)
    gram = pairs.symmetric()
    gram[np.diag_indices(train.n_items)] = counts
    return gram


def sparse_time_decayed_gram(train: Interactions, tau: float) -> sp.csr_matrix:
    """`time_decayed_gram` as a CSR matrix, never dense: for catalogues whose n_items² floats do not fit
    (SLIM's `neighbours` solve reads it a few rows at a time). Its entries are the pairs within 4τ."""
    pairs, counts = _decayed_pairs(train, tau, dense=False)
    return (pairs.symmetric_sparse() + sp.diags(counts.astype(np.float64))).tocsr()


def _decayed_pairs(train: Interactions, tau: float, dense: bool) -> tuple[_PairSums, np.ndarray]:
    """Each user's pairs at distance d ≤ 4τ weighted exp(−d/τ), summed (one direction), and the users per item."""
    sequences = train.subset(train.latest_per_pair()).sequences()
    user, item = np.repeat(np.arange(len(sequences)), sequences.lengths), sequences.items
    pairs = _PairSums(train.n_items, dense)
    for distance in range(1, int(np.ceil(4 * tau)) + 1):
        same = user[:-distance] == user[distance:]
        if not same.any():  # no history is longer than this
            break
        pairs.add(item[:-distance][same], item[distance:][same], np.exp(-distance / tau))
    return pairs, np.bincount(item, minlength=train.n_items)


class _PairSums:
    """Σ weight over (row, column) pairs of an (n, n) matrix, gathered a few million pairs at a time and
    summed into a dense matrix (bincount over all n² cells) or a sparse one."""

    PAIRS_PER_SUM = 4_000_000  # 64 MB of indices and weights
    DENSE_ITEMS = 4096  # time_decayed_gram sums densely up to here (128 MB per bincount), sparsely above

    def __init__(self, n: int, dense: bool) -> None:
        self.n = n
        self.rows: list[np.ndarray] = []
        self.columns: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.dense = np.zeros((n, n)) if dense else None
        self.sparse = sp.csr_matrix((n, n))

    def add(self, rows: np.ndarray, columns: np.ndarray, weight: float) -> None:
        self.rows.append(rows)
        self.columns.append(columns)
        self.weights.append(np.full(len(rows), weight))
        if sum(map(len, self.rows)) >= self.PAIRS_PER_SUM:
            self._sum()

    def _sum(self) -> None:
        if not self.rows:
            return
        rows, columns, weights = (np.concatenate(parts) for parts in (self.rows, self.columns, self.weights))
        self.rows, self.columns, self.weights = [], [], []
        if self.dense is not None:
            self.dense += np.bincount(rows * self.n + columns, weights, minlength=self.n**2).reshape(self.n, self.n)
        else:
            self.sparse = self.sparse + sp.csr_matrix((weights, (rows, columns)), shape=(self.n, self.n))
            # what the entries so far will take to finish: Sᵀ and S + Sᵀ (12 bytes an entry each, measured:
            # 32-34 bytes per final entry at the peak on ml-latest-small and 100k synthetic items)
            require_memory(
                "time-decayed Gram matrix",
                36 * self.sparse.nnz,
                f"the {self.sparse.nnz:,} item pairs summed so far (more to come)",
                "lower time_decay (fewer pairs within 4τ), keep fewer items or users (`recforge.data.preprocess`), "
                "or leave time_decay unset",
            )

    def symmetric(self) -> np.ndarray:
        """S + Sᵀ of the sums as a dense matrix, S the pairs as added."""
        self._sum()
        if self.dense is not None:
            return self.dense + self.dense.T
        both = self.symmetric_sparse().tocoo()
        gram = np.zeros((self.n, self.n))
        gram[both.row, both.col] = both.data
        return gram

    def symmetric_sparse(self) -> sp.csr_matrix:
        self._sum()
        assert self.dense is None, "summed densely"
        return (self.sparse + self.sparse.T).tocsr()


def feature_gram(train: Interactions, column: str, weight: float = 1.0, out: np.ndarray | None = None) -> np.ndarray:
    """weight·FFᵀ (n_items, n_items): how many values of the list column `column` two items share (Jeunen et
    al. 2020, side information in closed-form item-item models: each value is a pseudo-user who took every
    item that has it). With `out`, added into it in blocks of rows, so no second n_items² array is made."""
    from recforge.data.features import item_value_lists, value_bags

    lists, vocabulary = item_value_lists(train, column, "ease")
    values, offsets = value_bags(lists, vocabulary)
    features = sp.csr_matrix(
        (np.ones(len(values)), values, np.append(offsets, len(values))), shape=(train.n_items, len(vocabulary))
    )
    out = np.zeros((train.n_items, train.n_items)) if out is None else out
    shared_by_all = features.T.tocsr()
    for start in range(0, train.n_items, _BLOCK_ROWS):
        block = slice(start, start + _BLOCK_ROWS)
        out[block] += weight * (features[block] @ shared_by_all).toarray()
    return out


def item_gram(
    train: Interactions,
    seen: sp.csr_matrix,
    time_decay: float | None = None,
    item_features: str | None = None,
    feature_weight: float = 1.0,
) -> np.ndarray:
    """The dense float64 Gram matrix the closed-form item-item models solve with: XᵀX of the binary `seen`
    matrix, or its time-decayed form (`time_decayed_gram`), plus the feature Gram of a list column."""
    gram = (seen.T @ seen).toarray() if time_decay is None else time_decayed_gram(train, time_decay)
    if item_features is not None:
        feature_gram(train, item_features, feature_weight, out=gram)
    return gram


def recency_rows(sequences: Sequences, n_items: int, kappa: float) -> sp.csr_matrix:
    """(n_sequences, n_items) rows with each item of a sequence weighted exp(−i/κ), i the number of
    interactions after it (the latest item 1); a repeated item keeps the weight of its latest position."""
    lengths = sequences.lengths
    row = np.repeat(np.arange(len(lengths)), lengths)
    after = np.repeat(sequences.indptr[1:], lengths) - 1 - np.arange(len(sequences.items))
    key = row * n_items + sequences.items
    order = np.lexsort((-after, key))  # per (row, item): the latest position last
    last = np.ones(len(order), dtype=bool)
    last[:-1] = key[order][1:] != key[order][:-1]
    keep = order[last]
    matrix = sp.csr_matrix(
        (np.exp(-after[keep] / kappa), (row[keep], sequences.items[keep])), shape=(len(lengths), n_items)
    )
    matrix.sort_indices()
    return matrix


def edlae_penalty(reg: float, dropout: float, gram_diagonal: Any) -> Any:
    """Each item's ridge penalty λ_i = λ + p/(1−p)·G_ii: plain EASE at p = 0, EDLAE's emphasised dropout
    (Steck 2020) above it, which regularises popular items more. Works on numpy arrays and torch tensors."""
    return reg + dropout / (1.0 - dropout) * gram_diagonal


def ease_weights(
    matrix: sp.csr_matrix, reg: float, dropout: float = 0.0, dtype: str = "float64", gram: np.ndarray | None = None
) -> np.ndarray:
    """Item-item weight matrix B (n_items, n_items) of EASE for a users x items interaction matrix (or for
    `gram` in place of its XᵀX; a `gram` of the requested dtype is overwritten: it becomes B).

    With `dropout` p > 0 this is EDLAE (Steck 2020, "Autoencoders that don't overfit towards the
    identity"): the diagonal penalty becomes λ + p/(1-p)·G_ii, which regularises popular items more.
    torch's Cholesky factor and inverse are written over the Gram matrix and B is formed there too
    (imported here, so EASE scoring alone never loads torch): at 18,357 items 2.7 GB per float64 copy,
    the fit peaks at two copies (the inverse's workspace) where separate factor, inverse and quotient
    made three, for ~10% more time (Beauty's 12,101 items: 14.0 s against 12.3 s). scipy's LAPACK would
    work in place too, but its OpenBLAS crashes (SIGSEGV) in a threaded potrf at that size (n = 18,357
    on two threads; 12,000 passes), a known class of OpenBLAS bugs.
    """
    import torch

    source = (matrix.T @ matrix).toarray() if gram is None else gram
    work = torch.from_numpy(np.asarray(source, dtype=dtype, order="C"))  # shares `gram`'s memory if it can
    work.diagonal().add_(edlae_penalty(reg, dropout, work.diagonal()))
    try:
        torch.linalg.cholesky(work, out=work)
    except torch.linalg.LinAlgError as exc:  # a supplied (time-decayed) Gram matrix, or float32's rounding
        raise ConfigError(f"ease: the Gram matrix plus reg = {reg} is not positive definite; raise reg") from exc
    torch.cholesky_inverse(work, out=work)
    work.div_(-work.diagonal().clone()[None, :])
    work.diagonal().zero_()
    return work.numpy()


class EASE(Recommender):
    name = "ease"
    Config = EASEConfig
    capabilities = frozenset({KNOWN_USERS, HISTORY})

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: EASEConfig = self.config  # type: ignore[assignment]
        # measured peaks: the float64 Gram, the solve's workspace and the float32 copy kept (float32: 12)
        require_pairwise_memory(self.name, train.n_items, 20 if c.dtype == "float64" else 12)
        gram = item_gram(train, self.seen_, c.time_decay, c.item_features, c.feature_weight)
        try:
            weights = ease_weights(self.seen_, c.reg, c.dropout, c.dtype, gram)  # float32: solved on a copy
        except ConfigError:
            if c.dtype == "float64":
                raise
            # rounding to float32 can leave a nearly singular Gram matrix (a tiny reg) without a Cholesky
            # factor that float64 still finds: solve again there before telling the user to raise reg
            require_pairwise_memory(self.name, train.n_items, 20)
            weights = ease_weights(self.seen_, c.reg, c.dropout, "float64", gram)
            self.training_log_.append({"note": "float32 could not factorise the Gram matrix; solved in float64"})
        self.weights_ = weights.astype(np.float32, copy=False)
        del gram, weights  # only the float32 weights stay
        self.query_ = self.seen_
        if c.history_decay is not None:
            self.query_ = recency_rows(train.sequences(), train.n_items, c.history_decay).astype(np.float32)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._times_weights(self.query_[users])

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        kappa = self.config.history_decay  # type: ignore[attr-defined]
        rows = history.binary if kappa is None else recency_rows(history.sequences, self.n_items, kappa)
        return self._times_weights(rows)

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """Linear in the binary history: x·B − B[j] for each left-out j (recency-weighted queries re-rank
        the others when one is left out, so they take the general path)."""
        if self.config.history_decay is not None:  # type: ignore[attr-defined]
            return super()._score_leaving_out(history, left_out, without)
        return self._score_history(history, np.array([-1])) - self.weights_[left_out]

    def _times_weights(self, rows: sp.csr_matrix) -> np.ndarray:
        """rows @ B in B's dtype: a float64 row times float32 B makes scipy copy B to float64 on every call
        (18,357 items: 6 s and 2.7 GB per batch of users, against 0.25 s)."""
        return np.asarray(rows.astype(self.weights_.dtype, copy=False) @ self.weights_)

    @property
    def keeps_time_order(self) -> bool:
        return self.config.history_decay is not None  # type: ignore[attr-defined]

    def training_history(self, user: int) -> History:
        """With `history_decay`, the user's training items in time order (oldest first, as the recency
        weights stored for scoring rank them), so that a service update appends to the right end; the
        base class's item-index order would make arbitrary training items look recent."""
        if not self.keeps_time_order:
            return super().training_history(user)
        row = slice(self.query_.indptr[user], self.query_.indptr[user + 1])
        oldest_first = self.query_.indices[row][np.argsort(self.query_.data[row], kind="stable")]
        return History.from_items([oldest_first.tolist()], self.n_items)

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """Similar items by their learned weights: how much having i predicts j (symmetrised)."""
        return (self.weights_[items] + self.weights_[:, items].T).astype(np.float32)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        if self.query_ is self.seen_:
            return {"weights": self.weights_}
        return {"weights": self.weights_, "query.data": self.query_.data}  # on the seen matrix's pattern

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.weights_ = arrays["weights"]
        self.query_ = self.seen_
        if self.config.history_decay is not None:  # type: ignore[attr-defined]
            data = arrays["query.data"]
            if data.shape != self.seen_.data.shape:
                raise ValueError("the history weights do not fit the seen-items matrix")
            self.query_ = sp.csr_matrix((data, self.seen_.indices, self.seen_.indptr), shape=self.seen_.shape)
