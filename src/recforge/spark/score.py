"""Batch scoring on Spark: top-k for every user of a saved artifact, written as Parquet.

The user indices 0..n_users-1 become a Spark range split into partitions; `mapInPandas` loads the artifact
once per Python worker (verified like any `recforge.load`) and calls the model's own `recommend` for each
batch, so the lists are exactly what `recforge recommend` gives, seen items excluded. The artifact must be
readable at the same path from every executor (local mode, or a shared filesystem on a cluster; see
docs/scale.md for shipping it with `--files`).

Output rows: the columns of `recforge recommend --users` (`recforge.evaluation.saved.batch_frame`): user,
rank (1-based), item, score, served_by, note — one row per recommended item, and one row without rank, item
or score for a user whose list is empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge._io import atomic_path

_LOADED: dict[str, Any] = {}  # per Python worker: artifact path -> model


def _model(path: str) -> Any:
    if path not in _LOADED:
        from recforge.models import load_model

        _LOADED[path] = load_model(path)
    return _LOADED[path]


def score_spark(
    spark: Any,
    artifact: str | Path,
    out: str | Path,
    k: int = 10,
    *,
    partitions: int | None = None,
    batch_size: int = 1024,
    exclude_seen: bool = True,
) -> int:
    """Write top-k for all users of `artifact` to the Parquet directory `out` (atomically); returns rows."""
    from pyspark.sql import types as T

    artifact = str(Path(artifact).resolve())
    model = _model(artifact)  # fail on the driver, with the artifact's own error, before any task runs
    n_users = model.n_users
    id_type = T.LongType() if np.issubdtype(model.users_.ids.dtype, np.integer) else T.StringType()
    item_type = T.LongType() if np.issubdtype(model.items_.ids.dtype, np.integer) else T.StringType()
    schema = T.StructType(
        [
            T.StructField("user", id_type, False),
            T.StructField("rank", T.IntegerType(), True),  # the rank, item and score of an empty list: null
            T.StructField("item", item_type, True),
            T.StructField("score", T.FloatType(), True),
            T.StructField("served_by", T.StringType(), False),
            T.StructField("note", T.StringType(), False),
        ]
    )

    def recommend(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from recforge.evaluation.saved import batch_frame

        fitted = _model(artifact)
        for batch in batches:
            users = batch["id"].to_numpy()
            for start in range(0, len(users), batch_size):
                chunk = users[start : start + batch_size]
                frame = batch_frame(fitted.recommend(chunk, k, exclude_seen=exclude_seen, external_ids=False))
                yield _plain_columns(frame)

    users = spark.range(0, n_users, numPartitions=partitions or spark.sparkContext.defaultParallelism)
    scored = users.mapInPandas(recommend, schema)
    out = Path(out)
    with atomic_path(out, is_dir=True, ours=("_SUCCESS",), kind="scores folder") as tmp:
        scored.write.parquet(str(tmp / "part"))
        for child in (tmp / "part").iterdir():  # the Spark directory becomes `out` itself
            child.rename(tmp / child.name)
        (tmp / "part").rmdir()
    return int(spark.read.parquet(str(out)).count())


def _plain_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` in the types PySpark's Arrow conversion takes: text as Python objects (it refuses pandas 3's
    Arrow-backed strings, and the nullable extension types), an empty list's rank, item and score as None."""
    text = {name: object for name, dtype in frame.dtypes.items() if pd.api.types.is_string_dtype(dtype)}
    if not frame["item"].isna().any():
        return frame.astype({**text, "rank": np.int32, "score": np.float32})
    nullable = {name: object for name in ("rank", "item", "score")}
    return frame.astype({**text, **nullable}).where(frame.notna(), None)
