"""Report plots (matplotlib, Agg backend): ratings distribution, training curves, metric@k curves and the
popularity of what models recommend. Each function writes one PNG and returns its path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from recforge._io import atomic_path

_PNG_METADATA = {"Software": None}  # keep PNG bytes free of version strings


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, metadata=_PNG_METADATA)
    plt.close(figure)
    return path


def ratings_distribution(parts: Mapping[str, np.ndarray], path: Path, title: str = "Ratings distribution") -> Path:
    """Share of each rating value per part (e.g. train / test), side by side."""
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    values = np.unique(np.concatenate([v[~np.isnan(v)] for v in parts.values() if len(v)]))
    width = 0.8 / max(1, len(parts))
    for offset, (label, ratings) in enumerate(parts.items()):
        ratings = ratings[~np.isnan(ratings)]
        share = np.array([(ratings == v).mean() if len(ratings) else 0 for v in values])
        axis.bar(np.arange(len(values)) + offset * width, share, width=width, label=f"{label} (n={len(ratings):,})")
    axis.set_xticks(np.arange(len(values)) + width * (len(parts) - 1) / 2, [f"{v:g}" for v in values])
    axis.set_xlabel("rating")
    axis.set_ylabel("share of ratings")
    axis.set_title(title)
    axis.legend()
    return _save(figure, path)


def histogram(values: np.ndarray, path: Path, title: str, xlabel: str) -> Path:
    figure, axis = plt.subplots(figsize=(6.5, 3.6))
    unique = np.unique(values)
    if len(unique) <= 20:
        counts = [(values == v).sum() for v in unique]
        axis.bar([f"{v:g}" for v in unique], counts)
    else:
        axis.hist(values, bins=40)
    axis.set_title(title)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("count")
    return _save(figure, path)


def training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path | None:
    """Per epoch, one panel per quantity: the training loss of every model relative to its first epoch
    (models' losses are on different scales: MSE, BPR, cross-entropy), then each validation metric a model
    logged (valid_rmse, valid_ndcg@10, the retrieval study's top-k accuracy, ...) on its own axis."""
    logs = {label: log for label, log in logs.items() if log}
    quantities: list[str] = []
    for log in logs.values():
        for key in log[0]:
            if key != "epoch" and key not in quantities and all(isinstance(e.get(key), (int, float)) for e in log):
                quantities.append(key)
    if not quantities:
        return None
    quantities.sort(key=lambda q: (q != "loss", q))
    columns = min(3, len(quantities))
    rows = -(-len(quantities) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for axis, quantity in zip(axes.ravel(), quantities, strict=False):
        for label, log in logs.items():
            points = [(entry.get("epoch", i + 1), entry[quantity]) for i, entry in enumerate(log) if quantity in entry]
            if not points:
                continue
            epochs, values = zip(*points, strict=True)
            values = np.asarray(values, dtype=np.float64)
            if quantity == "loss" and values[0] not in (0.0,) and np.isfinite(values[0]):
                values = values / values[0]
            axis.plot(epochs, values, marker="o", markersize=3, label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel("training loss / epoch 1" if quantity == "loss" else quantity)
        axis.set_title("training loss (relative)" if quantity == "loss" else quantity, fontsize=10)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(quantities) :]:
        axis.set_visible(False)
    figure.suptitle("Training curves")
    return _save(figure, path)


def elbow_curves(curves: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path) -> Path | None:
    """Per clustering method, inertia (k-means) or BIC (GMM) against the number of clusters, one line per
    model whose item embeddings were clustered: pick k where the curve bends."""
    methods = sorted({method for by_method in curves.values() for method in by_method})
    if not methods:
        return None
    figure, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 3.4), squeeze=False)
    for axis, method in zip(axes[0], methods, strict=True):
        for label, by_method in curves.items():
            points = sorted((int(k), v) for k, v in by_method.get(method, {}).items())
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
        axis.set_xscale("log", base=2)
        axis.set(xlabel="clusters k", ylabel="inertia" if method == "kmeans" else "BIC", title=f"{method} elbow")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    return _save(figure, path)


def metric_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path, protocol: str) -> Path | None:
    """NDCG@k and Recall@k for k = 1..K, one line per model."""
    if not curves:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, model_curves in curves.items():
        for axis, metric in zip(axes, ("ndcg", "recall"), strict=True):
            values = model_curves.get(metric, [])
            axis.plot(np.arange(1, len(values) + 1), values, label=label)
    for axis, metric in zip(axes, ("NDCG@k", "Recall@k"), strict=True):
        axis.set_xlabel("k")
        axis.set_ylabel(metric)
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"Metric@k ({protocol})")
    return _save(figure, path)


def recommendation_popularity(
    recommended: Mapping[str, np.ndarray], item_counts: np.ndarray, path: Path
) -> Path | None:
    """Cumulative share of recommendations by the popularity rank of the recommended item: a curve that
    rises steeply at the left means a model recommends mostly blockbusters."""
    if not recommended:
        return None
    order = np.argsort(-item_counts, kind="stable")
    rank = np.empty(len(item_counts), dtype=np.int64)
    rank[order] = np.arange(len(item_counts))
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(1, len(item_counts) + 1) / len(item_counts)
    for label, lists in recommended.items():
        items = lists.ravel()
        items = items[items >= 0]
        if not len(items):
            continue
        share = np.cumsum(np.bincount(rank[items], minlength=len(item_counts))) / len(items)
        axis.plot(x, share, label=label)
    axis.plot(x, x, linestyle=":", color="grey", label="uniform")
    axis.set_xlabel("items by training popularity (share of catalogue, most popular first)")
    axis.set_ylabel("cumulative share of recommendations")
    axis.set_title("Recommendation popularity distribution")
    axis.legend(fontsize=8)
    return _save(figure, path)
