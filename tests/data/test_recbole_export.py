"""A split as RecBole's atomic files (`write_split(..., recbole=True)`, `recforge data split --recbole`):
read back the way RecBole reads them (pandas' Python engine, tab-separated, `name:type` headers), the
parts hold exactly the split's rows, and what RecBole cannot take is refused before anything is written.
(Checked once against RecBole 1.2.1 itself: docs/evaluation.md.)"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recforge.data.interactions import Interactions
from recforge.data.split_files import write_split
from recforge.data.splits import per_user_split, random_split, user_disjoint_split
from recforge.errors import ConfigError
from tests.conftest import make_interactions


def read_like_recbole(path) -> pd.DataFrame:
    """RecBole's `_load_feat`: tab-separated, Python engine, `field:type` headers; tokens are strings."""
    return pd.read_csv(path, sep="\t", engine="python", dtype=str, keep_default_na=False)


def _multiset(frame: pd.DataFrame, columns: list[str]) -> list[tuple]:
    return sorted(map(tuple, frame[columns].astype(str).to_numpy().tolist()))


def test_a_real_split_with_its_carve_out_becomes_train_valid_and_test(tmp_path, ml100k):
    split = per_user_split(ml100k, 0.2, seed=0)
    carve_out = per_user_split(split.train, 0.1, seed=0)
    folder = write_split(split, tmp_path / "split", validation=carve_out, recbole=True)
    settings = (folder / "recbole" / "recforge-ml-100k.yaml").read_text()
    assert "dataset: recforge-ml-100k" in settings and "benchmark_filename: [train, valid, test]" in settings
    assert "RATING_FIELD: rating" in settings and "mode: full" in settings
    manifest = json.loads((folder / "split.json").read_text())["exports"]["recbole"]
    expected = {"train": carve_out.train, "valid": carve_out.test, "test": split.test}
    for part, source in expected.items():
        path = folder / "recbole" / manifest["parts"][part]["file"]
        assert path.name == f"recforge-ml-100k.{part}.inter"
        frame = read_like_recbole(path)
        assert list(frame.columns) == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
        assert len(frame) == manifest["parts"][part]["rows"] == len(source)
        ours = source.to_frame().astype({"rating": float, "timestamp": float})
        theirs = frame.set_axis(["user_id", "item_id", "rating", "timestamp"], axis=1)
        theirs = theirs.astype({"rating": float, "timestamp": float})
        assert _multiset(theirs, list(theirs.columns)) == _multiset(ours, list(theirs.columns))
    assert len(read_like_recbole(folder / "recbole" / manifest["parts"]["test"]["file"])) == 20_000


def test_a_split_with_its_own_valid_part_is_written_as_it_is(tmp_path):
    data = make_interactions(n_users=20, n_items=30, n=300)
    split = random_split(data, test_fraction=0.2, valid_fraction=0.1, seed=3)
    folder = write_split(split, tmp_path / "split", recbole=True)
    parts = json.loads((folder / "split.json").read_text())["exports"]["recbole"]["parts"]
    assert {part: entry["rows"] for part, entry in parts.items()} == {"train": 210, "valid": 30, "test": 60}


def test_what_recbole_cannot_take_is_refused_before_anything_is_written(tmp_path):
    data = make_interactions(n_users=20, n_items=30, n=300)
    with pytest.raises(ConfigError, match=r"valid part.*\[split.validation\]"):
        write_split(per_user_split(data, 0.2, seed=0), tmp_path / "a", recbole=True)
    disjoint = user_disjoint_split(data, test_user_fraction=0.3, fold_in_fraction=0.5, seed=0)
    with pytest.raises(ConfigError, match="fold-in"):
        write_split(disjoint, tmp_path / "b", recbole=True)
    frame = pd.DataFrame({"user_id": ["a", "a\tb", "c", "c"], "item_id": ["x", "y", "x", "y"], "rating": [1.0] * 4})
    tabbed = Interactions.from_frame(frame, rating="rating")
    split = random_split(tabbed, test_fraction=0.25, valid_fraction=0.25, seed=0)
    with pytest.raises(ConfigError, match=r"user_id 'a\\tb'.*tab, line break or double quote"):
        write_split(split, tmp_path / "c", recbole=True)
    assert not any((tmp_path / name).exists() for name in "abc")


def test_sequences_without_timestamps_carry_their_positions_and_unrated_rows_an_empty_rating(tmp_path):
    frame = pd.DataFrame(
        {
            "user_id": ["u 1"] * 5 + ["u2"] * 5,  # a token may hold a space
            "item_id": ["i1", "i2", "i3", "i4", "i5", "i5", "i4", "i3", "i2", "i1"],
            "rating": [5.0, np.nan, 3.0, 4.0, 2.0, 1.0, 2.0, np.nan, 4.0, 5.0],
        }
    )
    data = Interactions.from_frame(frame, rating="rating")
    split = random_split(data, test_fraction=0.2, valid_fraction=0.2, seed=1)
    folder = write_split(split, tmp_path / "split", recbole=True)
    parts = json.loads((folder / "split.json").read_text())["exports"]["recbole"]["parts"]
    rows = pd.concat([read_like_recbole(folder / "recbole" / entry["file"]) for entry in parts.values()])
    rows = rows.set_axis(["user", "item", "rating", "position"], axis=1)
    assert sorted(rows.loc[rows.user == "u2", "position"].astype(int)) == [0, 1, 2, 3, 4]
    first = rows[(rows.user == "u 1")].set_index("item")
    assert first.loc["i1", "position"] == "0" and first.loc["i5", "position"] == "4"
    assert first.loc["i2", "rating"] == ""  # RecBole fills an empty float cell with the column's mean
    assert [path.name for path in (folder / "recbole").glob("*.yaml")] == [f"recforge-{data.name}.yaml"]
