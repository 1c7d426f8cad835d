"""`recforge tune`: hyper-parameter search with Optuna on a validation carve-out, never on the test part.

A tuning config is an experiment config (dataset, preprocessing, split with a `[split.validation]`
carve-out, evaluation) plus a `[tune]` table:

    [tune]
    model = "mf"
    metric = "rmse"            # default: the evaluation's primary metric (rmse for rating-only protocols)
    trials = 30
    sampler = "tpe"            # or "random"
    prune = true               # stop epoch-trained fits whose validation curve trails (median rule)
    fixed = { n_epochs = 30 }  # parameters every trial uses
    [tune.params]              # the search space, one table per parameter
    n_factors = { low = 16, high = 256, log = true }     # integers when both bounds are integers
    lr = { low = 1e-4, high = 0.1, log = true }
    reg = { low = 0.0, high = 0.2 }
    init_std = { choices = [0.01, 0.1] }

Every trial fits the model on the training part minus the carve-out and is scored on the carve-out;
epoch-trained models report their per-epoch validation metric to Optuna's median pruner. The study lives
in a SQLite file (`--study`), so an interrupted search resumes where it stopped and more trials can be
added later. The best parameters are written as a TOML `[[models]]` entry that `recforge compare` reads.
Search spaces are checked against the model's typed config before any data is read. A blend's member
weights are searched as `"members.<i>.weight"`; when nothing else is, the members are fitted once and each
trial only re-weights their scores.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recforge._toml import loads as toml_loads
from recforge.errors import ConfigError, TrainingDivergedError
from recforge.evaluation.metrics import direction, metric_problem
from recforge.experiment import ExperimentConfig, load_config, validation_evaluator
from recforge.models.config import TrainOptions
from recforge.models.registry import ModelSpec


class Dimension(BaseModel):
    """One parameter's range: `low`/`high` (integers when both are integers; `log` for a log scale), or
    `choices`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: int | float | None = None  # integers stay integers: both ends integral -> an integer parameter
    high: int | float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dimension:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either choices (non-empty) or low/high, not both")
        elif self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError("give low <= high, or choices")
        elif self.log and self.low <= 0:
            raise ValueError("a log scale needs low > 0")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def corners(self) -> list[Any]:
        """Values that must all be valid for the model (checked at load)."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)  # type: ignore[arg-type]
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)  # type: ignore[arg-type]


MEMBER_WEIGHT = re.compile(r"^members\.(\d+)\.weight$")


def model_params(model: str, fixed: dict[str, Any], searched: dict[str, Any]) -> dict[str, Any]:
    """`fixed` with `searched` on top, where a blend's `members.<i>.weight` sets member i's weight (of the
    fixed `members`, or of the default blend's)."""
    params = {**fixed, **{name: v for name, v in searched.items() if not MEMBER_WEIGHT.match(name)}}
    weights = {int(m.group(1)): v for name, v in searched.items() if (m := MEMBER_WEIGHT.match(name))}
    if not weights:
        return params
    if model != "blend":
        raise ConfigError(f"members.<i>.weight is a parameter of blends, not of {model!r}")
    from recforge.models.ensemble import BlendConfig

    members = params.get("members") or [m.model_dump() for m in BlendConfig().members]
    members = [dict(member) for member in members]
    for index, weight in weights.items():
        if index >= len(members):
            raise ConfigError(f"members.{index}.weight: the blend has {len(members)} members (0 to {len(members) - 1})")
        members[index]["weight"] = weight
    return {**params, "members": members}


class TuneSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    model: str
    params: dict[str, Dimension] = Field(description="the search space")
    fixed: dict[str, Any] = Field(default_factory=dict, description="parameters every trial uses")
    metric: str | None = None
    trials: int = Field(20, ge=1)
    sampler: Literal["tpe", "random"] = "tpe"
    prune: bool = True

    @model_validator(mode="after")
    def _space_fits_the_model(self) -> TuneSettings:
        if not self.params:
            raise ValueError("tune.params is empty: name at least one parameter to search")
        overlap = set(self.params) & set(self.fixed)
        if overlap:
            raise ValueError(f"{sorted(overlap)} are both searched and fixed")
        spec = ModelSpec(model=self.model, params=self.fixed)
        for name, dimension in self.params.items():  # every end of every range must be a valid value
            for value in dimension.corners():
                spec.model_config_for(model_params(self.model, self.fixed, {name: value}))
        return self

    @property
    def weights_only(self) -> bool:
        """A blend whose search is over member weights alone: its members are fitted once for the study."""
        return self.model == "blend" and all(MEMBER_WEIGHT.match(name) for name in self.params)


class TuneConfig(ExperimentConfig):
    tune: TuneSettings

    @model_validator(mode="after")
    def _needs_a_carve_out(self) -> TuneConfig:
        if self.split.validation is None:
            raise ValueError(
                "tuning needs a validation carve-out of the training part: add [split.validation] "
                '(e.g. kind = "per_user", test_fraction = 0.1); the test part is never used for tuning'
            )
        return self

    @model_validator(mode="after")
    def _metric_is_known(self) -> TuneConfig:
        problem = metric_problem(self.metric)
        if problem:
            raise ValueError(f"tune.metric: {problem}")
        return self

    @property
    def metric(self) -> str:
        if self.tune.metric is not None:
            return self.tune.metric
        return "rmse" if self.evaluation.protocols == ["rating"] else str(self.evaluation.primary_metric)


def load_tune_config(path: str | Path) -> TuneConfig:
    return load_config(path, TuneConfig)


def _is_sqlite(path: Path) -> bool:
    """True when the file starts with SQLite's header (an Optuna study)."""
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def tune(
    config: TuneConfig, study_path: str | Path, *, trials: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Run (or continue) the study in `study_path` until it has `trials` finished trials (default: the
    config's); returns the best trial: parameters, value, and the study's counts."""
    import optuna

    from recforge.data.loaders import load_dataset
    from recforge.data.preprocess import preprocess

    study_path = Path(study_path)
    if not study_path.parent.is_dir():
        raise ConfigError(f"{study_path}: the study's folder {study_path.parent} does not exist")
    if study_path.is_dir() or (study_path.is_file() and study_path.stat().st_size and not _is_sqlite(study_path)):
        raise ConfigError(
            f"{study_path} is not a study (an SQLite database): give a new file name, or the study file an "
            "earlier `recforge tune` wrote (nothing was changed)"
        )
    metric = config.metric
    minimise = direction(metric) == "min"
    data = load_dataset(config.dataset.name, config.dataset.path, **config.dataset.options)
    data, _ = preprocess(data, config.preprocess)
    split = config.split.make(data, config.seed, config.dataset.path)
    assert config.split.validation is not None
    inner = config.split.validation.make(split.train, config.seed, config.dataset.path)
    evaluator = validation_evaluator(config, inner, metric)
    settings = config.tune
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2) if settings.prune else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=config.name,
        storage=f"sqlite:///{Path(study_path).resolve()}",
        load_if_exists=True,
        direction="minimize" if minimise else "maximize",
        pruner=pruner,
    )
    study.sampler = _sampler(settings.sampler, config.seed, len(study.trials))

    shared: dict[str, Any] = {}  # a weights-only blend search: the blend fitted once

    def objective(trial: Any) -> float:
        searched = {name: d.suggest(trial, name) for name, d in settings.params.items()}
        params = model_params(settings.model, settings.fixed, searched)
        started = time.perf_counter()
        if settings.weights_only:
            if "blend" not in shared:
                shared["blend"] = ModelSpec(model="blend", params=params).build()
                shared["blend"].fit(inner.train, TrainOptions(seed=config.seed, threads=config.threads))
            members = ModelSpec(model="blend", params=params).model_config_for(params).members
            blend = shared["blend"].with_weights([member.weight for member in members])
            value = float(evaluator.evaluate(blend).summary[metric])
            trial.set_user_attr("fit_seconds", time.perf_counter() - started)
            return value
        model = ModelSpec(model=settings.model, params=params).build()

        def report(epoch: int, entry: dict[str, float]) -> None:
            monitored = next((v for k, v in entry.items() if k.startswith("valid_")), None)
            if pruner is None or monitored is None or not math.isfinite(monitored):
                return
            trial.report(monitored, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {monitored:.4f} trails the median")

        model.fit(
            inner.train, TrainOptions(seed=config.seed, valid=inner.test, on_epoch=report, threads=config.threads)
        )
        value = float(evaluator.evaluate(model).summary[metric])
        trial.set_user_attr("fit_seconds", time.perf_counter() - started)
        return value

    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    wanted = trials if trials is not None else settings.trials
    remaining = max(0, wanted - len(done))
    if remaining:
        study.optimize(
            objective,
            n_trials=remaining,
            show_progress_bar=False,
            callbacks=[_printer(progress)],
            catch=(TrainingDivergedError,),  # a learning rate that diverges is a failed trial, not the end
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"study {config.name!r} has no completed trial (all pruned or failed)")
    best = study.best_trial
    return {
        "model": settings.model,
        "metric": metric,
        "direction": "minimize" if minimise else "maximize",
        "best_value": best.value,
        "best_params": model_params(settings.model, settings.fixed, best.params),
        "best_trial": best.number,
        "trials": len(study.trials),
        "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "validation": inner.name,
    }


def _sampler(kind: str, seed: int, earlier_trials: int) -> Any:
    """The study's sampler, seeded by the config's seed and how many trials the study already has: a resumed
    study seeded as at its start would propose its first trials again (the random start of TPE, every trial
    of the random sampler), spending the resumed run on points it has measured."""
    import optuna

    seed = int(np.random.SeedSequence([seed, earlier_trials]).generate_state(1)[0]) if earlier_trials else seed
    return optuna.samplers.TPESampler(seed=seed) if kind == "tpe" else optuna.samplers.RandomSampler(seed=seed)


def _printer(enabled: bool) -> Any:
    def callback(study: Any, trial: Any) -> None:
        if enabled:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            value = "pruned" if trial.value is None else f"{trial.value:.4f}"
            print(f"{stamp} trial {trial.number}: {value} {trial.params}", flush=True)

    return callback


def best_as_toml(result: dict[str, Any]) -> str:
    """The best parameters as a `[[models]]` entry for an experiment config."""
    import tomli_w

    note = (
        f"# recforge tune: best of {result['complete']} completed trial(s) on {result['validation']}, "
        f"{result['metric']} = {result['best_value']:.6g}\n"
    )
    entry = {"model": result["model"], "params": result["best_params"]}
    # Always a `[[models]]` table, never `models = [...]`: an inline array appended after a config's last
    # [table] would belong to that table, while the header is right anywhere (`cat best.toml >> run.toml`).
    body = [_under_models(line) for line in tomli_w.dumps(entry).splitlines()]
    text = note + "[[models]]\n" + "\n".join(body).strip("\n") + "\n"
    if toml_loads(text)["models"] != [entry]:  # pragma: no cover - a guard on the rewriting above
        raise AssertionError(f"best parameters did not round-trip through TOML: {text}")
    return text


def _under_models(line: str) -> str:
    """A table header of one `[[models]]` entry's own TOML, moved under that entry."""
    if line.startswith("[["):
        return "[[models." + line[2:]
    if line.startswith("["):
        return "[models." + line[1:]
    return line
