"""`recforge train CONFIG`: dataset + preprocessing + one model (+ an optional ANN index) -> an artifact.

The config is TOML (or YAML):

    seed = 0
    output = "models/ml100k-ials"
    [dataset]
    name = "ml-100k"
    [model]
    model = "ials"
    params = { n_factors = 64 }
    [index]                 # optional, factor models only
    kind = "hnsw"

The model is fitted on every interaction of the (preprocessed) dataset; evaluate with `recforge compare`.
The artifact also holds `items.parquet` (id, title, genres) for the service and web page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recforge.artifacts import check_artifact_output
from recforge.data.interactions import Interactions
from recforge.data.preprocess import PreprocessStep, preprocess
from recforge.errors import ConfigError
from recforge.experiment import DatasetConfig
from recforge.models.registry import ModelSpec
from recforge.retrieval.ann import IndexConfig


class TrainConfig(BaseModel):
    """A training config, validated when loaded (the model's parameters against its typed config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    seed: int = 0
    output: str | None = None
    dataset: DatasetConfig
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    model: ModelSpec
    index: IndexConfig | None = None
    checkpoint_dir: str | None = Field(None, description="neural models: per-epoch checkpoints; a rerun resumes")


def load_train_config(path: str | Path) -> TrainConfig:
    from recforge.experiment import load_config

    return load_config(path, TrainConfig)


def train(config: TrainConfig, output: str | Path | None = None, progress: bool = False) -> Path:
    """Fit the configured model on the whole dataset and write its artifact; returns the directory."""
    target = output or config.output
    if target is None:
        raise ConfigError("no output directory: set `output` in the config or pass --output")
    check_artifact_output(target)  # before the fit, not after it
    check_servable(config)
    data, _ = preprocess(load_raw_dataset(config), config.preprocess)
    model = fit_model(config, data, progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank trains; only rank 0 writes
        return Path(target)
    return save_served(config, model, data, target)


def check_servable(config: TrainConfig) -> None:
    """What saving the fitted model would refuse, refused before the data is loaded and the model fitted
    (an [index] on a model without embeddings failed after a whole SASRec fit, losing it)."""
    if config.index is not None:
        from recforge.models.indexed import IndexedRecommender

        IndexedRecommender.require_embeddings(config.model.build())


def load_raw_dataset(config: TrainConfig) -> Interactions:
    """The configured dataset before preprocessing (`recforge retrain` adds the service's events to it)."""
    from recforge.data.loaders import load_dataset

    return load_dataset(config.dataset.name, config.dataset.path, **config.dataset.options)


def fit_model(config: TrainConfig, data: Interactions, progress: bool = False) -> Any:
    """A fresh model of the configured kind fitted on `data` with the configured seed."""
    from recforge.models.config import TrainOptions

    model = config.model.build()
    return model.fit(data, TrainOptions(seed=config.seed, progress=progress, checkpoint_dir=config.checkpoint_dir))


def save_served(
    config: TrainConfig, model: Any, data: Interactions, target: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write what the service loads: the model (behind the configured index) and its item catalogue."""
    from recforge.models.indexed import IndexedRecommender

    served = model if config.index is None else IndexedRecommender.build(model, config.index)
    return served.save(target, metadata={"dataset": data.name, "seed": config.seed, **(metadata or {})}, catalogue=data)
