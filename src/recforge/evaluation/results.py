"""What an experiment produced: one `ModelRun` per (model, seed) and the `ExperimentResult` that reports
are written from. Plain data, so reports need nothing from `recforge.experiment`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.preprocess import StepReport
from recforge.data.splits import Split
from recforge.evaluation.metrics import better
from recforge.evaluation.protocols import RankingResult, RatingResult

# the floor every model of a protocol must beat on the primary metric
FLOORS = {"ranking": "most_popular", "next_item": "most_popular", "rating": "global_mean"}


@dataclass
class ModelRun:
    label: str
    model: str
    params: dict[str, Any]
    is_baseline: bool
    seed: int
    fit_seconds: float
    results: dict[str, RankingResult | RatingResult]
    training_log: list[dict[str, float]]
    search: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # protocol -> why the model was not evaluated on it
    fold: int = 0  # which split of the seed (k-fold cross-validation); 0 otherwise
    # clustering of the model's item embeddings: method -> {k: inertia (k-means) or BIC (GMM)}
    elbow: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    config: Any  # recforge.experiment.ExperimentConfig
    data: Interactions
    split: Split
    preprocessing: list[StepReport]
    runs: list[ModelRun]
    machine: dict[str, Any]
    data_fingerprint: str
    source: dict[str, Any]
    interrupted: bool = False  # stopped (Ctrl-C) before every model ran: the report covers the finished ones

    def table(self, protocol: str, seed: int | None = None) -> pd.DataFrame:
        """Summary metrics, one row per model (for one seed; default the first)."""
        seed = self.config.all_seeds[0] if seed is None else seed
        rows = []
        for run in self.runs:
            if run.seed == seed and run.fold == 0 and protocol in run.results:
                result = run.results[protocol]
                rows.append({"model": run.label, **result.summary, **getattr(result, "topk_accuracy", {})})
        return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()

    def below_floor(self, seed: int | None = None) -> list[str]:
        """Warnings for every model that scores worse than its protocol's floor (popularity for ranking, the
        global mean for ratings) on the primary metric: a defect to look into, not a result to report.
        Baselines are not held to it: a chart of the best-rated items (weighted_popularity) or the item biases
        are meant to be reference points, not to beat popularity at ranking."""
        seed = self.config.all_seeds[0] if seed is None else seed
        runs = [r for r in self.runs if r.seed == seed and r.fold == 0]
        warnings = []
        for protocol, floor_model in FLOORS.items():
            metric = "rmse" if protocol == "rating" else self.config.evaluation.primary_metric
            floor = next((r for r in runs if r.model == floor_model and protocol in r.results), None)
            if floor is None or metric not in floor.results[protocol].summary:
                continue
            reference = floor.results[protocol].summary[metric]
            for run in runs:
                if run is floor or run.is_baseline or protocol not in run.results:
                    continue
                if metric not in run.results[protocol].summary:
                    continue
                value = run.results[protocol].summary[metric]
                if better(metric, reference, value):
                    warnings.append(
                        f"{run.label} ({protocol}) is below {floor_model}: {metric} {value:.4f} vs {reference:.4f}"
                    )
        return warnings
