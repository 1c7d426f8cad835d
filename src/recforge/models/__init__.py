"""Models: the `Recommender` contract (`recforge.models.base`), one module per family, and the registry
(`create_model`, `model_names`, `load_model`)."""

from __future__ import annotations

from recforge.data.query import History
from recforge.models.base import Recommendations, Recommender
from recforge.models.config import ModelConfig, TrainOptions
from recforge.models.registry import create_model, load_model, model_class, model_names, register

__all__ = [
    "History",
    "ModelConfig",
    "Recommendations",
    "Recommender",
    "TrainOptions",
    "create_model",
    "load_model",
    "model_class",
    "model_names",
    "register",
]
