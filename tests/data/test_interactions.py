from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recforge.data import Interactions, Vocabulary
from recforge.errors import DataFormatError, UnknownIdError


def test_vocabulary_roundtrip_and_errors():
    vocab, codes = Vocabulary.encode(["b", "a", "c", "a"], name="item")
    assert vocab.ids.tolist() == ["a", "b", "c"] and codes.tolist() == [1, 0, 2, 0]
    assert vocab.index(["c", "a"]).tolist() == [2, 0]
    assert vocab.index(["zz"], missing="ignore").tolist() == [-1]
    with pytest.raises(UnknownIdError, match="unknown item id"):
        vocab.index("zz")
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\): \[1\] \(item ids are text here, e.g. 'a'\)"):
        vocab.index([1])
    numbers, _ = Vocabulary.encode([3, 1, 2], name="user")
    with pytest.raises(UnknownIdError, match=r"\['1'\] \(user ids are integers here, not text\)"):
        numbers.index(["1"])  # "1" and 1 are different ids; the message says which the vocabulary holds
    with pytest.raises(UnknownIdError, match=r"unknown user id\(s\): \[7\]$"):
        numbers.index([7])
    bigger = vocab.extend(["d", "a"])
    assert bigger.ids.tolist() == ["a", "b", "c", "d"] and bigger.index("b")[0] == 1
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary([1, 1])


def test_csr_keeps_latest_rating_per_pair():
    frame = pd.DataFrame(
        {"user_id": [1, 1, 2], "item_id": [10, 10, 10], "rating": [2.0, 5.0, 3.0], "timestamp": [9, 5, 1]}
    )
    data = Interactions.from_frame(frame, rating="rating", timestamp="timestamp")
    matrix = data.to_csr("rating")
    assert matrix.shape == (2, 1) and matrix[0, 0] == 2.0  # timestamp 9 is the latest
    assert data.to_csr("count")[0, 0] == 2 and data.to_csr("binary")[0, 0] == 1
    assert data.describe().n_duplicate_pairs == 1


def test_csr_rating_refuses_unrated_rows():
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": [10, 10], "rating": [np.nan, 3.0]})
    data = Interactions.from_frame(frame, rating="rating")
    with pytest.raises(DataFormatError, match="explicit"):
        data.to_csr("rating")
    assert data.explicit().to_csr("rating").nnz == 1


def test_sequences_order_by_time_then_source_order():
    frame = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [10, 11, 12, 10], "timestamp": [5, 3, 5, 1]})
    data = Interactions.from_frame(frame, timestamp="timestamp")
    sequences = data.sequences()
    assert data.items.lookup(sequences[0]).tolist() == [11, 10, 12]
    assert sequences.lengths.tolist() == [3, 1]


def test_save_load_roundtrip(tmp_path, ml100k):
    path = ml100k.save(tmp_path / "ml")
    again = Interactions.load(path)
    assert again.fingerprint() == ml100k.fingerprint()
    assert again.item_features["genres"].iloc[0] == ["Animation", "Children's", "Comedy"]
    assert again.user_features.equals(ml100k.user_features)


def test_subset_and_compact_keep_features_aligned(ml100k):
    rows = np.flatnonzero(ml100k.user_index < 10)
    part = ml100k.subset(rows).compact()
    assert part.n_users == 10
    for item in part.items.ids[:20]:
        original = ml100k.item_features.iloc[ml100k.items.index(item)[0]]["title"]
        assert part.item_features.iloc[part.items.index(item)[0]]["title"] == original


def test_describe_ml100k(ml100k):
    description = ml100k.describe()
    assert description.density == pytest.approx(100000 / (943 * 1682))
    assert description.per_user_quantiles["min"] == 20  # every ML-100K user rated at least 20 movies
    assert description.ratings_histogram == {"1": 6110, "2": 11370, "3": 27145, "4": 34174, "5": 21201}
    assert description.to_table().row_count > 10


def test_described_time_range_shows_dates_only_for_unix_seconds(ml100k):
    from rich.console import Console

    def shown(description) -> str:
        console = Console(record=True, width=200)
        console.print(description.to_table())
        return console.export_text()

    assert "874724710 .. 893286638 (1997-09-20 .. 1998-04-22 UTC)" in shown(ml100k.describe())
    frame = pd.DataFrame({"user_id": [1, 1], "item_id": [1, 2], "t": [0, 1]})
    positions = Interactions.from_frame(frame, timestamp="t")
    assert "0 .. 1 " in shown(positions.describe()) and "1970" not in shown(positions.describe())
    frame["stars"] = [4.0, 5.0]
    rated = Interactions.from_frame(frame, rating="stars", item_features=pd.DataFrame({"title": ["[Rec]", "Up"]}))
    assert "not given (rating_scale=[low, high] sets it)" in shown(rated.describe())  # not eaten as Rich markup
