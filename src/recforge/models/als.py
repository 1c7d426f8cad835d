"""Explicit-feedback alternating least squares and its Bayesian counterpart (Gibbs-sampled BPMF).

Both alternate between users and items; each half-step is a batch of small ridge problems solved in
closed form (`recforge.models._solvers`). Biases ride along as an extra column: a user's unknowns are
[p_u, b_u] with design rows [q_i, 1] and targets r - μ - b_i, and symmetrically for items.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from scipy.stats import wishart

from recforge._progress import progress_bar
from recforge.coldstart import EMBEDDINGS, HISTORY, KNOWN_USERS, RATINGS
from recforge.data.features import pooled_rows
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import ConfigError
from recforge.models._solvers import GroupedRows, gaussian_rows, gaussian_rows_by_sample, ridge
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.factorization import FactorModel, FoldInPenalty
from recforge.models.implicit_prior import RegressionPrior


def _with_ones(factors: torch.Tensor) -> torch.Tensor:
    return torch.cat([factors, torch.ones((factors.shape[0], 1), dtype=factors.dtype)], dim=1)


@numba.njit(parallel=True, cache=True, nogil=True)
def _predictions(user_part, item_part, users, items, mean):  # pragma: no cover - compiled
    """μ + b_u + b_i + ⟨p_u, q_i⟩ per rating, for rows [p, b] of the user and item parts (one pass,
    no (n_ratings, d) gathers)."""
    d = user_part.shape[1] - 1
    out = np.empty(len(users))
    for r in numba.prange(len(users)):
        u, i = users[r], items[r]
        total = mean + user_part[u, d] + item_part[i, d]
        for k in range(d):
            total += user_part[u, k] * item_part[i, k]
        out[r] = total
    return out


class ALSConfig(ModelConfig):
    n_factors: int = Field(32, ge=1)
    reg: float = Field(0.1, ge=0, description="L2 on factors, multiplied by the row's rating count (ALS-WR)")
    reg_bias: float = Field(0.1, ge=0, description="L2 on biases, multiplied by the row's rating count")
    n_iterations: int = Field(15, ge=1)
    init_std: float = Field(0.1, gt=0)


class ExplicitALS(FactorModel):
    """Biased matrix factorisation fitted by alternating least squares with weighted-λ regularisation
    (Zhou et al. 2008): each row's penalty grows with its number of ratings."""

    name = "als"
    Config = ALSConfig
    capabilities = frozenset({KNOWN_USERS, HISTORY, EMBEDDINGS, RATINGS})

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: ALSConfig = self.config  # type: ignore[assignment]
        users, items, ratings = train.rated_triples(self.name)
        generator = torch.Generator().manual_seed(options.seed)
        mean = float(ratings.mean())
        by_user = GroupedRows.build(users, items, train.n_users)
        by_item = GroupedRows.build(items, users, train.n_items)
        user_part = torch.randn((train.n_users, c.n_factors + 1), generator=generator, dtype=torch.float64) * c.init_std
        item_part = torch.randn((train.n_items, c.n_factors + 1), generator=generator, dtype=torch.float64) * c.init_std
        user_part[:, -1] = 0
        item_part[:, -1] = 0
        penalty = torch.tensor([c.reg] * c.n_factors + [c.reg_bias], dtype=torch.float64)
        user_reg = torch.diag_embed(torch.from_numpy(np.maximum(by_user.sizes, 1)).double()[:, None] * penalty)
        item_reg = torch.diag_embed(torch.from_numpy(np.maximum(by_item.sizes, 1)).double()[:, None] * penalty)
        with progress_bar("ALS", c.n_iterations, enabled=options.progress) as bar:
            for iteration in range(c.n_iterations):
                item_bias = item_part[:, -1].numpy()
                user_part = ridge(by_user, _with_ones(item_part[:, :-1]), ratings - mean - item_bias[items], user_reg)
                user_bias = user_part[:, -1].numpy()
                item_part = ridge(by_item, _with_ones(user_part[:, :-1]), ratings - mean - user_bias[users], item_reg)
                prediction = _predictions(user_part.numpy(), item_part.numpy(), users, items, mean)
                loss = float(np.mean((prediction - ratings) ** 2))
                self.training_log_.append({"epoch": iteration + 1, "loss": loss})
                bar.advance(train_mse=loss)
        self._set_factors(
            user_part[:, :-1].numpy(),
            item_part[:, :-1].numpy(),
            user_part[:, -1].numpy(),
            item_part[:, -1].numpy(),
            mean,
            fold_in=FoldInPenalty(c.reg, c.reg_bias, per_rating=True),  # as ALS-WR trains
        )


class BayesianMFConfig(ModelConfig):
    n_factors: int = Field(10, ge=1)
    n_iterations: int = Field(200, ge=2, description="Gibbs sweeps in total")
    burn_in: int = Field(50, ge=0)
    n_kept: int = Field(50, ge=1, description="posterior samples kept for scoring, evenly spaced after burn-in")
    beta0: float = Field(2.0, gt=0, description="Normal-Wishart prior strength on the factor means")
    sample_precision: bool = Field(True, description="sample the rating noise precision α (Gamma(1, 1) prior)")
    precision: float = Field(2.0, gt=0, description="α when not sampled")
    init_std: float = Field(0.1, gt=0)
    implicit_users: bool = Field(
        False,
        description="Bayesian SVD++: a user's prior mean shifts by a learned function of which items they "
        "interacted with (rated or not), so those items inform the user even where no rating does",
    )
    implicit_items: bool = Field(
        False, description="the flipped side: an item's prior mean shifts by which users interacted with it"
    )


class BayesianMF(FactorModel):
    """Bayesian probabilistic matrix factorisation with biases (Salakhutdinov & Mnih 2008), by Gibbs
    sampling with Normal-Wishart hyper-priors. Predictions average the kept posterior samples, which
    is what makes it robust to over-fitting without tuning a regulariser.

    The posterior mean score (1/S) Σ_s ⟨p_u^s, q_i^s⟩ equals one inner product of the samples
    concatenated and scaled by 1/√S, so the kept samples are stored as ordinary factors of width S·d
    and every factor-model path (scoring, retrieval, artifacts) applies unchanged.
    """

    name = "bayesian_mf"
    Config = BayesianMFConfig
    capabilities = frozenset({KNOWN_USERS, HISTORY, EMBEDDINGS, RATINGS})

    def factor_columns(self) -> int | None:
        return None  # posterior samples are stored side by side: n_factors × the samples kept

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: BayesianMFConfig = self.config  # type: ignore[assignment]
        if c.burn_in >= c.n_iterations:
            raise ConfigError("burn_in must be smaller than n_iterations")
        users, items, ratings = train.rated_triples(self.name)
        rng = np.random.default_rng(options.seed)
        torch_rng = torch.Generator().manual_seed(options.seed)
        mean = float(ratings.mean())
        d = c.n_factors + 1
        by_user = GroupedRows.build(users, items, train.n_users)
        by_item = GroupedRows.build(items, users, train.n_items)
        user_part = torch.from_numpy(rng.normal(0, c.init_std, (train.n_users, d)))
        item_part = torch.from_numpy(rng.normal(0, c.init_std, (train.n_items, d)))
        alpha = c.precision
        binary = train.to_csr("binary")  # (n_users, n_items): every interaction, rated or not
        user_prior = RegressionPrior(pooled_rows(binary), "implicit_users") if c.implicit_users else None
        item_prior = RegressionPrior(pooled_rows(binary.T.tocsr()), "implicit_items") if c.implicit_items else None
        user_weights, item_weights = np.zeros((train.n_items, d)), np.zeros((train.n_users, d))
        user_reg = item_reg = 1.0
        kept_at = set(
            np.linspace(c.burn_in, c.n_iterations - 1, min(c.n_kept, c.n_iterations - c.burn_in)).astype(int).tolist()
        )
        keys = ("U", "V", "bu", "bi", "mu_u", "lam_u", "alpha", "W_u")
        samples: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        with progress_bar("Bayesian MF (Gibbs)", c.n_iterations, enabled=options.progress) as bar:
            for sweep in range(c.n_iterations):
                mu_u, lam_u, user_weights, user_reg = self._sample_prior(
                    user_part.numpy(), user_prior, user_weights, user_reg, c.beta0, rng
                )
                mu_i, lam_i, item_weights, item_reg = self._sample_prior(
                    item_part.numpy(), item_prior, item_weights, item_reg, c.beta0, rng
                )
                item_bias = item_part[:, -1].numpy()
                user_part = self._sample_side(
                    by_user,
                    _with_ones(item_part[:, :-1]),
                    ratings - mean - item_bias[items],
                    mu_u if user_prior is None else mu_u + user_prior.offsets(user_weights),
                    lam_u,
                    alpha,
                    torch_rng,
                )
                user_bias = user_part[:, -1].numpy()
                item_part = self._sample_side(
                    by_item,
                    _with_ones(user_part[:, :-1]),
                    ratings - mean - user_bias[users],
                    mu_i if item_prior is None else mu_i + item_prior.offsets(item_weights),
                    lam_i,
                    alpha,
                    torch_rng,
                )
                residual = ratings - _predictions(user_part.numpy(), item_part.numpy(), users, items, mean)
                mse = float(np.mean(residual**2))
                if c.sample_precision:
                    alpha = float(rng.gamma(1.0 + len(ratings) / 2, 1.0 / (1.0 + 0.5 * np.sum(residual**2))))
                self.training_log_.append({"epoch": sweep + 1, "loss": mse, "alpha": alpha})
                if sweep in kept_at:
                    for key, value in (
                        ("U", user_part[:, :-1]),
                        ("V", item_part[:, :-1]),
                        ("bu", user_part[:, -1]),
                        ("bi", item_part[:, -1]),
                    ):
                        samples[key].append(value.numpy().astype(np.float32))
                    samples["mu_u"].append(mu_u)
                    samples["lam_u"].append(lam_u)
                    samples["alpha"].append(np.array(alpha))
                    if user_prior is not None:
                        samples["W_u"].append(user_weights.astype(np.float32))
                bar.advance(train_mse=mse, alpha=alpha)
        n_kept = len(samples["U"])
        scale = 1.0 / np.sqrt(n_kept)
        self._set_factors(
            np.concatenate(samples["U"], axis=1) * scale,
            np.concatenate(samples["V"], axis=1) * scale,
            np.mean(samples["bu"], axis=0),
            np.mean(samples["bi"], axis=0),
            mean,
        )
        self.item_bias_samples_ = np.stack(samples["bi"], axis=1)  # (n_items, S)
        self.prior_means_ = np.stack(samples["mu_u"])  # (S, d + 1)
        self.prior_precisions_ = np.stack(samples["lam_u"])  # (S, d + 1, d + 1)
        self.noise_precisions_ = np.stack(samples["alpha"])  # (S,)
        # (S, n_items, d + 1): each kept sample's map from a user's items to their prior mean (SVD++)
        self.implicit_weights_ = np.stack(samples["W_u"]) if samples["W_u"] else None

    @classmethod
    def _sample_prior(
        cls,
        x: np.ndarray,
        prior: RegressionPrior | None,
        weights: np.ndarray,
        reg: float,
        beta0: float,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(μ, Λ, W, λ) of one side's prior N(μ + xᵀW, Λ⁻¹) given its current rows x: μ and Λ from their
        Normal-Wishart conditional (W's own prior MN(0, λ⁻¹I, Λ⁻¹) included), then W and λ; without implicit
        features W stays zero."""
        if prior is None:
            return (*cls._sample_hyper(x, beta0, rng), weights, reg)
        mu, lam = cls._sample_hyper(x - prior.offsets(weights), beta0, rng, reg * weights.T @ weights, len(weights))
        weights = prior.draw(x - mu, lam, reg, rng)
        return mu, lam, weights, prior.draw_reg(weights, lam, rng)

    @staticmethod
    def _sample_hyper(
        x: np.ndarray,
        beta0: float,
        rng: np.random.Generator,
        extra_scatter: np.ndarray | None = None,
        extra_dof: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Λ) from the Normal-Wishart posterior given the current rows x (prior: μ0 = 0, W0 = I, ν0 = d),
        plus `extra_scatter` and `extra_dof` from other Gaussians with precision Λ (a regression prior's W)."""
        n, d = x.shape
        x_bar = x.mean(axis=0)
        scatter = (x - x_bar).T @ (x - x_bar)
        if extra_scatter is not None:
            scatter = scatter + extra_scatter
        beta_n, nu_n = beta0 + n, d + n + extra_dof
        w_inv = np.eye(d) + scatter + beta0 * n / beta_n * np.outer(x_bar, x_bar)
        w = np.linalg.inv(w_inv)
        precision = wishart.rvs(df=nu_n, scale=(w + w.T) / 2, random_state=rng)
        mean = rng.multivariate_normal(n * x_bar / beta_n, np.linalg.inv(beta_n * precision))
        return mean, precision

    @staticmethod
    def _sample_side(
        groups: GroupedRows,
        design: torch.Tensor,
        targets: np.ndarray,
        prior_mean: np.ndarray,
        prior_precision: np.ndarray,
        alpha: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Rows drawn from their Gaussian conditionals N(A⁻¹ b, A⁻¹), A = Λ + α Σ x xᵀ, b = Λμ + α Σ t x."""
        noise = torch.randn((groups.n_groups, design.shape[1]), generator=generator, dtype=torch.float64)
        lam, mu = torch.from_numpy(prior_precision), torch.from_numpy(prior_mean)
        return gaussian_rows(groups, design, targets, lam, mu, scale=alpha, noise=noise)

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        """Per kept sample, the posterior mean of a new user's [p, b_u] given their ratings; concatenated
        like the training factors so scores are posterior-mean scores. With `implicit_users` the prior
        mean is the one their items give (μ + xᵀW), so a history without ratings informs them too.

        All kept samples are solved in one compiled call over the items the request names, so the cost
        follows the request, not the catalogue times the number of samples."""
        n = len(history)
        n_samples, d = len(self.noise_precisions_), self.prior_means_.shape[1] - 1
        prior_means = np.repeat(self.prior_means_[:, None, :], n, axis=1)
        if self.implicit_weights_ is not None:
            prior_means = prior_means + self._implicit_offsets(pooled_rows(history.binary))
        scale = np.sqrt(n_samples)
        solution = prior_means  # without ratings the posterior mean is the prior's
        if history.ratings is not None and history.ratings.nnz > 0:
            ratings = history.ratings.tocoo()
            items, columns = np.unique(ratings.col, return_inverse=True)  # the design holds only the rated items
            item_factors = self.item_factors_[items].astype(np.float64).reshape(len(items), n_samples, d) * scale
            ones = np.ones((len(items), n_samples, 1))
            solution = gaussian_rows_by_sample(
                GroupedRows.build(ratings.row.astype(np.int64), columns.astype(np.int64), n),
                np.concatenate([item_factors, ones], axis=2).transpose(1, 0, 2),
                ratings.data - self.global_bias_ - self.item_bias_samples_.T[:, ratings.col],
                self.prior_precisions_,
                prior_means,
                self.noise_precisions_,
            )
        factors = solution[:, :, :d].transpose(1, 0, 2).reshape(n, n_samples * d)
        return (factors / scale).astype(np.float32), solution[:, :, d].mean(axis=0)

    def _implicit_offsets(self, pooled: sp.csr_matrix) -> np.ndarray:
        """xᵀW_s for every kept sample s, shape (samples, rows, d + 1), from the rows of W the request uses."""
        n_samples, _, width = self.implicit_weights_.shape
        items = np.unique(pooled.indices)
        weights = self.implicit_weights_[:, items, :].astype(np.float64).transpose(1, 0, 2)
        offsets = pooled[:, items] @ weights.reshape(len(items), n_samples * width)
        return np.asarray(offsets).reshape(pooled.shape[0], n_samples, width).transpose(1, 0, 2)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return (
            super()._get_arrays()
            | {
                "item_bias_samples": self.item_bias_samples_,
                "prior_means": self.prior_means_,
                "prior_precisions": self.prior_precisions_,
                "noise_precisions": self.noise_precisions_,
            }
            | ({} if self.implicit_weights_ is None else {"implicit_weights": self.implicit_weights_})
        )

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        super()._set_state(arrays, extras)
        self.item_bias_samples_ = arrays["item_bias_samples"]
        self.prior_means_ = arrays["prior_means"]
        self.prior_precisions_ = arrays["prior_precisions"]
        self.noise_precisions_ = arrays["noise_precisions"]
        self.implicit_weights_ = arrays.get("implicit_weights")
        expected = (len(self.noise_precisions_), self.n_items, self.prior_means_.shape[1])
        if self.config.implicit_users and (self.implicit_weights_ is None or self.implicit_weights_.shape != expected):  # type: ignore[attr-defined]
            found = None if self.implicit_weights_ is None else self.implicit_weights_.shape
            raise ValueError(f"implicit_weights: expected shape {expected}, found {found}")
