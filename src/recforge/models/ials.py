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

        def apply(vectors: torch.Tensor) -> torch.Tensor:
            dots = pattern.sddmm(vectors, fixed).mul_(pattern.values)
            product = torch.addmm(pattern.with_values(dots) @ fixed, vectors, gram_fixed)
            return product if penalty is None else product.addcmul_(penalty[:, None], vectors)

        x = current.clone()
        # r = b − A x with b's SpMM and A x's SpMM fused into one (same sparsity pattern)
        dots = pattern.sddmm(x, fixed)
        residual = pattern.with_values(pattern.values + 1.0 - pattern.values * dots) @ fixed
        residual.addmm_(x, gram_fixed, alpha=-1.0)
        if penalty is not None:
            residual.addcmul_(penalty[:, None], x, value=-1.0)
        direction = residual.clone()
        rs_old = (residual * residual).sum(1)
        for _ in range(c.cg_steps):
            a_direction = apply(direction)
            step = rs_old / (direction * a_direction).sum(1).clamp_min(1e-20)
            x.addcmul_(step[:, None], direction)
            residual.addcmul_(step[:, None], a_direction, value=-1.0)
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
        total = observed + all_cells + c.reg * ((X**2).sum() + (Y**2).sum())  # ν's row weights left out
        return float(total) / (X.shape[0] * Y.shape[0])

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """Exact iALS solution for each query's interactions against the fixed item factors."""
        c: IALSConfig = self.config  # type: ignore[assignment]
        alpha = c.alpha if c.confidence != "log" else c.alpha * float(np.log1p(1 / c.epsilon))
        return self.implicit_fold_in(history, c.reg, alpha)
