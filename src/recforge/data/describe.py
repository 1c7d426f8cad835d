"""`describe(interactions)`: the numbers a person checks first about a dataset."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from recforge.data.columns import LATEST_SECONDS

if TYPE_CHECKING:
    from rich.table import Table

    from recforge.data.interactions import Interactions

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


@dataclass(frozen=True)
class DatasetDescription:
    name: str
    n_users: int
    n_items: int
    n_interactions: int
    n_rated: int
    n_unrated: int
    n_duplicate_pairs: int
    density: float
    rating_scale: tuple[float, float] | None
    rating_mean: float | None
    ratings_histogram: dict[str, int]
    per_user_quantiles: dict[str, float]
    per_item_quantiles: dict[str, float]
    time_range: tuple[int, int] | None
    user_feature_columns: list[str]
    item_feature_columns: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_table(self) -> Table:
        """A Rich table for the CLI."""
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=f"dataset {self.name}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        rows = [
            ("users", f"{self.n_users:,}"),
            ("items", f"{self.n_items:,}"),
            ("interactions", f"{self.n_interactions:,}"),
            ("rated / unrated", f"{self.n_rated:,} / {self.n_unrated:,}"),
            ("duplicate (user, item) rows", f"{self.n_duplicate_pairs:,}"),
            ("density", f"{self.density:.4%}"),
            ("rating scale", _fmt_scale(self.rating_scale, self.n_rated)),
            ("mean rating", "-" if self.rating_mean is None else f"{self.rating_mean:.3f}"),
            ("ratings histogram", ", ".join(f"{k}: {v:,}" for k, v in self.ratings_histogram.items()) or "-"),
            ("interactions per user", _fmt_quantiles(self.per_user_quantiles)),
            ("interactions per item", _fmt_quantiles(self.per_item_quantiles)),
            ("time range", _fmt_time_range(self.time_range)),
            ("user features", ", ".join(self.user_feature_columns) or "-"),
            ("item features", ", ".join(self.item_feature_columns) or "-"),
        ]
        for field_name, value in rows:
            table.add_row(field_name, escape(value))  # titles, genres and hints may hold [...]: not Rich markup
        return table


def _fmt_scale(scale: tuple[float, float] | None, n_rated: int) -> str:
    if scale is not None:
        return f"{scale[0]:g}..{scale[1]:g}"
    # without a scale nothing clips predictions, and the service's page offers no stars
    return "not given (rating_scale=[low, high] sets it)" if n_rated else "-"


def as_utc_date(timestamp: int, with_time: bool = False) -> str | None:
    """A timestamp as its UTC date ("2016-03-22", or "2016-03-22 08:26" with the time) when it reads as unix
    seconds after 1971; None otherwise (sequence files without timestamps count positions, not dates)."""
    if timestamp < 365 * 86400 or timestamp > LATEST_SECONDS:  # positions; or another unit than seconds
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M" if with_time else "%Y-%m-%d")


def _fmt_time_range(time_range: tuple[int, int] | None) -> str:
    """The raw range, with its UTC dates when it reads as unix seconds."""
    if time_range is None:
        return "-"
    first, last = time_range
    dates = as_utc_date(first), as_utc_date(last)
    return f"{first} .. {last}" + (f" ({dates[0]} .. {dates[1]} UTC)" if dates[0] else "")


def _fmt_quantiles(quantiles: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:g}" for k, v in quantiles.items())


def _quantiles(counts: np.ndarray) -> dict[str, float]:
    if len(counts) == 0:
        return {}
    values = np.quantile(counts, QUANTILES)
    labels = ["min", "p10", "p25", "median", "p75", "p90", "max"]
    return {label: float(v) for label, v in zip(labels, values, strict=True)}


def describe(data: Interactions) -> DatasetDescription:
    rated = data.is_rated
    histogram: dict[str, int] = {}
    mean = None
    if rated.any():
        values, counts = np.unique(data.rating[rated], return_counts=True)
        histogram = {f"{v:g}": int(c) for v, c in zip(values, counts, strict=True)}
        mean = float(data.rating[rated].mean(dtype=np.float64))
    n_pairs = len(data.latest_per_pair()) if len(data) else 0
    return DatasetDescription(
        name=data.name,
        n_users=data.n_users,
        n_items=data.n_items,
        n_interactions=len(data),
        n_rated=int(rated.sum()),
        n_unrated=int((~rated).sum()) if data.rating is not None else len(data),
        n_duplicate_pairs=len(data) - n_pairs,
        density=n_pairs / max(1, data.n_users * data.n_items),
        rating_scale=data.rating_scale,
        rating_mean=mean,
        ratings_histogram=histogram,
        per_user_quantiles=_quantiles(data.user_counts()),
        per_item_quantiles=_quantiles(data.item_counts()),
        time_range=None
        if data.timestamp is None or len(data) == 0
        else (int(data.timestamp.min()), int(data.timestamp.max())),
        user_feature_columns=[] if data.user_features is None else [str(c) for c in data.user_features.columns],
        item_feature_columns=[] if data.item_features is None else [str(c) for c in data.item_features.columns],
    )
