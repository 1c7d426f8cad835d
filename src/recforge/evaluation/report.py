"""Experiment reports: report.md, report.html, plots, metrics.json (deterministic: byte-identical for the
same config and seed), run.json (timings, machine), per_user.parquet and results.parquet."""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from recforge._io import atomic_path, check_output, write_json_atomic, write_text_atomic
from recforge._version import __version__
from recforge.evaluation import plots
from recforge.evaluation.metrics import at_cutoffs
from recforge.evaluation.protocols import RankingResult
from recforge.evaluation.report_tables import (
    beyond_accuracy_table,
    cutoff_table,
    fmt,
    metrics_table,
    p_value_text,
    repetitions_table,
    significance_grid,
    significance_table,
)
from recforge.evaluation.results import ExperimentResult, ModelRun


@dataclass
class _Section:
    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    image: str | None = None


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


_OURS = ("report.md", "runs")  # a report folder, or one an unfinished experiment left its runs in


def check_report_output(output: str | Path) -> None:
    """Refuse, before an experiment runs, a report folder `write_report` would refuse."""
    check_output(Path(output), True, _OURS, "report")


def write_report(result: ExperimentResult, output: str | Path) -> Path:
    """Write the full report folder (atomically) and return its path. The finished runs an experiment
    kept in `<output>/runs` (`recforge.evaluation.run_store`) are carried over into the new folder."""
    output = Path(output)
    with atomic_path(output, is_dir=True, ours=_OURS, kind="report") as tmp:
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
            else [*at_cutoffs(ev.ks, ("ndcg", "recall", "precision", "map")), "coverage"]
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
            # p-values to two significant digits, as in the grid below: 1.2e-95, not 0.0000
            shown = significance.assign(**{c: significance[c].map(p_value_text) for c in ("p", "p (Holm)")})
            sections.append(_Section(f"{protocol} — significance", text=note, table=shown))
            leader, note = significance_table(runs, protocol, metric, ev.significance, against="best")
            if not leader.empty:
                shown = leader.assign(**{c: leader[c].map(p_value_text) for c in ("p", "p (Holm)")})
                sections.append(_Section(f"{protocol} — significance against the best model", text=note, table=shown))
            every = ["rmse", "mae"] if protocol == "rating" else at_cutoffs(ev.ks)
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
    path = plots.training_curves({r.label: r.training_log for r in runs}, folder / "plots" / "training_curves.png")
    if path is not None:
        sections.append(_Section("Training curves", image=str(path.relative_to(folder))))
    path = plots.elbow_curves({r.label: r.elbow for r in runs if r.elbow}, folder / "plots" / "elbow.png")
    if path is not None:
        sections.append(
            _Section(
                "Clusters of item embeddings",
                text="Inertia (k-means) or BIC (Gaussian mixture) by number of clusters; the clustered models "
                "in the tables answer each user from the nearest cluster.",
                image=str(path.relative_to(folder)),
            )
        )
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
        [str(index)] + [fmt(v) for v in row]
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
            body.append(section.table.map(fmt).to_html(border=0, classes="metrics"))
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
