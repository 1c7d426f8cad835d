"""A blend's item similarity: its members' similarities combined as their scores are."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.errors import CapabilityError, ConfigError
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model, load_model
from recforge.models.ensemble import held_out_ndcg
from tests.conftest import make_interactions


@pytest.fixture(scope="module")
def data():
    return make_interactions(n_users=60, n_items=40, n=900, seed=3, preference=True)


def _zscores(rows: np.ndarray) -> np.ndarray:
    return (rows - rows.mean(axis=1, keepdims=True)) / rows.std(axis=1, keepdims=True)


def test_similar_items_combine_the_members_similarities(data):
    ease = {"model": "ease", "params": {"reg": 10.0}}
    ials = {"model": "ials", "params": {"n_factors": 8}, "weight": 0.5}
    blend = create_model("blend", members=[ease, ials]).fit(data)
    items = np.array([0, 7, 13])
    expected = 0
    for member, weight in zip(blend.members_, (1.0, 0.5), strict=True):
        rows = member._item_similarity(items).astype(np.float64)
        rows[np.arange(3), items] = rows.min(axis=1)
        expected = expected + weight * _zscores(rows)
    np.testing.assert_allclose(blend._item_similarity(items), expected, rtol=1e-4, atol=1e-5)
    similar = blend.similar_items(items, k=5, external_ids=False)
    assert similar.item_index.shape == (3, 5)
    assert not np.any(similar.item_index == items[:, None])  # never the item itself
    assert set(similar.notes) == {""}
    everything = blend.similar_items(items, k=50, external_ids=False)  # more than the 39 other items
    assert ((everything.item_index >= 0).sum(axis=1) == 39).all()
    assert set(everything.notes) == {"only 39 item(s) to list: the catalogue has no other items"}


def test_members_without_a_similarity_are_left_out(data):
    with_popularity = create_model(
        "blend", members=[{"model": "ease", "params": {"reg": 10.0}}, {"model": "most_popular"}]
    ).fit(data)
    alone = create_model("ease", reg=10.0).fit(data)
    items = np.arange(10)
    ours = with_popularity.similar_items(items, k=5, external_ids=False).item_index
    np.testing.assert_array_equal(ours, alone.similar_items(items, k=5, external_ids=False).item_index)
    with pytest.raises(CapabilityError, match="no member of this blend"):
        create_model("blend", members=[{"model": "most_popular"}]).fit(data).similar_items([0], k=3, external_ids=False)


def test_validated_weights_keep_the_configured_ones_when_nothing_ranks_better(data):
    """Two copies of one member rank identically at any weights: every trial ties, so nothing moves."""
    ease = {"model": "ease", "params": {"reg": 10.0}}
    blend = create_model("blend", members=[ease, {**ease, "weight": 0.3}], validate_weights=True).fit(data)
    assert [m.weight for m in blend.config.members] == [1.0, 0.3]
    log = next(entry for entry in blend.training_log_ if "validated_weights" in entry)
    assert log["validated_weights"] == [1.0, 0.3] and log["weightings_tried"] == 7  # the grid's six, and 0.3


def test_validated_weights_are_saved_with_the_blend(data, tmp_path):
    members = [{"model": "ease", "params": {"reg": 10.0}}, {"model": "most_popular", "weight": 1.0}]
    blend = create_model("blend", members=members, validate_weights=True, weight_grid=[0.0, 0.05]).fit(data)
    chosen = [m.weight for m in blend.config.members]
    assert chosen[1] in (0.0, 0.05, 1.0)
    loaded = load_model(blend.save(tmp_path / "blend"))
    assert [m.weight for m in loaded.config.members] == chosen
    users = np.arange(data.n_users)
    np.testing.assert_array_equal(loaded.score(users), blend.score(users))


def test_a_weight_grid_holds_weights():
    with pytest.raises(ConfigError, match="weight_grid"):
        create_model("blend", validate_weights=True, weight_grid=[0.5, -1.0])


def test_validated_weights_turn_down_a_member_that_hurts_on_real_data(ml100k_ranking_split):
    """Popularity at the same weight as EDLAE drags the blend down on ML-100K; the carve-out sees it and
    lowers its weight, and the test part agrees."""
    split = ml100k_ranking_split
    members = [{"model": "ease"}, {"model": "most_popular", "weight": 1.0}]
    evaluator = FullRankingEvaluator(split.train, split.test, ks=(10,), check_fit=False)
    configured = create_model("blend", members=members).fit(split.train)
    validated = create_model("blend", members=members, validate_weights=True).fit(split.train)
    assert validated.config.members[1].weight <= 0.25
    before = evaluator.evaluate(configured).summary["ndcg@10"]
    after = evaluator.evaluate(validated).summary["ndcg@10"]
    assert after > before + 0.005, (before, after)  # 0.4433 -> 0.4526


def test_the_carve_out_score_is_the_evaluators_ndcg(ml100k_ranking_split):
    """The blend scores its carve-out without the evaluation layer; both must agree."""
    split = ml100k_ranking_split
    model = create_model("ease").fit(split.train)
    expected = FullRankingEvaluator(split.train, split.test, ks=(5, 10), check_fit=False).evaluate(model).summary
    for k in (5, 10):
        assert held_out_ndcg(model, split.test.to_csr("binary"), k) == pytest.approx(expected[f"ndcg@{k}"], abs=1e-12)
