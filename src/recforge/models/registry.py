"""The model registry (`create_model("ials", n_factors=64)`) and loading of saved artifacts. Classes are
imported lazily, so the CLI and data-only users do not pay for torch."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recforge.artifacts import read_artifact, read_index
from recforge.errors import ArtifactError, ConfigError, did_you_mean

_REGISTRY: dict[str, str] = {
    "global_mean": "recforge.models.baselines:GlobalMean",
    "bias": "recforge.models.baselines:BiasBaseline",
    "most_popular": "recforge.models.baselines:MostPopular",
    "weighted_popularity": "recforge.models.baselines:WeightedPopularity",
    "als": "recforge.models.als:ExplicitALS",
    "bayesian_mf": "recforge.models.als:BayesianMF",
    "autorec": "recforge.models.autorec:AutoRec",
    "mf": "recforge.models.mf:ExplicitMF",
    "ials": "recforge.models.ials:ImplicitALS",
    "ease": "recforge.models.ease:EASE",
    "slim": "recforge.models.slim:SLIM",
    "rp3beta": "recforge.models.rp3beta:RP3Beta",
    "bpr": "recforge.models.bpr:BPR",
    "item_knn": "recforge.models.knn:ItemKNN",
    "user_knn": "recforge.models.knn:UserKNN",
    "blend": "recforge.models.ensemble:Blend",
    "stack": "recforge.models.ensemble:Stack",
    "two_tower": "recforge.models.two_tower.model:TwoTower",
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


def model_class(name: str) -> type[Any]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(name, model_names())}; known models: {model_names()}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_model(name: str, **params: Any) -> Any:
    return model_class(name)(**params)


def load_model(path: str | Path, *, with_index: bool = True) -> Any:
    """Load and verify a model artifact (see `recforge.artifacts`): the fitted `Recommender`, or, when the
    artifact holds a vector index (and `with_index`), an `IndexedRecommender` that serves top-k from it."""
    path = Path(path)
    model = _load_recommender(path)
    if with_index:
        index = read_index(path)
        if index is not None:
            from recforge.models.indexed import IndexedRecommender

            return IndexedRecommender(model, index)
    return model


def _load_recommender(path: Path) -> Any:
    manifest, arrays, state = read_artifact(path)
    try:
        cls = model_class(manifest["model"])
    except ConfigError as exc:
        raise ArtifactError(f"{path}: unknown model {manifest.get('model')!r}") from exc
    try:
        model = cls(cls.Config.model_validate(manifest["config"]))
        model.set_state(arrays, state)
    except ArtifactError:
        raise
    except Exception as exc:  # a structurally valid but inconsistent artifact
        raise ArtifactError(f"{path}: cannot restore {manifest['model']} ({type(exc).__name__}: {exc})") from exc
    model.artifact_path_ = path
    model.manifest_ = manifest
    return model


class ModelSpec(BaseModel):
    """A model by registry name and parameters: the one spec shape experiments, ensembles and training
    configs share (each adds its own fields). Validated when it is built: an unknown model name or a
    parameter its typed config rejects fails at load time, naming it, before any data is read."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    model: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _params_fit_the_model(self) -> ModelSpec:
        self.model_config_for(self.params)
        return self

    def model_config_for(self, params: dict[str, Any]) -> Any:
        """The model's typed config from `params` (ConfigError naming the model and the field)."""
        return model_class(self.model).Config.from_params(self.model, params)

    def build(self, **overrides: Any) -> Any:
        """A fresh, unfitted model with these parameters (and `overrides` on top)."""
        return model_class(self.model)(self.model_config_for({**self.params, **overrides}))
