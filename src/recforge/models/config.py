"""How models are configured (`ModelConfig`: typed, strict, immutable hyper-parameters that round-trip to
TOML, with `apply_preset` for preset defaults) and trained (`TrainOptions`: seed, device, threads,
progress, validation data, checkpoints: how to train, as opposed to what)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from recforge._settings import settings_at
from recforge.data.interactions import Interactions
from recforge.errors import ConfigError, did_you_mean


class ModelConfig(BaseModel):
    """Base of every model's hyper-parameter config: strict (unknown keys are errors) and immutable.

    Configs round-trip through TOML; TOML has no null, so fields set to None are listed under `__none__`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def to_toml(self) -> str:
        import tomli_w

        nones: list[str] = []

        def strip(values: dict[str, Any], prefix: str) -> dict[str, Any]:  # TOML has no null: list the paths
            kept = {}
            for key, value in values.items():
                if value is None:
                    nones.append(prefix + key)
                else:
                    kept[key] = strip(value, f"{prefix}{key}.") if isinstance(value, dict) else value
            return kept

        payload = strip(self.model_dump(mode="json"), "")
        if nones:
            payload["__none__"] = sorted(nones)
        return tomli_w.dumps(payload)

    @classmethod
    def from_params(cls, model: str, params: dict[str, Any]) -> ModelConfig:
        """The config of `params`, or a ConfigError naming the model and each field that is wrong, with the
        closest known name for a misspelt one (pydantic's own message is a multi-line dump)."""
        try:
            return cls(**params)
        except ValidationError as exc:
            problems = "; ".join(_problem(error, cls) for error in exc.errors())
            raise ConfigError(f"model {model!r}: {problems}") from exc

    @classmethod
    def from_toml(cls, text: str) -> ModelConfig:
        from recforge._toml import loads

        payload = loads(text, f"{cls.__name__} TOML")
        for path in payload.pop("__none__", []):
            *parents, key = path.split(".")
            node = payload
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = None
        return cls.model_validate(payload)


def _problem(error: Any, config: type[BaseModel]) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "params"
    if error["type"] != "extra_forbidden":
        return f"{where}: {error['msg']}"
    if where in TrainOptions.__dataclass_fields__:
        in_configs = {"seed": "`seed` or `seeds`", "threads": "`threads`"}
        in_config = f"; in a config, {in_configs[where]} at its top" if where in in_configs else ""
        return (
            f"{where} is how a model is trained, not one of its parameters: "
            f"`model.fit(train, TrainOptions({where}=...))`{in_config}"
        )
    known = settings_at(config, error["loc"][:-1])  # a sub-config's (a tower's) for a name given in one
    return f"{where}: not a known setting{did_you_mean(str(error['loc'][-1]), known) if known else ''}"


def apply_preset(values: Any, presets: dict[str, dict[str, Any]], default: str, nested: tuple[str, ...] = ()) -> Any:
    """Merge a config's `preset` defaults under the values given explicitly (for `mode="before"` validators).

    Keys in `nested` hold sub-configs that merge key by key, so overriding one tower setting keeps the
    preset's others.
    """
    if not isinstance(values, dict):
        return values
    preset = values.get("preset", default)
    if preset is None:
        return values
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    merged = {**presets[preset], **values}
    for key in nested:
        if isinstance(values.get(key), dict):
            merged[key] = {**presets[preset].get(key, {}), **values[key]}
    return merged


@dataclass
class TrainOptions:
    """How to train, as opposed to what to train: seed, device, progress bars, validation data."""

    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    valid: Interactions | None = None
    # CPU threads for this fit; None = the policy of `recforge.threads` (RECFORGE_THREADS, OMP_NUM_THREADS, or
    # the cores free when the fit starts). The previous counts are restored when the fit ends.
    threads: int | None = None
    # neural models: write a checkpoint here after every epoch, and resume from it when one from the same
    # run (model, config, data, seed) exists — a killed run picks up where it stopped
    checkpoint_dir: str | None = None
    # called after every epoch of an epoch-trained model with (epoch, log entry): `recforge tune` reports
    # validation metrics to its pruner here (raising optuna.TrialPruned stops the fit)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
