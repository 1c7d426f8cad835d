"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) with conjugate-gradient or Cholesky solves.

Objective: Σ_{u,i} c_ui (p_ui − x_uᵀ y_i)² + λ(‖X‖² + ‖Y‖²), with p_ui = 1 for observed pairs (0
otherwise) and confidence c_ui = 1 + α·v_ui (v = 1, the interaction count, or log(1 + count/ε)).

Each half-step solves, for all users at once, (YᵀY + Yᵀ(C_u − I)Y + λI) x_u = Yᵀ C_u p_u. The CG solver
(default, as in `implicit`) never forms the per-user matrices: one CG step is a dense (n, k)·(k, k)
product plus a sampled dense-dense product (SDDMM) and a sparse-dense product over the interactions,
done by torch's multi-threaded sparse kernels; it warm-starts from the previous iteration's factors.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field

from recforge._progress import progress_bar
from recforge.data.interactions import Interactions
from recforge.models._solvers import GroupedRows, gram, solve_spd
from recforge.models.base import History, ModelConfig, TrainOptions
from recforge.models.factorization import FactorModel


class IALSConfig(ModelConfig):
    n_factors: int = Field(64, ge=1)
    reg: float = Field(0.01, ge=0, description="λ: L2 on user and item factors")
    alpha: float = Field(1.0, ge=0, description="confidence slope: c = 1 + α·v")
    confidence: Literal["binary", "count", "log"] = "binary"
    epsilon: float = Field(1.0, gt=0, description="scale inside log confidence: v = log(1 + count/ε)")
    n_iterations: int = Field(15, ge=1)
    solver: Literal["cg", "cholesky"] = "cg"
    cg_steps: int = Field(3, ge=1)
    init_std: float = Field(0.01, gt=0)


class _CSR:
    """A fixed sparsity pattern with per-call values, as torch CSR tensors (for SDDMM and SpMM)."""

    def __init__(self, matrix: sp.csr_matrix) -> None:
        self.shape = matrix.shape
        self.crow = torch.from_numpy(matrix.indptr.astype(np.int64))
        self.col = torch.from_numpy(matrix.indices.astype(np.int64))
        self.values = torch.from_numpy(matrix.data.astype(np.float32))

    def with_values(self, values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch flags sparse CSR as beta
            return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape)

    def sddmm(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Values of (left @ rightᵀ) at this pattern's non-zeros."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pattern = self.with_values(torch.zeros_like(self.values))
            return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values()


def confidence_matrix(train: Interactions, config: IALSConfig) -> sp.csr_matrix:
    """Users x items matrix of c - 1 = α·v for observed pairs."""
    counts = train.to_csr("count")
    if config.confidence == "binary":
        counts.data[:] = 1.0
    elif config.confidence == "log":
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
        gram_fixed = fixed.T @ fixed + c.reg * torch.eye(fixed.shape[1])
        # b = Σ_i c_ui y_i = Yᵀ p_u + Σ_i (c_ui − 1) y_i
        b = pattern.with_values(pattern.values + 1.0) @ fixed
        if c.solver == "cholesky":
            weights = pattern.values.numpy().astype(np.float64)
            indptr, cols = pattern.crow.numpy(), pattern.col.numpy()
            groups = GroupedRows(indptr=indptr, cols=cols, order=np.arange(len(cols)))
            matrices = gram_fixed.double()[None] + gram(groups, fixed.double(), weights)
            return solve_spd(matrices, b.double()).float()

        def apply(vectors: torch.Tensor) -> torch.Tensor:
            dots = pattern.sddmm(vectors, fixed) * pattern.values
            return vectors @ gram_fixed + pattern.with_values(dots) @ fixed

        x = current.clone()
        residual = b - apply(x)
        direction = residual.clone()
        rs_old = (residual * residual).sum(1)
        for _ in range(c.cg_steps):
            a_direction = apply(direction)
            step = rs_old / (direction * a_direction).sum(1).clamp_min(1e-20)
            x += step[:, None] * direction
            residual -= step[:, None] * a_direction
            rs_new = (residual * residual).sum(1)
            direction = residual + (rs_new / rs_old.clamp_min(1e-20))[:, None] * direction
            rs_old = rs_new
        return x

    @staticmethod
    def _loss(pattern: _CSR, X: torch.Tensor, Y: torch.Tensor, c: IALSConfig) -> float:
        """Mean weighted squared error per user-item cell plus the L2 term (cheap identity, no dense matrix)."""
        dots = pattern.sddmm(X, Y)
        observed = ((pattern.values + 1.0) * (1.0 - dots) ** 2 - dots**2).sum()
        all_cells = ((X.T @ X) * (Y.T @ Y)).sum()  # Σ_{u,i} (x_uᵀ y_i)² for the unobserved part
        total = observed + all_cells + c.reg * ((X**2).sum() + (Y**2).sum())
        return float(total) / (X.shape[0] * Y.shape[0])

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """Exact iALS solution for each query's interactions against the fixed item factors."""
        c: IALSConfig = self.config  # type: ignore[assignment]
        alpha = c.alpha if c.confidence != "log" else c.alpha * float(np.log1p(1 / c.epsilon))
        return self.implicit_fold_in(history, c.reg, alpha)
