"""Realistic synthetic interaction logs at any scale, for benchmarks and load tests (never for quality claims).

The generative story, chosen so the data has the properties recommenders exploit and struggle with:
- items: power-law (Zipf) popularity, one primary genre (the latent taste dimension) plus up to two
  secondary genres, a title;
- users: power-law activity (log-normal counts, at least `min_user_events`) and a sparse taste vector
  over genres drawn from a Dirichlet — a latent-factor model with genre-shaped factors;
- an event: genre ~ the user's taste (or the global genre mix with probability `noise`), then item ~
  popularity within that genre; rating = clip(round(3 + user bias + item quality + taste affinity +
  noise), 1, 5); timestamps: each user starts at a uniform point of a three-year window and
  interacts at exponential gaps, so the log has a time order per user.
Everything is vectorised (inverse-CDF sampling with `searchsorted`), and `write_synthetic` streams blocks
of whole users to Parquet row groups, so 100M events never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from recforge._io import atomic_path

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Music",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Sports",
    "Thriller",
    "War",
    "Western",
    "Slice-of-Life",
    "Mecha",
    "Historical",
)
START = 1_577_836_800  # 2020-01-01 UTC
WINDOW = 3 * 365 * 86_400


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n_users: int = Field(ge=1)
    n_items: int = Field(ge=1)
    n_interactions: int = Field(ge=1, description="events to generate (repeats of a user-item pair happen)")
    n_genres: int = Field(len(GENRES), ge=1, le=len(GENRES))
    popularity_exponent: float = Field(1.0, gt=0, description="Zipf exponent of item popularity")
    taste_concentration: float = Field(0.1, gt=0, description="Dirichlet alpha: small = users like few genres")
    noise: float = Field(0.1, ge=0, le=1, description="share of events that ignore the user's taste")
    min_user_events: int = Field(5, ge=1)
    seed: int = 0


class SyntheticCatalogue:
    """Item-side state of a synthetic dataset: genres, popularity and per-genre sampling tables."""

    def __init__(self, config: SyntheticConfig) -> None:
        rng = np.random.default_rng([config.seed, 1])
        n, g = config.n_items, config.n_genres
        weights = 1.0 / np.arange(1, n + 1) ** config.popularity_exponent
        self.popularity = rng.permutation(weights)  # popularity is not tied to the item id
        self.genre = rng.integers(0, g, n)
        self.quality = rng.normal(0.0, 0.5, n)
        self.genre_mass = np.bincount(self.genre, weights=self.popularity, minlength=g) + 1e-12
        # items sorted by genre with a global CDF: a genre's items form one contiguous CDF segment
        self.order = np.argsort(self.genre, kind="stable")
        self.cdf = np.cumsum(self.popularity[self.order])
        self.segment_start = np.concatenate([[0.0], np.cumsum(self.genre_mass)[:-1]])
        extra = rng.integers(0, g, (n, 2))
        keep = rng.random((n, 2)) < np.array([0.5, 0.2])
        self.secondary = np.where(keep, extra, -1)

    def sample(self, genres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of `genres`, drawn by popularity within that genre."""
        target = self.segment_start[genres] + rng.random(len(genres)) * self.genre_mass[genres]
        position = np.minimum(np.searchsorted(self.cdf, target, side="right"), len(self.cdf) - 1)
        return self.order[position]

    def table(self) -> pd.DataFrame:
        """item_id, title, genres (list of str, primary first), popularity weight."""
        names = np.array(GENRES)
        genres = [
            list(dict.fromkeys(names[[p, *[s for s in sec if s >= 0]]]))
            for p, sec in zip(self.genre, self.secondary, strict=True)
        ]
        n = len(self.genre)
        return pd.DataFrame(
            {
                "item_id": np.arange(n, dtype=np.int64),
                "title": [f"{names[g]} title {i}" for i, g in enumerate(self.genre)],
                "genres": genres,
                "popularity": self.popularity,
            }
        )


def _user_counts(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Events per user: at least `min_user_events`, the rest multinomial over log-normal activity weights,
    summing exactly to n_interactions."""
    floor = min(config.min_user_events, config.n_interactions // config.n_users)
    activity = rng.lognormal(0.0, 1.2, config.n_users)
    return floor + rng.multinomial(config.n_interactions - floor * config.n_users, activity / activity.sum())


def _user_blocks(counts: np.ndarray, events_per_block: int) -> Iterator[np.ndarray]:
    """Consecutive user ranges holding about `events_per_block` events each (a heavy user gets a block)."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + events_per_block, "right")))
        yield np.arange(start, min(stop, len(counts)))
        start = stop


def synthetic_blocks(config: SyntheticConfig, events_per_block: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """The event log in blocks of whole users: user_id, item_id, rating (float32), timestamp (int64).
    The data depends on (config, events_per_block): each block draws from its own seeded generator.
    Memory per block is ~100 bytes per event plus n_genres bytes per event for genre sampling."""
    catalogue = SyntheticCatalogue(config)
    counts = _user_counts(config, np.random.default_rng([config.seed, 0]))
    genre_share = catalogue.genre_mass / catalogue.genre_mass.sum()
    for users in _user_blocks(counts, events_per_block):
        rng = np.random.default_rng([config.seed, 2, int(users[0])])
        n_events = counts[users]
        taste = rng.dirichlet(np.full(config.n_genres, config.taste_concentration), len(users))
        taste = (1 - config.noise) * taste + config.noise * genre_share
        bias = rng.normal(0.0, 0.4, len(users))
        local = np.repeat(np.arange(len(users)), n_events)
        cumulative = np.cumsum(taste, axis=1)
        draw = rng.random(len(local)) * cumulative[local, -1]
        genres = np.minimum((cumulative[local] < draw[:, None]).sum(axis=1), config.n_genres - 1)
        items = catalogue.sample(genres, rng)
        affinity = 2.0 * (taste[local, catalogue.genre[items]] - 1.0 / config.n_genres)
        rating = 3.0 + bias[local] + catalogue.quality[items] + affinity + rng.normal(0.0, 0.7, len(local))
        # time: exponential gaps within each user, rescaled into that user's active stretch of the window
        clock = np.cumsum(rng.exponential(1.0, len(local)))
        first = np.cumsum(n_events) - n_events
        before = np.repeat(np.concatenate([[0.0], clock])[first], n_events)  # clock before the user's first
        elapsed = clock - before
        span = np.repeat(clock[first + n_events - 1], n_events) - before
        begin = rng.uniform(0, 0.7 * WINDOW, len(users))[local]
        stretch = rng.uniform(0.05, 0.3, len(users))[local] * WINDOW
        yield pd.DataFrame(
            {
                "user_id": users[local].astype(np.int64),
                "item_id": items.astype(np.int64),
                "rating": np.clip(np.rint(rating), 1, 5).astype(np.float32),
                "timestamp": (START + begin + elapsed / span * stretch).astype(np.int64),
            }
        )


def synthetic_interactions(config: SyntheticConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, items) in memory; for large configs prefer `write_synthetic`."""
    events = pd.concat(list(synthetic_blocks(config)), ignore_index=True)
    return events, SyntheticCatalogue(config).table()


def write_synthetic(config: SyntheticConfig, folder: str | Path, events_per_block: int = 2_000_000) -> Path:
    """Write `events.parquet` (one row group per user block) and `items.parquet` into `folder`, atomically.

    Load with `load_table(folder / "events.parquet", user="user_id", item="item_id", rating="rating",
    timestamp="timestamp")`; the item table carries title and genres.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    with atomic_path(folder, is_dir=True, ours=("events.parquet",), kind="synthetic data set") as tmp:
        writer = None
        for block in synthetic_blocks(config, events_per_block):
            table = pa.Table.from_pandas(block, preserve_index=False)
            writer = writer or pq.ParquetWriter(tmp / "events.parquet", table.schema)
            writer.write_table(table)
        writer.close()
        SyntheticCatalogue(config).table().to_parquet(tmp / "items.parquet", index=False)
        (tmp / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    return folder
