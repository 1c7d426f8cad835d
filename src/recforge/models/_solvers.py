"""Batched linear algebra shared by ALS, Bayesian MF, iALS and fold-in.

All of them solve, for many groups g at once (users, items or queries), a small ridge problem

    (Λ + Σ_{j in g} w_j x_j x_jᵀ) θ_g = Λ μ + Σ_{j in g} w_j t_j x_j

where x_j are rows of a fixed factor matrix X. `GroupedRows` holds the group structure (CSR-like),
`gram` builds the per-group matrices in memory-bounded chunks with torch (multi-threaded), and
`solve_spd` does batched Cholesky solves. No Python loop runs over interactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch

_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class GroupedRows:
    """Entries grouped by an owner (user or item): `cols[indptr[g]:indptr[g+1]]` are group g's partners."""

    indptr: np.ndarray
    cols: np.ndarray
    order: np.ndarray  # position of each grouped entry in the original interaction arrays

    @classmethod
    def build(cls, owners: np.ndarray, partners: np.ndarray, n_groups: int) -> GroupedRows:
        order = np.argsort(owners, kind="stable")
        indptr = np.zeros(n_groups + 1, dtype=np.int64)
        np.cumsum(np.bincount(owners, minlength=n_groups), out=indptr[1:])
        return cls(indptr=indptr, cols=partners[order].astype(np.int64), order=order)

    @cached_property
    def buckets(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Non-empty groups bucketed by size (within a factor of two): (group ids, (n_b, L) partner
        columns, (n_b, L) entry positions), both padded with -1 (which indexes an appended zero row)."""
        sizes = self.sizes
        result = []
        nonempty = np.flatnonzero(sizes > 0)
        if not len(nonempty):
            return result
        level = np.floor(np.log2(sizes[nonempty])).astype(np.int64)
        for value in np.unique(level):
            members = nonempty[level == value]
            length = int(sizes[members].max())
            offsets = np.arange(length)[None, :]
            positions = self.indptr[members][:, None] + offsets
            padding = offsets >= sizes[members][:, None]
            positions[padding] = 0
            cols = self.cols[positions]
            cols[padding] = -1
            positions[padding] = -1
            result.append((torch.from_numpy(members), torch.from_numpy(cols), torch.from_numpy(positions)))
        return result

    @property
    def n_groups(self) -> int:
        return len(self.indptr) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def matrix(self, values: np.ndarray, n_cols: int) -> sp.csr_matrix:
        """CSR (n_groups, n_cols) holding `values` (given in original interaction order)."""
        return sp.csr_matrix((np.asarray(values)[self.order], self.cols, self.indptr), shape=(self.n_groups, n_cols))


def gram(groups: GroupedRows, factors: torch.Tensor, weights: np.ndarray | None = None) -> torch.Tensor:
    """Per-group Σ w_j x_j x_jᵀ, shape (n_groups, d, d); weights in original interaction order.

    Groups are bucketed by size (sizes within a factor of two share a bucket), padded with a zero row
    and multiplied with batched BLAS (`torch.bmm`), which is far faster than scattering outer products.
    """
    n, d = groups.n_groups, factors.shape[1]
    out = torch.zeros((n, d, d), dtype=factors.dtype)
    padded_factors = torch.cat([factors, torch.zeros((1, d), dtype=factors.dtype)])
    w = None
    if weights is not None:
        w = torch.from_numpy(np.asarray(weights, dtype=np.float64)[groups.order]).to(factors.dtype)
        w = torch.cat([w, torch.zeros(1, dtype=factors.dtype)])
    for members, cols, positions in groups.buckets:
        budget = max(1, _CHUNK_BYTES // max(1, cols.shape[1] * d * factors.element_size()))
        for start in range(0, len(members), budget):
            rows = padded_factors[cols[start : start + budget]]  # (b, L, d); padding hits the zero row
            left = rows if w is None else rows * w[positions[start : start + budget]].unsqueeze(-1)
            out[members[start : start + budget]] = torch.bmm(left.mT, rows)
    return out


def weighted_sum(groups: GroupedRows, factors: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """Per-group Σ v_j x_j, shape (n_groups, d) (a sparse-dense product)."""
    matrix = groups.matrix(values, factors.shape[0]).astype(
        np.float64 if factors.dtype == torch.float64 else np.float32
    )
    return torch.from_numpy(np.asarray(matrix @ factors.numpy()))


def solve_spd(matrices: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Batched solve of symmetric positive-definite systems (n, d, d) x = (n, d)."""
    factor, info = torch.linalg.cholesky_ex(matrices)
    if int(info.max()) > 0:  # numerically indefinite: fall back to a general solve for safety
        return torch.linalg.solve(matrices, rhs)
    return torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)


def ridge(
    groups: GroupedRows,
    design: torch.Tensor,
    targets: np.ndarray,
    regularization: torch.Tensor,
    prior_mean: torch.Tensor | None = None,
    weights: np.ndarray | None = None,
) -> torch.Tensor:
    """Per-group ridge solutions θ_g = (R_g + Σ w x xᵀ)⁻¹ (R_g μ + Σ w t x).

    `regularization` is (d, d) shared, or (n_groups, d, d) per group (e.g. λ·n_g·I for ALS-WR).
    """
    matrices = gram(groups, design, weights) + (regularization if regularization.dim() == 3 else regularization[None])
    values = np.asarray(targets, dtype=np.float64) * (1.0 if weights is None else np.asarray(weights))
    rhs = weighted_sum(groups, design, values)
    if prior_mean is not None:
        rhs = rhs + regularization @ prior_mean
    return solve_spd(matrices, rhs)
