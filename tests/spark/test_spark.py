"""The Spark engine against the in-memory one, on real data in Spark local mode: same rows, same split,
same vocabularies, same features (floats to 1e-6); batch scores equal to `model.recommend`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.interactions import Interactions
from recforge.data.prepare import prepare, read_prepared, write_prepared
from recforge.evaluation.saved import recommend_file
from recforge.models import load_model

pytestmark = [pytest.mark.spark, pytest.mark.xdist_group("spark")]

if shutil.which("java") is None:  # pragma: no cover - CI and this machine have Java 17
    pytest.fail("Spark tests need Java (17) on PATH", pytrace=False)


@pytest.fixture(scope="module")
def spark():
    from recforge.spark.prepare import spark_session

    with spark_session(local_threads=2, memory="2g") as session:
        yield session


def both_engines(spark, data: Interactions, config: dict, tmp_path):
    from recforge.spark.prepare import prepare_spark_from_interactions

    source = data.save(tmp_path / "source")
    write_prepared(prepare(Interactions.load(source), config), tmp_path / "memory")
    counts = prepare_spark_from_interactions(spark, source, tmp_path / "spark", config)
    return read_prepared(tmp_path / "memory"), read_prepared(tmp_path / "spark"), counts


def assert_same(memory, on_spark, counts):
    assert memory.counts() == on_spark.counts() == counts
    assert memory.genres == on_spark.genres
    for part in ("train", "test"):
        ours, theirs = getattr(memory, part), getattr(on_spark, part)
        assert ours.users == theirs.users and ours.items == theirs.items
        assert ours.rating_scale == theirs.rating_scale
        rows = ours.to_frame()
        columns = list(rows.columns)
        pd.testing.assert_frame_equal(
            rows.sort_values(columns).reset_index(drop=True),
            theirs.to_frame().sort_values(columns).reset_index(drop=True),
            check_dtype=False,
        )
        if ours.item_features is not None:
            assert list(ours.item_features.columns) == list(theirs.item_features.columns)
    pd.testing.assert_frame_equal(memory.item_features, on_spark.item_features, check_dtype=False, rtol=1e-6)
    if memory.user_taste is not None:
        pd.testing.assert_frame_equal(memory.user_taste, on_spark.user_taste, check_dtype=False, rtol=1e-6, atol=1e-7)


def test_movielens_100k_prepares_identically(spark, ml100k, tmp_path):
    config = {
        "steps": [
            {"step": "deduplicate"},
            {"step": "filter_user_counts", "min_count": 20, "max_count": 500},
            {"step": "filter_rating_spread", "min_spread": 3},
        ],
        "genres": {"min_frequency_quantile": 0.5},
        "numeric_ranges": {"year": [1900, 2030]},
    }
    memory, on_spark, counts = both_engines(spark, ml100k, config, tmp_path)
    assert_same(memory, on_spark, counts)
    assert 0 < len(memory.genres) < 19 and counts["test_rows"] > 15_000
    # the stratified split keeps the rating distribution
    share = [pd.Series(p.rating).value_counts(normalize=True).sort_index() for p in (memory.train, memory.test)]
    assert np.abs(share[0] - share[1]).max() < 0.002


def test_anime_prepares_identically_with_unrated_rows(spark, anime, tmp_path):
    fixture = anime.subset(anime.user_index < 800).compact()  # ~86k rows of the real Kaggle sample
    assert np.isnan(fixture.rating).any()  # the -1 "watched, not rated" rows
    config = {
        "steps": [
            {"step": "filter_user_counts", "min_count": 8, "max_count": 700},
            {"step": "filter_rating_spread", "min_spread": 3},
            {"step": "k_core", "user_k": 5, "item_k": 3},
        ],
        "genres": {"min_frequency_quantile": 0.9},
        "numeric_ranges": {"episodes": [0, 4000], "score": [1, 10]},
    }
    memory, on_spark, counts = both_engines(spark, fixture, config, tmp_path)
    assert_same(memory, on_spark, counts)
    assert np.isnan(memory.test.rating).any()  # unrated rows are their own stratum
    assert 1 <= len(memory.genres) <= 8


def test_binarize_and_first_duplicate_agree(spark, tmp_path):
    rng = np.random.default_rng(5)
    n = 4_000
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 150, n),
            "item_id": [f"i{v}" for v in rng.integers(0, 90, n)],  # string ids
            "rating": rng.integers(1, 6, n).astype(np.float32),
            "timestamp": rng.integers(0, 50, n),  # many timestamp ties
        }
    )
    data = Interactions.from_frame(frame, rating="rating", timestamp="timestamp", rating_scale=(1, 5))
    config = {
        "steps": [
            {"step": "deduplicate", "keep": "first"},
            {"step": "filter_item_counts", "min_count": 10},
            {"step": "binarize", "threshold": 3.5},
        ],
        "genres": None,
        "taste": True,
    }
    memory, on_spark, counts = both_engines(spark, data, config, tmp_path)
    assert_same(memory, on_spark, counts)
    assert memory.train.rating is None


def test_batch_scores_equal_recommend(spark, ml100k, tmp_path):
    from recforge.models import create_model
    from recforge.spark.score import score_spark

    model = create_model("ials", n_factors=16, n_iterations=3).fit(ml100k)
    artifact = model.save(tmp_path / "model")
    rows = score_spark(spark, artifact, tmp_path / "scores", k=10, partitions=3, batch_size=200)
    assert rows == ml100k.n_users * 10
    scored = pd.read_parquet(tmp_path / "scores").sort_values(["user", "rank"])
    expected = model.recommend(ml100k.users.ids, 10)
    assert np.array_equal(scored["item"].to_numpy().reshape(-1, 10), expected.items.astype(np.int64))
    np.testing.assert_allclose(scored["score"].to_numpy().reshape(-1, 10), expected.scores, rtol=1e-6)
    # the columns of `recforge recommend --users all`, and its rows
    batch = recommend_file(load_model(artifact), "all", k=10)
    assert list(scored.columns) == list(batch.columns) == ["user", "rank", "item", "score", "served_by", "note"]
    columns = ["user", "item", "served_by", "note"]
    pd.testing.assert_frame_equal(scored.reset_index(drop=True)[columns], batch[columns], check_dtype=False)


def test_batch_scores_answer_a_user_whose_list_is_empty(spark, tmp_path):
    """A user who has seen the whole catalogue gets one row with its note, as in `recommend --users`."""
    from recforge.models import create_model
    from recforge.spark.score import score_spark

    frame = pd.DataFrame({"user": ["a"] * 4 + ["b", "b", "c"], "item": [1, 2, 3, 4, 1, 2, 3]})
    model = create_model("most_popular").fit(Interactions.from_frame(frame, user="user", item="item"))
    score_spark(spark, model.save(tmp_path / "model"), tmp_path / "scores", k=3)
    scored = pd.read_parquet(tmp_path / "scores").sort_values(["user", "rank"], na_position="first")
    assert scored["user"].tolist() == ["a", "b", "b", "c", "c", "c"]
    seen_all = scored[scored["user"] == "a"].iloc[0]
    assert pd.isna(seen_all["rank"]) and pd.isna(seen_all["item"]) and seen_all["note"].startswith("only 0 item(s)")
    assert scored.loc[scored["user"] == "b", "item"].tolist() == [3, 4]
    assert recommend_file(load_model(tmp_path / "model"), "all", k=3)["user"].tolist() == scored["user"].tolist()


def test_identical_rows_tied_at_the_cut_and_tiny_strata_split_identically(spark, tmp_path):
    """Exact duplicates share a row key, so a block of them can straddle a stratum's cut: both engines must
    send the same number of them to test. A two-row stratum sends rint(2 x fraction) rows to test."""
    rng = np.random.default_rng(11)
    distinct = pd.DataFrame(
        {
            "user_id": rng.integers(0, 60, 600),
            "item_id": rng.integers(0, 40, 600),
            "rating": rng.choice([1.0, 2.0, 3.0, 4.0], 600),
            "timestamp": rng.integers(0, 10**6, 600),
        }
    )
    block = distinct.iloc[[0] * 40 + [1] * 25]  # 65 copies of two rows: wherever the cut falls, some are tied
    tiny = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [5.0, 5.0], "timestamp": [7, 8]})
    frame = pd.concat([distinct, block, tiny], ignore_index=True)
    data = Interactions.from_frame(frame, rating="rating", timestamp="timestamp", rating_scale=(1, 5))
    # a fraction whose cut falls inside the 41 copies of row 0 (ranked by the keys both engines use)
    from recforge.data.splits import row_keys

    stratum = frame[frame["rating"] == frame["rating"].iloc[0]]
    keys = np.sort(row_keys(stratum["user_id"].to_numpy(), stratum["item_id"].to_numpy(), stratum["timestamp"], 3))
    row0 = frame.iloc[:1]
    first = int(np.searchsorted(keys, row_keys(row0["user_id"], row0["item_id"], row0["timestamp"], 3))[0])
    straddling = (first + 20) / len(stratum)
    assert keys[first] == keys[first + 20] == keys[first + 40]
    for fraction in (0.2, 0.5, 0.93, straddling):
        config = {"steps": [], "split": {"test_fraction": fraction, "seed": 3}, "genres": None}
        memory, on_spark, counts = both_engines(spark, data, config, tmp_path / str(fraction))
        assert_same(memory, on_spark, counts)
        # the two-row stratum sends rint(2 x fraction) rows to test: none at 0.2, one at 0.5, both at 0.93
        assert int((memory.test.rating == 5.0).sum()) == int(np.rint(2 * fraction))
    implicit = Interactions.from_frame(frame.drop(columns="rating"), timestamp="timestamp")
    memory, on_spark, counts = both_engines(spark, implicit, {"steps": [], "genres": None}, tmp_path / "implicit")
    assert_same(memory, on_spark, counts)
    assert counts["test_rows"] == round(len(frame) * 0.2)


@pytest.mark.slow
def test_cli_prepares_the_raw_anime_folder_with_the_one_anime_recipe(data_dir, tmp_path):
    """`recforge spark prepare RAW --dataset anime-kaggle` reads the raw Kaggle folder through the loader,
    and the shipped recipe keeps exactly the users the anime experiment keeps (unrated watches do not count
    towards "8..117 ratings" in either). Without --dataset a raw folder is one clear line, not a Java trace;
    with it, no Spark start-up chatter."""
    import subprocess
    import sys

    from recforge.data.loaders import load_dataset
    from recforge.data.preprocess import preprocess
    from recforge.experiment import load_config

    root = Path(__file__).resolve().parents[2]
    raw = data_dir / "anime-kaggle"
    command = [sys.executable, "-m", "recforge.cli", "spark", "prepare", str(raw), str(tmp_path / "out")]
    command += ["--recipe", str(root / "experiments" / "anime_recipe.toml")]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (
        refused.returncode == 2 and "--dataset" in refused.stderr and "Exception" not in refused.stdout + refused.stderr
    )
    done = subprocess.run([*command, "--dataset", "anime-kaggle"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    # Spark's own start-up notices and WARN lines are not printed (the JVM's module notice cannot be quieted)
    said = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Using incubator modules")]
    assert not [line for line in said if "log4j" in line or " WARN " in line or "log level" in line], done.stderr
    prepared = json.loads((tmp_path / "out" / "prepare.json").read_text())

    experiment = load_config(root / "experiments" / "anime_kaggle.toml")
    data, _ = preprocess(load_dataset("anime-kaggle", raw), experiment.preprocess)
    assert prepared["counts"]["users"] == int((data.user_counts() > 0).sum())
