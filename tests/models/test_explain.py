"""`Recommender.explain` on MovieLens 100K: for EASE (linear in the history) each reason's weight is exactly
the learned item-item weight, and the reasons are the history items with the largest weights."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.data.query import History
from recforge.errors import UnknownIdError
from recforge.models import create_model


@pytest.fixture(scope="module")
def ease(ml100k):
    return create_model("ease").fit(ml100k)


def test_ease_reasons_are_its_largest_item_item_weights(ease):
    frame = ease.explain(1, [172, 181, 1], top=3)  # 1 is in user 1's history: never its own reason
    assert list(frame.columns) == ["item", "rank", "because", "weight"] and len(frame) == 9
    history = ease.seen_[ease.users_.index(1)[0]].indices
    for item, reasons in frame.groupby("item", sort=False):
        column = ease.items_.index(item)[0]
        weights = ease.weights_[history, column].astype(np.float64)
        weights[history == column] = -np.inf
        best = history[np.argsort(-weights, kind="stable")[:3]]
        assert reasons["because"].tolist() == ease.items_.lookup(best).tolist()
        assert reasons["rank"].tolist() == [1, 2, 3]
        np.testing.assert_allclose(reasons["weight"], np.sort(weights)[::-1][:3], rtol=1e-4)


def test_a_new_users_history_is_explained_and_unknown_users_are_named(ease):
    history = History.from_items([ease.items_.index([50, 172, 181, 1]).tolist()], ease.n_items)
    frame = ease.explain(None, [174], history=history, top=2)  # Raiders: Star Wars and its sequels
    assert set(frame["because"]) <= {50, 172, 181, 1} and len(frame) == 2
    assert set(frame["because"]) & {172, 181}
    with pytest.raises(UnknownIdError, match="99999"):
        ease.explain(99999, [50])


def test_a_long_history_narrowed_by_similarity_keeps_eases_reasons(ease):
    """Past `exact_up_to` items the candidates are first narrowed by the model's item similarity; for EASE
    (user 1 has 272 items) the reasons are the exact ones."""
    from recforge.models.explain import explain_history

    user = int(ease.users_.index(1)[0])
    items = ease.recommend(np.array([user]), k=10, external_ids=False).item_index[0]
    history = ease.training_history(user)
    exact = explain_history(ease, history, items, exact_up_to=None)
    narrowed = explain_history(ease, history, items, exact_up_to=50, screen=20)
    assert narrowed == exact and all(len(reasons) == 3 for reasons in exact)
