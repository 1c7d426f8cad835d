"""Baselines that every comparison should show: global mean, regularised biases, most popular, and the
weighted popularity score (IMDb's formula) the anime clustering study uses for brand-new users."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from recforge.coldstart import ANONYMOUS, HISTORY, KNOWN_USERS, RATINGS
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import ConfigError
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions

# Baselines serve everyone: known users, histories, and anyone at all (the same list). They read no
# user features, so they do not claim the user-feature capability; the router notes features ignored.
_EVERYONE = frozenset({KNOWN_USERS, HISTORY, ANONYMOUS})


def _rated(train: Interactions, model: str) -> Interactions:
    if train.rating is None or train.n_rated == 0:
        raise ConfigError(f"{model} needs rated interactions")
    return train.explicit()


class GlobalMean(Recommender):
    """Predicts the training mean rating for everything; ranks all items equally (ties by index)."""

    name = "global_mean"
    capabilities = _EVERYONE | {RATINGS}

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        self.mean_ = float(_rated(train, self.name).rating.mean(dtype=np.float64))

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_anonymous(self, n: int) -> np.ndarray:
        return np.full((n, self.n_items), self.mean_, dtype=np.float32)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(len(users), self.mean_, dtype=np.float32)

    def _get_extras(self) -> dict[str, Any]:
        return {"mean": self.mean_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.mean_ = extras["mean"]


class BiasConfig(ModelConfig):
    reg_user: float = Field(15.0, ge=0, description="shrinkage of user biases (Surprise's reg_u)")
    reg_item: float = Field(10.0, ge=0, description="shrinkage of item biases (Surprise's reg_i)")
    n_iterations: int = Field(10, ge=1)


class BiasBaseline(Recommender):
    """r̂(u, i) = μ + b_u + b_i with regularised biases fitted by alternating least squares
    (Koren 2010, as Surprise's BaselineOnly with method="als"). Ranking uses μ + b_u + b_i, so it
    ranks by item bias: a popularity-of-quality baseline."""

    name = "bias"
    Config = BiasConfig
    capabilities = _EVERYONE | {RATINGS}

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        rated = _rated(train, self.name)
        self.mean_ = float(rated.rating.mean(dtype=np.float64))
        self.user_bias_, self.item_bias_ = fit_biases(
            rated.user_index,
            rated.item_index,
            rated.rating,
            train.n_users,
            train.n_items,
            self.mean_,
            self.config.reg_user,
            self.config.reg_item,
            self.config.n_iterations,
        )

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return (self.mean_ + self.user_bias_[users][:, None] + self.item_bias_[None, :]).astype(np.float32)

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        user_bias = self.history_bias(history)
        return (self.mean_ + user_bias[:, None] + self.item_bias_[None, :]).astype(np.float32)

    def _score_anonymous(self, n: int) -> np.ndarray:
        return np.broadcast_to((self.mean_ + self.item_bias_).astype(np.float32), (n, self.n_items)).copy()

    def history_bias(self, history: History) -> np.ndarray:
        """User biases solved from the history's ratings against the fixed item biases."""
        if history.ratings is None:
            return np.zeros(len(history), dtype=np.float64)
        ratings = history.ratings.tocoo()
        residual = ratings.data - self.mean_ - self.item_bias_[ratings.col]
        total = np.bincount(ratings.row, weights=residual, minlength=len(history))
        count = np.bincount(ratings.row, minlength=len(history))
        return total / (self.config.reg_user + count)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.mean_ + self.user_bias_[users] + self.item_bias_[items]

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"user_bias": self.user_bias_, "item_bias": self.item_bias_}

    def _get_extras(self) -> dict[str, Any]:
        return {"mean": self.mean_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.user_bias_, self.item_bias_, self.mean_ = arrays["user_bias"], arrays["item_bias"], extras["mean"]


def fit_biases(
    users: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    n_users: int,
    n_items: int,
    mean: float,
    reg_user: float,
    reg_item: float,
    n_iterations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternating closed-form updates of user and item biases (vectorised with bincount)."""
    user_bias = np.zeros(n_users)
    item_bias = np.zeros(n_items)
    user_count = np.bincount(users, minlength=n_users)
    item_count = np.bincount(items, minlength=n_items)
    centred = ratings.astype(np.float64) - mean
    for _ in range(n_iterations):
        item_bias = np.bincount(items, weights=centred - user_bias[users], minlength=n_items) / (reg_item + item_count)
        user_bias = np.bincount(users, weights=centred - item_bias[items], minlength=n_users) / (reg_user + user_count)
    return user_bias, item_bias


class MostPopular(Recommender):
    """Ranks items by how many training interactions they have (rated or not); the same list for all."""

    name = "most_popular"
    capabilities = _EVERYONE

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        self.counts_ = train.item_counts().astype(np.float64)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_anonymous(self, n: int) -> np.ndarray:
        return np.broadcast_to(np.log1p(self.counts_).astype(np.float32), (n, self.n_items)).copy()

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.counts_ = arrays["counts"]


class WeightedPopularityConfig(ModelConfig):
    vote_quantile: float = Field(0.9, ge=0, lt=1, description="m = this quantile of per-item rating counts")


class WeightedPopularity(Recommender):
    """score(i) = v/(v+m)·R + m/(v+m)·C: item mean R shrunk towards the global mean C by its vote count v,
    with m a quantile of vote counts (IMDb's weighted rating; the anime clustering study's cold-start list).
    Items without ratings score C. Also serves as a rating predictor."""

    name = "weighted_popularity"
    Config = WeightedPopularityConfig
    capabilities = _EVERYONE | {RATINGS}

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        rated = _rated(train, self.name)
        votes = np.bincount(rated.item_index, minlength=train.n_items).astype(np.float64)
        totals = np.bincount(rated.item_index, weights=rated.rating, minlength=train.n_items)
        self.global_mean_ = float(rated.rating.mean(dtype=np.float64))
        item_mean = np.divide(totals, votes, out=np.full(train.n_items, self.global_mean_), where=votes > 0)
        self.m_ = float(np.quantile(votes[votes > 0], self.config.vote_quantile))
        self.weighted_ = votes / (votes + self.m_) * item_mean + self.m_ / (votes + self.m_) * self.global_mean_

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._score_anonymous(len(users))

    def _score_anonymous(self, n: int) -> np.ndarray:
        return np.broadcast_to(self.weighted_.astype(np.float32), (n, self.n_items)).copy()

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.weighted_[items]

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {"weighted": self.weighted_}

    def _get_extras(self) -> dict[str, Any]:
        return {"global_mean": self.global_mean_, "m": self.m_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        self.weighted_, self.global_mean_, self.m_ = arrays["weighted"], extras["global_mean"], extras["m"]
