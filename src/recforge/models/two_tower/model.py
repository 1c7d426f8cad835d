"""`TwoTower`: fit the towers on a task through the shared epoch loop, then serve as a factor model.

After training, the towers' outputs for known users and items become the factors of a `FactorModel`,
so scoring, retrieval, fold-in and artifacts work as for any factor model. New users and items described
only by features go through their tower with the "unknown" ID; users unseen at training but with a
history go through the history tower (history pooling) or are folded in (least squares) or averaged from
their items' vectors (`history_strategy`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from recforge.coldstart import EMBEDDINGS, HISTORY, ITEM_FEATURES, KNOWN_USERS, RATINGS, USER_FEATURES
from recforge.data.features import pooled_rows
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import CapabilityError, ConfigError
from recforge.models.config import TrainOptions
from recforge.models.factorization import FactorModel, FoldInPenalty
from recforge.models.two_tower.config import TwoTowerConfig
from recforge.models.two_tower.features import TowerFeatures, tensors
from recforge.models.two_tower.network import TowerNetwork
from recforge.models.two_tower.teacher_init import check_catalogue, reduced_rank_fit
from recforge.models.two_tower.training import TowerTrainer, torch_csr
from recforge.nn.checkpoint import Checkpointer
from recforge.nn.tasks import BCETask, Distillation, MultinomialTask, RatingTask, RetrievalTask, Task
from recforge.nn.training import EpochPlan, fit_epochs, seed_everything


class TwoTower(FactorModel):
    name = "two_tower"
    Config = TwoTowerConfig

    def __init__(self, config: TwoTowerConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        capabilities = {KNOWN_USERS, HISTORY, EMBEDDINGS}
        if c.task == "rating":
            capabilities.add(RATINGS)
        if c.user_features:
            capabilities.add(USER_FEATURES)
        if c.item_features:
            capabilities.add(ITEM_FEATURES)
        self.capabilities = frozenset(capabilities)

    # ------------------------------------------------------------------ training
    def make_task(self, train: Interactions, distillation: Distillation | None = None) -> Task:
        """The task the config names, with what it needs from the data (rating scale, target scaling) and
        the teacher's scores when the config has a teacher."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.task == "rating":
            low, span = 0.0, 1.0
            if c.target_scaling == "minmax":
                if train.rating_scale is None:
                    raise ConfigError("target_scaling='minmax' needs a rating scale")
                low, span = float(train.rating_scale[0]), float(train.rating_scale[1] - train.rating_scale[0])
            return RatingTask(
                low,
                span,
                c.mse_weight,
                c.margin_weight,
                c.margin,
                c.inverse_frequency,
                relu=c.score_activation == "relu",
                rating_scale=train.rating_scale,
            )
        if c.task == "bce":
            return BCETask(c.n_negatives, c.positive_threshold)
        if c.batching == "users":
            return MultinomialTask(c.temperature, c.positive_threshold, distillation)
        return RetrievalTask(
            c.temperature, c.logq_correction, c.softmax == "full", c.uniform_negatives, c.positive_threshold
        )

    def _distillation(self, train: Interactions, options: TrainOptions) -> Distillation | None:
        """The config's teacher fitted on the same training data (not saved: only the towers serve)."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.teacher is None:
            return None
        checkpoints = None if options.checkpoint_dir is None else str(Path(options.checkpoint_dir) / "teacher")
        teacher = c.teacher.build().fit(train, dataclasses.replace(options, checkpoint_dir=checkpoints))
        scores = teacher.score
        if train.n_users * train.n_items <= self.TEACHER_CACHE_CELLS:  # every epoch asks for every user again
            table = np.concatenate(
                [teacher.score(np.arange(s, min(s + 1024, train.n_users))) for s in range(0, train.n_users, 1024)]
            )
            scores = table.__getitem__
        return Distillation(scores, c.distill_weight, c.distill_temperature)

    TEACHER_CACHE_CELLS = 1 << 26  # teacher scores kept for all users up to 256 MB (float32)

    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        seed_everything(options.seed)  # the towers' initialisation
        self.features_ = TowerFeatures.fit(train, c)
        history_dim = c.history_dim if c.history_pooling else 0
        self.towers_ = TowerNetwork(
            c.user_tower, c.item_tower, train.n_users, train.n_items, self.features_.meta, c.biases, history_dim,
            c.history_norm,
        )  # fmt: skip
        if c.teacher_init:
            check_catalogue(train.n_items, c.user_tower.output_dim)  # before the teacher's fit, not after
        distillation = self._distillation(train, options)
        if c.teacher_init:
            assert distillation is not None
            self._start_at_teacher(distillation)
        task = self.make_task(train, distillation)
        users, items, targets = task.training_rows(train)
        self.target_low_, self.target_span_ = (task.low, task.span) if isinstance(task, RatingTask) else (0.0, 1.0)
        self.mean_ = float(targets.mean()) if (c.biases and targets is not None) else 0.0
        valid = None
        if options.valid is not None and len(options.valid):
            valid = task.validation_set(options.valid)
        trainer = TowerTrainer(
            c, self.towers_, self.features_, task, self.seen_, (users, items, targets), self.mean_, valid
        )
        plan = EpochPlan(
            n_epochs=c.n_epochs,
            monitor=task.monitor if valid is not None else None,
            patience=c.early_stopping_patience,
            description=f"two-tower ({task.name})",
        )
        self.training_log_ = fit_epochs(trainer, plan, options, Checkpointer.for_fit(self, train, options))
        self._export_factors(trainer, retrieval=task.name != "rating")

    @torch.no_grad()
    def _start_at_teacher(self, distillation: Distillation) -> None:
        """Linear towers set to the teacher's reduced-rank fit (`teacher_init`), scaled so that the logits
        start at the teacher's standardised scores over the distillation temperature."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        pooled = pooled_rows(self.seen_, c.history_norm)
        history, items = reduced_rank_fit(pooled, distillation.scores, c.user_tower.output_dim, c.teacher_init_reg)
        towers = self.towers_
        assert towers.history is not None and towers.item.id_embedding is not None
        towers.history.weight.copy_(torch.from_numpy(history * (c.temperature / c.distill_temperature)))
        (linear,) = towers.user.mlp
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[:, -c.history_dim :] = torch.eye(c.history_dim)
        towers.item.id_embedding.weight[: len(items)] = torch.from_numpy(items)

    def _export_factors(self, trainer: TowerTrainer, retrieval: bool) -> None:
        """Known users' and items' tower outputs become FactorModel factors (ratings rescaled); a ranking
        task's item bias is scaled by the temperature so that ⟨u, v⟩ + b ranks like its logits."""
        found = trainer.embeddings()
        span, low = self.target_span_, self.target_low_
        user_bias, item_bias = found.user_bias - self.mean_, found.item_bias
        if retrieval:
            user_bias, item_bias = user_bias * 0, item_bias * self.config.temperature  # type: ignore[attr-defined]
        self._set_factors(
            found.users.numpy(),
            found.items.numpy() * span,
            user_bias.numpy() * span,
            item_bias.numpy() * span,
            low + span * self.mean_,
            fold_in=FoldInPenalty(1.0, 1.0, per_rating=False),
        )
        self.towers_.eval()

    # ------------------------------------------------------------------ predictions
    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        predictions = super()._predict(users, items)
        if self.config.score_activation == "relu":  # type: ignore[attr-defined]
            predictions = np.maximum(predictions, self.target_low_)
        return predictions

    # ------------------------------------------------------------------ cold start
    def history_vectors(self, history: History, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """With history pooling the user tower reads the history itself; otherwise fold-in (or the
        weighted average of the history's items, per `history_strategy`)."""
        if self.towers_.history is None:
            return super().history_vectors(history, users)
        return self.embed_history(users, history), np.zeros(len(history))

    @torch.no_grad()
    def embed_history(self, users: np.ndarray, history: History, features: pd.DataFrame | None = None) -> np.ndarray:
        """User vectors from a query-time history through the tower (history pooling + taste from that
        history): known users keep their ID, unknown ones (index -1 or without training data) use the
        unknown ID and, optionally, the given feature frame."""
        self.towers_.eval()
        users = np.asarray(users, dtype=np.int64)
        known = (users >= 0) & (users < self.n_users)
        known[known] &= self.known_users_[users[known]]
        ids = torch.from_numpy(np.where(known, users, self.n_users))
        matrix = self.features_.history_rows(history, features, users, known, self.items_, self.rating_scale_)
        rows = torch.arange(len(history))
        return self.towers_.users(ids, rows, tensors(matrix), torch_csr(history.binary)).numpy()

    def fold_in(self, history: History) -> tuple[np.ndarray, np.ndarray]:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.history_strategy == "weighted_average":
            return self.weighted_average(history), np.zeros(len(history))
        if c.task == "rating":
            return super().fold_in(history)
        return self.implicit_fold_in(history, reg=1.0, alpha=10.0)

    def weighted_average(self, history: History) -> np.ndarray:
        """A new user's vector as the average of the item vectors they interacted with, weighted by their
        ratings (the anime clustering study's cold-start rule); unrated items weigh 1."""
        weights = history.binary.tocsr().astype(np.float64)
        if history.ratings is not None and history.ratings.nnz:
            weights = weights.maximum(history.ratings.tocsr())  # ratings where given, 1 for unrated interactions
        totals = np.asarray(weights.sum(axis=1)).ravel()
        vectors = np.asarray(weights @ self.item_factors_.astype(np.float64))
        vectors /= np.where(totals > 0, totals, 1.0)[:, None]
        return vectors.astype(np.float32) / max(self.target_span_, 1e-12)

    def user_feature_kinds(self) -> dict[str, str]:
        """The raw user-feature columns the user tower reads, each "numeric" or "categorical"."""
        return self.features_.user_feature_kinds()

    def item_feature_kinds(self) -> dict[str, str]:
        """The item-feature columns the item tower reads, each "list", "numeric" or "categorical"."""
        return self.features_.item_feature_kinds()

    def unseen_feature_values(self, features: pd.DataFrame, side: str = "user") -> list[list[str]]:
        """Per row of `features`, the categories (and, for items, genres) no training user or item had, as
        "column 'value'" (e.g. "occupation 'astronaut'"): the tower reads them as unknown, and the
        routing's note says so (`recforge.coldstart`)."""
        return self.features_.unseen_values(features, side)

    def embed_users(self, features: pd.DataFrame | None = None, history: History | None = None) -> np.ndarray:
        """Vectors for users unknown to the model, described by features (one row per user, the training
        user-feature columns; a missing column or value is an unknown category / the fitted fill value) and,
        when given, their history (history pooling and the taste profile). Uses the unknown ID."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if not c.user_features:
            raise CapabilityError("this two-tower has no user features; use history or popularity")
        n = len(features) if features is not None else len(history) if history is not None else 0
        if history is None:
            history = History.empty(n, self.n_items)
        elif features is not None and len(history) != len(features):
            raise ConfigError(f"{len(features)} feature rows for {len(history)} histories")
        frame = None
        if features is not None:
            frame = features.reset_index(drop=True).reindex(columns=list(self.user_feature_kinds()))
        return self.embed_history(np.full(n, -1), history, frame)

    def _score_features(self, features: pd.DataFrame, history: History | None) -> np.ndarray:
        """Scores of users described by features (and optionally a history), through the user tower with
        the unknown ID: the router's "features" / "features+history" paths, on the same scale as `score`."""
        vectors = self.embed_users(features, history)
        return self._scores_from(vectors, np.zeros(len(vectors)))

    def extend_items(self, ids: list[Any], features: pd.DataFrame) -> TwoTower:
        """A new model with brand-new items appended, embedded by the item tower from their features with
        the unknown ID (copy-on-write: this model is unchanged, the new one shares the towers). `features`
        has one row per id with the training item-feature columns; ids already in the catalogue and
        repeated ids are refused by name."""
        self._require_fitted()
        if self.features_.item_builder is None:
            raise CapabilityError(f"{self.name} has no item-feature tower; retrain to add items")
        if len(ids) != len(features):
            raise ConfigError(f"{len(ids)} item ids for {len(features)} feature rows")
        if len(set(ids)) != len(ids):
            raise ConfigError("the same new item id is given twice")
        clashes = [item for item in ids if self.items_.position(item) is not None]
        if clashes:
            raise ConfigError(f"items already in the catalogue: {clashes[:5]}")
        matrix, genres = self.features_.new_item_rows(features)
        extended = copy.copy(self)
        extended.items_ = self.items_.extend(ids)
        extended.item_factors_ = np.vstack([self.item_factors_, self._run_item_tower(matrix)])
        extended.item_bias_ = np.concatenate([self.item_bias_, np.zeros(len(ids))])
        extended.features_ = self.features_.with_new_items(genres)
        extended.seen_ = sp.hstack([self.seen_, sp.csr_matrix((self.seen_.shape[0], len(ids)))], format="csr")
        return extended

    def embed_items(self, features: pd.DataFrame) -> np.ndarray:
        """Vectors for items described only by features (training item-feature columns), unknown ID."""
        return self._run_item_tower(self.features_.new_item_rows(features)[0])

    @torch.no_grad()
    def _run_item_tower(self, matrix: Any) -> np.ndarray:
        self.towers_.eval()
        found = tensors(matrix)
        ids = torch.full((len(matrix),), self.towers_.item.n_ids, dtype=torch.int64)
        vectors = self.towers_.item(ids, found["categorical"], found["dense"]).numpy()
        return (vectors * self.target_span_).astype(np.float32)

    # ------------------------------------------------------------------ state
    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._get_arrays()
        arrays |= {f"towers/{k}": v.detach().numpy() for k, v in self.towers_.state_dict().items()}
        return arrays | self.features_.arrays()

    def _get_extras(self) -> dict[str, Any]:
        return (
            super()._get_extras()
            | self.features_.extras()
            | {"mean": self.mean_, "target": [self.target_low_, self.target_span_]}
        )

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        super()._set_state(arrays, extras)
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        self.mean_ = extras["mean"]
        self.target_low_, self.target_span_ = extras["target"]
        self.features_ = TowerFeatures.from_state(arrays, extras)
        self.towers_ = TowerNetwork(
            c.user_tower,
            c.item_tower,
            len(self.users_),
            len(self.items_),
            self.features_.meta,
            c.biases,
            c.history_dim if c.history_pooling else 0,
            c.history_norm,
        )
        self.towers_.load_state_dict(
            {k[len("towers/") :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("towers/")}
        )
        self.towers_.eval()
