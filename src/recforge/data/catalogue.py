"""The item catalogue a served model shows: item id, title and genres, stored in an artifact as
`items.parquet` (written by `recforge train`, read by the service and the CLI)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

ITEMS_FILE = "items.parquet"


def item_metadata(data: Any) -> pd.DataFrame | None:
    """item_id, title, genres from an Interactions' item-feature table (what `recforge train` stores)."""
    features = data.item_features
    if features is None:
        return None
    frame = pd.DataFrame({"item_id": data.items.ids})
    if "title" in features:
        frame["title"] = features["title"].astype("string").to_numpy()
    for column in ("genres", "genre"):
        if column in features:
            frame["genres"] = [list(g) if isinstance(g, (list, tuple, np.ndarray)) else [] for g in features[column]]
            break
    return frame
