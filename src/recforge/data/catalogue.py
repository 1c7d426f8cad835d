"""The item catalogue a served model shows: item id, title and genres, stored in an artifact as
`items.parquet` (written by `recforge train`, read by the service and the CLI).

Amazon's sequence files (Beauty.txt) carry no titles, only each item's ASIN: without a title column the
ASIN is the item's title, so lists show what a person can look up and `--item B000052YQ0` finds it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recforge.errors import ConfigError

ITEMS_FILE = "items.parquet"


def item_metadata(data: Any) -> pd.DataFrame | None:
    """item_id, title, genres from an Interactions' item-feature table (what `recforge train` stores; None
    without one), or those columns of a frame (item_id required; an id given twice is refused). Without a
    title column an `asin` column gives the titles."""
    if not isinstance(data, pd.DataFrame):
        features = data.item_features
        if features is None:
            return None
        if "genres" not in features and "genre" in features:
            features = features.rename(columns={"genre": "genres"})
        data = features.assign(item_id=data.items.ids)
    if "item_id" not in data:
        raise ConfigError(f"an item catalogue needs an item_id column; it has {list(data.columns)}")
    repeated = data["item_id"][data["item_id"].duplicated()]
    if len(repeated):
        raise ConfigError(f"the item catalogue lists item {repeated.iloc[0]!r} more than once")
    frame = pd.DataFrame({"item_id": data["item_id"].to_numpy()})
    if "title" in data:
        frame["title"] = data["title"].astype("string").to_numpy()
    elif "asin" in data:
        frame["title"] = data["asin"].astype("string").to_numpy()
    if "genres" in data:
        frame["genres"] = [_genre_list(g, item) for g, item in zip(data["genres"], frame["item_id"], strict=True)]
    return frame


def _genre_list(value: Any, item: Any) -> list[Any]:
    if isinstance(value, (list, tuple, np.ndarray)):
        return list(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    raise ConfigError(
        f"item {item!r}: genres must be a list of names, got {value!r} (split a text column first, "
        "e.g. frame['genres'].str.split('|'))"
    )
