from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recforge.data import Interactions
from recforge.data.features import (
    ItemFeatureBuilder,
    RangeScaler,
    UserFeatureBuilder,
    genre_lists,
    multi_hot,
    pooled_rows,
    select_genres,
    user_taste_features,
)


def test_genre_union_normalisation_and_rare_filter():
    frame = pd.DataFrame(
        {"genres": [["Action", " sci-fi"], ["Comedy"], []], "detailed": ["Space, ACTION", "", "Drama"]}
    )
    lists = genre_lists(frame, ("genres", "detailed"))
    assert lists == [["action", "sci-fi", "space"], ["comedy"], ["drama"]]
    many = [["a", "b"], ["a"], ["a", "c"], ["b"]]
    assert select_genres(many) == ["a", "b", "c"]
    assert select_genres(many, min_frequency_quantile=0.5) == ["a"]  # counts a=3, b=2, c=1; median 2
    assert multi_hot([["b"], ["a", "z"]], ["a", "b"]).tolist() == [[0, 1], [1, 0]]


def test_fixed_range_scaler_clips_and_counts():
    scaler = RangeScaler({"year": (1900, 2030), "episodes": (0, 4000)}).fit(
        pd.DataFrame({"year": [2000], "episodes": [12]})
    )
    frame = pd.DataFrame({"year": [1900, 2030, 2100, np.nan], "episodes": [0, 4000, 2000, 5000]})
    out = scaler.transform(frame)
    assert out[:, 0].tolist()[:3] == [0.0, 1.0, 1.0] and out[3, 0] == pytest.approx((2000 - 1900) / 130)
    assert out[:, 1].tolist() == [0.0, 1.0, 0.5, 1.0]
    assert scaler.out_of_range_ == {"year": 1, "episodes": 1} and scaler.missing_["year"] == 1
    assert RangeScaler.from_dict(scaler.to_dict()).transform(frame).tolist() == out.tolist()


def test_taste_features_hand_computed():
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [1, 2, 3], "rating": [5.0, 1.0, np.nan]})
    data = Interactions.from_frame(frame, rating="rating", rating_scale=(1, 5))
    genres = np.array([[1, 0], [1, 1], [0, 1]], dtype=np.float32)  # item 1: a; item 2: a, b; item 3: b
    taste = user_taste_features(data, genres, ["a", "b"]).iloc[0]
    assert taste["n_ratings"] == 2 and taste["mean_rating"] == pytest.approx(0.5)
    assert taste["genre_mean:a"] == pytest.approx(0.5) and taste["genre_mean:b"] == pytest.approx(0.0)
    # weights: item1 -> 1.0 (a), item2 -> 0.0 (a, b), item3 unrated -> 1.0 (b)
    assert taste["genre_pref:a"] == pytest.approx(0.5) and taste["genre_pref:b"] == pytest.approx(0.5)


def test_builders_on_anime_fit_on_training_only(anime):
    from recforge.data.splits import random_split

    split = random_split(anime, 0.2, seed=0)
    items = ItemFeatureBuilder(
        numeric_ranges={"episodes": (0, 4000)}, learned_numeric=("score",), categorical=("type",)
    ).fit(split.train)
    matrix = items.transform(anime.item_features)
    assert matrix.dense.shape[0] == anime.n_items and matrix.dense.min() >= 0 and matrix.dense.max() <= 1
    assert items.fitted_on_ == split.train.fingerprint() != anime.fingerprint()
    genre_columns = [i for i, n in enumerate(matrix.dense_names) if n.startswith("genre:")]
    users = UserFeatureBuilder().fit(split.train).transform(split.train, matrix.dense[:, genre_columns], items.genres_)
    assert users.dense.shape == (anime.n_users, 2 + 2 * len(items.genres_))
    again = ItemFeatureBuilder.from_dict(items.to_dict()).transform(anime.item_features)
    assert np.array_equal(again.dense, matrix.dense)


def test_user_categoricals_ml100k(ml100k):
    builder = UserFeatureBuilder(
        taste=False, numeric_ranges={"age": (0, 100)}, categorical=("gender", "occupation", "age_bucket")
    )
    matrix = builder.fit(ml100k).transform(ml100k, None, [])
    assert matrix.cardinalities == [3, 22, 8]  # 2 genders, 21 occupations, 7 age buckets, plus unknown
    assert (matrix.categorical > 0).all()


def test_pooled_rows_divide_by_root_n_or_n():
    seen = sp.csr_matrix(np.array([[1, 0, 3, 1], [0, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float64))
    np.testing.assert_allclose(pooled_rows(seen, "sqrt").toarray()[0], [3**-0.5, 0, 3**-0.5, 3**-0.5])
    np.testing.assert_allclose(pooled_rows(seen, "mean").toarray()[0], [1 / 3, 0, 1 / 3, 1 / 3])
    assert pooled_rows(seen, "mean")[1].nnz == 0  # an empty history stays empty
    np.testing.assert_allclose(pooled_rows(seen, "sqrt").toarray()[2], [0, 1, 0, 0])
