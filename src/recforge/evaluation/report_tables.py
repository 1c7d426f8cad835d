"""The tables of an experiment report, each a DataFrame built from the finished runs: metrics per model
(mean ± 95% CI over users), every cut-off, significance against the best baseline (the primary metric,
and a grid of every metric), the spread over seeds and folds, and beyond-accuracy numbers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recforge.evaluation.metrics import RANKING_METRICS, direction
from recforge.evaluation.protocols import RankingResult, RatingResult
from recforge.evaluation.results import ModelRun
from recforge.evaluation.stats import holm, mean_ci, paired_test

RATING_COLUMNS = ("rmse", "mae", "r2")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def _per_user_column(protocol: str, metric: str) -> str:
    """The per-user column a metric is tested on (RMSE by each user's MSE)."""
    if protocol == "rating":
        return "mae" if metric == "mae" else "mse"
    return metric


def significance_table(
    runs: list[ModelRun], protocol: str, metric: str, method: str, against: str = "baseline"
) -> tuple[pd.DataFrame, str]:
    """Paired per-user tests (Holm-corrected) of every non-baseline model against the best baseline, or, with
    `against="best"`, of every other row against the best non-baseline one (is the winner really ahead of
    the runner-up?; empty with fewer than two non-baseline rows)."""
    column = _per_user_column(protocol, metric)
    candidates = [r for r in runs if protocol in r.results and column in r.results[protocol].per_user.columns]
    baselines = [r for r in candidates if r.is_baseline]
    others = [r for r in candidates if not r.is_baseline]
    if not others or (not baselines if against == "baseline" else len(others) < 2):
        return pd.DataFrame(), ""
    lower = direction(metric) == "min" or protocol == "rating"
    pool = baselines if against == "baseline" else others
    best = (min if lower else max)(pool, key=lambda r: r.results[protocol].per_user[column].mean())
    if against != "baseline":
        others = [r for r in candidates if r is not best]
    reference = best.results[protocol].per_user[column]
    rows, p_values = [], []
    for run in others:
        values = run.results[protocol].per_user[column]
        joined = pd.concat([values.rename("a"), reference.rename("b")], axis=1, join="inner")
        test = paired_test(joined["a"].to_numpy(), joined["b"].to_numpy(), method=method)  # type: ignore[arg-type]
        rows.append(
            {
                "model": run.label,
                f"mean Δ {column}": test.mean_difference,
                "users": test.n,
                "statistic": test.statistic,
                "p": test.p_value,
            }
        )
        p_values.append(test.p_value)
    table = pd.DataFrame(rows).set_index("model")
    table["p (Holm)"] = holm(p_values)
    table["significant at 0.05"] = np.where(table["p (Holm)"] < 0.05, "yes", "no")
    what = "the best baseline" if against == "baseline" else "the best model"
    note = (
        f"Paired {method} tests on per-user {column} against {what} **{best.label}**, "
        f"Holm-corrected over {len(others)} comparison(s)."
    )
    return table, note


def p_value_text(p: float) -> str:
    """A p-value to two significant digits (1.2e-95, not 0.0000); one that underflowed to 0 (a normal
    approximation's tail past double precision) is "< 1e-300", not a p of exactly zero."""
    return "< 1e-300" if p == 0 else f"{p:.2g}"


def significance_grid(runs: list[ModelRun], protocol: str, metrics: list[str], method: str) -> pd.DataFrame:
    """Holm-corrected p-values of paired per-user tests of every model against the best baseline on each
    metric (the best baseline chosen per metric), corrected over every test in the grid; a mark says
    whether the model is better (+) or worse (−) at 0.05."""
    cells: list[tuple[str, str, float, float]] = []
    for metric in metrics:
        table, _ = significance_table(runs, protocol, metric, method)
        if table.empty:
            continue
        delta = next(c for c in table.columns if c.startswith("mean Δ"))
        for model, row in table.iterrows():
            cells.append((str(model), metric, float(row["p"]), float(row[delta])))
    if not cells:
        return pd.DataFrame()
    corrected = holm([p for _, _, p, _ in cells])
    grid: dict[str, dict[str, str]] = {}
    for (model, metric, _, delta), p in zip(cells, corrected, strict=True):
        better_is_lower = direction(metric) == "min" or protocol == "rating"
        improved = delta < 0 if better_is_lower else delta > 0
        mark = ("+" if improved else "−") if p < 0.05 else " "
        grid.setdefault(model, {})[metric] = f"{p_value_text(p)} {mark}".rstrip()
    return pd.DataFrame.from_dict(grid, orient="index").rename_axis("model")


def cutoff_table(runs: list[ModelRun], protocol: str, ks: list[int]) -> pd.DataFrame:
    """Every ranking metric at every configured cut-off (means)."""
    rows = []
    for run in runs:
        result = run.results.get(protocol)
        if isinstance(result, RankingResult) and result.curves:
            rows.append(
                {
                    "model": run.label,
                    **{
                        f"{m}@{k}": result.summary[f"{m}@{k}"]
                        for k in ks
                        for m in RANKING_METRICS
                        if f"{m}@{k}" in result.summary
                    },
                }
            )
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def metrics_table(runs: list[ModelRun], protocol: str, ks: list[int]) -> pd.DataFrame:
    """Main table: every ranking metric at the primary cut-off (mean ± 95% CI), or the rating metrics."""
    rows = []
    for run in runs:
        if protocol not in run.results:
            continue
        result = run.results[protocol]
        row: dict[str, Any] = {"model": run.label}
        if isinstance(result, RatingResult):
            row.update({name: fmt(result.summary[name]) for name in RATING_COLUMNS})
            mean, half = mean_ci(result.per_user["mse"].to_numpy())
            row["per-user MSE (95% CI)"] = f"{mean:.4f} ± {half:.4f}"
        else:
            for k in ks:
                for name in RANKING_METRICS:
                    column = f"{name}@{k}"
                    if column in result.per_user.columns:
                        mean, half = mean_ci(result.per_user[column].to_numpy())
                        row[column] = f"{mean:.4f} ± {half:.4f}"
        row["fit s"] = f"{run.fit_seconds:.2f}"
        row["predict s"] = f"{result.predict_seconds:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def repetitions_table(runs: list[ModelRun], protocol: str, metrics: list[str]) -> pd.DataFrame:
    """Each model's summary metrics over every seed and fold: mean ± 95% CI (Student t over the
    repetitions) and how many there were. Empty when every model ran once."""
    values: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        result = run.results.get(protocol)
        if result is None:
            continue
        for metric in metrics:
            if metric in result.summary:
                values.setdefault(run.label, {}).setdefault(metric, []).append(result.summary[metric])
    if not values or max(len(v) for by_metric in values.values() for v in by_metric.values()) < 2:
        return pd.DataFrame()
    rows = []
    for label, by_metric in values.items():
        row: dict[str, Any] = {"model": label, "runs": max(len(v) for v in by_metric.values())}
        for metric, numbers in by_metric.items():
            mean, half = mean_ci(np.asarray(numbers))
            row[metric] = f"{mean:.4f} ± {half:.4f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def beyond_accuracy_table(runs: list[ModelRun], protocol: str) -> pd.DataFrame:
    rows = []
    for run in runs:
        result = run.results.get(protocol)
        if not isinstance(result, RankingResult) or not result.topk_accuracy:
            continue
        summary = result.summary
        rows.append(
            {
                "model": run.label,
                **{k: fmt(v) for k, v in result.topk_accuracy.items()},
                **{
                    k: fmt(summary[k])
                    for k in ("coverage", "novelty", "avg_popularity", "gini", "diversity", "llm_judge_score")
                    if k in summary
                },
            }
        )
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()
