"""Model registry: `create_model("ials", n_factors=64)`; classes are imported lazily so that the CLI
and data-only users do not pay for torch."""

from __future__ import annotations

import importlib
from typing import Any

from recforge.errors import ConfigError
from recforge.models.base import History, ModelConfig, Recommendations, Recommender, TrainOptions

_REGISTRY: dict[str, str] = {
    "global_mean": "recforge.models.baselines:GlobalMean",
    "bias": "recforge.models.baselines:BiasBaseline",
    "most_popular": "recforge.models.baselines:MostPopular",
    "weighted_popularity": "recforge.models.baselines:WeightedPopularity",
    "als": "recforge.models.als:ExplicitALS",
    "bayesian_mf": "recforge.models.als:BayesianMF",
    "mf": "recforge.models.mf:ExplicitMF",
    "ials": "recforge.models.ials:ImplicitALS",
    "ease": "recforge.models.ease:EASE",
    "bpr": "recforge.models.bpr:BPR",
    "item_knn": "recforge.models.knn:ItemKNN",
    "user_knn": "recforge.models.knn:UserKNN",
    "blend": "recforge.models.ensemble:Blend",
    "two_tower": "recforge.models.two_tower:TwoTower",
    "sasrec": "recforge.models.sequential:SASRec",
    "gru4rec": "recforge.models.sequential:GRU4Rec",
    "lstm_next": "recforge.models.sequential:LSTMNext",
    "text_regression": "recforge.models.sequential:TextRegression",
}


def register(name: str, target: str) -> None:
    """Add a model class under `name`, given as "module:Class"."""
    _REGISTRY[name] = target


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[Recommender]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {model_names()}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_model(name: str, **params: Any) -> Recommender:
    return model_class(name)(**params)


__all__ = [
    "History",
    "ModelConfig",
    "Recommendations",
    "Recommender",
    "TrainOptions",
    "create_model",
    "model_class",
    "model_names",
    "register",
]
