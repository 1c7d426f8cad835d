"""Cold-start routing: every kind of query row goes to the path the module docstring promises, says why
when it is not the obvious one, and gets exactly the scores of that path's primitive."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.coldstart import route
from recforge.data.query import History, Query
from recforge.data.splits import user_disjoint_split
from recforge.errors import ConfigError, UnknownIdError
from recforge.models import create_model
from recforge.models.config import TrainOptions
from tests.conftest import make_interactions


@pytest.fixture(scope="module")
def data():
    return make_interactions(n_users=30, n_items=40, n=600, seed=1, preference=True)


@pytest.fixture(scope="module")
def ials(data):
    # users 0..24 train; 25..29 keep their vocabulary index but have no training rows
    train = data.subset(data.user_index < 25)
    return create_model("ials", n_factors=4, n_iterations=3, reg=1.0).fit(train)


def rows_query(model, n_items):
    """Six rows: known; stranger; in the vocabulary without training data; stranger with a history;
    known user with a history; stranger with features only."""
    history = History.from_items([[], [], [], [1, 2, 3], [4, 5], []], n_items)
    features = pd.DataFrame({"age": [None, None, None, None, None, 30]})
    return Query(np.array([0, -1, 27, -1, 3, -1]), history, features)


def test_each_kind_of_row_takes_its_path_and_says_why(ials, data):
    query = rows_query(ials, data.n_items)
    routing = route(ials, query)
    assert list(routing.paths) == ["model", "popularity", "popularity", "history", "history", "popularity"]
    notes = list(routing.notes)
    assert notes[0] == "" and notes[3] == "" and notes[4] == ""
    assert "no history given" in notes[1]
    assert "no training interactions" in notes[2]
    assert "features ignored" in notes[5] and "ials has no user-feature tower" in notes[5]


def test_scores_are_those_of_each_rows_primitive(ials, data):
    query = rows_query(ials, data.n_items)
    scores, routing = ials.score_routed(query)
    np.testing.assert_allclose(scores[0], ials._score_known(np.array([0]))[0], rtol=1e-6)
    np.testing.assert_allclose(scores[3:5], ials._score_history(query.history.take([3, 4]), query.users[3:5]))
    np.testing.assert_allclose(scores[1], ials.popularity_scores(1)[0])
    recs = ials.recommend(query, k=5)
    assert list(recs.served_by) == list(routing.paths) and list(recs.notes) == list(routing.notes)
    seen = set(data.subset(data.user_index < 25).to_csr("binary")[3].indices) | {4, 5}
    assert not seen & set(recs.item_index[4])  # a known user with a history: neither set is recommended


def test_a_model_without_history_scoring_uses_the_trained_user_and_says_so(data):
    model = create_model("user_knn", feedback="implicit", similarity="cosine", k=5).fit(data)
    history = History.from_items([[1, 2], [1, 2]], data.n_items)
    routing = route(model, Query(np.array([0, -1]), history))
    assert list(routing.paths) == ["model", "popularity"]
    assert "history not used" in routing.notes[0]
    assert "cannot score a history" in routing.notes[1]


def test_baselines_serve_anyone_the_same_list(data):
    model = create_model("most_popular").fit(data)
    recs = model.recommend(Query(np.array([-1, 0])), k=3)
    assert list(recs.served_by) == ["model", "model"] and "same list" in recs.notes[0]
    order = np.lexsort((np.arange(data.n_items), -data.item_counts()))  # most interactions first, ties by index
    np.testing.assert_array_equal(recs.item_index[0], order[:3])


def test_features_route_to_the_user_tower_with_or_without_history(ml100k):
    model = create_model("two_tower", user_features=True, n_epochs=1).fit(ml100k, TrainOptions(threads=1))
    features = pd.DataFrame({"age": [25, 67, None], "gender": ["F", "M", None], "occupation": ["student", None, None]})
    history = History.from_items([[], [10, 20], []], ml100k.n_items)
    query = Query(np.full(3, -1), history, features)
    scores, routing = model.score_routed(query)
    assert list(routing.paths) == ["features", "features+history", "popularity"]
    np.testing.assert_allclose(scores[:2], model._score_features(features.iloc[:2], history.take([0, 1])), atol=1e-6)
    assert not np.allclose(scores[0], scores[1])


def test_user_disjoint_test_users_are_served_from_their_given_history(ml100k):
    split = user_disjoint_split(ml100k, test_user_fraction=0.1, seed=0)
    model = create_model("ease").fit(split.train)
    cold = np.unique(split.test.user_index)[:5]
    assert not model.known_users_[cold].any()
    assert set(route(model, Query.known(cold)).paths) == {"popularity"}  # nothing given: popularity
    given = split.fold_in if split.fold_in is not None else split.test
    assert set(route(model, Query.from_interactions(given, cold)).paths) == {"history"}


def test_new_users_are_queries_from_external_item_ids(ials, data):
    """`model.new_users(items, ratings)` is the history query of those items' indices (the README's new
    user was given item indices, which are not the ids one reads in the data)."""
    ids = ials.items_.ids
    chosen = [[ids[5], ids[2], ids[9]], []]
    query = ials.new_users(chosen, ratings=[[5.0, None, 3.0], []])
    expected = Query.from_items([[5, 2, 9], []], ials.n_items, [[5.0, None, 3.0], []])
    np.testing.assert_array_equal(ials.score(query), ials.score(expected))
    recs = ials.recommend(query, k=3)
    assert list(recs.served_by) == ["history", "popularity"] and list(recs.to_frame()["user"].unique()) == [None]
    assert recs.to_frame()["query"].tolist() == [0, 0, 0, 1, 1, 1]  # which new user each list is for
    assert "query" not in ials.recommend(ials.users_.ids[:2], k=3).to_frame()  # known users: named by their ids
    assert not set(recs.to_frame()["item"][:3]) & set(chosen[0])  # their own items are not recommended back
    with pytest.raises(UnknownIdError, match="unknown item id"):
        ials.new_users([[ids[0], "no such item"]])
    with pytest.raises(ConfigError, match="one list per user"):
        ials.new_users([[ids[0]]], ratings=[[5.0, 4.0]])
    with pytest.raises(ConfigError, match="needs item lists, features, or both"):
        ials.new_users()


def test_predict_query_is_predict_for_a_user_given_at_query_time(data, ials):
    """`model.predict_query(new_users(...), items)`: a new user's predicted ratings equal `predict` of the
    same user when their items come as the history (the user-disjoint protocol's path)."""
    from recforge.errors import CapabilityError

    mf = create_model("mf", n_epochs=5).fit(data, TrainOptions(seed=0))
    rated = (data.user_index == 0) & ~np.isnan(data.rating)
    items, ratings = data.item_index[rated], data.rating[rated]
    query = Query.from_items([items.tolist()], mf.n_items, [ratings.tolist()])
    wanted = np.array([0, 5, 7])
    predicted, routing = mf.predict_query(query, wanted)
    history = data.subset(np.flatnonzero(rated))
    expected = mf.predict(np.zeros(3, np.int64), wanted, history=history)
    np.testing.assert_allclose(predicted, expected, rtol=1e-5)
    assert list(routing.paths) == ["history"]
    with pytest.raises(ConfigError, match="one user's query"):
        mf.predict_query(Query.from_items([[1], [2]], mf.n_items), wanted)
    with pytest.raises(CapabilityError, match="does not predict ratings"):
        ials.predict_query(query, wanted)
