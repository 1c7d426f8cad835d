"""The synthetic generator: exact sizes, the documented shape of the data, determinism, streaming."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data.loaders.tabular import load_table
from recforge.data.synthetic import SyntheticConfig, synthetic_interactions, write_synthetic

CONFIG = SyntheticConfig(n_users=2_000, n_items=5_000, n_interactions=100_000, seed=3)


@pytest.fixture(scope="module")
def generated():
    return synthetic_interactions(CONFIG)


def test_sizes_ranges_and_time_order(generated):
    events, items = generated
    assert len(events) == CONFIG.n_interactions
    assert events["user_id"].between(0, CONFIG.n_users - 1).all()
    assert events["item_id"].between(0, CONFIG.n_items - 1).all()
    assert events.groupby("user_id").size().min() >= CONFIG.min_user_events
    assert set(np.unique(events["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (events.groupby("user_id")["timestamp"].diff().dropna() >= 0).all()
    assert len(items) == CONFIG.n_items and all(1 <= len(g) <= 3 for g in items["genres"])


def test_popularity_is_heavy_tailed_and_tastes_are_concentrated(generated):
    events, items = generated
    counts = events["item_id"].value_counts().to_numpy()
    assert counts[: len(counts) // 10].sum() > 0.5 * counts.sum()  # top 10% of items take most events
    primary = items.set_index("item_id")["genres"].str[0]
    genre = primary.loc[events["item_id"]].to_numpy()
    top_share = (
        pd.DataFrame({"user": events["user_id"], "genre": genre})
        .groupby("user")["genre"]
        .agg(lambda g: g.value_counts(normalize=True).iloc[0])
    )
    overall = pd.Series(genre).value_counts(normalize=True).iloc[0]
    assert top_share.median() > 2 * overall  # users prefer their genres far beyond the global mix


def test_same_seed_gives_the_same_data_and_another_seed_does_not(generated):
    events, _ = generated
    assert synthetic_interactions(CONFIG)[0].equals(events)
    assert not synthetic_interactions(CONFIG.model_copy(update={"seed": 4}))[0].equals(events)


def test_written_parquet_loads_through_the_table_loader(tmp_path):
    small = SyntheticConfig(n_users=300, n_items=400, n_interactions=6_000)
    folder = write_synthetic(small, tmp_path / "synthetic", events_per_block=1_000)
    data = load_table(folder / "events.parquet", user="user_id", item="item_id", rating="rating", timestamp="timestamp")
    assert len(data) == 6_000 and data.n_users == 300
    assert (folder / "items.parquet").exists() and (folder / "config.json").exists()


@settings(max_examples=25, deadline=None)
@given(n_users=st.integers(1, 50), n_items=st.integers(1, 60), per_user=st.integers(1, 30), seed=st.integers(0, 99))
def test_any_size_gives_exactly_the_requested_events(n_users, n_items, per_user, seed):
    config = SyntheticConfig(n_users=n_users, n_items=n_items, n_interactions=n_users * per_user, seed=seed)
    events, _ = synthetic_interactions(config)
    assert len(events) == n_users * per_user
    assert events["item_id"].between(0, n_items - 1).all()
    assert events["user_id"].nunique() == n_users
