"""Composable cleaning and filtering steps. Each step is a typed config with `apply(data)` that returns the
new `Interactions` and a `StepReport` of what it removed, so nothing disappears unannounced.

Steps compact the vocabularies afterwards: a user or item left without interactions is removed (and
counted). The Spark pipeline (`recforge.spark`) implements the same steps with the same semantics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from recforge.data.interactions import Interactions
from recforge.errors import ConfigError


@dataclass(frozen=True)
class StepReport:
    step: str
    params: dict[str, Any]
    rows_before: int
    rows_after: int
    users_before: int
    users_after: int
    items_before: int
    items_after: int

    @property
    def rows_removed(self) -> int:
        return self.rows_before - self.rows_after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rows_removed": self.rows_removed}


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def keep_mask(self, data: Interactions) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, data: Interactions) -> Interactions:
        """Default: keep the rows of `keep_mask`, then drop users/items left empty."""
        return data.subset(self.keep_mask(data)).compact()

    def apply(self, data: Interactions) -> tuple[Interactions, StepReport]:
        result = self.transform(data)
        params = self.model_dump(exclude={"step"})
        report = StepReport(
            step=self.step,
            params=params,
            rows_before=len(data),
            rows_after=len(result),  # type: ignore[attr-defined]
            users_before=data.n_users,
            users_after=result.n_users,
            items_before=data.n_items,
            items_after=result.n_items,
        )
        return result, report


class Deduplicate(_Step):
    """One row per (user, item): the latest by timestamp (ties: the later row in the source), or the first."""

    step: Literal["deduplicate"] = "deduplicate"
    keep: Literal["latest", "first"] = "latest"

    def keep_mask(self, data: Interactions) -> np.ndarray:
        mask = np.zeros(len(data), dtype=bool)
        if self.keep == "latest":
            mask[data.latest_per_pair()] = True
        else:
            key = data.user_index.astype(np.int64) * data.n_items + data.item_index
            time = data.timestamp if data.timestamp is not None else np.zeros(len(data), dtype=np.int64)
            order = np.lexsort((np.arange(len(data)), time, key))
            first = np.ones(len(order), dtype=bool)
            first[1:] = key[order][1:] != key[order][:-1]
            mask[order[first]] = True
        return mask


class DropUnrated(_Step):
    """Keep only rows with a real rating (drops implicit rows such as the anime data's -1)."""

    step: Literal["drop_unrated"] = "drop_unrated"

    def keep_mask(self, data: Interactions) -> np.ndarray:
        return data.is_rated


class FilterUserCounts(_Step):
    """Keep users whose number of interactions lies in [min_count, max_count] (counted once, not iterated)."""

    step: Literal["filter_user_counts"] = "filter_user_counts"
    min_count: int | None = None
    max_count: int | None = None

    def keep_mask(self, data: Interactions) -> np.ndarray:
        return _in_range(data.user_counts(), self.min_count, self.max_count)[data.user_index]


class FilterItemCounts(_Step):
    """Keep items whose number of interactions lies in [min_count, max_count]."""

    step: Literal["filter_item_counts"] = "filter_item_counts"
    min_count: int | None = None
    max_count: int | None = None

    def keep_mask(self, data: Interactions) -> np.ndarray:
        return _in_range(data.item_counts(), self.min_count, self.max_count)[data.item_index]


class FilterRatingSpread(_Step):
    """Keep users whose ratings span at least `min_spread` (max - min); users without ratings are removed.

    The anime study keeps users with a spread of 3 or more, dropping those who rate everything alike.
    """

    step: Literal["filter_rating_spread"] = "filter_rating_spread"
    min_spread: float = 3.0

    def keep_mask(self, data: Interactions) -> np.ndarray:
        rated = data.is_rated
        if not rated.any():
            raise ConfigError("filter_rating_spread needs ratings")
        high = np.full(data.n_users, -np.inf)
        low = np.full(data.n_users, np.inf)
        np.maximum.at(high, data.user_index[rated], data.rating[rated])
        np.minimum.at(low, data.user_index[rated], data.rating[rated])
        return ((high - low) >= self.min_spread)[data.user_index]


class KCore(_Step):
    """Iteratively remove users with < user_k and items with < item_k interactions until both hold."""

    step: Literal["k_core"] = "k_core"
    user_k: int = 5
    item_k: int = 5

    def keep_mask(self, data: Interactions) -> np.ndarray:
        keep = np.ones(len(data), dtype=bool)
        while True:
            users = np.bincount(data.user_index[keep], minlength=data.n_users)
            items = np.bincount(data.item_index[keep], minlength=data.n_items)
            new_keep = keep & (users[data.user_index] >= self.user_k) & (items[data.item_index] >= self.item_k)
            if new_keep.sum() == keep.sum():
                return new_keep
            keep = new_keep


class Binarize(_Step):
    """Implicit conversion: keep rows rated >= threshold (and unrated rows if `keep_unrated`), drop ratings."""

    step: Literal["binarize"] = "binarize"
    threshold: float
    keep_unrated: bool = True

    def transform(self, data: Interactions) -> Interactions:
        if data.rating is None:
            raise ConfigError("binarize needs ratings")
        keep = np.nan_to_num(data.rating, nan=-np.inf) >= self.threshold
        if self.keep_unrated:
            keep |= ~data.is_rated
        kept = data.subset(keep).compact()
        return Interactions(
            users=kept.users,
            items=kept.items,
            user_index=kept.user_index,
            item_index=kept.item_index,
            timestamp=kept.timestamp,
            user_features=kept.user_features,
            item_features=kept.item_features,
            name=kept.name,
            source=kept.source,
        )


def _in_range(counts: np.ndarray, low: int | None, high: int | None) -> np.ndarray:
    keep = np.ones(len(counts), dtype=bool)
    if low is not None:
        keep &= counts >= low
    if high is not None:
        keep &= counts <= high
    return keep


PreprocessStep = Annotated[
    Deduplicate | DropUnrated | FilterUserCounts | FilterItemCounts | FilterRatingSpread | KCore | Binarize,
    Field(discriminator="step"),
]
_STEP_LIST = TypeAdapter(list[PreprocessStep])


def parse_steps(specs: list[dict[str, Any]] | list[PreprocessStep]) -> list[PreprocessStep]:
    """Steps from config dicts such as {"step": "filter_user_counts", "min_count": 8, "max_count": 117}."""
    try:
        return _STEP_LIST.validate_python(specs)
    except Exception as exc:  # pydantic's ValidationError names the step and field
        raise ConfigError(f"invalid preprocessing steps: {exc}") from exc


def preprocess(
    data: Interactions, steps: list[dict[str, Any]] | list[PreprocessStep]
) -> tuple[Interactions, list[StepReport]]:
    """Apply steps in order; returns the result and one report per step."""
    reports = []
    for step in parse_steps(steps):
        data, report = step.apply(data)
        reports.append(report)
    return data, reports
