"""Experiment reports: report.md, report.html, plots, metrics.json (deterministic: byte-identical for the
same config and seed), run.json (timings, machine), per_user.parquet and results.parquet."""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge._io import atomic_path, write_json_atomic, write_text_atomic
from recforge._version import __version__
from recforge.evaluation import plots
from recforge.evaluation.metrics import direction
from recforge.evaluation.protocols import RankingResult, RatingResult
from recforge.evaluation.results import ExperimentResult, ModelRun
from recforge.evaluation.stats import holm, mean_ci, paired_test

RANKING_COLUMNS = ("ndcg", "recall", "precision", "map", "hit_rate", "mrr")
RATING_COLUMNS = ("rmse", "mae", "r2")


@dataclass
class _Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    image: str | None = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "–" if np.isnan(value) else f"{value:.4f}"
    return str(value)


def _per_user_column(protocol: str, metric: str) -> str:
    """The per-user column a metric is tested on (RMSE by each user's MSE)."""
    if protocol == "rating":
        return "mae" if metric == "mae" else "mse"
    return metric


def significance_table(runs: list[ModelRun], protocol: str, metric: str, method: str) -> tuple[pd.DataFrame, str]:
    """Paired per-user tests of every non-baseline model against the best baseline (Holm-corrected)."""
    column = _per_user_column(protocol, metric)
    candidates = [r for r in runs if protocol in r.results and column in r.results[protocol].per_user.columns]
    baselines = [r for r in candidates if r.is_baseline]
    others = [r for r in candidates if not r.is_baseline]
    if not baselines or not others:
        return pd.DataFrame(), ""
    lower = direction(metric) == "min" or protocol == "rating"
    best = (min if lower else max)(baselines, key=lambda r: r.results[protocol].per_user[column].mean())
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
    note = (
        f"Paired {method} tests on per-user {column} against the best baseline **{best.label}**, "
        f"Holm-corrected over {len(others)} comparison(s)."
    )
    return table, note


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
        grid.setdefault(model, {})[metric] = f"{p:.2g} {mark}".rstrip()
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
                        for m in ("ndcg", "recall", "precision", "map", "hit_rate", "mrr")
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
            row.update({name: _fmt(result.summary[name]) for name in RATING_COLUMNS})
            mean, half = mean_ci(result.per_user["mse"].to_numpy())
            row["per-user MSE (95% CI)"] = f"{mean:.4f} ± {half:.4f}"
        else:
            for k in ks:
                for name in RANKING_COLUMNS:
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
                **{k: _fmt(v) for k, v in result.topk_accuracy.items()},
                **{
                    k: _fmt(summary[k])
                    for k in ("coverage", "novelty", "avg_popularity", "gini", "diversity", "llm_judge_score")
                    if k in summary
                },
            }
        )
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def metrics_payload(result: ExperimentResult) -> dict[str, Any]:
    """Everything numeric that must be reproducible (no timings, no machine details)."""
    runs = []
    for run in result.runs:
        runs.append(
            {
                "model": run.label,
                "class": run.model,
                "seed": run.seed,
                "fold": run.fold,
                "params": run.params,
                "results": {
                    protocol: {
                        "protocol": r.protocol,
                        "summary": r.summary,
                        "topk_accuracy": getattr(r, "topk_accuracy", {}),
                        "curves": getattr(r, "curves", {}),
                    }
                    for protocol, r in run.results.items()
                },
                "training_log": run.training_log,
            }
        )
    return {
        "recforge": __version__,
        "experiment": result.config.name,
        "config": result.config.model_dump(mode="json"),
        "data_fingerprint": result.data_fingerprint,
        "source_sha256": result.source.get("sha256", {}),
        "split": result.split.describe(),
        "preprocessing": [r.to_dict() for r in result.preprocessing],
        "runs": runs,
    } | ({"interrupted": True} if result.interrupted else {})


def write_report(result: ExperimentResult, output: str | Path) -> Path:
    """Write the full report folder (atomically) and return its path. The finished runs an experiment
    kept in `<output>/runs` (`recforge.evaluation.run_store`) are carried over into the new folder."""
    output = Path(output)
    with atomic_path(output, is_dir=True) as tmp:
        _write_all(result, tmp)
        if (output / "runs").is_dir():
            shutil.copytree(output / "runs", tmp / "runs")
    return output


def _write_all(result: ExperimentResult, folder: Path) -> None:
    config = result.config
    first_seed = config.all_seeds[0]
    runs = [r for r in result.runs if r.seed == first_seed and r.fold == 0]
    (folder / "plots").mkdir()
    write_json_atomic(folder / "metrics.json", metrics_payload(result))
    write_json_atomic(
        folder / "run.json",
        {
            "machine": result.machine,
            "timings": [
                {
                    "model": r.label,
                    "seed": r.seed,
                    "fit_seconds": r.fit_seconds,
                    "predict_seconds": {p: x.predict_seconds for p, x in r.results.items()},
                }
                for r in result.runs
            ],
            "notes": {r.label: {p: x.notes for p, x in r.results.items()} for r in runs},
            "search": {r.label: r.search for r in runs if r.search},
        },
    )
    _write_tables(result, folder)
    sections = _sections(result, runs, folder)
    title = f"recforge report: {config.name}"
    write_text_atomic(folder / "report.md", _markdown(title, sections))
    write_text_atomic(folder / "report.html", _html(title, sections))


def _write_tables(result: ExperimentResult, folder: Path) -> None:
    per_user, summary = [], []
    users = result.data.users
    for run in result.runs:
        for protocol, r in run.results.items():
            frame = r.per_user.reset_index()
            frame["user"] = users.lookup(frame["user"].to_numpy()).astype(str)
            frame.insert(0, "protocol", protocol)
            frame.insert(0, "seed", run.seed)
            frame.insert(0, "model", run.label)
            per_user.append(frame)
            summary.append(
                {
                    "model": run.label,
                    "seed": run.seed,
                    "protocol": protocol,
                    "fit_seconds": run.fit_seconds,
                    **r.summary,
                    **getattr(r, "topk_accuracy", {}),
                }
            )
    if per_user:
        pd.concat(per_user, ignore_index=True).to_parquet(folder / "per_user.parquet", index=False)
    pd.DataFrame(summary).to_parquet(folder / "results.parquet", index=False)


def _sections(result: ExperimentResult, runs: list[ModelRun], folder: Path) -> list[_Section]:
    config = result.config
    ev = config.evaluation
    split = result.split
    sections = []
    if result.interrupted:
        planned = len(config.models)
        sections.append(
            _Section(
                "Interrupted",
                text=(
                    f"**This run was stopped before every model had run**: {len(result.runs)} finished "
                    f"(model, seed) run(s) are reported below ({planned} model(s) configured besides the "
                    "baselines). `recforge compare --resume` continues from them.\n"
                ),
            )
        )
    sections += [
        _Section(
            "Setup",
            text=(
                f"- recforge {__version__}; dataset **{config.dataset.name}** ({result.data.n_users:,} users, "
                f"{result.data.n_items:,} items, {len(result.data):,} interactions)\n"
                f"- data fingerprint `{result.data_fingerprint}`\n"
                + "".join(
                    f"- input `{name}` sha256 `{digest}`\n" for name, digest in result.source.get("sha256", {}).items()
                )
                + f"- split: {split.name}, seed(s) {config.all_seeds}, sizes {split.sizes()}\n"
                f"- machine: {result.machine['platform']}, {result.machine['cpus']} CPUs, "
                f"Python {result.machine['python']}, torch {result.machine['torch']}\n"
            ),
        ),
    ]
    if result.preprocessing:
        sections.append(
            _Section(
                "Preprocessing",
                table=pd.DataFrame([r.to_dict() for r in result.preprocessing])
                .drop(columns="params")
                .set_index("step"),
            )
        )
    for protocol in ev.protocols:
        metric = "rmse" if protocol == "rating" else ev.primary_metric
        primary_k = [int(metric.split("@")[1])] if "@" in metric else ev.ks[:1]
        table = metrics_table(runs, protocol, primary_k)
        if table.empty:
            continue
        label = next((r.results[protocol].protocol for r in runs if protocol in r.results), protocol)
        first = "the first seed and fold; " if len({(r.seed, r.fold) for r in result.runs}) > 1 else ""
        sections.append(
            _Section(
                f"{protocol} — {label}",
                text=f"Mean ± 95% confidence interval over users ({first}{split.name}).",
                table=table,
            )
        )
        wanted = (
            ["rmse", "mae", "r2"]
            if protocol == "rating"
            else [f"{m}@{k}" for k in ev.ks for m in ("ndcg", "recall", "precision", "map")] + ["coverage"]
        )
        repeated = repetitions_table(result.runs, protocol, wanted)
        if not repeated.empty:
            sections.append(
                _Section(
                    f"{protocol} — over seeds and folds",
                    text="Mean ± 95% confidence interval over the runs (seeds × folds) of each model.",
                    table=repeated,
                )
            )
        cutoffs = cutoff_table(runs, protocol, ev.ks)
        if not cutoffs.empty and len(ev.ks) > 1:
            sections.append(_Section(f"{protocol} — other cut-offs", table=cutoffs))
        significance, note = significance_table(runs, protocol, metric, ev.significance)
        if not significance.empty:
            sections.append(_Section(f"{protocol} — significance", text=note, table=significance))
            every = (
                ["rmse", "mae"]
                if protocol == "rating"
                else [f"{m}@{k}" for k in ev.ks for m in ("ndcg", "recall", "precision", "map", "hit_rate", "mrr")]
            )
            grid = significance_grid(runs, protocol, every, ev.significance)
            if not grid.empty:
                sections.append(
                    _Section(
                        f"{protocol} — significance on every metric",
                        text=(
                            f"Paired {ev.significance} tests against the best baseline on each metric; p-values "
                            f"Holm-corrected over all {grid.count().sum()} tests of this table; + better, − worse "
                            "at 0.05."
                        ),
                        table=grid,
                    )
                )
        beyond = beyond_accuracy_table(runs, protocol)
        if not beyond.empty:
            sections.append(
                _Section(
                    f"{protocol} — top-k accuracy and beyond accuracy",
                    text=(
                        "topK_accuracy: share of held-out (user, item) pairs ranked in the user's top K "
                        "(TF-Recommenders' FactorizedTopK). coverage: share of the catalogue recommended at least "
                        "once; novelty: mean self-information; avg_popularity: mean training count of recommended "
                        "items; gini: concentration of recommendations."
                    ),
                    table=beyond,
                )
            )
    # plots
    data, train, test = result.data, split.train, split.test
    if data.rating is not None and data.n_rated:
        path = plots.ratings_distribution(
            {"train": train.rating, "test": test.rating}, folder / "plots" / "ratings_distribution.png"
        )
        sections.append(_Section("Ratings distribution", image=str(path.relative_to(folder))))
    path = plots.training_curves({r.label: r.training_log for r in runs}, folder / "plots" / "training_loss.png")
    if path is not None:
        sections.append(_Section("Training loss", image=str(path.relative_to(folder))))
    for protocol in ev.protocols:
        curves = {
            r.label: r.results[protocol].curves
            for r in runs
            if isinstance(r.results.get(protocol), RankingResult) and r.results[protocol].curves
        }
        path = plots.metric_curves(curves, folder / "plots" / f"metric_at_k_{protocol}.png", protocol)
        if path is not None:
            sections.append(_Section(f"Metric@k curves ({protocol})", image=str(path.relative_to(folder))))
        lists = {
            r.label: r.results[protocol].recommended.item_index
            for r in runs
            if isinstance(r.results.get(protocol), RankingResult) and r.results[protocol].recommended.item_index.size
        }
        path = plots.recommendation_popularity(
            lists, train.item_counts(), folder / "plots" / f"popularity_{protocol}.png"
        )
        if path is not None:
            sections.append(_Section(f"Recommendation popularity ({protocol})", image=str(path.relative_to(folder))))
    if len(config.all_seeds) > 1:
        sections.append(
            _Section("Across seeds", text="Mean and standard deviation over seeds.", table=_seed_table(result))
        )
    notes = "\n".join(
        [f"- **{r.label}** ({p}): " + "; ".join(x.notes) for r in runs for p, x in r.results.items() if x.notes]
        + [f"- **{r.label}** ({p}): not evaluated: {why}" for r in runs for p, why in r.skipped.items()]
    )
    warnings = result.below_floor()
    if warnings:
        sections.insert(
            1,
            _Section(
                "Warnings",
                text="\n".join(
                    f"- ⚠ {w}: a model below this floor is a defect to find, not a result" for w in warnings
                ),
            ),
        )
    searches = "\n".join(
        f"- **{r.label}**: "
        + "; ".join(
            json.dumps(s["params"])
            + " → "
            + ", ".join(f"{k}={v:.4f}" for k, v in s.items() if k not in ("params", "seconds"))
            for s in r.search
        )
        for r in runs
        if r.search
    )
    if notes:
        sections.append(_Section("Notes", text=notes))
    if searches:
        sections.append(_Section("Hyper-parameter search (validation carve-out)", text=searches))
    sections.append(
        _Section("Configuration", text="```json\n" + json.dumps(config.model_dump(mode="json"), indent=2) + "\n```")
    )
    return sections


def _seed_table(result: ExperimentResult) -> pd.DataFrame:
    rows = []
    for run in result.runs:
        for protocol, r in run.results.items():
            rows.append({"model": run.label, "protocol": protocol, "seed": run.seed, **r.summary})
    frame = pd.DataFrame(rows)
    keep = [c for c in frame.columns if c in ("rmse", "mae") or c.endswith("@10")]
    grouped = frame.groupby(["model", "protocol"])[keep]
    mean, std = grouped.mean(), grouped.std()
    return mean.map(lambda v: f"{v:.4f}") + " ± " + std.map(lambda v: f"{v:.4f}")


def _markdown(title: str, sections: list[_Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        if section.text:
            lines += [section.text, ""]
        if section.table is not None and not section.table.empty:
            lines += [_markdown_table(section.table), ""]
        if section.image:
            lines += [f"![{section.title}]({section.image})", ""]
    return "\n".join(lines)


def _markdown_table(table: pd.DataFrame) -> str:
    header = [str(table.index.name or "")] + [str(c) for c in table.columns]
    rows = [
        [str(index)] + [_fmt(v) for v in row]
        for index, row in zip(table.index, table.itertuples(index=False), strict=True)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html(title: str, sections: list[_Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            text = section.text
            if text.startswith("```"):
                body.append(f"<pre>{html.escape(text.strip('`').removeprefix('json'))}</pre>")
            else:
                items = [line[2:] for line in text.splitlines() if line.startswith("- ")]
                if items:
                    body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
                else:
                    body.append(f"<p>{_inline(text)}</p>")
        if section.table is not None and not section.table.empty:
            body.append(section.table.map(_fmt).to_html(border=0, classes="metrics"))
        if section.image:
            body.append(f'<img src="{html.escape(section.image)}" alt="{html.escape(section.title)}">')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:13px}td,th{padding:3px 8px;border-bottom:1px solid #ddd;"
        "text-align:right}img{max-width:100%}pre{background:#f5f5f5;padding:1em;overflow:auto}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _inline(text: str) -> str:
    """Minimal inline markdown for HTML: escape, then **bold** and `code`."""
    import re

    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
