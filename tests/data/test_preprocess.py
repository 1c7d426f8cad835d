from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.data import Interactions
from recforge.data.preprocess import parse_steps, preprocess
from recforge.errors import ConfigError


def frame_data() -> Interactions:
    frame = pd.DataFrame(
        {
            "user_id": [1, 1, 1, 2, 2, 3, 3, 3, 3],
            "item_id": [10, 10, 11, 10, 12, 10, 11, 12, 13],
            "rating": [1.0, 5.0, 4.0, 3.0, 3.0, 1.0, 5.0, np.nan, 2.0],
            "timestamp": [1, 2, 3, 1, 2, 1, 2, 3, 4],
        }
    )
    return Interactions.from_frame(frame, rating="rating", timestamp="timestamp", rating_scale=(1, 5))


def test_deduplicate_keeps_latest():
    data, [report] = preprocess(frame_data(), [{"step": "deduplicate"}])
    assert report.rows_removed == 1
    user1 = data.to_frame().query("user_id == 1 and item_id == 10")
    assert user1["rating"].tolist() == [5.0]


def test_rating_spread_and_counts_report_removals():
    data, reports = preprocess(
        frame_data(),
        [
            {"step": "filter_rating_spread", "min_spread": 3},
            {"step": "filter_user_counts", "min_count": 4, "max_count": 4},
        ],
    )
    assert reports[0].users_after == 2  # user 2 rates everything 3
    assert data.users.ids.tolist() == [3]
    assert reports[1].to_dict()["rows_removed"] == 3


def test_kcore_is_iterative():
    data, [report] = preprocess(frame_data(), [{"step": "k_core", "user_k": 2, "item_k": 2}])
    assert (data.user_counts() >= 2).all() and (data.item_counts() >= 2).all()
    assert report.items_after < report.items_before


def test_binarize_drops_ratings_and_keeps_unrated():
    data, _ = preprocess(frame_data(), [{"step": "binarize", "threshold": 4}])
    assert data.rating is None and len(data) == 4  # three ratings >= 4 plus the unrated row


def test_bad_step_config_names_the_problem():
    with pytest.raises(ConfigError, match="min_spred"):
        parse_steps([{"step": "filter_rating_spread", "min_spred": 3}])
    with pytest.raises(ConfigError, match="does not match any"):
        parse_steps([{"step": "nonsense"}])


def test_anime_study_filters_on_real_data(anime):
    data, reports = preprocess(
        anime,
        [
            {"step": "drop_unrated"},
            {"step": "filter_user_counts", "min_count": 8, "max_count": 117},
            {"step": "filter_rating_spread", "min_spread": 3},
        ],
    )
    counts = data.user_counts()
    assert counts.min() >= 8 and counts.max() <= 117 and data.n_rated == len(data)
    assert [r.rows_after for r in reports] == [419943, 129726, 124976]
