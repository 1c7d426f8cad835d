"""The two-tower model's hyper-parameters and presets (see `recforge.models.two_tower` for what they do)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recforge.models.config import ModelConfig, apply_preset
from recforge.models.registry import ModelSpec
from recforge.nn.towers import TowerConfig

_RETRIEVAL: dict[str, Any] = {
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
}

PRESETS: dict[str, dict[str, Any]] = {
    "retrieval": _RETRIEVAL,
    # the retrieval preset, 600-d (user tower 600 -> 600, item IDs 600-d) at temperature 1, taught by the
    # default blend (EDLAE + 0.5 iALS). Chosen on a per-user 10% carve-out of ML-100K's per-user 80/20 training
    # part (seed 0): NDCG@10 0.1823 without a teacher, 0.1878 taught by EDLAE, 0.1890 by the blend (weight 5,
    # temperature 0.3; weights 1-20 and temperatures 0.1-0.5 tried); the blend itself scores 0.1915 there
    "distilled": {
        **_RETRIEVAL,
        "user_tower": {**_RETRIEVAL["user_tower"], "output_dim": 600},
        "item_tower": {**_RETRIEVAL["item_tower"], "id_dim": 600, "output_dim": 600},
        "temperature": 1.0,
        "teacher": {"model": "blend"},
        "distill_weight": 5.0,
        "distill_temperature": 0.3,
    },
    # linear towers (pooled history -> 256-d, item IDs 256-d) found in closed form: the reduced-rank ridge fit
    # of the default blend's standardised scores (`teacher_init`), not trained further. On the carve-out above
    # (teacher 0.1923 / the time-decayed blend 0.1959): 64-d 0.1923 / 0.1961, 256-d 0.1919 / 0.1939, 32-600-d
    # within 0.002; on the anime sample's carve-out (per-user 80/20 seed 0, then 10% seed 1; 7,390 items, the
    # blend 0.2118) the width matters: 64-d 0.1928, 128-d 0.1996, 256-d 0.2032, 512-d 0.2068, so 256 (a wider
    # catalogue may want more). Ridge λ 0.01-0.3 within 0.0005; SGD epochs after the fit only lowered it (lr
    # 1e-5: 0.1960, 1e-4: 0.1930, 5e-4: 0.1698). The default blend stays the teacher for the reason it has no
    # time decay (files without a meaningful order)
    "distilled-linear": {
        **_RETRIEVAL,
        "history_dim": 256,
        "user_tower": {**_RETRIEVAL["user_tower"], "output_dim": 256, "output_activation": "none"},
        "item_tower": {**_RETRIEVAL["item_tower"], "id_dim": 256, "output_dim": 256},
        "biases": False,
        "temperature": 1.0,
        "teacher": {"model": "blend"},
        "teacher_init": True,
        "n_epochs": 0,
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
    preset: Literal["retrieval", "distilled", "distilled-linear", "rating", "anime-paper", "id-only"] | None = (
        "retrieval"
    )
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
    n_epochs: int = Field(20, ge=0, description="0 keeps the towers teacher_init found (needs teacher_init)")
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
    teacher: ModelSpec | None = Field(
        None,
        description="a model fitted first on the same data whose ranking of each user's unseen items the towers "
        "also learn (ranking distillation; the multinomial task: retrieval with users batching)",
    )
    distill_weight: float = Field(5.0, ge=0, description="weight of the distillation loss beside the task's")
    distill_temperature: float = Field(
        0.3, gt=0, description="softmax temperature over the teacher's per-user standardised scores"
    )
    teacher_init: bool = Field(
        False,
        description="start linear towers at the reduced-rank ridge fit of the teacher's standardised scores on "
        "the pooled histories (closed-form distillation, `two_tower.teacher_init`), then train as usual",
    )
    teacher_init_reg: float = Field(0.1, gt=0, description="ridge penalty λ of the teacher_init fit")

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
        if self.teacher is not None and (self.task != "retrieval" or self.batching != "users"):
            raise ValueError("a teacher needs task = 'retrieval' with batching = 'users' (the multinomial task)")
        if self.item_tower.id_dim == 0 and not self.item_features:
            raise ValueError("the item tower has no input: set item_tower.id_dim > 0 or item_features = true")
        if self.teacher_init:
            self._check_linear_towers()
        elif self.n_epochs == 0:
            raise ValueError("n_epochs = 0 leaves the towers untrained; it needs teacher_init = true")
        return self

    def _check_linear_towers(self) -> None:
        user, item = self.user_tower, self.item_tower
        problems = [
            (self.teacher is None, "a teacher"),
            (not self.history_pooling, "history_pooling = true"),
            (user.id_dim != 0 or user.hidden, "user_tower.id_dim = 0 and no hidden layers"),
            (self.history_dim != user.output_dim, "history_dim = user_tower.output_dim"),
            (item.hidden or item.id_dim != item.output_dim, "item_tower.id_dim = item_tower.output_dim, no hidden"),
            (item.output_dim != user.output_dim, "the same output_dim in both towers"),
            (self.item_features, "item_features = false"),
            (
                any(t.output_activation != "none" or t.normalize for t in (user, item)),
                "output_activation = 'none' and normalize = false in both towers",
            ),
        ]
        missing = [need for failed, need in problems if failed]
        if missing:
            raise ValueError("teacher_init starts linear towers; it needs " + ", ".join(missing))
