"""A blend's item similarity: its members' similarities combined as their scores are."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.errors import CapabilityError
from recforge.models import create_model
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
