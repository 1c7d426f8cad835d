"""IndexedRecommender: the same recommend as the model, answered by a vector index, exactly k long."""

from __future__ import annotations

import numpy as np
import pytest

from recforge import load
from recforge.data.query import Query
from recforge.models import create_model
from recforge.models.indexed import IndexedRecommender

pytestmark = pytest.mark.xdist_group("indexed")


@pytest.fixture(scope="module")
def ials(ml100k):
    return create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "hnsw", "ef_search": 16, "m": 4},  # a small graph runs dry long before 1,000 results
        {"kind": "ivf", "nlist": 64, "nprobe": 1},  # one cell holds a few dozen items
        {"kind": "kmeans", "n_clusters": 40},  # the nearest cluster is smaller than k
    ],
    ids=["hnsw", "ivf", "kmeans"],
)
def test_every_search_path_returns_exactly_k_or_every_unseen_item(ials, ml100k, config):
    indexed = IndexedRecommender.build(ials, config)
    user = ml100k.users.index([13])[0]
    unseen = ml100k.n_items - ials.seen_[user].nnz  # 1,046 for user 13
    for k in (10, 1000, 5000):
        recs = indexed.recommend([13], k=k)
        listed = recs.item_index[0][recs.item_index[0] >= 0]
        assert len(listed) == min(k, unseen) and len(set(listed)) == len(listed)
        assert not set(listed) & set(ials.seen_[user].indices)
    items, _ = indexed.recommend_vector(ials.user_embeddings(np.array([user]))[0], 1000, ials.seen_[user].indices)
    assert (items >= 0).sum() == min(1000, unseen)  # the service's single-query path too


def test_indexed_answers_agree_with_the_exact_model_and_say_so(ials, ml100k):
    indexed = IndexedRecommender.build(ials, {"kind": "hnsw"})
    users = ml100k.users.ids[:200]
    approx, exact = indexed.recommend(users, k=10), ials.recommend(users, k=10)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(approx.item_index, exact.item_index, strict=True)])
    assert recall >= 0.97 and set(approx.served_by) == {"model+ann"}
    query = Query.from_items([[49, 171, 180], []], ml100k.n_items)  # Star Wars fans, and someone new
    mixed = indexed.recommend(query, k=10)
    assert list(mixed.served_by) == ["history+ann", "popularity"] and "no history given" in mixed.notes[1]
    assert not {49, 171, 180} & set(mixed.item_index[0])
    np.testing.assert_array_equal(mixed.item_index[1], ials.recommend(query, k=10).item_index[1])


def test_an_indexed_artifact_loads_back_indexed(ials, tmp_path):
    indexed = IndexedRecommender.build(ials, {"kind": "hnsw"})
    loaded = load(indexed.save(tmp_path / "model"))
    assert isinstance(loaded, IndexedRecommender) and loaded.index.config.kind == "hnsw"
    np.testing.assert_array_equal(loaded.recommend([1, 2], k=5).item_index, indexed.recommend([1, 2], k=5).item_index)
    assert loaded.n_items == ials.n_items and loaded.predict is not None  # the rest is the model's own
    plain = load(ials.save(tmp_path / "plain"))
    assert not isinstance(plain, IndexedRecommender)


def test_a_model_without_embeddings_cannot_be_indexed(ml100k):
    from recforge.errors import ConfigError

    with pytest.raises(ConfigError, match="embeddings"):
        IndexedRecommender.build(create_model("ease").fit(ml100k), {"kind": "hnsw"})


def test_training_with_an_index_on_a_model_without_embeddings_fails_before_the_fit(tmp_path, monkeypatch):
    """`recforge train` with [index] under SASRec fitted the whole model, then refused to save it; the
    refusal now comes first, and names the models that have embeddings (all of them, checked here)."""
    import re

    from recforge.coldstart import EMBEDDINGS
    from recforge.errors import ConfigError
    from recforge.models.registry import _REGISTRY
    from recforge.train import TrainConfig, train

    config = TrainConfig.model_validate(
        {"dataset": {"name": "ml-100k"}, "model": {"model": "sasrec"}, "index": {"kind": "hnsw"}}
    )
    monkeypatch.setattr("recforge.train.load_raw_dataset", lambda config: pytest.fail("loaded before refusing"))
    with pytest.raises(ConfigError, match="an index needs a model with user/item embeddings") as info:
        train(config, tmp_path / "never")
    named = set(re.search(r"\(such as ([a-z_, ]+)\)", str(info.value)).group(1).split(", "))
    assert named == {name for name in _REGISTRY if EMBEDDINGS in create_model(name).capabilities}
    assert not (tmp_path / "never").exists()


def test_batch_recommend_of_every_user_through_the_index(ials, ml100k):
    """`recforge recommend --users all` on an artifact with an index: the batch path passes batch_size=None
    (the model's default), which the indexed recommend used to hand straight to range() (TypeError)."""
    from recforge.evaluation.saved import recommend_file

    indexed = IndexedRecommender.build(ials, {"kind": "hnsw"})
    frame = recommend_file(indexed, "all", k=20)
    assert frame.groupby("user").size().eq(20).all() and frame["user"].nunique() == ml100k.n_users
    assert indexed.recommend(np.arange(5), k=20, external_ids=False, batch_size=2).item_index.shape == (5, 20)


def test_a_restricted_list_is_scored_exactly_by_the_model(ials, ml100k):
    """An HNSW graph cannot promise k results from a subset it was not built for: lists restricted to
    candidates (here the first 300 items) or kept from some are the model's exact ones."""
    indexed = IndexedRecommender.build(ials, {"kind": "hnsw", "ef_search": 16, "m": 4})
    candidates, excluded = ml100k.items.ids[:300], [50, 181]
    got = indexed.recommend([13, 1], k=50, candidates=candidates, exclude_items=excluded)
    exact = ials.recommend([13, 1], k=50, candidates=candidates, exclude_items=excluded)
    np.testing.assert_array_equal(got.item_index, exact.item_index)
    assert set(got.served_by) == {"model"} and not {50, 181} & set(got.items[0]) and (got.item_index < 300).all()
