"""Two-tower models: a user tower and an item tower, scored by the inner product of their outputs.

Presets (`preset=`):
- "retrieval" (default): the user tower reads a pooled bag of the user's items (YouTube-DNN style, with
  dropout over the bag), the item tower an ID embedding; 128-d tanh outputs; one example per user with a
  multinomial softmax over the whole catalogue (Mult-DAE style), item biases, temperature 0.5. Features
  are opt-in (`user_features`/`item_features`): on ML-100K they lowered NDCG@10. For large catalogues use
  `batching="pairs", softmax="in_batch"` (in-batch negatives, log-Q correction, uniform extras).
- "rating": ID + features, biases, weighted-MSE rating regression; the strong rating variant.
- "anime-paper": the anime study's towers: features only, MLP [n_features, 256, 512, 256] with
  ReLU + Dropout(0.5), N(0, 0.01²) initialisation, min-max scaled inputs, ratings scaled to [0, 1], and its
  loss λ1·(inverse-frequency-weighted MSE) + λ2·(in-batch margin loss, m = 0.5).
- "id-only": ID embeddings of size 32, score = ReLU(⟨u, i⟩), MSE, NAdam (the anime clustering study).

After training, the towers' outputs for known users and items become the factors of a `FactorModel`,
so scoring, retrieval, fold-in and artifacts work as for any factor model. New users and items described
only by features go through their tower with the "unknown" ID; users unseen at training but with a
history are embedded by fold-in (least squares) or by the rating-weighted average of their items.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from pydantic import Field, model_validator

from recforge._progress import progress_bar
from recforge.coldstart import EMBEDDINGS, HISTORY, ITEM_FEATURES, KNOWN_USERS, RATINGS, USER_FEATURES
from recforge.data.features import (
    FeatureMatrix,
    ItemFeatureBuilder,
    UserFeatureBuilder,
    infer_item_columns,
    infer_user_columns,
)
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.errors import CapabilityError, ConfigError
from recforge.models.als import _rated_arrays
from recforge.models.base import ModelConfig, TrainOptions, apply_preset
from recforge.models.factorization import FactorModel, FoldInPenalty
from recforge.nn.checkpoint import Checkpointer, restore_rng, rng_state
from recforge.nn.distributed import DistributedContext
from recforge.nn.tasks import BCETask, RatingTask, RetrievalTask, factorized_topk
from recforge.nn.towers import Tower, TowerConfig
from recforge.nn.training import EarlyStopping, make_optimizer, make_schedule, seed_everything

PRESETS: dict[str, dict[str, Any]] = {
    "retrieval": {
        # measured on ML-100K (per-user 80/20, seed 0): pooling the user's history beat a user-ID embedding, and
        # genre/demographic features lowered NDCG@10 (0.400 -> 0.384 items, 0.362 users), so they are opt-in here
        "task": "retrieval",
        "batching": "users",
        "history_pooling": True,
        "history_dim": 600,
        "history_dropout": 0.5,
        "user_tower": {"id_dim": 0, "hidden": (), "output_dim": 128, "output_activation": "tanh"},
        "item_tower": {"id_dim": 128, "hidden": (), "output_dim": 128},
        "user_features": False,
        "item_features": False,
        "biases": True,
        "temperature": 0.5,
        "lr": 5e-4,
        "lr_schedule": "cosine",
        "weight_decay": 0.0,
        "batch_size": 64,
        "n_epochs": 50,
        "optimizer": "adam",
        "early_stopping_patience": None,
    },
    "rating": {
        "task": "rating",
        "user_tower": {"id_dim": 32, "hidden": (64,), "output_dim": 32, "dropout": 0.1},
        "item_tower": {"id_dim": 32, "hidden": (64,), "output_dim": 32, "dropout": 0.1},
        "biases": True,
        "inverse_frequency": False,
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 1024,
        "n_epochs": 30,
        "optimizer": "adam",
        "id_dropout": 0.0,
    },
    "anime-paper": {
        "task": "rating",
        "user_tower": {"id_dim": 0, "hidden": (256, 512), "output_dim": 256, "dropout": 0.5, "init_std": 0.01},
        "item_tower": {"id_dim": 0, "hidden": (256, 512), "output_dim": 256, "dropout": 0.5, "init_std": 0.01},
        "target_scaling": "minmax",
        "inverse_frequency": True,
        "mse_weight": 1.0,
        "margin_weight": 1.0,
        "margin": 0.5,
        "lr": 1e-3,
        "batch_size": 1024,
        "n_epochs": 20,
        "optimizer": "adam",
        "history_strategy": "weighted_average",
    },
    "id-only": {
        "task": "rating",
        "user_tower": {"id_dim": 32, "hidden": (), "output_dim": 32},
        "item_tower": {"id_dim": 32, "hidden": (), "output_dim": 32},
        "user_features": False,
        "item_features": False,
        "score_activation": "relu",
        "inverse_frequency": False,
        "optimizer": "nadam",
        "lr": 2e-3,
        "batch_size": 1024,
        "n_epochs": 20,
        "history_strategy": "weighted_average",
    },
}


class TwoTowerConfig(ModelConfig):
    preset: Literal["retrieval", "rating", "anime-paper", "id-only"] | None = "retrieval"
    task: Literal["retrieval", "rating", "bce"] = "retrieval"
    user_tower: TowerConfig = Field(default_factory=TowerConfig)
    item_tower: TowerConfig = Field(default_factory=TowerConfig)
    # features
    user_features: bool = True
    item_features: bool = True
    taste_features: bool = Field(True, description="user taste profile (per-genre means and shares) from history")
    history_pooling: bool = Field(
        False,
        description="feed the user tower the mean of learned embeddings of the "
        "user's items (the target item left out while training), as in YouTube's DNN",
    )
    history_dim: int = Field(64, ge=1)
    history_dropout: float = Field(
        0.0, ge=0, lt=1, description="share of history items dropped from each bag while training"
    )
    history_norm: Literal["mean", "sqrt"] = Field(
        "sqrt", description="divide the bag's sum by n (mean) or √n (the L2-normalised multi-hot input of Mult-DAE)"
    )
    item_numeric_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"year": (1900.0, 2030.0), "episodes": (0.0, 4000.0)}
    )
    user_numeric_ranges: dict[str, tuple[float, float]] = Field(default_factory=lambda: {"age": (0.0, 100.0)})
    min_genre_quantile: float | None = None
    # scoring
    biases: bool = False
    score_activation: Literal["none", "relu"] = "none"
    target_scaling: Literal["none", "minmax"] = "none"
    # training
    optimizer: Literal["adam", "adamw", "nadam", "adagrad", "sgd"] = "adam"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1024, ge=2)
    n_epochs: int = Field(20, ge=1)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="decay of the learning rate to zero over n_epochs"
    )
    early_stopping_patience: int | None = Field(
        3, ge=1, description="epochs without validation gain (needs valid data)"
    )
    id_dropout: float = Field(0.0, ge=0, lt=1, description="share of IDs replaced by 'unknown' while training")
    # rating task
    mse_weight: float = Field(1.0, ge=0)
    margin_weight: float = Field(0.0, ge=0)
    margin: float = Field(0.5, ge=0)
    inverse_frequency: bool = False
    # retrieval / bce tasks
    positive_threshold: float | None = Field(
        None, description="ratings >= this are positives; None = every interaction"
    )
    softmax: Literal["full", "in_batch"] = "full"
    batching: Literal["pairs", "users"] = Field(
        "pairs",
        description="retrieval: batches of (user, item) pairs, or of "
        "users with all their items as targets (multinomial, full softmax)",
    )
    uniform_negatives: int = Field(0, ge=0)
    temperature: float = Field(0.05, gt=0)
    logq_correction: bool = True
    n_negatives: int = Field(4, ge=1, description="negatives per positive for the bce task")
    validation_exclude_seen: bool = Field(True, description="exclude training items when ranking validation items")
    # cold start
    history_strategy: Literal["fold_in", "weighted_average"] = "fold_in"

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        return apply_preset(values, PRESETS, "retrieval", nested=("user_tower", "item_tower"))

    @model_validator(mode="after")
    def _user_tower_has_input(self) -> TwoTowerConfig:
        if self.user_tower.id_dim == 0 and not self.history_pooling and not self.user_features:
            raise ValueError(
                "the user tower has no input: set user_tower.id_dim > 0, history_pooling = true or user_features = true"
            )
        if self.item_tower.id_dim == 0 and not self.item_features:
            raise ValueError("the item tower has no input: set item_tower.id_dim > 0 or item_features = true")
        return self


class _Towers(torch.nn.Module):
    def __init__(
        self, user: Tower, item: Tower, n_users: int, n_items: int, biases: bool, history_dim: int = 0
    ) -> None:
        super().__init__()
        self.user, self.item = user, item
        self.history = torch.nn.EmbeddingBag(n_items, history_dim, mode="sum") if history_dim else None
        if self.history is not None:
            torch.nn.init.normal_(self.history.weight, 0.0, history_dim**-0.5)
        self.user_bias = torch.nn.Parameter(torch.zeros(n_users + 1)) if biases else None
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items + 1)) if biases else None


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

    # ------------------------------------------------------------------ features
    def _build_features(self, train: Interactions) -> None:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        self.item_builder_ = None
        self.user_builder_ = None
        genre_names: list[str] = []
        self.item_genres_ = np.zeros((train.n_items, 0), np.float32)
        if train.item_features is not None:
            columns = infer_item_columns(train.item_features)
            builder = ItemFeatureBuilder(
                genre_columns=columns["genres"],
                min_genre_quantile=c.min_genre_quantile,
                numeric_ranges={k: v for k, v in c.item_numeric_ranges.items() if k in columns["numeric"]},
                learned_numeric=tuple(k for k in columns["numeric"] if k not in c.item_numeric_ranges),
                log_numeric=tuple(k for k in columns["log_numeric"] if k not in c.item_numeric_ranges),
                categorical=columns["categorical"],
            ).fit(train)
            matrix = builder.transform(train.item_features)
            genre_names = builder.genres_
            self.item_genres_ = matrix.dense[:, : len(genre_names)]
            if c.item_features:
                self.item_builder_ = builder
        self.genre_names_ = genre_names
        if c.user_features:
            columns = infer_user_columns(train.user_features)
            self.user_builder_ = UserFeatureBuilder(
                taste=c.taste_features and bool(genre_names) and train.n_rated > 0,
                numeric_ranges={k: v for k, v in c.user_numeric_ranges.items() if k in columns["numeric"]},
                categorical=columns["categorical"],
            ).fit(train)

    def _kept_user_columns(self, frame: pd.DataFrame | None) -> pd.DataFrame | None:
        """The raw user-feature columns the builder reads (kept to rebuild features for history queries)."""
        if self.user_builder_ is None or frame is None:
            return None
        wanted = [
            c
            for c in (*self.user_builder_.categorical, *self.user_builder_.numeric_ranges, "age")
            if c in frame.columns
        ]
        return frame[list(dict.fromkeys(wanted))].reset_index(drop=True)

    def _item_matrix(self, frame: pd.DataFrame | None, n: int) -> FeatureMatrix:
        if self.item_builder_ is None or frame is None:
            return _empty_features(n)
        return self.item_builder_.transform(frame)

    def _user_matrix(self, history: Interactions, features: pd.DataFrame | None) -> FeatureMatrix:
        if self.user_builder_ is None:
            return _empty_features(history.n_users)
        return self.user_builder_.transform(history, self.item_genres_, self.genre_names_, features)

    # ------------------------------------------------------------------ training
    def _fit(self, train: Interactions, options: TrainOptions) -> None:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        generator = seed_everything(options.seed)
        self._build_features(train)
        self.user_features_frame_ = self._kept_user_columns(train.user_features)
        users_fm = self._user_matrix(train, train.user_features)
        items_fm = self._item_matrix(train.item_features, train.n_items)
        self.user_tensors_ = _tensors(users_fm)
        self.item_tensors_ = _tensors(items_fm)
        history_dim = c.history_dim if c.history_pooling else 0
        self.towers_ = _Towers(
            Tower(c.user_tower, train.n_users, users_fm.dense.shape[1] + history_dim, users_fm.cardinalities),
            Tower(c.item_tower, train.n_items, items_fm.dense.shape[1], items_fm.cardinalities),
            train.n_users,
            train.n_items,
            c.biases,
            history_dim,
        )
        self._seen_torch = _torch_csr(self.seen_)
        self.feature_meta_ = {"user": _meta(users_fm), "item": _meta(items_fm)}
        users, items, targets = self._training_rows(train)
        self.target_low_, self.target_span_ = self._target_scale(train)
        scaled_targets = (targets - self.target_low_) / self.target_span_ if targets is not None else None
        self.mean_ = float(scaled_targets.mean()) if (c.biases and scaled_targets is not None) else 0.0
        task = self._task(train, scaled_targets, items)
        optimizer = make_optimizer(c.optimizer, self.towers_.parameters(), c.lr, c.weight_decay)
        scheduler = make_schedule(optimizer, c.lr_schedule, c.n_epochs)
        valid = self._validation(options.valid, train)
        stopper = EarlyStopping(c.early_stopping_patience, mode="min" if c.task == "rating" else "max")
        u_all, i_all = torch.from_numpy(users), torch.from_numpy(items)
        positives = _torch_csr(
            sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(train.n_users, train.n_items))
        )
        t_all = None if scaled_targets is None else torch.from_numpy(scaled_targets.astype(np.float32))
        parallel = DistributedContext.from_environment(options.device)
        parameters = [p for p in self.towers_.parameters() if p.requires_grad]
        checkpoints = Checkpointer.for_fit(self, train, options)
        saved = checkpoints.load() if checkpoints else None
        first_epoch, stop = 1, False
        if saved is not None:
            self.towers_.load_state_dict(saved["towers"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            stopper.load_state(saved["stopper"])
            restore_rng(saved, generator)
            self.training_log_ = list(saved["log"])
            first_epoch, stop = saved["epoch"] + 1, saved["stopped"]
        with progress_bar(f"two-tower ({c.task})", c.n_epochs, enabled=options.progress and parallel.is_main) as bar:
            for epoch in range(first_epoch, c.n_epochs + 1):
                if stop:
                    break
                self.towers_.train()
                by_user = c.batching == "users"
                order = torch.randperm(train.n_users if by_user else len(u_all), generator=generator)
                total, batches = 0.0, 0
                for start in range(0, len(order), c.batch_size):
                    global_index = order[start : start + c.batch_size]
                    if not by_user and len(global_index) < 2:
                        continue
                    rows = parallel.local_rows(len(global_index))
                    index = global_index[rows]
                    if by_user:
                        loss = self._user_batch_loss(index, positives, generator)
                    else:
                        loss = self._batch_loss(
                            task, u_all[index], i_all[index], None if t_all is None else t_all[index], generator
                        )
                    if loss is None and not parallel.enabled:
                        continue
                    optimizer.zero_grad()
                    if loss is not None:
                        (loss * parallel.loss_scale(len(index), len(global_index), len(global_index))).backward()
                        total += float(loss.detach())
                        batches += 1
                    parallel.average_gradients(parameters)  # every rank, even one without a loss this step
                    optimizer.step()
                scheduler.step()
                entry: dict[str, float] = {"epoch": epoch, "loss": total / max(1, batches)}
                if valid is not None:
                    entry.update(self._validate(valid, train))
                self.training_log_.append(entry)
                bar.advance()
                bar.update(**{k: v for k, v in entry.items() if k in ("loss", "valid_rmse", "top10_accuracy")})
                if valid is not None:
                    metric = entry["valid_rmse"] if c.task == "rating" else entry["top10_accuracy"]
                    stop = stopper.update(metric, epoch, self.towers_)
                if checkpoints is not None and parallel.is_main:
                    checkpoints.save(
                        epoch,
                        {
                            "towers": self.towers_.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "stopper": stopper.state(),
                            "log": self.training_log_,
                            "stopped": stop,
                            **rng_state(generator),
                        },
                    )
                parallel.barrier()
        if valid is not None:
            stopper.restore(self.towers_)
        self._export_factors(train)

    def _training_rows(self, train: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.task == "rating":
            return _rated_arrays(train, "the two-tower rating task")
        rows = train.latest_per_pair()
        keep = np.ones(len(rows), dtype=bool)
        if c.positive_threshold is not None:
            if train.rating is None:
                raise ConfigError("positive_threshold needs ratings")
            keep = np.nan_to_num(train.rating[rows], nan=np.inf) >= c.positive_threshold
        rows = rows[keep]
        return train.user_index[rows].astype(np.int64), train.item_index[rows].astype(np.int64), None

    def _target_scale(self, train: Interactions) -> tuple[float, float]:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.task == "rating" and c.target_scaling == "minmax":
            if train.rating_scale is None:
                raise ConfigError("target_scaling='minmax' needs a rating scale")
            low, high = train.rating_scale
            return float(low), float(high - low)
        return 0.0, 1.0

    def _task(self, train: Interactions, targets: np.ndarray | None, items: np.ndarray) -> torch.nn.Module:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.task == "rating":
            return RatingTask(targets, c.mse_weight, c.margin_weight, c.margin / self.target_span_, c.inverse_frequency)
        if c.task == "retrieval":
            frequency = np.bincount(items, minlength=train.n_items).astype(np.float64) + 1e-3
            return RetrievalTask(frequency, c.temperature, c.logq_correction)
        return BCETask()

    def _embed(
        self,
        tower: Tower,
        tensors: dict[str, torch.Tensor],
        index: torch.Tensor,
        dropout: float,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        ids = index
        if dropout and generator is not None:
            unknown = torch.rand(len(index), generator=generator) < dropout
            ids = torch.where(unknown, torch.full_like(index, tower.n_ids), index)
        return tower(ids, tensors["categorical"][index], tensors["dense"][index])

    def _user_forward(
        self,
        index: torch.Tensor,
        feature_rows: torch.Tensor,
        history: tuple[torch.Tensor, ...],
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        exclude: torch.Tensor | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """User tower on ids `index` (unknown = n_users), feature rows `feature_rows` of `tensors` (default:
        training users), and, with history pooling, the mean history embedding of rows of `history`
        (a torch CSR triple; `exclude` removes each row's target item from its bag)."""
        tower = self.towers_.user
        tensors = self.user_tensors_ if tensors is None else tensors
        dense = tensors["dense"][feature_rows]
        if self.towers_.history is not None:
            drop = self.config.history_dropout if generator is not None else 0.0  # type: ignore[attr-defined]
            dense = torch.cat([dense, self._bag_mean(history, feature_rows, exclude, drop, generator)], dim=1)
        ids = index
        if dropout and generator is not None:
            unknown = torch.rand(len(index), generator=generator) < dropout
            ids = torch.where(unknown, torch.full_like(index, tower.n_ids), index)
        return tower(ids, tensors["categorical"][feature_rows], dense)

    def _bag_mean(
        self,
        history: tuple[torch.Tensor, ...],
        rows: torch.Tensor,
        exclude: torch.Tensor | None,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Mean of the history embeddings of each row's items; the excluded target and dropped items do
        not count (a row left empty gets the zero vector)."""
        indptr, indices = history
        starts, ends = indptr[rows], indptr[rows + 1]
        counts = ends - starts
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(starts - offsets, counts) + torch.arange(int(counts.sum()))
        items = indices[positions]
        keep = torch.ones(len(items))
        if exclude is not None:
            keep = keep * (items != torch.repeat_interleave(exclude, counts)).float()
        if dropout:
            keep = keep * (torch.rand(len(items), generator=generator) >= dropout).float()
        sums = self.towers_.history(items, offsets, per_sample_weights=keep)
        kept = torch.zeros(len(rows)).index_add_(0, torch.repeat_interleave(torch.arange(len(rows)), counts), keep)
        if self.config.history_norm == "sqrt":  # type: ignore[attr-defined]
            kept = kept.sqrt()
        return sums / kept.clamp_min(1.0)[:, None]

    def _user_batch_loss(
        self, users: torch.Tensor, positives: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor | None:
        """Multinomial likelihood per user (Mult-DAE style): the user's vector (from a history bag with
        dropout) scores every item; the loss is −Σ_{i in the user's positives} log softmax_i, averaged over
        users. Each user's whole history is one example, so every user counts the same per epoch."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        indptr, indices = positives
        counts = indptr[users + 1] - indptr[users]
        users = users[counts > 0]
        if len(users) == 0:
            return None
        user_vectors = self._user_forward(users, users, self._seen_torch, c.id_dropout, generator)
        every = self._embed(self.towers_.item, self.item_tensors_, torch.arange(self.towers_.item.n_ids), 0.0)
        logits = user_vectors @ every.T / c.temperature
        if self.towers_.item_bias is not None:
            logits = logits + self.towers_.item_bias[: len(every)]
        log_probabilities = torch.log_softmax(logits, dim=1)
        counts = indptr[users + 1] - indptr[users]
        offsets = torch.cumsum(counts, 0) - counts
        positions = torch.repeat_interleave(indptr[users] - offsets, counts) + torch.arange(int(counts.sum()))
        rows = torch.repeat_interleave(torch.arange(len(users)), counts)
        return -log_probabilities[rows, indices[positions]].sum() / len(users)

    def _batch_loss(
        self,
        task: torch.nn.Module,
        users: torch.Tensor,
        items: torch.Tensor,
        targets: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        towers = self.towers_
        user_vectors = self._user_forward(users, users, self._seen_torch, c.id_dropout, generator, exclude=items)
        item_vectors = self._embed(towers.item, self.item_tensors_, items, c.id_dropout, generator)
        if c.task == "rating":
            predictions = (user_vectors * item_vectors).sum(1)
            if c.biases:
                predictions = predictions + self.mean_ + towers.user_bias[users] + towers.item_bias[items]
            if c.score_activation == "relu":
                predictions = torch.relu(predictions)
            return task.loss(predictions, targets)
        n_items = towers.item.n_ids
        if c.task == "retrieval":
            bias = None if towers.item_bias is None else towers.item_bias[:n_items]
            if c.softmax == "full":
                every = self._embed(towers.item, self.item_tensors_, torch.arange(n_items), 0.0)
                return task.loss(user_vectors, item_vectors, items, every, None, full_catalogue=True, item_bias=bias)
            extra = extra_ids = None
            if c.uniform_negatives:
                extra_ids = torch.randint(0, n_items, (c.uniform_negatives,), generator=generator)
                extra = self._embed(towers.item, self.item_tensors_, extra_ids, c.id_dropout, generator)
            return task.loss(user_vectors, item_vectors, items, extra, extra_ids, item_bias=bias)
        negative_ids = torch.randint(0, n_items, (len(items) * c.n_negatives,), generator=generator)
        negatives = self._embed(towers.item, self.item_tensors_, negative_ids, c.id_dropout, generator)
        return task.loss(user_vectors, item_vectors, negatives.view(len(items), c.n_negatives, -1))

    # ------------------------------------------------------------------ validation
    def _validation(self, valid: Interactions | None, train: Interactions) -> dict[str, np.ndarray] | None:
        if valid is None or len(valid) == 0:
            return None
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if c.task == "rating":
            if valid.rating is None or valid.n_rated == 0:
                return None
            rated = valid.explicit()
            return {
                "users": rated.user_index.astype(np.int64),
                "items": rated.item_index.astype(np.int64),
                "ratings": rated.rating.astype(np.float64),
            }
        rows = valid.latest_per_pair()
        return {"users": valid.user_index[rows].astype(np.int64), "items": valid.item_index[rows].astype(np.int64)}

    @torch.no_grad()
    def _validate(self, valid: dict[str, np.ndarray], train: Interactions) -> dict[str, float]:
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        self.towers_.eval()
        user_vectors, item_vectors, user_bias, item_bias = self._all_embeddings(train.n_users, train.n_items)
        users, items = torch.from_numpy(valid["users"]), torch.from_numpy(valid["items"])
        if c.task == "rating":
            predictions = (
                (user_vectors[users] * item_vectors[items]).sum(1) + user_bias[users] + item_bias[items] + self.mean_
            )
            if c.score_activation == "relu":
                predictions = torch.relu(predictions)
            predictions = predictions.numpy() * self.target_span_ + self.target_low_
            if train.rating_scale is not None:
                predictions = np.clip(predictions, *train.rating_scale)
            return {"valid_rmse": float(np.sqrt(np.mean((predictions - valid["ratings"]) ** 2)))}
        exclude = None
        if c.validation_exclude_seen:
            exclude = torch.from_numpy(self.seen_[valid["users"]].toarray() > 0)
        # score = ⟨u, v⟩ + T·b ranks exactly like the training logits ⟨u, v⟩/T + b
        user_side = torch.cat([user_vectors[users], torch.ones(len(users), 1)], dim=1)
        item_side = torch.cat([item_vectors, (c.temperature * item_bias)[:, None]], dim=1)
        return factorized_topk(user_side, item_side, items, exclude)

    @torch.no_grad()
    def _all_embeddings(self, n_users: int, n_items: int) -> tuple[torch.Tensor, ...]:
        towers = self.towers_
        everyone = torch.arange(n_users)
        users = self._user_forward(everyone, everyone, self._seen_torch)
        items = self._embed(towers.item, self.item_tensors_, torch.arange(n_items), 0.0)
        user_bias = towers.user_bias[:n_users].detach() if towers.user_bias is not None else torch.zeros(n_users)
        item_bias = towers.item_bias[:n_items].detach() if towers.item_bias is not None else torch.zeros(n_items)
        return users, items, user_bias, item_bias

    def _export_factors(self, train: Interactions) -> None:
        """Known users' and items' tower outputs become FactorModel factors (ratings rescaled)."""
        self.towers_.eval()
        users, items, user_bias, item_bias = self._all_embeddings(train.n_users, train.n_items)
        span, low = self.target_span_, self.target_low_
        if self.config.task != "rating":  # type: ignore[attr-defined]
            user_bias, item_bias = user_bias * 0, item_bias * self.config.temperature  # type: ignore[attr-defined]
        self._set_factors(
            users.numpy(),
            items.numpy() * span,
            user_bias.numpy() * span,
            item_bias.numpy() * span,
            low + span * self.mean_,
            fold_in=FoldInPenalty(1.0, 1.0, per_rating=False),
        )

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
        matrix = self._history_features(history, features, users, known)
        binary = history.binary.tocsr()
        rows = torch.arange(len(history))
        return self._user_forward(ids, rows, _torch_csr(binary), tensors=_tensors(matrix)).numpy()

    def _history_features(
        self, history: History, features: pd.DataFrame | None, users: np.ndarray, known: np.ndarray
    ) -> FeatureMatrix:
        """Feature rows for history queries: demographics from `features` or from the training table for
        known users, taste recomputed from the history."""
        if self.user_builder_ is None:
            return _empty_features(len(history))
        if features is None and self.user_features_frame_ is not None:
            frame = self.user_features_frame_.iloc[np.where(known, users, 0)].reset_index(drop=True)
            frame.loc[~known, :] = None
        else:
            frame = features
        return self.user_builder_.transform(
            _history_interactions(history, self.items_, self.rating_scale_), self.item_genres_, self.genre_names_, frame
        )

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
            rated = history.ratings.tocsr()
            weights = weights.maximum(rated)  # ratings where given, 1 for unrated interactions
        totals = np.asarray(weights.sum(axis=1)).ravel()
        vectors = np.asarray(weights @ self.item_factors_.astype(np.float64))
        vectors /= np.where(totals > 0, totals, 1.0)[:, None]
        return vectors.astype(np.float32) / max(self.target_span_, 1e-12)

    def user_feature_kinds(self) -> dict[str, str]:
        """The raw user-feature columns the user tower reads (what a features-only user may carry), each
        "numeric" (range-scaled) or "categorical"."""
        if self.user_features_frame_ is None:
            return {}
        numeric = set(self.user_builder_.numeric_ranges) if self.user_builder_ is not None else set()
        return {str(c): "numeric" if c in numeric else "categorical" for c in self.user_features_frame_.columns}

    def embed_users(self, features: pd.DataFrame | None = None, history: History | None = None) -> np.ndarray:
        """Vectors for users unknown to the model, described by features (one row per user, the training
        user-feature columns; a missing column or value is an unknown category / the fitted fill value) and,
        when given, their history (history pooling and the taste profile). Uses the unknown ID."""
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        if not c.user_features:
            raise CapabilityError("this two-tower has no user features; use history or popularity")
        n = len(features) if features is not None else len(history) if history is not None else 0
        if history is None:
            history = History.from_items([[] for _ in range(n)], self.n_items)
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
        has one row per id with the training item-feature columns; ids already in the catalogue, repeated
        ids and items without any usable feature are refused by name."""
        self._require_fitted()
        if self.item_builder_ is None:
            raise CapabilityError(f"{self.name} has no item-feature tower; retrain to add items")
        if len(ids) != len(features):
            raise ConfigError(f"{len(ids)} item ids for {len(features)} feature rows")
        if len(set(ids)) != len(ids):
            raise ConfigError("the same new item id is given twice")
        clashes = [item for item in ids if self.items_.position(item) is not None]
        if clashes:
            raise ConfigError(f"items already in the catalogue: {clashes[:5]}")
        frame = features.reset_index(drop=True)
        vectors = self.embed_items(frame).astype(np.float32)
        genres = self.item_builder_.transform(frame).dense[:, : len(self.genre_names_)]
        extended = copy.copy(self)
        extended.items_ = self.items_.extend(ids)
        extended.item_factors_ = np.vstack([self.item_factors_, vectors])
        extended.item_bias_ = np.concatenate([self.item_bias_, np.zeros(len(ids))])
        extended.item_genres_ = np.vstack([self.item_genres_, genres.astype(self.item_genres_.dtype)])
        extended.seen_ = sp.hstack([self.seen_, sp.csr_matrix((self.seen_.shape[0], len(ids)))], format="csr")
        extended._seen_torch = _torch_csr(extended.seen_)
        return extended

    def embed_items(self, features: pd.DataFrame) -> np.ndarray:
        """Vectors for items described only by features (training item-feature columns), unknown ID."""
        if self.item_builder_ is None:
            raise CapabilityError("this two-tower has no item features")
        return (
            self._run_tower(self.towers_.item, self.item_builder_.transform(features.reset_index(drop=True)))
            * self.target_span_
        )

    @torch.no_grad()
    def _run_tower(self, tower: Tower, matrix: FeatureMatrix) -> np.ndarray:
        self.towers_.eval()
        tensors = _tensors(matrix)
        ids = torch.full((len(matrix),), tower.n_ids, dtype=torch.int64)
        return tower(ids, tensors["categorical"], tensors["dense"]).numpy().astype(np.float32)

    # ------------------------------------------------------------------ state
    def _get_arrays(self) -> dict[str, np.ndarray]:
        arrays = super()._get_arrays()
        arrays |= {f"towers/{k}": v.detach().numpy() for k, v in self.towers_.state_dict().items()}
        for side, tensors in (("user", self.user_tensors_), ("item", self.item_tensors_)):
            arrays |= {f"{side}_features/{k}": v.numpy() for k, v in tensors.items()}
        arrays["item_genres"] = self.item_genres_
        return arrays

    def _get_extras(self) -> dict[str, Any]:
        return super()._get_extras() | {
            "feature_meta": self.feature_meta_,
            "genre_names": self.genre_names_,
            "mean": self.mean_,
            "target": [self.target_low_, self.target_span_],
            "item_builder": None if self.item_builder_ is None else self.item_builder_.to_dict(),
            "user_builder": None if self.user_builder_ is None else self.user_builder_.to_dict(),
            "user_frame": None
            if self.user_features_frame_ is None
            else {
                column: [None if pd.isna(v) else (v.item() if isinstance(v, np.generic) else v) for v in values]
                for column, values in self.user_features_frame_.items()
            },
        }

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        super()._set_state(arrays, extras)
        c: TwoTowerConfig = self.config  # type: ignore[assignment]
        self.feature_meta_, self.genre_names_, self.mean_ = (
            extras["feature_meta"],
            extras["genre_names"],
            extras["mean"],
        )
        self.target_low_, self.target_span_ = extras["target"]
        self.item_builder_ = (
            None if extras["item_builder"] is None else ItemFeatureBuilder.from_dict(extras["item_builder"])
        )
        self.user_builder_ = (
            None if extras["user_builder"] is None else UserFeatureBuilder.from_dict(extras["user_builder"])
        )
        self.item_genres_ = arrays["item_genres"]
        self.user_features_frame_ = None if extras["user_frame"] is None else pd.DataFrame(extras["user_frame"])
        self._seen_torch = _torch_csr(self.seen_)
        self.user_tensors_ = {k: torch.from_numpy(arrays[f"user_features/{k}"]) for k in ("dense", "categorical")}
        self.item_tensors_ = {k: torch.from_numpy(arrays[f"item_features/{k}"]) for k in ("dense", "categorical")}
        n_users, n_items = len(self.users_), len(self.items_)
        user_meta, item_meta = self.feature_meta_["user"], self.feature_meta_["item"]
        history_dim = c.history_dim if c.history_pooling else 0
        self.towers_ = _Towers(
            Tower(c.user_tower, n_users, user_meta["dense_dim"] + history_dim, user_meta["cardinalities"]),
            Tower(c.item_tower, n_items, item_meta["dense_dim"], item_meta["cardinalities"]),
            n_users,
            n_items,
            c.biases,
            history_dim,
        )
        self.towers_.load_state_dict(
            {k[len("towers/") :]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("towers/")}
        )
        self.towers_.eval()


def _torch_csr(matrix: Any) -> tuple[torch.Tensor, torch.Tensor]:
    matrix = matrix.tocsr()
    return torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64))


def _history_interactions(history: History, items: Any, rating_scale: tuple[float, float] | None) -> Interactions:
    """A History as Interactions over `items` (one pseudo-user per query), ratings where given."""
    from recforge.data.vocabulary import Vocabulary

    coo = history.binary.tocoo()
    ratings = None
    if history.ratings is not None:
        ratings = np.asarray(history.ratings.tocsr()[coo.row, coo.col]).ravel().astype(np.float32)
        ratings[ratings == 0] = np.nan
    return Interactions(
        users=Vocabulary(np.arange(len(history)), "query"),
        items=items,
        user_index=coo.row,
        item_index=coo.col,
        rating=ratings,
        rating_scale=rating_scale,
    )


def _empty_features(n: int) -> FeatureMatrix:
    return FeatureMatrix(np.zeros((n, 0), np.float32), [], np.zeros((n, 0), np.int64), [], [])


def _tensors(matrix: FeatureMatrix) -> dict[str, torch.Tensor]:
    return {
        "dense": torch.from_numpy(np.ascontiguousarray(matrix.dense, dtype=np.float32)),
        "categorical": torch.from_numpy(np.ascontiguousarray(matrix.categorical, dtype=np.int64)),
    }


def _meta(matrix: FeatureMatrix) -> dict[str, Any]:
    return {
        "dense_dim": int(matrix.dense.shape[1]),
        "cardinalities": [int(c) for c in matrix.cardinalities],
        "dense_names": matrix.dense_names,
        "categorical_names": matrix.categorical_names,
    }
