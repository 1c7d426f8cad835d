"""A split as plain files (`recforge.data.split_files`): every part round-trips with its ids, ratings and
times, in Parquet and CSV; a file edited after it was written is refused; a validation carve-out is a
split folder of its own."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data.interactions import Interactions
from recforge.data.split_files import read_split, write_split
from recforge.data.splits import Split, user_disjoint_split
from recforge.errors import DataFormatError, OutputExistsError
from tests.conftest import make_interactions


def _rows(part: Interactions) -> pd.DataFrame:
    return part.to_frame().sort_values(["user_id", "item_id", "timestamp"]).reset_index(drop=True)


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_a_real_split_round_trips_part_by_part(tmp_path, ml100k_ranking_split, file_format):
    split = ml100k_ranking_split
    write_split(split, tmp_path / "split", file_format=file_format, source={"config": "x.toml"})
    back = read_split(tmp_path / "split")
    assert back.sizes() == split.sizes() == {"train": 80_000, "test": 20_000}
    for part in ("train", "test"):
        pd.testing.assert_frame_equal(_rows(getattr(back, part)), _rows(getattr(split, part)), check_dtype=False)
    assert back.train.fingerprint() == split.train.fingerprint()  # same vocabularies, in the same order
    assert back.data.rating_scale == split.data.rating_scale == (1.0, 5.0)
    assert back.name == split.name and back.seed == 0
    manifest = json.loads((tmp_path / "split" / "split.json").read_text())
    assert manifest["data"]["fingerprint"] == split.data.fingerprint() and manifest["source"] == {"config": "x.toml"}
    written = sorted(p.name for p in (tmp_path / "split").iterdir())
    assert written == sorted(["split.json", *(f"{n}.{file_format}" for n in ("items", "test", "train", "users"))])
    # side information by id, for tools that use it: titles and genres, a user's age and occupation
    read = pd.read_parquet if file_format == "parquet" else pd.read_csv
    items, users = read(tmp_path / "split" / f"items.{file_format}"), read(tmp_path / "split" / f"users.{file_format}")
    star_wars = items.set_index("item_id").loc[50]
    assert star_wars["title"] == "Star Wars (1977)" and len(items) == 1682 and len(users) == 943
    genres = list(star_wars["genres"]) if file_format == "parquet" else star_wars["genres"].split("|")
    assert genres == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
    assert users.set_index("user_id").loc[1, "occupation"] == "technician"


def test_text_ids_unrated_rows_and_a_fold_in_part_survive_csv(tmp_path):
    frame = pd.DataFrame(
        {
            "user_id": ["007", "007", "007", "42", "42", "x", "x", "x"],
            "item_id": ["0012", "NA", "b", "0012", "b", "NA", "b", "c"],
            "rating": [4.0, np.nan, 2.5, 5.0, np.nan, 1.0, 3.0, 4.0],
            "timestamp": [1, 2, 3, 4, 5, 6, 7, 8],
        }
    )
    data = Interactions.from_frame(frame, rating="rating", timestamp="timestamp")
    split = user_disjoint_split(data, test_user_fraction=0.34, fold_in_fraction=0.5, seed=1)
    assert split.fold_in_rows is not None and len(split.fold_in_rows)
    write_split(split, tmp_path / "split", file_format="csv")
    back = read_split(tmp_path / "split")
    for part in ("train", "test", "fold_in"):
        pd.testing.assert_frame_equal(_rows(getattr(back, part)), _rows(getattr(split, part)), check_dtype=False)
    assert set(back.data.users.ids) == {"007", "42", "x"} and "NA" in set(back.data.items.ids)


def test_a_part_edited_after_writing_is_refused_and_other_folders_are_not_overwritten(tmp_path):
    split = Split.from_rows(make_interactions(n_users=6, n_items=5, n=20), train=np.arange(15), test=np.arange(15, 20))
    folder = write_split(split, tmp_path / "split", file_format="csv")
    with (folder / "test.csv").open("a") as handle:
        handle.write("0,1,4.0,0\n")
    with pytest.raises(DataFormatError, match=r"test.csv: changed since `recforge data split` wrote it"):
        read_split(folder)
    write_split(split, folder, file_format="csv")  # a split folder is replaced by a new split
    assert len(read_split(folder).test) == 5
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError):
        write_split(split, tmp_path / "mine")
    with pytest.raises(DataFormatError, match="not a split folder"):
        read_split(tmp_path / "mine")


def test_a_validation_carve_out_is_a_split_folder_of_the_training_part(tmp_path, ml100k_ranking_split):
    from recforge.data.splits import per_user_split

    inner = per_user_split(ml100k_ranking_split.train, 0.1, seed=0)
    write_split(ml100k_ranking_split, tmp_path / "split", validation=inner)
    carve_out = read_split(tmp_path / "split" / "validation")
    assert carve_out.sizes() == inner.sizes() and len(carve_out.train) + len(carve_out.test) == 80_000
    pd.testing.assert_frame_equal(_rows(carve_out.test), _rows(inner.test), check_dtype=False)
    test_pairs = set(map(tuple, ml100k_ranking_split.test.to_frame()[["user_id", "item_id"]].to_numpy()))
    assert not test_pairs & set(map(tuple, carve_out.data.to_frame()[["user_id", "item_id"]].to_numpy()))


def test_data_without_timestamps_says_each_interactions_place_in_its_sequence(tmp_path):
    from recforge.data.splits import leave_last_out

    data = make_interactions(n_users=8, n_items=30, n=120, timestamps=False)
    write_split(leave_last_out(data), tmp_path / "split")
    train, test = (pd.read_parquet(tmp_path / "split" / f"{part}.parquet") for part in ("train", "test"))
    assert "timestamp" not in train.columns
    both = pd.concat([train, test])
    assert (both.groupby("user_id")["position"].agg(sorted).map(lambda p: p == list(range(len(p))))).all()
    last = both.groupby("user_id")["position"].max()
    assert (test.set_index("user_id")["position"].sort_index() == last.loc[test["user_id"].sort_values()]).all()
    assert len(read_split(tmp_path / "split").test) == len(test)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["parts"]["test"].update(file="../../etc/passwd"), r"parts.test.file: String should match"),
        (lambda m: m["parts"]["test"].update(file="train.csv"), "the test part names another part's file"),
        (lambda m: m.pop("data"), "data: Field required"),
        (lambda m: m["parts"].pop("test"), "a split needs a train and a test part"),
        (lambda m: m.update(format_version=2), "format_version: Input should be less than or equal to 1"),
        (lambda m: m["split"]["params"].update(train=[1, 2], name="x"), None),  # reserved names are not params
    ],
)
def test_a_manifest_is_checked_before_any_file_it_names_is_read(tmp_path, edit, message):
    split = Split.from_rows(make_interactions(n_users=6, n_items=5, n=20), train=np.arange(15), test=np.arange(15, 20))
    folder = write_split(split, tmp_path / "split", file_format="csv")
    manifest = json.loads((folder / "split.json").read_text())
    edit(manifest)
    (folder / "split.json").write_text(json.dumps(manifest))
    if message is None:
        assert len(read_split(folder).test) == 5
        return
    with pytest.raises(DataFormatError, match=message):
        read_split(folder)
    (folder / "split.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"split\.json: not a recforge-split manifest"):
        read_split(folder)


def test_a_feature_column_named_like_the_id_is_written_once(tmp_path):
    """A side table whose id column is also listed among the features (`item_columns = ["item_id", ...]`)
    made the items table's id column twice: pandas refused to insert it ("already exists")."""
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [7, 8, 7, 9]})
    features = pd.DataFrame({"item_id": [7, 8, 9], "title": ["a", "b", "c"]}, index=[7, 8, 9])
    data = Interactions.from_frame(frame, item_features=features)
    write_split(Split.from_rows(data, train=np.arange(3), test=np.arange(3, 4)), tmp_path / "split")
    items = pd.read_parquet(tmp_path / "split" / "items.parquet")
    assert list(items.columns) == ["item_id", "title"] and items["item_id"].tolist() == [7, 8, 9]


def _interactions(rows: list[tuple], text_ids: bool) -> Interactions:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    if text_ids:
        frame["user_id"] = "u" + frame["user_id"].astype(str)
    return Interactions.from_frame(frame, rating="rating", timestamp="timestamp")


def _multiset(part: Interactions) -> list[tuple]:
    """The definition: each row's values (numbers as floats, NaN as one marker, other values as text), sorted."""
    frame = part.to_frame()

    def cell(value):  # (kind, value): sortable across kinds
        if isinstance(value, (int, float, np.number)):
            return (1, 0.0, "") if np.isnan(value) else (0, float(value), "")
        return (2, 0.0, str(value))

    return sorted(tuple(cell(v) for v in row) for row in frame.itertuples(index=False))


_ROW = st.tuples(
    st.integers(0, 3), st.integers(0, 3), st.sampled_from([1.0, 2.5, 4.0, float("nan")]), st.integers(0, 2)
)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(_ROW, min_size=1, max_size=12), other=st.lists(_ROW, min_size=1, max_size=12),
       shuffle=st.randoms(use_true_random=False), text_ids=st.booleans(), collide=st.booleans())  # fmt: skip
def test_same_interactions_is_equality_of_the_rows_as_multisets(rows, other, shuffle, text_ids, collide):
    """Matching a split folder to a split: the same rows in any order (repeats counted, unrated rows
    alike) are the same, anything else is not — also when every row hashes alike (a collision), where
    the rows are then compared sorted by value."""
    from recforge.data import split_files

    a, b = _interactions(rows, text_ids), _interactions(other, text_ids)
    shuffled = list(rows)
    shuffle.shuffle(shuffled)
    with pytest.MonkeyPatch.context() as patch:
        if collide:
            patch.setattr(split_files, "_row_hashes", lambda columns: np.zeros(len(columns[0]), dtype=np.uint64))
        assert split_files.same_interactions(a, _interactions(shuffled, text_ids))
        assert split_files.same_interactions(a, b) == (_multiset(a) == _multiset(b))
