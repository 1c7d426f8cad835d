"""`recforge.data.prepare` on Spark DataFrames: the same recipe, the same output directory.

Input: an events Parquet (columns user_id, item_id and optionally rating, timestamp — what
`Interactions.save` and `recforge.data.synthetic` write) and optionally an item table (Parquet, one row per
item id, with the genre and numeric columns the config names). Output: the layout of
`recforge.data.prepare`, readable by `read_prepared` / `Interactions.load` without Spark.

Where the engines could differ, the choices are:
- "later row in the source" (dedupe ties) is the order of `monotonically_increasing_id`, which follows
  file order for one Parquet input;
- the split ranks rows by `recforge.data.splits.row_keys`, evaluated in Python workers (`mapInPandas`),
  and sends `bround(size * fraction)` rows of each rating stratum to test, as `np.rint` does;
- floating-point features are computed in double precision (the in-memory engine keeps float32
  ratings), so they agree to ~1e-6, not bit for bit; ids, rows and splits agree exactly. Row order in the
  written files is not part of the contract.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge._io import atomic_path
from recforge.data.features import genres_above_quantile
from recforge.data.interactions import FORMAT_VERSION
from recforge.data.prepare import PrepareConfig, write_manifest
from recforge.data.preprocess import (
    Binarize,
    Deduplicate,
    DropUnrated,
    FilterItemCounts,
    FilterRatingSpread,
    FilterUserCounts,
    KCore,
    PreprocessStep,
    parse_steps,
)
from recforge.data.splits import row_keys
from recforge.errors import ConfigError, DataFormatError

_QUIET_LOGGING = Path(__file__).with_name("log4j2.properties")  # errors only, for local sessions


@contextmanager
def spark_session(local_threads: int | None = 2, memory: str = "2g", app_name: str = "recforge") -> Iterator[Any]:
    """A SparkSession: local mode with `local_threads` cores, or (None) whatever master spark-submit gives."""
    import os
    import sys
    import warnings

    from pyspark.sql import SparkSession

    # PySpark warns on every pandas-UDF call that it does not fully support pandas >= 3; the paths recforge
    # uses are held to the pandas path's output by tests/spark (prepare and score equal it), so the warning
    # says nothing a user can act on
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

    # Python workers must run this interpreter (the one with recforge installed), not whatever `python3` is
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")  # its stage bar overwrote the plain output lines
    )
    if local_threads is not None:
        builder = (
            builder.master(f"local[{local_threads}]")
            .config("spark.driver.memory", memory)
            .config("spark.sql.shuffle.partitions", str(max(2, 2 * local_threads)))
            .config("spark.ui.enabled", "false")
            .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={_QUIET_LOGGING.as_uri()}")
            .config("spark.driver.bindAddress", "127.0.0.1")  # one machine: nothing listens on the network
            .config("spark.driver.host", "127.0.0.1")
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        spark.stop()


# ----------------------------------------------------------------------------- steps
def apply_step(df: Any, step: PreprocessStep, has_rating: bool) -> tuple[Any, bool]:
    """One preprocessing step on a DataFrame of (user_id, item_id, rating?, timestamp?, _row)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if isinstance(step, Deduplicate):
        time = F.col("timestamp") if "timestamp" in df.columns else F.lit(0)
        order = [time.desc(), F.col("_row").desc()] if step.keep == "latest" else [time.asc(), F.col("_row").asc()]
        window = Window.partitionBy("user_id", "item_id").orderBy(*order)
        return df.withColumn("_n", F.row_number().over(window)).where("_n = 1").drop("_n"), has_rating
    if isinstance(step, DropUnrated):
        return (df.where(F.col("rating").isNotNull()) if has_rating else df.limit(0)), has_rating
    if isinstance(step, (FilterUserCounts, FilterItemCounts)):
        key = "user_id" if isinstance(step, FilterUserCounts) else "item_id"
        counts = df.groupBy(key).count()
        if step.min_count is not None:
            counts = counts.where(F.col("count") >= step.min_count)
        if step.max_count is not None:
            counts = counts.where(F.col("count") <= step.max_count)
        return df.join(counts.select(key), key, "left_semi"), has_rating
    if isinstance(step, FilterRatingSpread):
        if not has_rating:
            raise ConfigError("filter_rating_spread needs ratings")
        spread = df.groupBy("user_id").agg((F.max("rating") - F.min("rating")).alias("spread"))
        keep = spread.where(F.col("spread") >= step.min_spread).select("user_id")
        return df.join(keep, "user_id", "left_semi"), has_rating
    if isinstance(step, KCore):
        size = df.count()
        while True:
            users = df.groupBy("user_id").count().where(F.col("count") >= step.user_k).select("user_id")
            items = df.groupBy("item_id").count().where(F.col("count") >= step.item_k).select("item_id")
            kept = df.join(users, "user_id", "left_semi").join(items, "item_id", "left_semi").localCheckpoint()
            new_size = kept.count()
            df = kept
            if new_size == size:
                return df, has_rating
            size = new_size
    if isinstance(step, Binarize):
        if not has_rating:
            raise ConfigError("binarize needs ratings")
        keep = F.col("rating") >= step.threshold
        if step.keep_unrated:
            keep = keep | F.col("rating").isNull()
        return df.where(keep).drop("rating"), False
    raise ConfigError(f"step {step.step!r} has no Spark implementation")


# ----------------------------------------------------------------------------- split
KEY_BUCKET_BITS = 16  # the split histograms keys in 2^16 buckets per stratum (a small table for the driver)
_LONG_MIN = -(1 << 63)


def stratified_flags(df: Any, test_fraction: float, seed: int) -> Any:
    """`df` with boolean `_test` added (materialised): per rating stratum, the round-half-even(size *
    fraction) rows with the smallest `row_keys` go to test (exactly `recforge.data.splits.stratified_split`).

    No window spans a stratum (one rating value can hold a third of all rows, and a window partitioned by it
    sorts them in one task). Keys are uniform hashes, so: count rows per (stratum, top bits of the key); on
    the driver, find the bucket holding each stratum's cut; fetch only that bucket's keys (about
    size / 65536 rows) to find the exact cutoff key; rows below it go to test, rows above to train, and
    only rows tied at the cutoff (identical rows share a key) are ranked to take the remaining places."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    has_time = "timestamp" in df.columns
    fields = [*df.schema.fields, T.StructField("_key", T.LongType(), False)]

    def add_keys(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            keys = row_keys(
                batch["user_id"].to_numpy(),
                batch["item_id"].to_numpy(),
                batch["timestamp"].to_numpy() if has_time else None,
                seed,
            )
            # uint64 order as signed int64: flip the top bit
            batch["_key"] = (keys ^ np.uint64(1 << 63)).view(np.int64)
            yield batch

    # unrated rows form one stratum, as in memory (NaN -> -inf there)
    stratum = F.coalesce(F.col("rating"), F.lit(float("-inf"))) if "rating" in df.columns else F.lit(0.0)
    keyed = (
        df.mapInPandas(add_keys, T.StructType(fields))
        .withColumn("_stratum", stratum.cast("double"))
        .withColumn("_bucket", F.shiftright("_key", 64 - KEY_BUCKET_BITS))
        .persist()
    )
    histogram = keyed.groupBy("_stratum", "_bucket").count().toPandas()
    cuts = _stratum_cuts(histogram, test_fraction)
    spark = df.sparkSession
    boundary = spark.createDataFrame(
        [(s, b) for s, (b, _) in cuts.items() if b is not None], "_stratum double, _bucket long"
    )
    boundary_keys = keyed.join(F.broadcast(boundary), ["_stratum", "_bucket"]).select("_stratum", "_key").toPandas()
    cutoffs = []
    for value, (_, rank) in cuts.items():
        if rank == 0:  # nothing of this stratum goes to test
            cutoffs.append((value, _LONG_MIN, 0))
            continue
        keys = np.sort(boundary_keys.loc[boundary_keys["_stratum"] == value, "_key"].to_numpy())
        cutoff = int(keys[rank - 1])
        cutoffs.append((value, cutoff, rank - int(np.searchsorted(keys, cutoff, side="left"))))
    table = spark.createDataFrame(cutoffs, "_stratum double, _cutoff long, _ties long")
    flagged = keyed.drop("_bucket").join(F.broadcast(table), "_stratum")
    clear = flagged.where(F.col("_key") != F.col("_cutoff")).withColumn("_test", F.col("_key") < F.col("_cutoff"))
    tied = flagged.where(F.col("_key") == F.col("_cutoff"))
    tied = tied.withColumn(
        "_test", F.row_number().over(Window.partitionBy("_stratum").orderBy("_key")) <= F.col("_ties")
    )
    flags = clear.unionByName(tied).drop("_key", "_stratum", "_cutoff", "_ties").localCheckpoint()
    keyed.unpersist()
    return flags


def _stratum_cuts(histogram: pd.DataFrame, test_fraction: float) -> dict[float, tuple[int | None, int]]:
    """Per stratum: the key bucket that holds its last test row, and that row's rank within the bucket
    (1-based; (None, 0) when the stratum sends nothing to test). `histogram`: _stratum, _bucket, count."""
    cuts: dict[float, tuple[int | None, int]] = {}
    for value, group in histogram.sort_values(["_stratum", "_bucket"]).groupby("_stratum", sort=False):
        counts = group["count"].to_numpy(dtype=np.int64)
        n_test = int(np.rint(counts.sum() * test_fraction))  # the in-memory engine's rounding, half to even
        if n_test == 0:
            cuts[float(value)] = (None, 0)
            continue
        cumulative = np.cumsum(counts)
        position = int(np.searchsorted(cumulative, n_test, side="left"))
        before = int(cumulative[position] - counts[position])
        cuts[float(value)] = (int(group["_bucket"].to_numpy()[position]), n_test - before)
    return cuts


# ----------------------------------------------------------------------------- features
def _normalised_genres(items: Any, column: str) -> Any:
    """Array of distinct, sorted, normalised genre names (lists or comma-separated strings)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    raw = F.col(column)
    if isinstance(items.schema[column].dataType, T.StringType):
        raw = F.split(F.coalesce(raw, F.lit("")), ",")
    cleaned = F.transform(F.coalesce(raw, F.array()), lambda g: F.regexp_replace(F.trim(F.lower(g)), r"\s+", " "))
    return F.array_sort(F.array_distinct(F.filter(cleaned, lambda g: g != "")))


def item_feature_table(
    spark: Any, vocabulary: Any, items: Any | None, train: Any, config: PrepareConfig
) -> tuple[Any, list[str]]:
    """item_id + genre:<g> + num:<c> for every vocabulary item, and the genre vocabulary."""
    from pyspark.sql import functions as F

    table = vocabulary if items is None else vocabulary.join(items, "item_id", "left")
    genres: list[str] = []
    if config.genres is not None:
        column = config.genres.column
        if items is None or column not in items.columns:
            raise ConfigError(f"genre column {column!r} not in the item table")
        table = table.withColumn("_genres", _normalised_genres(table, column))
        counts = table.select(F.explode("_genres").alias("genre")).groupBy("genre").count().toPandas()
        genres = genres_above_quantile(
            counts.set_index("genre")["count"].sort_values(ascending=False), config.genres.min_frequency_quantile
        )
    columns = [F.col("item_id")]
    columns += [F.array_contains("_genres", g).cast("double").alias(f"genre:{g}") for g in genres]
    if config.numeric_ranges:
        missing = [c for c in config.numeric_ranges if items is None or c not in items.columns]
        if missing:
            raise ConfigError(f"numeric column(s) {missing} not in the item table")
        in_train = table.join(train.select("item_id").distinct(), "item_id", "left_semi")
        for name, (low, high) in config.numeric_ranges.items():
            value = F.col(name).cast("double")
            finite = F.when(~F.isnan(value), value)
            median = in_train.select(F.percentile(finite, 0.5).alias("m")).first()["m"]
            median = float(low if median is None else median)
            filled = F.coalesce(finite, F.lit(median))
            scaled = (F.least(F.greatest(filled, F.lit(low)), F.lit(high)) - low) / (high - low)
            columns.append(scaled.alias(f"num:{name}"))
    return table.select(*columns), genres


def user_taste_table(
    users: Any, train: Any, features: Any, genres: list[str], rating_scale: tuple[float, float] | None
) -> Any:
    """user_id + n_ratings, mean_rating, genre_mean:<g>, genre_pref:<g> (see `user_taste_features`)."""
    from pyspark.sql import functions as F

    rated = F.col("rating").isNotNull() if "rating" in train.columns else F.lit(False)
    if rating_scale is not None and "rating" in train.columns:
        low, high = rating_scale
        normalised = F.when(rated, (F.col("rating") - low) / (high - low)).otherwise(0.0)
    else:
        normalised = F.lit(0.0)
    rows = train.select("user_id", "item_id", rated.alias("_rated"), normalised.alias("_norm"))
    rows = rows.withColumn("_weight", F.when(F.col("_rated"), F.col("_norm")).otherwise(1.0))
    totals = rows.groupBy("user_id").agg(
        F.sum(F.col("_rated").cast("double")).alias("n_ratings"), F.sum("_norm").alias("_sum")
    )
    totals = totals.withColumn(
        "mean_rating", F.when(F.col("n_ratings") > 0, F.col("_sum") / F.col("n_ratings")).otherwise(0.0)
    )
    out = users.join(totals.select("user_id", "n_ratings", "mean_rating"), "user_id", "left")
    if genres:
        item_genres = features.select(
            "item_id", F.explode(F.array(*[F.when(F.col(f"genre:{g}") > 0, F.lit(g)) for g in genres])).alias("genre")
        ).where(F.col("genre").isNotNull())
        per_genre = (
            rows.join(item_genres, "item_id")
            .groupBy("user_id", "genre")
            .agg(
                F.sum(F.when(F.col("_rated"), F.col("_norm")).otherwise(0.0)).alias("_sum"),
                F.sum(F.col("_rated").cast("double")).alias("_count"),
                F.sum("_weight").alias("_weighted"),
            )
        )
        total = per_genre.groupBy("user_id").agg(F.sum("_weighted").alias("_total"))
        per_genre = per_genre.join(total, "user_id").select(
            "user_id",
            "genre",
            F.when(F.col("_count") > 0, F.col("_sum") / F.col("_count")).otherwise(0.0).alias("mean"),
            F.when(F.col("_total") > 0, F.col("_weighted") / F.col("_total")).otherwise(0.0).alias("pref"),
        )
        wide = per_genre.groupBy("user_id").pivot("genre", genres).agg(F.first("mean"), F.first("pref"))
        renamed = []
        for g in genres:
            renamed.append(F.col(f"`{g}_first(mean)`").alias(f"genre_mean:{g}"))
        for g in genres:
            renamed.append(F.col(f"`{g}_first(pref)`").alias(f"genre_pref:{g}"))
        out = out.join(wide.select("user_id", *renamed), "user_id", "left")
    return out.fillna(0.0).orderBy("user_id")


# ----------------------------------------------------------------------------- the pipeline
def prepare_spark(
    spark: Any,
    events: str | Path,
    out: str | Path,
    config: PrepareConfig | dict[str, Any],
    *,
    items: str | Path | None = None,
    item_id: str = "item_id",
    users: str | Path | None = None,
    user_id: str = "user_id",
    rating_scale: tuple[float, float] | None = None,
    name: str = "prepared",
) -> dict[str, int]:
    """Run the recipe on Spark and write the prepared directory to `out` (atomically); returns counts.
    `items` / `users`: optional Parquet tables of features keyed by `item_id` / `user_id`."""
    from pyspark.sql import functions as F

    config = config if isinstance(config, PrepareConfig) else PrepareConfig(**config)
    df = spark.read.parquet(str(events))
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise DataFormatError(f"missing column(s) {missing}; have {df.columns}", path=Path(events))
    keep = [c for c in ("user_id", "item_id", "rating", "timestamp") if c in df.columns]
    df = df.select(*keep).withColumn("_row", F.monotonically_increasing_id())
    has_rating = "rating" in df.columns
    if has_rating:  # NaN (pandas' missing float) and null both mean "interacted, not rated"
        df = df.withColumn("rating", F.when(~F.isnan("rating"), F.col("rating")))
    for step in parse_steps(config.steps):
        df, has_rating = apply_step(df, step, has_rating)
    df = stratified_flags(df.drop("_row"), config.split.test_fraction, config.split.seed)
    catalogue = _keyed_table(spark, items, item_id, "item_id")
    user_table = _keyed_table(spark, users, user_id, "user_id")
    users = df.select("user_id").distinct().orderBy("user_id")
    vocabulary = df.select("item_id").distinct().orderBy("item_id")
    test, train = df.where("_test").drop("_test"), df.where("NOT _test").drop("_test")
    features, genres = item_feature_table(spark, vocabulary, catalogue, train, config)
    counts = {
        "train_rows": train.count(),
        "test_rows": test.count(),
        "users": users.count(),
        "items": vocabulary.count(),
    }
    out = Path(out)
    with atomic_path(out, is_dir=True, ours=("prepare.json",), kind="prepared data set") as tmp:
        item_rows = vocabulary if catalogue is None else vocabulary.join(catalogue, "item_id", "left")
        item_rows = item_rows.withColumnRenamed("item_id", "id").orderBy("id")
        user_rows = users if user_table is None else users.join(user_table, "user_id", "left")
        user_rows = user_rows.withColumnRenamed("user_id", "id").orderBy("id")
        for part, frame in (("train", train), ("test", test)):
            _write_interactions(frame, user_rows, item_rows, tmp / part, name, rating_scale, has_rating)
        _write_single(features.orderBy("item_id"), tmp / "item_features.parquet")
        if config.taste:
            taste = user_taste_table(users, train, features, genres, rating_scale)
            _write_single(taste, tmp / "user_taste.parquet")
        write_manifest(tmp, config, counts, genres, engine="spark")
    return counts


def _keyed_table(spark: Any, path: str | Path | None, key: str, as_name: str) -> Any | None:
    if path is None:
        return None
    table = spark.read.parquet(str(path))
    if key not in table.columns:
        raise DataFormatError(f"table has no {key!r} column; have {table.columns}", path=Path(path))
    return table.withColumnRenamed(key, as_name)


def prepare_spark_from_interactions(spark: Any, folder: str | Path, out: str | Path, config: Any) -> dict[str, int]:
    """Input = a directory written by `Interactions.save` (features and rating scale included)."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise DataFormatError("not a recforge interactions directory (meta.json missing)", path=folder)
    meta = json.loads(meta_path.read_text())
    scale = meta.get("rating_scale")
    return prepare_spark(
        spark,
        folder / "interactions.parquet",
        out,
        config,
        items=folder / "items.parquet",
        item_id="id",
        users=folder / "users.parquet",
        user_id="id",
        rating_scale=None if scale is None else tuple(scale),
        name=meta.get("name", folder.name),
    )


def _write_interactions(
    frame: Any,
    users: Any,
    item_rows: Any,
    folder: Path,
    name: str,
    rating_scale: tuple[float, float] | None,
    has_rating: bool,
) -> None:
    """The `Interactions.save` layout: interactions.parquet (a Spark directory), users, items, meta.json."""
    folder.mkdir(parents=True)
    frame.write.parquet(str(folder / "interactions.parquet"))
    _write_single(users, folder / "users.parquet")
    _write_single(item_rows, folder / "items.parquet")
    meta = {
        "format": "recforge-interactions",
        "format_version": FORMAT_VERSION,
        "name": name,
        "rating_scale": rating_scale if has_rating else None,  # binarize drops ratings and their scale
        "has_rating": has_rating,
        "has_timestamp": "timestamp" in frame.columns,
        "source": {"engine": "spark"},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _write_single(frame: Any, path: Path) -> None:
    """Small tables (one row per user or item) as one Parquet file written by the driver."""
    frame.toPandas().to_parquet(path, index=False)
