"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) with conjugate-gradient or Cholesky solves.

Objective: Σ_{u,i} c_ui (p_ui − x_uᵀ y_i)² + λ(‖X‖² + ‖Y‖²), with p_ui = 1 for observed pairs (0
otherwise) and confidence c_ui = 1 + α·v_ui (v = 1, the interaction count, or log(1 + count/ε)).

Each half-step solves, for all users at once, (YᵀY + Yᵀ(C_u − I)Y + λI) x_u = Yᵀ C_u p_u. The CG solver
(default, as in `implicit`) never forms the per-user matrices and warm-starts from the previous
iteration's factors. It is one compiled loop over rows (numba, parallel over rows): a row's CG steps
run while its partners' factors are in cache, each interaction costing one dot product and one axpy per
step. Why numba here and torch elsewhere: written with torch's sparse kernels, one CG step is an SDDMM
pass and an SpMM pass over all interactions, each fetching every partner's factors from memory again;
at 20M interactions (138k users, 64 factors) that made a half-step over the items 2.6-2.8 s against
0.8 s for the fused loop, and the whole fit 1.7x slower than `implicit` (benchmarks/results/large_scale.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import numba
import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from recforge._progress import progress_bar
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.models._solvers import GroupedRows, gram, solve_spd
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.factorization import FactorModel


class IALSConfig(ModelConfig):
    n_factors: int = Field(64, ge=1)
    reg: float = Field(20.0, ge=0, description="λ: L2 on user and item factors")
    reg_exponent: float = Field(
        0.0,
        ge=0,
        le=1,
        description="ν: row penalty λ·(n_row + n_other/(1+α))^ν (Rendle et al. 2021); 0 = the classic constant λ",
    )
    alpha: float = Field(2.0, ge=0, description="confidence slope: c = 1 + α·v")
    confidence: Literal["binary", "count", "log"] = "binary"
    epsilon: float = Field(1.0, gt=0, description="scale inside log confidence: v = log(1 + count/ε)")
    n_iterations: int = Field(15, ge=1)
    solver: Literal["cg", "cholesky"] = "cg"
    cg_steps: int = Field(3, ge=1)
    init_std: float = Field(0.01, gt=0)


# torch marks sparse CSR support as beta and says so on every tensor built; silence that one message.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled", category=UserWarning)


class _CSR:
    """A fixed sparsity pattern with per-call values, as torch CSR tensors (for SDDMM and SpMM)."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        self.shape = matrix.shape
        self.crow = torch.from_numpy(matrix.indptr.astype(np.int64))
        self.col = torch.from_numpy(matrix.indices.astype(np.int64))
        self.values = torch.from_numpy(matrix.data.astype(np.float32))
        self.pattern = self.with_values(torch.zeros_like(self.values))

    def with_values(self, values: torch.Tensor) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape)

    def sddmm(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Values of (left @ rightᵀ) at this pattern's non-zeros."""
        return torch.sparse.sampled_addmm(self.pattern, left, right.T, beta=0.0).values()


_ROWS_PER_TASK = 64  # rows one parallel task solves in turn, reusing its scratch vectors


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _conjugate_gradient_rows(indptr, cols, confidence, fixed, gram, penalty, rows, steps):  # pragma: no cover
    """`steps` CG steps in place on every row r of `rows` for
    (G + penalty_r·I + Σ_j c_j y_j y_jᵀ) x_r = Σ_j (1 + c_j) y_j, j over the row's entries, y_j = fixed[cols[j]],
    c_j = confidence[j] (that is c − 1), G = gram (YᵀY, plus λI when the penalty is constant)."""
    n, d = rows.shape
    for task in numba.prange((n + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK):
        x = np.empty(d, np.float32)
        residual = np.empty(d, np.float32)
        direction = np.empty(d, np.float32)
        product = np.empty(d, np.float32)
        for r in range(task * _ROWS_PER_TASK, min(n, (task + 1) * _ROWS_PER_TASK)):
            for k in range(d):
                x[k] = rows[r, k]
            for k in range(d):  # residual = b − A x
                total = penalty[r] * x[k]
                for m in range(d):
                    total += gram[k, m] * x[m]
                residual[k] = -total
            for j in range(indptr[r], indptr[r + 1]):
                y = fixed[cols[j]]
                dot = np.float32(0.0)
                for k in range(d):
                    dot += y[k] * x[k]
                weight = confidence[j] + np.float32(1.0) - confidence[j] * dot
                for k in range(d):
                    residual[k] += weight * y[k]
            norm = np.float32(0.0)
            for k in range(d):
                direction[k] = residual[k]
                norm += residual[k] * residual[k]
            for _ in range(steps):
                if norm < 1e-20:
                    break
                for k in range(d):  # product = A · direction
                    total = penalty[r] * direction[k]
                    for m in range(d):
                        total += gram[k, m] * direction[m]
                    product[k] = total
                for j in range(indptr[r], indptr[r + 1]):
                    y = fixed[cols[j]]
                    dot = np.float32(0.0)
                    for k in range(d):
                        dot += y[k] * direction[k]
                    weight = confidence[j] * dot
                    for k in range(d):
                        product[k] += weight * y[k]
                curvature = np.float32(0.0)
                for k in range(d):
                    curvature += direction[k] * product[k]
                if curvature <= 0.0:
                    break
                step = norm / curvature
                new_norm = np.float32(0.0)
                for k in range(d):
                    x[k] += step * direction[k]
                    residual[k] -= step * product[k]
                    new_norm += residual[k] * residual[k]
                ratio = new_norm / norm
                for k in range(d):
                    direction[k] = residual[k] + ratio * direction[k]
                norm = new_norm
            for k in range(d):
                rows[r, k] = x[k]


def confidence_matrix(train: Interactions, config: IALSConfig) -> sp.csr_matrix:
    """Users x items matrix of c - 1 = α·v for observed pairs."""
    counts = train.to_csr("binary" if config.confidence == "binary" else "count")
    if config.confidence == "log":
        counts.data = np.log1p(counts.data / config.epsilon)
    counts.data = (config.alpha * counts.data).astype(np.float32)
    return counts


class ImplicitALS(FactorModel):
    name = "ials"
    Config = IALSConfig

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: IALSConfig = self.config  # type: ignore[assignment]
        generator = torch.Generator().manual_seed(options.seed)
        weights = confidence_matrix(train, c)
        self.confidence_scale_ = c.alpha
        user_items, item_users = _CSR(weights), _CSR(weights.T.tocsr())
        X = torch.randn((train.n_users, c.n_factors), generator=generator) * c.init_std
        Y = torch.randn((train.n_items, c.n_factors), generator=generator) * c.init_std
        with progress_bar("iALS", c.n_iterations, enabled=options.progress) as bar:
            for iteration in range(c.n_iterations):
                X = self._solve(user_items, Y, X, c)
                Y = self._solve(item_users, X, Y, c)
                if options.progress or iteration == c.n_iterations - 1:
                    self.training_log_.append({"epoch": iteration + 1, "loss": self._loss(user_items, X, Y, c)})
                bar.advance()
        self._set_factors(X.numpy(), Y.numpy())

    @staticmethod
    def _solve(pattern: _CSR, fixed: torch.Tensor, current: torch.Tensor, c: IALSConfig) -> torch.Tensor:
        row_counts = (pattern.crow[1:] - pattern.crow[:-1]).to(fixed.dtype)
        gram_fixed = fixed.T @ fixed
        penalty = None
        if c.reg_exponent:
            penalty = c.reg * (row_counts + fixed.shape[0] / (1.0 + c.alpha)) ** c.reg_exponent  # per row
        else:
            gram_fixed += c.reg * torch.eye(fixed.shape[1], dtype=fixed.dtype)
        if c.solver == "cholesky":
            b = pattern.with_values(pattern.values + 1.0) @ fixed  # Σ_i c_ui y_i (p_ui = 1 where observed)
            weights = pattern.values.numpy().astype(np.float64)
            indptr, cols = pattern.crow.numpy(), pattern.col.numpy()
            groups = GroupedRows(indptr=indptr, cols=cols, order=np.arange(len(cols)))
            matrices = gram_fixed.double()[None] + gram(groups, fixed.double(), weights)
            if penalty is not None:
                matrices += torch.diag_embed(penalty.double()[:, None].expand(-1, fixed.shape[1]))
            return solve_spd(matrices, b.double()).float()

        rows = np.array(current.numpy(), dtype=np.float32, order="C")  # solved in place
        if penalty is None:
            penalty = torch.zeros(len(row_counts), dtype=fixed.dtype)  # λ is already on the diagonal
        _conjugate_gradient_rows(
            pattern.crow.numpy(),
            pattern.col.numpy(),
            pattern.values.numpy(),
            np.ascontiguousarray(fixed.numpy(), dtype=np.float32),
            np.ascontiguousarray(gram_fixed.numpy(), dtype=np.float32),
            np.ascontiguousarray(penalty.numpy(), dtype=np.float32),
            rows,
            c.cg_steps,
        )
        return torch.from_numpy(rows)

    @staticmethod
    def _loss(pattern: _CSR, X: torch.Tensor, Y: torch.Tensor, c: IALSConfig) -> float:
        """Mean weighted squared error per user-item cell plus the L2 term (cheap identity, no dense matrix)."""
        dots = pattern.sddmm(X, Y)
        observed = ((pattern.values + 1.0) * (1.0 - dots) ** 2 - dots**2).sum()
        all_cells = ((X.T @ X) * (Y.T @ Y)).sum()  # Σ_{u,i} (x_uᵀ y_i)² for the unobserved part
        total = observed + all_cells + c.reg * ((X**2).sum() + (Y**2).sum())  # ν's row weights left out
        return float(total) / (X.shape[0] * Y.shape[0])

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """Exact iALS solution for each query's interactions against the fixed item factors."""
        return self.implicit_fold_in(history, self.config.reg, self._fold_in_alpha())  # type: ignore[attr-defined]

    def _fold_in_alpha(self) -> float:
        c: IALSConfig = self.config  # type: ignore[assignment]
        return c.alpha if c.confidence != "log" else c.alpha * float(np.log1p(1 / c.epsilon))

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """The fold-in of the history without each left-out item j, exactly, from the full history's system
        A = QᵀQ + αFᵀF + λI (F: the history's factors) by a rank-one downdate (Sherman–Morrison):
        A_j = A − α f_j f_jᵀ, b_j = b − (1 + α) f_j — one d x d inverse instead of a system per item."""
        alpha = self._fold_in_alpha()
        factors = self.item_factors_[np.unique(history.binary.indices)].astype(np.float64)
        system = self.item_gram() + alpha * (factors.T @ factors) + self.config.reg * np.eye(factors.shape[1])  # type: ignore[attr-defined]
        inverse = np.linalg.inv(system)
        left = self.item_factors_[left_out].astype(np.float64)
        projected = left @ inverse  # f_jᵀA⁻¹ (A is symmetric)
        rhs = (1.0 + alpha) * (factors.sum(axis=0)[None, :] - left)
        shrink = 1.0 - alpha * (projected * left).sum(axis=1)  # > 0: A_j is positive definite
        vectors = rhs @ inverse + alpha * projected * ((projected * rhs).sum(axis=1) / shrink)[:, None]
        return self.score_vectors(vectors, np.zeros(len(left_out)))
