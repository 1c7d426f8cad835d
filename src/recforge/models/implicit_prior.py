"""Implicit feedback as a learned prior for Bayesian MF: Bayesian SVD++ and its "flipped" item side.

SVD++ (Koren 2008) adds to a user's factors a sum over the items they rated, |N(u)|^-½ Σ_j y_j: which
items were rated says something even where the rating does not. In a Gibbs-sampled model the same
thing is a prior whose mean depends on those items: p_u ~ N(μ + x_uᵀW, Λ⁻¹), x_u the user's
normalised indicator row and W (n_features, d) learned with the factors (as Macau does for side
information, Simm et al. 2015). "Flipped" (Rendle et al. 2019, "On the Difficulty of Evaluating
Baselines") gives items the same prior from the users who rated them.

W's conditional is a matrix-normal ridge regression of the rows' offsets p − μ on x with row noise
Λ⁻¹ and prior W ~ MN(0, λ⁻¹I, Λ⁻¹); one thin SVD of the fixed indicator matrix, computed once, makes
each sweep's draw cheap for any λ, and λ itself is drawn from its Gamma conditional.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recforge.errors import ConfigError

MAX_RANK = 10_000  # the thin SVD needs the min(rows, features)² Gram matrix and its eigendecomposition
MAX_FACTOR_ENTRIES = 200_000_000  # and keeps a (max(rows, features), rank) factor: 1.6 GB of float64


class RegressionPrior:
    """Draws W from p(W | targets, Λ, λ) for targets (n_rows, d) ≈ X W, X (n_rows, n_features) fixed."""

    def __init__(self, features: sp.csr_matrix, label: str) -> None:
        n_rows, n_features = features.shape
        if min(n_rows, n_features) > MAX_RANK or n_rows * n_features > MAX_FACTOR_ENTRIES:
            raise ConfigError(
                f"bayesian_mf: {label} needs a thin SVD of a {n_rows} x {n_features} matrix; supported up to "
                f"min(rows, columns) = {MAX_RANK} and rows x columns = {MAX_FACTOR_ENTRIES:,}"
            )
        self.features = features.tocsr()
        if n_rows <= n_features:  # X Xᵀ = P S² Pᵀ, Q = Xᵀ P S⁻¹
            values, left = np.linalg.eigh((self.features @ self.features.T).toarray())
            keep = values > 1e-10 * max(values.max(), 1e-300)
            self.singular = np.sqrt(values[keep])
            self.left = left[:, keep]
            self.right = np.asarray(self.features.T @ self.left) / self.singular
        else:  # XᵀX = Q S² Qᵀ, P = X Q S⁻¹
            values, right = np.linalg.eigh((self.features.T @ self.features).toarray())
            keep = values > 1e-10 * max(values.max(), 1e-300)
            self.singular = np.sqrt(values[keep])
            self.right = right[:, keep]
            self.left = np.asarray(self.features @ self.right) / self.singular
        self.n_features = n_features

    def offsets(self, weights: np.ndarray) -> np.ndarray:
        """x_rowᵀ W for every row: (n_rows, d)."""
        return np.asarray(self.features @ weights)

    def draw(self, targets: np.ndarray, precision: np.ndarray, reg: float, rng: np.random.Generator) -> np.ndarray:
        """One draw of W (n_features, d) from MN(M, (XᵀX + λI)⁻¹, Λ⁻¹), M = (XᵀX + λI)⁻¹ Xᵀ targets."""
        s, P, Q = self.singular, self.left, self.right
        z = rng.standard_normal((self.n_features, targets.shape[1]))
        column_factor = np.linalg.cholesky(np.linalg.inv(precision))  # Λ⁻¹ = R Rᵀ
        # mean Q (s/(s² + λ)) Pᵀ T; noise rows Q (s² + λ)^-½ Qᵀz + (z − Q Qᵀz) λ^-½ (Q's complement at the
        # prior), each times Rᵀ: gathered so Q is multiplied once besides Qᵀz (it is the largest array)
        in_span = (s / (s**2 + reg))[:, None] * (P.T @ targets)
        in_span += ((1.0 / np.sqrt(s**2 + reg) - 1.0 / np.sqrt(reg))[:, None] * (Q.T @ z)) @ column_factor.T
        return Q @ in_span + (z @ column_factor.T) / np.sqrt(reg)

    @staticmethod
    def draw_reg(weights: np.ndarray, precision: np.ndarray, rng: np.random.Generator) -> float:
        """λ from its Gamma(1, 1)-prior conditional given W ~ MN(0, λ⁻¹I, Λ⁻¹)."""
        shape = 1.0 + weights.size / 2
        rate = 1.0 + 0.5 * float(np.einsum("fi,ij,fj->", weights, precision, weights))
        return float(rng.gamma(shape, 1.0 / rate))
