"""SLIM's item-item model (Ning & Karypis 2011) solved by ADMM (Steck, Dimakopoulou, Riabov & Jebara 2020,
"ADMM SLIM"): EASE's objective with the weights kept non-negative and, optionally, sparse.

    min_B ‖X − XB‖² + Σ_i λ_i ‖B_i‖² + λ₁ Σ |B_ij|   subject to diag(B) = 0 and (with `nonnegative`) B ≥ 0

with λ_i = λ + p/(1−p)·G_ii, EDLAE's dropout-emphasised penalty (p = 0: plain L2), and G = XᵀX (or EASE's
time-decayed Gram matrix). Without the constraint and the L1 term this is EASE/EDLAE exactly. ADMM splits the
weights into B (the quadratic part with the zero diagonal, in closed form) and C (the constraint and the L1
term: a clipped soft threshold), with a scaled dual U:

    B ← P (G + ρ/2 (C − U)) − P diag(μ),  P = (G + diag(λ_i) + ρ/2 I)⁻¹, μ making diag(B) zero
    C ← max(B + U − λ₁/ρ, 0) (the sign-keeping soft threshold without `nonnegative`), diag(C) = 0
    U ← U + B − C

until B and C agree and C stops moving (both within `tolerance` of C's largest weight). The model keeps C,
a sparse matrix (with the defaults on ML-100K, 18% of the item pairs). EASE's negative weights say "having i
predicts not taking j"; dropping them (and shrinking the rest to fit without them) ranked slightly better on
ML-100K (docs/models.md). Each iteration is one dense n_items³ product, so this fits catalogues of a few
thousand items in seconds (ML-100K's 1,682: 1.9 s, 34 iterations) and ~10,000 items in minutes (214 s);
n_items² floats seven times over in memory, float32 by default. `neighbours` m solves each item over its m
most co-occurring items instead, a batch at a time, with no n_items² matrix (on the time-decayed Gram too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recforge.data.interactions import Interactions
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.ease import edlae_penalty, item_gram, sparse_time_decayed_gram
from recforge.models.item_item import SparseItemItem
from recforge.models.memory import require_pairwise_memory

if TYPE_CHECKING:
    import torch


class SLIMConfig(ModelConfig):
    """Defaults chosen on the validation carve-out of the ML-100K per-user split (docs/models.md, "slim")."""

    reg: float = Field(100.0, gt=0, description="λ: L2 penalty on each item's weights")
    dropout: float = Field(
        0.5, ge=0, lt=1, description="p of EDLAE's emphasised dropout: item i's penalty grows by p/(1-p)·G_ii"
    )
    l1: float = Field(0.0, ge=0, description="λ₁: L1 penalty on the weights (sparser, and fewer to store)")
    nonnegative: bool = Field(True, description="keep every weight ≥ 0 (SLIM); False with l1 = 0 is EDLAE")
    time_decay: float | None = Field(
        None, gt=0, description="τ of EASE's time-decayed Gram matrix (positions); None = XᵀX"
    )
    rho: float = Field(10.0, gt=0, description="ADMM's penalty ρ, in units of the mean of G_ii + λ_i")
    max_iterations: int = Field(50, ge=1, description="ADMM iterations at most")
    tolerance: float = Field(1e-3, gt=0, description="stop when max|B − C| and C's last change are below this × max C")
    dtype: str = Field(
        "float32",
        pattern="^(float32|float64)$",
        description="precision of the solve (float32: half the time and memory, same ranking on MovieLens)",
    )
    neighbours: int | None = Field(
        None,
        ge=1,
        description="solve each item's weights over only its m most co-occurring items (fsSLIM): memory "
        "n·m² per batch instead of 7·n², for catalogues the dense solve cannot hold; None = all items. With "
        "time_decay, the neighbours are those of largest decayed co-occurrence, read from a sparse Gram matrix",
    )


def admm_slim_weights(
    gram: np.ndarray,
    reg: float,
    dropout: float = 0.0,
    l1: float = 0.0,
    nonnegative: bool = True,
    rho: float = 10.0,
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> tuple[sp.csr_matrix, int]:
    """(C as float32 CSR (n_items, n_items), iterations run) for a Gram matrix, whose dtype is the solve's
    (with `overwrite`, its memory is reused as scratch space). `rho` is relative: ρ = rho × mean(G_ii + λ_i),
    so one setting suits small and large data. Seven n_items² arrays at the peak (9,724 items in float32:
    2.6 GB): PG is I − P·diag(λ_i + ρ/2), so G itself is not needed after P, and every step writes in place."""
    n = gram.shape[0]
    diagonal = np.diag(gram).copy()
    penalty = edlae_penalty(reg, dropout, diagonal)
    step = rho * float(np.mean(diagonal + penalty)) if n else 1.0
    work = gram if overwrite else gram.copy()
    shift = penalty + step / 2
    work[np.diag_indices(n)] += shift
    inverse = np.linalg.inv(work)  # P
    base = inverse * -shift[None, :]  # PG = P(G + D − D) = I − PD
    base[np.diag_indices(n)] += 1.0
    inverse_diagonal = np.diag(inverse).copy()
    threshold = l1 / step
    weights, previous = np.zeros_like(work), np.empty_like(work)  # C, and C one step ago
    dual, split = np.zeros_like(work), np.empty_like(work)  # U, and B
    iterations = 0
    while iterations < max_iterations:
        iterations += 1
        np.subtract(weights, dual, out=work)
        np.matmul(inverse, work, out=split)
        split *= step / 2
        split += base  # B̃ = PG + ρ/2·P(C − U)
        np.multiply(inverse, (np.diag(split) / inverse_diagonal)[None, :], out=work)
        split -= work  # B: zero diagonal
        weights, previous = previous, weights
        np.add(split, dual, out=work)  # the point C is the projection of
        if nonnegative:
            np.subtract(work, threshold, out=weights)
            np.maximum(weights, 0.0, out=weights)
        else:  # soft threshold keeping the sign
            np.abs(work, out=weights)
            weights -= threshold
            np.maximum(weights, 0.0, out=weights)
            np.copysign(weights, work, out=weights)
        weights[np.diag_indices(n)] = 0.0
        dual += split
        dual -= weights
        scale = tolerance * max(float(np.abs(weights).max(initial=0.0)), 1e-12)
        if _largest_difference(split, weights, work) <= scale and _largest_difference(weights, previous, work) <= scale:
            break
    result = sp.csr_matrix(weights.astype(np.float32, copy=False))
    result.eliminate_zeros()
    return result, iterations


def neighbourhood_slim_weights(
    seen: sp.csr_matrix,
    neighbours: int,
    reg: float,
    dropout: float = 0.0,
    l1: float = 0.0,
    nonnegative: bool = True,
    rho: float = 10.0,
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    support_budget: int = 4096,
    cached_items: int = 4096,
    gram: sp.csr_matrix | None = None,
) -> tuple[sp.csr_matrix, int]:
    """SLIM with each item j's weights restricted to its `neighbours` items of largest co-occurrence (Ning
    & Karypis's fsSLIM feature selection), solved for a batch of items at a time: the Gram matrix is never
    formed whole. Per batch: the batch's Gram columns (n x batch), each column's support S_j, the Gram
    entries G_SS among each support, and ADMM on the (batch, m, m) systems in torch

        b ← P_j (G_Sj + ρ/2 (c − u)),  P_j = (G_SS + diag(λ_S) + ρ/2 I)⁻¹;  c ← max(b + u − λ₁/ρ, 0);  u ← u + b − c

    (the same penalties, ρ and stopping rule as `admm_slim_weights`; j ∉ S_j, so diag(W) = 0 by
    construction). With neighbours ≥ n − 1 this is the dense problem. The supports are mostly popular items
    (the ones that co-occur most), so the Gram block of the `cached_items` most popular items is computed once
    (dense, 4·cached_items² bytes) and each batch computes only the rows of its other support items. With
    `gram` (a sparse symmetric Gram matrix, e.g. `sparse_time_decayed_gram`) its entries are read instead of
    XᵀX's, the supports being each item's m largest. Returns W (float32 CSR) and the most iterations a batch
    ran."""
    import torch

    from recforge.models._solvers import spd_inverse

    source = ProductGram(seen) if gram is None else StoredGram(gram)
    n = source.n
    m = max(1, min(neighbours, n - 1))
    counts = source.diagonal()
    gram_block = PopularGramBlock(source, counts, cached_items)
    penalty = edlae_penalty(reg, dropout, counts)
    step = rho * float(np.mean(counts + penalty)) if n else 1.0
    threshold = l1 / step
    batch = max(1, min(n, support_budget // m, (64 << 20) // (4 * max(n, 1))))
    rows_out, cols_out, values_out, most = [], [], [], 0
    for start in range(0, n, batch):
        columns = np.arange(start, min(start + batch, n))
        candidates = source.rows(columns)  # (B, n): the batch's co-occurrences with every item
        candidates[np.arange(len(columns)), columns] = -np.inf  # never an item's own support
        nearest = torch.topk(torch.from_numpy(candidates), m, dim=1)  # ~20x numpy's argpartition here
        support, co_occurrence = nearest.indices.numpy(), nearest.values.numpy().astype(np.float64)
        valid = co_occurrence > 0  # co-occurring at all
        if not valid.any():
            continue  # no item of the batch co-occurs with any other: their weights are all zero
        union, local = np.unique(np.where(valid, support, -1), return_inverse=True)
        local = local.reshape(support.shape) - (union[0] == -1)
        union = union[union >= 0]
        mask = torch.from_numpy(valid)
        pair_mask = (mask[:, :, None] & mask[:, None, :]).double()
        system = gram_block.entries(union, np.where(valid, local, 0)) * pair_mask
        diagonal = torch.from_numpy(np.where(valid, penalty[support], 0.0)) + step / 2
        system += torch.diag_embed(diagonal + (~mask).double())  # padding: identity rows, zero right side
        inverse = spd_inverse(system)  # the systems are G_SS + diag(λ_S + ρ/2): positive definite
        target = torch.from_numpy(np.where(valid, co_occurrence, 0.0))
        weights, dual = torch.zeros_like(target), torch.zeros_like(target)
        iterations = 0
        while iterations < max_iterations:
            iterations += 1
            split = torch.einsum("bij,bj->bi", inverse, target + step / 2 * (weights - dual))
            previous = weights
            shifted = split + dual
            if nonnegative:
                weights = torch.clamp(shifted - threshold, min=0.0)
            else:
                weights = torch.sign(shifted) * torch.clamp(shifted.abs() - threshold, min=0.0)
            weights = weights * mask
            dual = dual + split - weights
            scale = tolerance * max(float(weights.abs().max()), 1e-12)
            if float((split - weights).abs().max()) <= scale and float((weights - previous).abs().max()) <= scale:
                break
        most = max(most, iterations)
        keep = (weights != 0).numpy()
        rows_out.append(support[keep])
        cols_out.append(np.broadcast_to(columns[:, None], support.shape)[keep])
        values_out.append(weights.numpy()[keep].astype(np.float32))
    rows = np.concatenate(rows_out) if rows_out else np.zeros(0, np.int64)
    cols = np.concatenate(cols_out) if cols_out else np.zeros(0, np.int64)
    values = np.concatenate(values_out) if values_out else np.zeros(0, np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(n, n), dtype=np.float32), most


class ProductGram:
    """XᵀX of a user-item matrix, computed a few rows or a block at a time (float32 counts, exact below 2²⁴)."""

    def __init__(self, seen: sp.spmatrix) -> None:
        self.x = sp.csc_matrix(seen, dtype=np.float32)
        self.by_item, self.by_user = self.x.T.tocsr(), self.x.tocsr()  # row slices, no layout change per product
        self.n = self.x.shape[1]

    def diagonal(self) -> np.ndarray:
        return np.diff(self.x.indptr).astype(np.float64)

    def rows(self, items: np.ndarray) -> np.ndarray:
        return (self.by_item[items] @ self.by_user).toarray()

    def block(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return (self.by_item[rows] @ self.x[:, columns].tocsr()).toarray()


class StoredGram:
    """A sparse symmetric Gram matrix given whole (float32), read a few rows or a block at a time."""

    def __init__(self, gram: sp.spmatrix) -> None:
        self.gram = sp.csr_matrix(gram, dtype=np.float32)
        self.n = self.gram.shape[0]

    def diagonal(self) -> np.ndarray:
        return self.gram.diagonal().astype(np.float64)

    def rows(self, items: np.ndarray) -> np.ndarray:
        return self.gram[items].toarray()

    def block(self, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
        return self.gram[rows][:, columns].toarray()


class PopularGramBlock:
    """Entries of a Gram matrix among item subsets, with the block of the most popular items read once: the
    items most co-occurring with any item are mostly popular, so the neighbourhoods share them, and their
    products are the expensive ones (every user of a popular item enters them)."""

    def __init__(self, source: ProductGram | StoredGram, counts: np.ndarray, size: int) -> None:
        import torch

        self.source = source
        popular = np.argsort(-counts, kind="stable")[: min(size, source.n)]
        self.position = np.full(source.n, -1, dtype=np.int64)
        self.position[popular] = np.arange(len(popular))
        self.block = torch.from_numpy(source.block(popular, popular))

    def entries(self, items: np.ndarray, index: np.ndarray) -> torch.Tensor:
        """G[items[index[b, i]], items[index[b, j]]] as a (batch, m, m) float64 tensor: the cached block's
        entries, and for pairs with an item outside it, that item's row of G over `items` read."""
        import torch

        positions = self.position[items]
        position = torch.from_numpy(positions[index])
        cached = position >= 0
        row, column = position.clamp(min=0)[:, :, None], position.clamp(min=0)[:, None, :]
        values = self.block[row, column] if self.block.numel() else torch.zeros(index.shape + index.shape[-1:])
        outside = np.flatnonzero(positions < 0)
        if outside.size:
            counts = torch.from_numpy(self.source.block(items[outside], items))
            rank = np.full(len(items), -1, dtype=np.int64)
            rank[outside] = np.arange(outside.size)
            local, rank_of = torch.from_numpy(index), torch.from_numpy(rank[index])
            first_outside = counts[rank_of.clamp(min=0)[:, :, None], local[:, None, :]]  # row item outside
            second_outside = counts[rank_of.clamp(min=0)[:, None, :], local[:, :, None]]  # column item outside
            values = torch.where(
                ~cached[:, :, None], first_outside, torch.where(~cached[:, None, :], second_outside, values)
            )
        return values.double()


def _largest_difference(a: np.ndarray, b: np.ndarray, scratch: np.ndarray) -> float:
    np.subtract(a, b, out=scratch)
    return float(np.abs(scratch, out=scratch).max(initial=0.0))


class SLIM(SparseItemItem):
    name = "slim"
    Config = SLIMConfig

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: SLIMConfig = self.config  # type: ignore[assignment]
        if c.neighbours is not None:
            gram = None if c.time_decay is None else sparse_time_decayed_gram(train, c.time_decay)
            self.weights_, iterations = neighbourhood_slim_weights(
                self.seen_,
                c.neighbours,
                c.reg,
                c.dropout,
                c.l1,
                c.nonnegative,
                c.rho,
                c.max_iterations,
                c.tolerance,
                gram=gram,
            )
        else:
            # measured peak: ADMM's seven arrays in the solve's dtype, and the sparse result's conversion
            require_pairwise_memory(
                self.name, train.n_items, 7 * np.dtype(c.dtype).itemsize + 8, instead="set neighbours (e.g. 200)"
            )
            gram = item_gram(train, self.seen_, c.time_decay).astype(c.dtype, copy=False)
            self.weights_, iterations = admm_slim_weights(
                gram, c.reg, c.dropout, c.l1, c.nonnegative, c.rho, c.max_iterations, c.tolerance, overwrite=True
            )
        self.training_log_.append({"iterations": iterations, "nonzero_weights": int(self.weights_.nnz)})
