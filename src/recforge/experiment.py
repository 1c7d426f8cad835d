"""Declarative experiments: dataset + preprocessing + split + models + metrics + seeds -> results.

A config (TOML, YAML or a dict) is validated into `ExperimentConfig`; `run_experiment` loads and
prepares the data once, splits it, checks the split for leakage, fits every model on the same training
part (after an optional grid search on a validation carve-out of the training part) and evaluates each
with the same protocol objects. `recforge.evaluation.report.write_report` turns the result into
report.md/report.html, plots, JSON and Parquet.

Decisions worth knowing:
- Baselines are added automatically (`baselines = true`): most-popular for ranking, global mean and
  regularised biases for rating prediction, so every table has its honest floor.
- Grid search fits on train-minus-validation and scores on validation; the chosen parameters are then
  refitted on the whole training part. Test data is never seen before the final evaluation.
- For the next-item protocol the split must provide a validation part (leave_last_out with valid_k=1):
  models train on the training part, may early-stop on validation, and are scored with
  train + validation as the query-time history.
"""

from __future__ import annotations

import itertools
import json
import platform
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recforge._progress import progress_bar
from recforge._settings import settings_at
from recforge._version import __version__
from recforge.coldstart import EMBEDDINGS, KNOWN_USERS, RATINGS
from recforge.data.interactions import Interactions
from recforge.data.loaders import load_dataset
from recforge.data.preprocess import PreprocessStep, preprocess
from recforge.data.split_specs import SplitSpec
from recforge.data.splits import Split
from recforge.errors import ConfigError, InsufficientMemoryError, TrainingDivergedError, did_you_mean
from recforge.evaluation.given import GivenLists
from recforge.evaluation.guards import check_split
from recforge.evaluation.llm_judge import JudgeConfig, JudgeError, LLMJudge, judge_rankings
from recforge.evaluation.metrics import RATING_METRICS, direction, metric_problem
from recforge.evaluation.protocols import (
    FullRankingEvaluator,
    RankingResult,
    RatingEvaluator,
    RatingResult,
    next_item_evaluator,
)
from recforge.evaluation.results import ExperimentResult, ModelRun
from recforge.models.base import Recommender
from recforge.models.config import TrainOptions
from recforge.models.registry import ModelSpec

Protocol = Literal["ranking", "rating", "next_item"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


FILE_OPTIONS = ("items", "users", "metadata")  # loader options naming files (the table's side tables, Amazon metadata)


class DatasetConfig(_Strict):
    name: str
    path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class DataConfig(BaseModel):
    """The [dataset] and [[preprocess]] parts of a config (`recforge data prepare`); other sections of an
    experiment config are ignored here, so no [split] is demanded."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())
    dataset: DatasetConfig
    preprocess: list[PreprocessStep] = Field(default_factory=list)


class SplitConfig(DataConfig):
    """The [dataset], [[preprocess]], [split] and seed(s) of a config (`recforge data split`); other sections
    (models, evaluation, tune) are ignored here."""

    name: str = "experiment"
    seed: int = 0
    seeds: list[int] | None = None
    split: SplitSpec

    @property
    def all_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]


class LLMJudgeSettings(JudgeConfig):
    """The judge's endpoint settings plus how many test users (the first by index) and list length."""

    enabled: bool = Field(True, description="false keeps the settings but skips the judge (offline runs)")
    n_users: int = 50
    k: int = 10
    title_column: str = "title"


class ClusterSettings(_Strict):
    """The anime clustering study as an experiment option: for every ranked model with item embeddings,
    an elbow curve over `elbow` cluster counts and, per method, the model answered from each user's
    nearest cluster (`models.clustered`), evaluated beside the full model."""

    methods: list[Literal["kmeans", "gmm"]] = Field(default_factory=lambda: ["kmeans"])
    n_clusters: int = Field(20, ge=1)
    rank: Literal["popularity", "score"] = "popularity"
    elbow: list[int] = Field(default_factory=lambda: [2, 4, 8, 16, 32, 64])


class EvaluationConfig(_Strict):
    protocols: list[Protocol] = Field(default_factory=lambda: ["ranking"])
    ks: list[int] = Field(default_factory=lambda: [5, 10, 20])
    exclude_train: bool = True
    relevance: Literal["binary", "graded"] = "binary"
    relevance_threshold: float | None = None
    sampled_negatives: int | None = None
    primary_metric: str | None = Field(
        None, description="the metric that ranks models and is tested first (default: ndcg@10, or ndcg@ks[0])"
    )
    significance: Literal["wilcoxon", "t"] = "wilcoxon"
    allow_repeat_pairs: bool = False
    diversity_features: str | None = Field(None, description="item feature column (list) used for intra-list diversity")
    llm_judge: LLMJudgeSettings | None = Field(None, description="opt-in: rate ranking lists with a chat model")
    clusters: ClusterSettings | None = Field(None, description="opt-in: cluster retrieval and elbow curves")

    @model_validator(mode="after")
    def _primary_metric_is_measured(self) -> EvaluationConfig:
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive cut-offs")
        if self.primary_metric is None:
            self.primary_metric = f"ndcg@{10 if 10 in self.ks else self.ks[0]}"
        problem = metric_problem(self.primary_metric, self.ks)
        if problem:
            raise ValueError(f"primary_metric {problem}")
        return self


class ExperimentModel(ModelSpec):
    """A model of an experiment: the shared `ModelSpec` plus a label, a search grid (every point is
    checked against the model's config at load) and the protocols to evaluate it on."""

    name: str | None = None
    search: dict[str, list[Any]] = Field(default_factory=dict, description="grid: parameter -> candidate values")
    protocols: list[Protocol] | None = Field(
        None, description="evaluate only these protocols (default: all it supports)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_fit_on(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("fit_on", "train") != "train":
            raise ValueError(
                f"model {values.get('name') or values.get('model')!r}: fit_on={values['fit_on']!r} trains on the "
                "test interactions too; every metric would be inflated (models always fit on the training part)"
            )
        if isinstance(values, dict):
            values = {k: v for k, v in values.items() if k != "fit_on"}
        return values

    @model_validator(mode="after")
    def _grid_fits_the_model(self) -> ExperimentModel:
        for point in _grid(self.search):
            self.model_config_for({**self.params, **point})
        return self

    @property
    def label(self) -> str:
        return self.name or self.model


class ExperimentLists(_Strict):
    """Another recommender's ranked lists for this experiment's split, written for the split folder that
    `recforge data split` made from this config (`split`): scored beside the models, as given
    (`recforge.evaluation.given`), and in every table and test of the report."""

    name: str = Field(description="the row's label")
    path: str = Field(description="CSV/TSV/Parquet of user, item and rank (or score)")
    split: str = Field(description="the split folder the lists were made for (checked equal to this split)")
    user: str = "user"
    item: str = "item"
    rank: str | None = "rank"
    score: str | None = Field(None, description="order by this column, highest first, instead of rank")

    @model_validator(mode="after")
    def _one_order(self) -> ExperimentLists:
        if self.score is not None:
            self.rank = None
        if self.rank is None and self.score is None:
            raise ValueError(f"lists {self.name!r}: give the rank column or a score column to order them by")
        return self


class ExperimentConfig(_Strict):
    name: str = "experiment"
    seed: int = 0
    seeds: list[int] | None = None
    dataset: DatasetConfig
    preprocess: list[PreprocessStep] = Field(default_factory=list)
    split: SplitSpec
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    models: list[ExperimentModel] = Field(default_factory=list)
    lists: list[ExperimentLists] = Field(
        default_factory=list, description="other recommenders' lists for this split (`recforge data split`)"
    )
    baselines: bool = True
    output: str | None = None
    threads: int | None = Field(None, ge=1, description="CPU threads per fit (default: recforge.threads' policy)")

    @property
    def all_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @model_validator(mode="after")
    def _lists_have_their_own_names(self) -> ExperimentConfig:
        names = [entry.name for entry in self.lists]
        taken = {model.label for model in self.models}
        for index, name in enumerate(names):
            if name in taken or name in names[:index]:
                raise ValueError(f"lists.{index}: the name {name!r} is already a row of this experiment")
        return self


def parse_config(payload: Any, schema: type[BaseModel], source: str = "config") -> Any:
    """`schema` validated from a dict, every problem named by its path in one ConfigError."""
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, schema) for error in exc.errors())
        loader_options = [
            str(error["loc"][1])
            for error in exc.errors()
            if error["type"] == "extra_forbidden" and len(error["loc"]) == 2 and error["loc"][0] == "dataset"
        ]
        if loader_options:  # e.g. the table loader's column mapping written straight under [dataset]
            problems += (
                f" (the loader's own options go in [dataset] as options = {{ {loader_options[0]} = ... }}; "
                "[dataset] itself takes name, path and options)"
            )
        raise ConfigError(f"{source}: {problems}") from exc


def _describe(error: Any, schema: type[BaseModel] | None = None) -> str:
    where = ".".join(str(part) for part in error["loc"] if not str(part).endswith("Spec")) or "config"
    if error["type"] == "union_tag_invalid":
        context = error.get("ctx", {})
        tag, expected = context.get("tag"), str(context.get("expected_tags", ""))
        hint = did_you_mean(str(tag), [t.strip(" '") for t in expected.split(",")])
        what = "split kind" if where.startswith("split") else "step" if where.startswith("preprocess") else "kind"
        return f"{where}: unknown {what} {tag!r}{hint}; choose one of {expected}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        known = settings_at(schema, error["loc"][:-1]) if schema is not None else None
        hint = (did_you_mean(str(error["loc"][-1]), known) or f" (known here: {', '.join(known)})") if known else ""
        message = f"not a known setting{hint}"
    return f"{where}: {message}"


def load_config(path: str | Path, schema: type[BaseModel] | None = None) -> Any:
    """Read a TOML (or YAML, if PyYAML is installed) experiment config (or another `schema` with a
    `dataset` section, such as `recforge.train.TrainConfig`); relative dataset paths stay relative to the
    config file's folder."""
    from recforge._toml import load_file

    schema = schema or ExperimentConfig
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        import yaml  # optional

        payload = yaml.safe_load(path.read_text())
    else:
        payload = load_file(path)
    config = parse_config(payload, schema, str(path))
    if config.dataset.path is not None and not Path(config.dataset.path).is_absolute():
        config.dataset.path = str((path.parent / config.dataset.path).resolve())
    for option in FILE_OPTIONS:  # side files named in the loader's options: relative to the config too
        value = config.dataset.options.get(option)
        if isinstance(value, str) and not Path(value).is_absolute():
            config.dataset.options[option] = str((path.parent / value).resolve())
    for entry in getattr(config, "lists", []):  # and other recommenders' lists and their split folders
        entry.path = str((path.parent / entry.path).resolve())
        entry.split = str((path.parent / entry.split).resolve())
    return config


def machine_info() -> dict[str, Any]:
    import os

    import scipy
    import torch

    return {
        "recforge": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- running
BASELINES = {"ranking": ["most_popular"], "next_item": ["most_popular"], "rating": ["global_mean", "bias"]}


def experiment_fingerprint(config: ExperimentConfig, data: Interactions) -> str:
    """What finished runs depend on: the whole config except where the report goes, and the data."""
    import hashlib

    payload = config.model_dump(mode="json", exclude={"output"})
    text = json.dumps(payload, sort_keys=True, default=str) + data.fingerprint()
    return hashlib.sha256(text.encode()).hexdigest()


def make_experiment_split(config: ExperimentConfig, data: Interactions, seed: int) -> Split:
    return config.split.make(data, seed, config.dataset.path)


def _fit(
    spec: ModelSpec,
    params: dict[str, Any],
    train: Interactions,
    seed: int,
    valid: Interactions | None,
    progress: bool = False,
    threads: int | None = None,
) -> Recommender:
    options = TrainOptions(seed=seed, valid=valid, progress=progress, threads=threads)
    return spec.build(**params).fit(train, options)


def _grid(search: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = sorted(search)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(search[k] for k in keys))]


def run_experiment(
    config: ExperimentConfig | dict[str, Any],
    *,
    progress: bool = False,
    runs_folder: str | Path | None = None,
    resume: bool = False,
) -> ExperimentResult:
    """Fit and evaluate every model of `config` on the same split(s).

    With `runs_folder`, each finished (seed, model) run is written there as it finishes
    (`recforge.evaluation.run_store`); with `resume`, runs already there for the same config and data are
    read back instead of refitted. Ctrl-C (KeyboardInterrupt) after at least one finished run returns
    the runs finished so far with `interrupted=True` instead of discarding them."""
    if isinstance(config, dict):
        config = parse_config(config, ExperimentConfig)
    data = load_dataset(config.dataset.name, config.dataset.path, **config.dataset.options)
    data, reports = preprocess(data, config.preprocess)
    specs = list(config.models)
    if config.baselines:
        added: dict[str, list[Protocol]] = {}
        present = {s.label for s in specs}
        for protocol in config.evaluation.protocols:
            for baseline in BASELINES[protocol]:
                if baseline not in present and (protocol != "rating" or data.n_rated):
                    added.setdefault(baseline, []).append(protocol)
        specs = [ExperimentModel(model=name, protocols=protocols) for name, protocols in added.items()] + specs
    if not specs and not config.lists:
        raise ConfigError("the experiment has no models")
    lists_splits = _lists_splits(config, data)
    store = None
    if runs_folder is not None:
        from recforge.evaluation.run_store import RunStore

        store = RunStore(runs_folder, experiment_fingerprint(config, data), resume=resume)
    runs: list[ModelRun] = []
    first_split: Split | None = None
    interrupted = False
    n_folds = getattr(config.split, "n_folds", 1)
    total = len(specs) * len(config.all_seeds) * n_folds
    with progress_bar(f"experiment {config.name}", total, enabled=progress) as bar:
        try:
            for seed in config.all_seeds:
                for fold, split in enumerate(config.split.make_all(data, seed, config.dataset.path)):
                    check_split(split, allow_repeat_pairs=config.evaluation.allow_repeat_pairs)
                    first_split = first_split or split
                    evaluators = None
                    for index, spec in enumerate(specs):
                        bar.update(model=spec.label, seed=seed, **({"fold": fold + 1} if fold else {}))
                        group = store.load_group(seed, fold, index, spec.label, data.items) if store else None
                        if group is None:
                            evaluators = evaluators or _evaluators(config, split, data)
                            group = _run_model(config, spec, split, evaluators, seed, progress)
                            for run in group:
                                run.fold = fold
                            if store is not None:
                                store.save_group(group, index)
                        runs.extend(group)
                        bar.advance()
                    runs.extend(_lists_runs(config, lists_splits, split, seed, fold))
        except KeyboardInterrupt:
            if not runs:
                raise
            interrupted = True
    assert first_split is not None
    return ExperimentResult(
        interrupted=interrupted,
        config=config,
        data=data,
        split=first_split,
        preprocessing=reports,
        runs=runs,
        machine=machine_info(),
        data_fingerprint=data.fingerprint(),
        source=data.source,
    )


def _lists_splits(config: ExperimentConfig, data: Interactions) -> dict[str, tuple[int, int, GivenLists]]:
    """Which (seed, fold) of the experiment each `[[lists]]` entry's split folder holds, and its lists, read
    before any model is fitted: lists written for another split (another seed, fraction or data) and bad
    rows in a lists file are errors then, not after the fits."""
    if not config.lists:
        return {}
    if not {"ranking", "next_item"} & set(config.evaluation.protocols) or config.evaluation.sampled_negatives:
        raise ConfigError(
            "[[lists]] are scored on full ranking: add 'ranking' or 'next_item' to evaluation.protocols "
            "(without sampled_negatives)"
        )
    from recforge.data.split_files import read_split, same_interactions
    from recforge.evaluation.given import read_lists

    splits = [
        (seed, fold, split)
        for seed in config.all_seeds
        for fold, split in enumerate(config.split.make_all(data, seed, config.dataset.path))
    ]
    found: dict[str, tuple[int, int, GivenLists]] = {}
    for entry in config.lists:
        given = read_split(entry.split)
        match = [
            (seed, fold)
            for seed, fold, split in splits
            if same_interactions(given.test, split.test) and same_interactions(given.train, split.train)
        ]
        if not match:
            raise ConfigError(
                f"lists {entry.name!r}: {entry.split} holds another split ({given.name}, seed {given.seed}, "
                f"{len(given.train):,} train / {len(given.test):,} test rows) than this experiment makes "
                f"({splits[0][2].name}, seeds {config.all_seeds}): write it with `recforge data split` from this config"
            )
        lists = read_lists(entry.path, data, user=entry.user, item=entry.item, rank=entry.rank, score=entry.score)
        found[entry.name] = (*match[0], lists)
    return found


def _lists_runs(
    config: ExperimentConfig, lists_splits: dict[str, tuple[int, int, GivenLists]], split: Split, seed: int, fold: int
) -> list[ModelRun]:
    """The `[[lists]]` entries made for this (seed, fold), scored as given by the experiment's ranking
    settings (cut-offs, relevance, diversity features) without excluding training items."""
    entries = [entry for entry in config.lists if lists_splits[entry.name][:2] == (seed, fold)]
    if not entries:
        return []
    from recforge.evaluation.given import score_lists

    common = _ranking_settings(config, split.data)
    evaluators = {}
    for protocol in ("ranking", "next_item"):  # as the models' evaluators, minus the exclusion of histories
        if protocol in config.evaluation.protocols:
            ks = common["ks"] if protocol == "ranking" else tuple(sorted({1, *common["ks"]}))
            options = {**common, "ks": ks}
            evaluators[protocol] = FullRankingEvaluator(
                split.train, split.test, exclude_train=False, check_fit=False, **options
            )
    runs = []
    for entry in entries:
        lists = lists_splits[entry.name][2]
        run = ModelRun(
            label=entry.name,
            model="lists",
            params={"path": entry.path, "split": entry.split},
            is_baseline=False,
            seed=seed,
            fit_seconds=0.0,
            results={protocol: score_lists(lists, evaluator).ranking for protocol, evaluator in evaluators.items()},
            training_log=[],
            fold=fold,
        )
        runs.append(run)
    return runs


def _ranking_settings(config: ExperimentConfig, data: Interactions) -> dict[str, Any]:
    """The ranking evaluators' settings from `[evaluation]`: cut-offs, relevance, sampling, diversity vectors."""
    ev = config.evaluation
    item_vectors = None
    if ev.diversity_features:
        from recforge.data.features import genre_lists, multi_hot, select_genres

        lists = genre_lists(data.item_features, (ev.diversity_features,))
        item_vectors = multi_hot(lists, select_genres(lists))
    return dict(
        ks=tuple(ev.ks),
        relevance=ev.relevance,
        relevance_threshold=ev.relevance_threshold,
        sampled_negatives=ev.sampled_negatives,
        item_vectors=item_vectors,
    )


def _evaluators(config: ExperimentConfig, split: Split, data: Interactions) -> dict[str, Any]:
    ev = config.evaluation
    common = _ranking_settings(config, data)
    # a user-disjoint split gives each held-out user a history at query time: every model is asked
    # with it (and its items are excluded), exactly as `FullRankingEvaluator(..., history=split.fold_in)`
    given = split.fold_in
    evaluators: dict[str, Any] = {}
    for protocol in ev.protocols:
        if protocol == "ranking":
            evaluators[protocol] = FullRankingEvaluator(
                split.train, split.test, exclude_train=ev.exclude_train, history=given, **common
            )
        elif protocol == "rating":
            evaluators[protocol] = RatingEvaluator(split.train, split.test, history=given)
        elif protocol == "next_item":
            if split.valid_rows is None:
                raise ConfigError(
                    "the next_item protocol needs a split with a validation part (e.g. leave_last_out, valid_k=1)"
                )
            evaluators[protocol] = next_item_evaluator(split, **common)
    return evaluators


def _run_model(
    config: ExperimentConfig,
    spec: ExperimentModel,
    split: Split,
    evaluators: dict[str, Any],
    seed: int,
    progress: bool = False,
) -> list[ModelRun]:
    """The model's run, then one run per clustered variant when `[evaluation.clusters]` asks for them."""
    params = dict(spec.params)
    search_log: list[dict[str, Any]] = []
    valid = split.valid
    if spec.search:
        params, search_log = _grid_search(config, spec, split, seed)
    train = split.train
    try:
        model = _fit(spec, params, train, seed, valid, progress, config.threads)
    except (InsufficientMemoryError, TrainingDivergedError) as exc:  # this model on this data, not the setup
        return [_not_run(config, spec, params, seed, search_log, exc)]
    results: dict[str, RankingResult | RatingResult] = {}
    skipped: dict[str, str] = {}
    for protocol, evaluator in evaluators.items():
        if (protocol == "rating" and RATINGS not in model.capabilities) or (
            spec.protocols and protocol not in spec.protocols
        ):
            continue
        if protocol != "rating" and KNOWN_USERS not in model.capabilities:
            skipped[protocol] = model.ranking_refusal()
            continue
        results[protocol] = evaluator.evaluate(model)
    judge_settings = config.evaluation.llm_judge
    ranking = results.get("ranking")
    if judge_settings is not None and judge_settings.enabled and isinstance(ranking, RankingResult):
        _judge(judge_settings, ranking, train)
    run = ModelRun(
        label=spec.label,
        model=spec.model,
        params=model.config.model_dump(),
        is_baseline=spec.model in _ALL_BASELINES,
        seed=seed,
        fit_seconds=float(model.fit_seconds_ or 0.0),
        results=results,
        training_log=model.training_log_,
        search=search_log,
        skipped=skipped,
    )
    settings = config.evaluation.clusters
    if settings is None or EMBEDDINGS not in model.capabilities or run.is_baseline:
        return [run]
    return [run, *_clustered_runs(settings, run, model, evaluators, seed)]


def _not_run(
    config: ExperimentConfig,
    spec: ExperimentModel,
    params: dict[str, Any],
    seed: int,
    search_log: list[dict[str, Any]],
    error: Exception,
) -> ModelRun:
    """The row of a model that could not be fitted on this data (too large for this machine's memory, or
    training diverged): every protocol it was asked for says why, and the comparison goes on without it."""
    rates = RATINGS in spec.build(**params).capabilities  # unfitted: only what it would have been asked
    protocols = [
        p
        for p in config.evaluation.protocols
        if (not spec.protocols or p in spec.protocols) and (p != "rating" or rates)
    ]
    return ModelRun(
        label=spec.label,
        model=spec.model,
        params=params,
        is_baseline=spec.model in _ALL_BASELINES,
        seed=seed,
        fit_seconds=0.0,
        results={},
        training_log=[],
        search=search_log,
        skipped={protocol: f"not run: {error}" for protocol in protocols},
    )


def _clustered_runs(
    settings: ClusterSettings, run: ModelRun, model: Recommender, evaluators: dict[str, Any], seed: int
) -> list[ModelRun]:
    """The elbow curves (kept on `run`) and each method's nearest-cluster recommender, evaluated on the
    ranking protocols like any model."""
    from recforge.models.clustered import ClusteredRecommender
    from recforge.retrieval.clusters import elbow

    vectors = model.item_embeddings()
    ks = [k for k in settings.elbow if k <= len(vectors)]
    run.elbow = {m: {str(k): v for k, v in elbow(vectors, ks, m, seed).items()} for m in settings.methods}
    variants = []
    for method in settings.methods:
        started = time.perf_counter()
        clustered = ClusteredRecommender.around(model, settings.n_clusters, method, settings.rank, seed)
        seconds = time.perf_counter() - started
        results = {p: e.evaluate(clustered) for p, e in evaluators.items() if p in ("ranking", "next_item")}
        sizes = clustered.cluster_sizes()
        note = (
            f"{method}, {settings.n_clusters} clusters of {sizes.min()}-{sizes.max()} items, ranked by "
            f"{settings.rank} inside each user's nearest cluster"
        )
        for result in results.values():
            result.notes.append(note)
        variants.append(
            ModelRun(
                label=f"{run.label} · {method}-{settings.n_clusters}",
                model="clustered",
                params={"of": run.label, "method": method, "n_clusters": settings.n_clusters, "rank": settings.rank},
                is_baseline=False,
                seed=seed,
                fit_seconds=seconds,
                results=results,
                training_log=[],
            )
        )
    return variants


def _judge(settings: LLMJudgeSettings, ranking: RankingResult, train: Interactions) -> None:
    """Add the LLM judge's scores to a ranking result, or a note saying why there are none: an endpoint
    that is down or a missing key must not throw away the models already fitted."""
    count = min(settings.n_users, len(ranking.per_user))
    try:
        judged = judge_rankings(
            LLMJudge(settings),
            ranking.per_user.index.to_numpy()[:count],
            ranking.recommended.item_index[:count, : settings.k],
            train,
            settings.title_column,
        )
    except (JudgeError, ConfigError, OSError) as exc:
        ranking.notes.append(f"llm_judge_score: not computed: {exc}")
        return
    ranking.per_user["llm_judge_score"] = judged
    ranking.summary["llm_judge_score"] = float(judged.mean())
    ranking.notes.append(f"llm_judge_score: {settings.model} rated the top-{settings.k} lists of {count} users")


_ALL_BASELINES = {name for names in BASELINES.values() for name in names} | {"weighted_popularity"}


def validation_evaluator(config: ExperimentConfig, inner: Split, metric: str) -> Any:
    """The evaluator of a validation carve-out (`inner`: training part minus the carve-out) for `metric`,
    as grid search and `recforge tune` score candidates: ratings, or full ranking at the config's ks and
    the metric's own cut-off."""
    if metric in RATING_METRICS:
        return RatingEvaluator(inner.train, inner.test)
    ks = tuple(sorted({*config.evaluation.ks, int(metric.partition("@")[2])}))
    return FullRankingEvaluator(
        inner.train, inner.test, ks=ks, relevance_threshold=config.evaluation.relevance_threshold
    )


def _grid_search(
    config: ExperimentConfig, spec: ExperimentModel, split: Split, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit each grid point on train-minus-validation, score on validation, return the best parameters."""
    validation = config.split.validation
    if validation is None:
        raise ConfigError(f"model {spec.label!r} has a search grid but the split has no [split.validation] carve-out")
    inner = validation.make(split.train, seed, config.dataset.path)
    metric = str(config.evaluation.primary_metric)
    evaluator = validation_evaluator(config, inner, metric)
    log = []
    best, best_score = None, -np.inf
    for point in _grid(spec.search):
        params = {**spec.params, **point}
        started = time.perf_counter()
        model = _fit(spec, params, inner.train, seed, None, threads=config.threads)
        value = evaluator.evaluate(model).summary[metric]
        score = -value if direction(metric) == "min" else value
        log.append({"params": point, metric: value, "seconds": time.perf_counter() - started})
        if score > best_score:
            best, best_score = params, score
    assert best is not None
    return best, log
