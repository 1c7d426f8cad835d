"""One preparation recipe, two engines: preprocessing steps -> stratified split -> item features (genres,
fixed-range scaling) -> user taste profiles, written as a directory both engines produce identically.

`prepare(data, config)` runs it in memory; `recforge.spark.prepare.prepare_spark` runs the same recipe on
Spark DataFrames for data that does not fit. The output directory (`write_prepared` / `read_prepared`):

    train/, test/             Interactions directories (`Interactions.load` reads them)
    item_features.parquet     item_id, genre:<g> (multi-hot), num:<c> (scaled to [0, 1]) per item
    user_taste.parquet        user_id, taste columns (see `user_taste_features`) from the train split
    prepare.json              the config, row/user/item counts, the genre vocabulary

Semantics shared by both engines (and tested to agree): steps as in `recforge.data.preprocess`; the split
is `stratified_split` (row keys hash row content, so it is order-free); genres are normalised
(`normalise_genre`) and kept when their item count exceeds the `min_frequency_quantile` of genre counts;
numeric item columns are clipped to fixed ranges and scaled, missing values taking the median over
training items; taste profiles come from training rows only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recforge._io import atomic_path
from recforge.data.features import ItemFeatureBuilder, user_taste_features
from recforge.data.interactions import Interactions
from recforge.data.preprocess import parse_steps, preprocess
from recforge.data.splits import stratified_split
from recforge.errors import ConfigError, DataFormatError

FORMAT = "recforge-prepared"


class GenreOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    column: str = "genres"
    min_frequency_quantile: float | None = Field(None, ge=0, lt=1)


class SplitOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class PrepareConfig(BaseModel):
    """What to do, engine-independent; round-trips through JSON/TOML."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: list[dict[str, Any]] = Field(default_factory=list, description="recforge.data.preprocess steps")
    split: SplitOptions = SplitOptions()
    genres: GenreOptions | None = GenreOptions()
    numeric_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="item column -> fixed (low, high) for min-max scaling"
    )
    taste: bool = True

    def model_post_init(self, _: Any) -> None:
        parse_steps(self.steps)  # fail early, naming the bad step
        for column, (low, high) in self.numeric_ranges.items():
            if high <= low:
                raise ConfigError(f"numeric range for {column!r} is empty: {low}..{high}")


@dataclass
class Prepared:
    train: Interactions
    test: Interactions
    item_features: pd.DataFrame  # item_id + feature columns, one row per item of the vocabulary
    user_taste: pd.DataFrame | None  # user_id + taste columns, one row per user of the vocabulary
    genres: list[str]
    config: PrepareConfig

    def counts(self) -> dict[str, int]:
        return {
            "train_rows": len(self.train),
            "test_rows": len(self.test),
            "users": self.train.n_users,
            "items": self.train.n_items,
        }


def prepare(data: Interactions, config: PrepareConfig | dict[str, Any]) -> Prepared:
    """Run the recipe in memory."""
    config = config if isinstance(config, PrepareConfig) else PrepareConfig(**config)
    data, _ = preprocess(data, config.steps)
    if data.item_features is None:
        data = replace(data, item_features=pd.DataFrame(index=range(data.n_items)))
    features = data.item_features
    genre_column = config.genres.column if config.genres is not None else None
    if genre_column is not None and genre_column not in features.columns:
        raise ConfigError(f"genre column {genre_column!r} not in the item table {list(features.columns)}")
    missing = [c for c in config.numeric_ranges if c not in features.columns]
    if missing:
        raise ConfigError(f"numeric column(s) {missing} not in the item table {list(features.columns)}")
    split = stratified_split(data, config.split.test_fraction, seed=config.split.seed)
    train, test = split.train, split.test
    builder = ItemFeatureBuilder(
        genre_columns=(genre_column,) if genre_column else (),
        min_genre_quantile=config.genres.min_frequency_quantile if config.genres else None,
        numeric_ranges=dict(config.numeric_ranges),
    ).fit(train)
    matrix = builder.transform(features)
    item_table = pd.DataFrame(matrix.dense.astype(np.float64), columns=matrix.dense_names)
    item_table.insert(0, "item_id", data.items.ids)
    taste = None
    if config.taste:
        genre_part = matrix.dense[:, : len(builder.genres_)]
        taste = user_taste_features(train, genre_part, builder.genres_)
        taste.insert(0, "user_id", data.users.ids)
    return Prepared(train, test, item_table, taste, builder.genres_, config)


def write_prepared(prepared: Prepared, folder: str | Path) -> Path:
    """Write the directory layout of the module docstring, atomically."""
    folder = Path(folder)
    with atomic_path(folder, is_dir=True, ours=("prepare.json",), kind="prepared data set") as tmp:
        prepared.train.save(tmp / "train")
        prepared.test.save(tmp / "test")
        prepared.item_features.to_parquet(tmp / "item_features.parquet", index=False)
        if prepared.user_taste is not None:
            prepared.user_taste.to_parquet(tmp / "user_taste.parquet", index=False)
        write_manifest(tmp, prepared.config, prepared.counts(), prepared.genres, engine="memory")
    return folder


def write_manifest(folder: Path, config: PrepareConfig, counts: dict, genres: list[str], engine: str) -> None:
    manifest = {"format": FORMAT, "engine": engine, "config": config.model_dump(), "counts": counts, "genres": genres}
    (folder / "prepare.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def read_prepared(folder: str | Path) -> Prepared:
    """Read a directory written by either engine."""
    folder = Path(folder)
    manifest_path = folder / "prepare.json"
    if not manifest_path.exists():
        raise DataFormatError("not a prepared-data directory (prepare.json missing)", path=folder)
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise DataFormatError(f"unexpected format {manifest.get('format')!r}", path=manifest_path)
    taste_path = folder / "user_taste.parquet"
    return Prepared(
        train=Interactions.load(folder / "train"),
        test=Interactions.load(folder / "test"),
        item_features=pd.read_parquet(folder / "item_features.parquet"),
        user_taste=pd.read_parquet(taste_path) if taste_path.exists() else None,
        genres=list(manifest["genres"]),
        config=PrepareConfig(**manifest["config"]),
    )
