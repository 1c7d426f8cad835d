"""A model that produces NaN is refused at the scoring boundary with an error naming it and the first user,
instead of its NaN items ranking first (torch.topk orders NaN above everything) or breaking a JSON answer."""

from __future__ import annotations

import numpy as np
import pytest

from recforge.errors import NonFiniteScoresError
from recforge.evaluation.protocols import FullRankingEvaluator
from recforge.models import create_model
from tests.conftest import make_interactions


@pytest.fixture(scope="module")
def data():
    return make_interactions(n_users=30, n_items=40, n=600, seed=3, preference=True)


def nan_for_user(model, user: int, item: int = 5):
    """Make `model` score NaN for one item of one user (its known-user path)."""
    original = model._score_known

    def scores(users):
        out = original(users)
        out[users == user, item] = np.nan
        return out

    model._score_known = scores
    return model


def test_recommend_and_score_name_the_model_and_the_first_user(data):
    model = nan_for_user(create_model("ease", reg=10.0).fit(data), user=7)
    assert model.recommend(np.arange(7), k=5, external_ids=False).item_index.shape == (7, 5)  # others are fine
    with pytest.raises(NonFiniteScoresError, match=r"ease scored NaN for 1 of 30 queries \(first: user index 7"):
        model.recommend(np.arange(30), k=5, external_ids=False)
    with pytest.raises(NonFiniteScoresError):
        model.score(np.array([7]))


def test_an_evaluation_refuses_nan_rather_than_ranking_it_first(data):
    train, test = data.subset(data.timestamp < np.median(data.timestamp)), data
    model = nan_for_user(create_model("ease", reg=10.0).fit(train), user=int(np.unique(train.user_index)[0]))
    with pytest.raises(NonFiniteScoresError, match="ease scored NaN"):
        FullRankingEvaluator(train, test.subset(test.timestamp >= np.median(data.timestamp)), ks=(10,)).evaluate(model)


def test_rating_predictions_refuse_nan(data):
    model = create_model("bias").fit(data)
    original = model._predict
    model._predict = lambda users, items: np.where(users == 2, np.nan, original(users, items))
    assert np.isfinite(model.predict(np.array([0, 1]), np.array([0, 1]))).all()
    with pytest.raises(NonFiniteScoresError, match=r"bias predicted NaN for 1 of 3 queries \(first: user index 2"):
        model.predict(np.array([0, 2, 1]), np.array([0, 1, 1]))
