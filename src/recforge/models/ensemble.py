"""`Blend`: a weighted ensemble of recommenders. Each member's scores are standardised per user (z-score
over the catalogue, or rank-normalised) before weighting, so members on different scales combine fairly.

On ML-100K (per-user 80/20, three seeds) EDLAE + 0.5·iALS beats each member and a tuned implicit ALS;
that blend is the default. On ml-latest-small it does not (below a tuned EASE by 0.005 on average over
three splits: benchmarks/results/split_seeds.md): check the weights on a carve-out of your own data, or let
the blend do it at fit time (`validate_weights`: it fits twice and chooses on a 10% carve-out).
Members are fitted on the same data with the same options; the artifact stores every member's state under
its own prefix.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field, model_validator

from recforge.coldstart import HISTORY, KNOWN_USERS, RATINGS
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import CapabilityError, ConfigError
from recforge.evaluation import metrics as M
from recforge.models.base import Recommender
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.registry import ModelSpec


class Member(ModelSpec):
    """A member of a blend: the shared `ModelSpec` plus its weight."""

    weight: float = 1.0

    @model_validator(mode="after")
    def _not_a_blend(self) -> Member:
        if self.model == "blend":
            raise ValueError("blends cannot be nested")
        return self


class BlendConfig(ModelConfig):
    members: list[Member] = Field(
        default_factory=lambda: [Member(model="ease"), Member(model="ials", params={"n_factors": 32}, weight=0.5)]
    )
    normalization: Literal["zscore", "rank"] = "zscore"
    validate_weights: bool = Field(
        False,
        description="choose each member's weight but the first's at fit time: the blend is fitted on a per-user "
        "10% carve-out of the training data, the weights are searched over `weight_grid` (two rounds of one "
        "member at a time, by NDCG@10 over the full catalogue), then the members are fitted on all of it",
    )
    weight_grid: list[float] = Field(
        default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75, 1.0],
        min_length=1,
        description="the weights `validate_weights` tries for each member (relative to the first member's)",
    )

    @model_validator(mode="after")
    def _grid_is_weights(self) -> BlendConfig:
        if not all(np.isfinite(w) and w >= 0 for w in self.weight_grid):
            raise ValueError(f"weight_grid holds weights (finite, >= 0), got {self.weight_grid}")
        return self


def standardised_rows(scores: np.ndarray) -> np.ndarray:
    """Per-row z-scores in the scores' own precision (a row with no spread becomes zeros): how a blend puts
    its members on one scale, and what a distilled two-tower fits its teacher's scores as."""
    std = scores.std(axis=1, keepdims=True)
    return (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)


def _normalise(scores: np.ndarray, how: str) -> np.ndarray:
    if how == "rank":
        return (np.argsort(np.argsort(scores, axis=1), axis=1) / max(1, scores.shape[1] - 1)).astype(np.float32)
    return standardised_rows(scores).astype(np.float32)


class Blend(Recommender):
    name = "blend"
    Config = BlendConfig

    def __init__(self, config: BlendConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        c: BlendConfig = self.config  # type: ignore[assignment]
        if not c.members:
            raise ConfigError("a blend needs at least one member")
        self.members_ = [member.build() for member in c.members]
        shared = frozenset.intersection(*(m.capabilities for m in self.members_))
        self.capabilities = frozenset({KNOWN_USERS}) | (shared & {HISTORY})

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: BlendConfig = self.config  # type: ignore[assignment]
        if c.validate_weights and len(c.members) > 1:
            self._validate_weights(train, options)
        for index, member in enumerate(self.members_):
            checkpoints = (
                None if options.checkpoint_dir is None else str(Path(options.checkpoint_dir) / f"member{index}")
            )
            member.fit(train, dataclasses.replace(options, seed=options.seed + index, checkpoint_dir=checkpoints))
            self.training_log_ += [{"member": index, **entry} for entry in member.training_log_]

    def _validate_weights(self, train: Interactions, options: TrainOptions) -> None:
        """Set the members' weights to those that rank a per-user 10% carve-out of `train` best (NDCG@10),
        searched one member at a time over the grid, twice round, from the configured weights (a change
        needs a strict gain, so ties keep them). The first member's weight is the fixed reference."""
        from recforge.data.splits import per_user_split

        c: BlendConfig = self.config  # type: ignore[assignment]
        carve = per_user_split(train, 0.1, seed=options.seed)
        if len(carve.test) == 0:
            self.training_log_.append({"validated_weights": "no user has enough interactions for a carve-out"})
            return
        inner = Blend(c.model_copy(update={"validate_weights": False}))
        inner.fit(carve.train, TrainOptions(seed=options.seed, device=options.device, threads=options.threads))
        held_out = carve.test.to_csr("binary")
        measured: dict[tuple[float, ...], float] = {}

        def value(weights: list[float]) -> float:
            key = tuple(weights)
            if key not in measured:
                measured[key] = held_out_ndcg(inner.with_weights(weights), held_out, 10)
            return measured[key]

        weights = [member.weight for member in c.members]
        for _ in range(2):
            for index in range(1, len(weights)):
                for candidate in c.weight_grid:
                    trial = [*weights[:index], candidate, *weights[index + 1 :]]
                    if value(trial) > value(weights):
                        weights = trial
        members = [m.model_copy(update={"weight": float(w)}) for m, w in zip(c.members, weights, strict=True)]
        self.config = c.model_copy(update={"members": members})
        self.training_log_.append(
            {"validated_weights": weights, "validation_ndcg@10": value(weights), "weightings_tried": len(measured)}
        )

    def with_weights(self, weights: list[float]) -> Blend:
        """This fitted blend with other member weights. The members are shared, not refitted: weights act
        only when their scores are combined, so a search over weights fits each member once."""
        c: BlendConfig = self.config  # type: ignore[assignment]
        if len(weights) != len(c.members):
            raise ConfigError(f"a blend of {len(c.members)} members needs {len(c.members)} weights, got {len(weights)}")
        members = [m.model_copy(update={"weight": float(w)}) for m, w in zip(c.members, weights, strict=True)]
        clone = copy.copy(self)
        clone.config = c.model_copy(update={"members": members})
        return clone

    def _combine(self, parts: list[np.ndarray]) -> np.ndarray:
        how = self.config.normalization  # type: ignore[attr-defined]
        weights = [m.weight for m in self.config.members]  # type: ignore[attr-defined]
        return sum(w * _normalise(p, how) for w, p in zip(weights, parts, strict=True))

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        return self._combine([member.score(users) for member in self.members_])

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        return self._combine([member.score(users, history) for member in self.members_])

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """Each member's scores leaving items out (by its own rule), combined as `_score_history` combines."""
        return self._combine([member._score_leaving_out(history, left_out, without) for member in self.members_])

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        """The members' item similarities combined as their scores are (weights, per-row normalisation),
        over the members that have a notion of similarity (EASE's weights, factor models' vectors...);
        each row's own item is set to the row's minimum first so that it does not shift the statistics."""
        parts, weights = [], []
        rows = np.arange(len(items))
        for member, spec in zip(self.members_, self.config.members, strict=True):  # type: ignore[attr-defined]
            try:
                similarity = np.array(member._item_similarity(items), dtype=np.float32)
            except CapabilityError:
                continue
            similarity[rows, items] = similarity.min(axis=1)
            parts.append(_normalise(similarity, self.config.normalization))  # type: ignore[attr-defined]
            weights.append(spec.weight)
        if not parts:
            raise CapabilityError("no member of this blend has a notion of item similarity")
        return sum(w * p for w, p in zip(weights, parts, strict=True))

    def training_history(self, user: int) -> History:
        """The user's training items in the time order the first order-aware member keeps (a sequence
        model, EASE with `history_decay`), which a service update appends to; else in item-index order."""
        for member in self.members_:
            if member.keeps_time_order:
                return member.training_history(user)
        return super().training_history(user)

    @property
    def keeps_time_order(self) -> bool:
        return any(member.keeps_time_order for member in self.members_)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return members_arrays(self.members_)

    def _get_extras(self) -> dict[str, Any]:
        return {"members": [member.get_state()[1] for member in self.members_]}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        restore_members(self.members_, arrays, extras["members"])


def held_out_ndcg(model: Recommender, held_out: sp.csr_matrix, k: int) -> float:
    """Mean NDCG@k (binary relevance) of `model`'s top k over the whole catalogue, its training items
    excluded, across the users with held-out items (rows of `held_out`, the model's user indices): what
    `FullRankingEvaluator` reports as ndcg@k, computed here because models sit below the evaluation layer."""
    users = np.flatnonzero(held_out.getnnz(axis=1))
    if not len(users):
        return float("nan")
    top = model.recommend(users, k, external_ids=False).item_index
    width = top.shape[1]
    hits = np.asarray(held_out[np.repeat(users, width), np.maximum(top, 0).ravel()]).reshape(len(users), width)
    gains = np.where(top >= 0, hits, 0.0)
    ideal = (np.arange(width)[None, :] < held_out.getnnz(axis=1)[users][:, None]).astype(np.float64)
    return float(np.mean(M.ndcg_at_k(gains, ideal, k)))


def members_arrays(members: list[Recommender]) -> dict[str, np.ndarray]:
    """Every member's arrays under its own prefix (`member<i>/`), for an ensemble's artifact."""
    arrays = {}
    for index, member in enumerate(members):
        member_arrays, _ = member.get_state()
        arrays |= {f"member{index}/{name}": value for name, value in member_arrays.items()}
    return arrays


def restore_members(members: list[Recommender], arrays: dict[str, np.ndarray], extras: list[dict[str, Any]]) -> None:
    for index, (member, member_extras) in enumerate(zip(members, extras, strict=True)):
        prefix = f"member{index}/"
        member.set_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}, member_extras)


# ----------------------------------------------------------------------------- rating stacking
def _default_stack_members() -> list[ModelSpec]:
    return [
        # Bayesian SVD++ flipped (implicit feedback on both sides) in place of plain Bayesian MF: the blend's
        # cross-validated RMSE on its held-out ratings 0.8854 -> 0.8794 (u1.base), 0.8857 -> 0.8809 (random
        # 80/20's training part); keeping both members was no better (0.8797, 0.8812)
        ModelSpec(
            model="bayesian_mf",
            params={"n_iterations": 400, "burn_in": 50, "n_kept": 100, "implicit_users": True, "implicit_items": True},
        ),
        ModelSpec(model="item_knn"),
        ModelSpec(model="user_knn"),
        ModelSpec(model="mf"),
        ModelSpec(model="als"),
        ModelSpec(model="two_tower", params={"preset": "rating"}),
        ModelSpec(model="bias"),
        # two of each AutoRec (member seeds differ): a second I-AutoRec lowered the blend's cross-validated
        # RMSE on ML-100K's held-out ratings from 0.8872 to 0.8847, a second U-AutoRec to 0.8844
        ModelSpec(model="autorec"),
        ModelSpec(model="autorec"),
        ModelSpec(model="autorec", params={"based": "user"}),
        ModelSpec(model="autorec", params={"based": "user"}),
    ]


class StackConfig(ModelConfig):
    members: list[ModelSpec] = Field(default_factory=_default_stack_members, min_length=1)
    holdout: float = Field(
        0.1, gt=0, lt=0.5, description="share of the training ratings held out (at random) to fit the blend on"
    )
    meta_features: bool = Field(
        True,
        description="feature-weighted blend: each member's weight varies linearly with the user's and the "
        "item's log number of ratings (Sill et al. 2009); False = one weight per member",
    )
    ridges: list[float] = Field(
        default_factory=lambda: [0.1, 1.0, 10.0, 100.0, 1000.0],
        min_length=1,
        description="ridge penalties tried; the lowest 5-fold cross-validated error on the held-out ratings wins",
    )

    @model_validator(mode="after")
    def _not_nested(self) -> StackConfig:
        if any(spec.model in ("blend", "stack") for spec in self.members):
            raise ValueError("stacks cannot contain blends or stacks")
        return self


class Stack(Recommender):
    """Stacked rating prediction: a linear blend of rating models fitted on ratings none of them saw.

    `fit` holds out a random share of the training ratings, fits every member on the rest, and fits the
    blend to the held-out ratings by ridge regression (penalty chosen by 5-fold cross-validation on them);
    then refits every member on all the training ratings, which the blend combines from then on (the
    Netflix-prize "probe" recipe). With `meta_features`, a member's weight is linear in the user's and the
    item's log rating counts (feature-weighted linear stacking): a neighbourhood model can earn more
    weight for well-rated items, a factor model for sparse users. Nothing is tuned on test data."""

    name = "stack"
    Config = StackConfig
    capabilities = frozenset({KNOWN_USERS, RATINGS})

    def __init__(self, config: StackConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        c: StackConfig = self.config  # type: ignore[assignment]
        self.members_ = [spec.build() for spec in c.members]
        for spec, member in zip(c.members, self.members_, strict=True):
            if RATINGS not in member.capabilities:
                raise ConfigError(f"stack members must predict ratings; {spec.model} {spec.params} does not")

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        from recforge.data.splits import random_split

        c: StackConfig = self.config  # type: ignore[assignment]
        ratings = train.explicit()
        if ratings.rating is None or len(ratings) < 20:
            raise ConfigError("stack: needs explicit ratings (at least 20) to fit its blend")
        part = random_split(ratings, c.holdout, seed=options.seed + 7919)
        inner, held = part.train, part.test
        predictions = []
        for index, member in enumerate(self.members_):
            member.fit(inner, dataclasses.replace(options, seed=options.seed + index, valid=None))
            predictions.append(member.predict(held.user_index, held.item_index))
        self._set_support(inner, scale=1.0)
        design = self._design(np.stack(predictions), self.user_support_[held.user_index], held.item_index, True)
        targets = held.rating.astype(np.float64)
        self.ridge_, cv_rmse = _choose_ridge(design, targets, c.ridges, options.seed)
        self.weights_ = _ridge(design, targets, self.ridge_)
        self.training_log_.append({"stage": "blend", "ridge": self.ridge_, "cv_rmse": cv_rmse, "held_out": len(held)})
        for index, member in enumerate(self.members_):
            member.fit(train, dataclasses.replace(options, seed=options.seed + index))
            self.training_log_ += [{"member": index, **entry} for entry in member.training_log_]
        # the blend was fitted on counts of (1 - holdout) of the ratings: scale today's counts to that size
        self._set_support(ratings, scale=1.0 - c.holdout)

    def _set_support(self, ratings: Interactions, scale: float) -> None:
        self.user_support_ = np.log1p(np.bincount(ratings.user_index, minlength=ratings.n_users) * scale)
        self.item_support_ = np.log1p(np.bincount(ratings.item_index, minlength=ratings.n_items) * scale)

    def _design(
        self, predictions: np.ndarray, user_support: np.ndarray, items: np.ndarray, fitting: bool = False
    ) -> np.ndarray:
        """Columns [1, meta...] then each member's prediction times [1, meta...]; `user_support` holds each
        row's user log count (0 for a user without ratings)."""
        if self.config.meta_features:  # type: ignore[attr-defined]
            raw = np.column_stack([user_support, self.item_support_[items]])
            if fitting:
                spread = raw.std(axis=0)
                self.meta_mean_, self.meta_std_ = raw.mean(axis=0), np.where(spread > 0, spread, 1.0)
            meta = np.column_stack([np.ones(len(items)), (raw - self.meta_mean_) / self.meta_std_])
        else:
            meta = np.ones((len(items), 1))
        return np.concatenate([meta, *(p[:, None] * meta for p in predictions.astype(np.float64))], axis=1)

    def _blend(self, predictions: np.ndarray, user_support: np.ndarray, items: np.ndarray) -> np.ndarray:
        low, high = self.rating_scale_ if self.rating_scale_ is not None else (-np.inf, np.inf)
        return np.clip(self._design(predictions, user_support, items) @ self.weights_, low, high).astype(np.float32)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        predictions = np.stack([member.predict(users, items) for member in self.members_])
        return self._blend(predictions, self.user_support_[users], items)

    def _predict_cold(self, items: np.ndarray) -> np.ndarray:
        """A user without ratings: every member's cold-start rating, blended with a user count of 0."""
        predictions = np.stack([member._predict_cold(items) for member in self.members_])
        return self._blend(predictions, np.zeros(len(items)), items)

    def _score_known(self, users: np.ndarray) -> np.ndarray:
        """Predicted ratings of every item (ranking by predicted rating)."""
        n_items = self.n_items
        flat_users, flat_items = np.repeat(users, n_items), np.tile(np.arange(n_items), len(users))
        return self._predict(flat_users, flat_items).reshape(len(users), n_items)

    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"weights": self.weights_, "user_support": self.user_support_, "item_support": self.item_support_}
        if self.config.meta_features:  # type: ignore[attr-defined]
            arrays |= {"meta_mean": self.meta_mean_, "meta_std": self.meta_std_}
        return arrays | members_arrays(self.members_)

    def _get_extras(self) -> dict[str, Any]:
        return {"members": [member.get_state()[1] for member in self.members_], "ridge": self.ridge_}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        width = 3 if self.config.meta_features else 1  # type: ignore[attr-defined]
        if arrays["weights"].shape != (width * (len(self.members_) + 1),):
            raise ValueError("the stack's weights do not fit its members")
        self.weights_ = arrays["weights"]
        self.user_support_, self.item_support_ = arrays["user_support"], arrays["item_support"]
        if self.config.meta_features:  # type: ignore[attr-defined]
            self.meta_mean_, self.meta_std_ = arrays["meta_mean"], arrays["meta_std"]
        self.ridge_ = float(extras["ridge"])
        restore_members(self.members_, arrays, extras["members"])


def _ridge(design: np.ndarray, targets: np.ndarray, penalty: float) -> np.ndarray:
    gram = design.T @ design + penalty * np.eye(design.shape[1])
    return np.linalg.solve(gram, design.T @ targets)


def _choose_ridge(design: np.ndarray, targets: np.ndarray, penalties: list[float], seed: int) -> tuple[float, float]:
    """The penalty with the lowest 5-fold cross-validated RMSE on the held-out ratings, and that RMSE."""
    folds = np.random.default_rng(seed).permutation(len(targets)) % 5
    best = (np.inf, penalties[0])
    for penalty in penalties:
        errors = []
        for fold in range(5):
            test = folds == fold
            weights = _ridge(design[~test], targets[~test], penalty)
            errors.append((design[test] @ weights - targets[test]) ** 2)
        best = min(best, (float(np.sqrt(np.mean(np.concatenate(errors)))), penalty))
    return best[1], best[0]
