"""Loaders on the real shared datasets (documented counts) and on format-faithful fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recforge.data.loaders import (
    load_amazon_reviews,
    load_amazon_sequences,
    load_anime_kaggle,
    load_anime_mal,
    load_dataset,
    load_movielens_1m,
    load_movielens_100k_fold,
    load_table,
    read_anime_catalogue,
)
from recforge.errors import ConfigError, DataFormatError, DatasetNotFoundError


def test_ml100k_documented_counts(ml100k):
    assert (ml100k.n_users, ml100k.n_items, len(ml100k)) == (943, 1682, 100000)
    values, counts = np.unique(ml100k.rating, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}
    assert ml100k.users.id(ml100k.user_index[0]) == 196 and ml100k.items.id(ml100k.item_index[0]) == 242
    assert ml100k.timestamp[0] == 881250949


def test_ml100k_features(ml100k):
    items = ml100k.item_features
    toy_story = items.iloc[ml100k.items.index(1)[0]]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == ["Animation", "Children's", "Comedy"]
    assert toy_story["year"] == 1995
    assert items["genres"].map(len).sum() == 2893  # total of the 19 genre flags in u.item
    users = ml100k.user_features.iloc[ml100k.users.index(1)[0]]
    assert (users["age"], users["gender"], users["occupation"]) == (24, "M", "technician")


@pytest.mark.parametrize("fold", ["u1", "u3", "ua"])
def test_ml100k_shipped_folds(data_dir, fold, ml100k):
    split = load_movielens_100k_fold(fold, data_dir / "ml-100k")
    expected = {"u1": (80000, 20000), "u3": (80000, 20000), "ua": (90570, 9430)}[fold]
    assert (len(split.train_rows), len(split.test_rows)) == expected
    assert split.data.fingerprint() == ml100k.fingerprint()
    if fold == "ua":  # ua.test holds exactly 10 ratings per user
        assert (split.test.user_counts() == 10).all()


def test_ml_latest_small_counts(ml_latest):
    assert (ml_latest.n_users, ml_latest.n_items, len(ml_latest)) == (610, 9724, 100836)
    assert ml_latest.rating_scale == (0.5, 5.0)
    assert set(np.unique(ml_latest.rating) * 2) == set(range(1, 11))
    toy = ml_latest.item_features.iloc[ml_latest.items.index(1)[0]]
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert "pixar" in toy["tags"]


def test_anime_kaggle_keeps_unrated_as_implicit(anime):
    assert (anime.n_users, anime.n_items, len(anime)) == (5000, 7390, 520609)
    assert int((~anime.is_rated).sum()) == 100666  # the -1 rows: interactions, never ratings
    assert np.nanmin(anime.rating) == 1 and np.nanmax(anime.rating) == 10
    assert anime.explicit().compact().n_users == 4714  # explicit() keeps the vocabulary; compact() drops empty users
    kimi = anime.item_features.iloc[anime.items.index(32281)[0]]
    assert kimi["title"] == "Kimi no Na wa." and kimi["type"] == "Movie"
    assert kimi["genres"] == ["Drama", "Romance", "School", "Supernatural"]


def test_anime_catalogues(data_dir):
    kaggle = read_anime_catalogue(data_dir / "anime-kaggle" / "anime.csv")
    assert len(kaggle) == 12294
    assert kaggle["episodes"].isna().sum() == 340 and kaggle["score"].isna().sum() == 230
    assert "Gintama'" in set(kaggle["title"])  # HTML entities decoded
    modern = read_anime_catalogue(data_dir / "anime-metadata" / "anime.csv")
    assert len(modern) == 17562
    assert modern.loc[1, "title"] == "Cowboy Bebop"


def test_beauty_documented_counts(beauty):
    assert (beauty.n_users, beauty.n_items, len(beauty)) == (22363, 12101, 198502)
    assert beauty.rating is None and beauty.timestamp is None
    sequences = beauty.sequences()
    assert sequences[0].tolist() == (beauty.items.index([1, 2, 3, 4, 5])).tolist()
    assert sequences.lengths.min() == 5 and sequences.lengths.max() == 204
    assert beauty.item_features["asin"].iloc[0] == "B004756YJA"
    # PROVENANCE.md says 2-6 attributes per item; the file has 65 items with a single attribute.
    assert beauty.item_features["attributes"].map(len).between(1, 6).all()
    assert len({a for row in beauty.item_features["attributes"] for a in row}) == 637


def test_load_dataset_by_name_uses_data_dir(data_dir):
    assert len(load_dataset("ml-100k")) == 100000


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("RECFORGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RECFORGE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="pass path="):
        load_dataset("anime-mal")
    with pytest.raises(DatasetNotFoundError, match="lacks"):
        load_dataset("ml-100k", path=tmp_path)


# ----------------------------------------------------------------------------- fixtures in source layouts
def write_ml1m(folder: Path) -> None:
    folder.mkdir()
    (folder / "ratings.dat").write_bytes(b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (folder / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
        "5::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n".encode("latin-1")
    )
    (folder / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::56::16::70072\n")


def test_ml1m_layout(tmp_path):
    write_ml1m(tmp_path / "ml-1m")
    data = load_movielens_1m(tmp_path / "ml-1m")
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    nest = data.item_features.iloc[data.items.index(1193)[0]]
    assert nest["year"] == 1975 and nest["genres"] == ["Drama"]
    user = data.user_features.iloc[0]
    assert (user["age_group"], user["occupation"]) == ("under 18", "K-12 student")


def write_mal(folder: Path) -> None:
    folder.mkdir()
    (folder / "animes.csv").write_text(
        "animeID,title,type,year,score,episodes,genres,genres_detailed,image_url,page_url\n"
        "1,Cowboy Bebop,TV,1998,8.78,26,\"['Action', 'Sci-Fi']\",\"['Space', 'Action']\",http://x/1.jpg,http://x/1\n"
        '5,Trigun,TV,1998,8.2,Unknown,"Action, Comedy","",http://x/5.jpg,http://x/5\n'
    )
    (folder / "ratings.csv").write_text("userID,animeID,rating\n10,1,9\n10,5,0\n11,1,7\n")


def test_mal_layout_zero_is_unrated_by_default(tmp_path):
    write_mal(tmp_path / "mal")
    data = load_anime_mal(tmp_path / "mal")
    assert len(data) == 3 and data.n_rated == 2 and data.rating_scale == (1.0, 10.0)
    features = data.item_features
    assert features.loc[0, "genres"] == ["Action", "Sci-Fi", "Space"]  # union of genres and genres_detailed
    assert np.isnan(features.loc[1, "episodes"]) and features.loc[0, "year"] == 1998
    assert not any("url" in c for c in features.columns)
    kept = load_anime_mal(tmp_path / "mal", zero_is_rating=True)
    assert kept.n_rated == 3 and kept.rating_scale == (0.0, 10.0)


def test_kaggle_layout_with_full_rating_file(tmp_path):
    folder = tmp_path / "kaggle"
    folder.mkdir()
    (folder / "anime.csv").write_text(
        'anime_id,name,genre,type,episodes,rating,members\n20,Naruto,"Action, Comedy",TV,220,7.81,683297\n'
        "21,One Piece,,TV,Unknown,,504862\n"
    )
    (folder / "rating.csv").write_text("user_id,anime_id,rating\n1,20,-1\n1,21,10\n2,20,8\n")
    data = load_anime_kaggle(folder)
    assert data.n_rated == 2 and int((~data.is_rated).sum()) == 1
    assert data.item_features.loc[1, "genres"] == []


def test_amazon_reviews_and_literal_metadata(tmp_path):
    reviews = tmp_path / "reviews.json"
    lines = [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000},
        {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000000},
        {"reviewerID": "A2", "asin": "B01", "overall": 4.0, "unixReviewTime": 1350000000},
    ]
    reviews.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    meta = tmp_path / "meta.json"
    meta.write_text(
        "{'asin': 'B01', 'title': 'Rose Lip Balm', 'categories': [['Beauty', 'Lips']]}\n"
        "{'asin': 'B02', 'title': 'Sea Salt Spray', 'categories': [['Beauty', 'Hair']]}\n"
    )
    data = load_amazon_reviews(reviews, meta)
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert data.item_features["title"].tolist() == ["Rose Lip Balm", "Sea Salt Spray"]
    assert data.item_features["categories"].iloc[0] == ["Beauty", "Lips"]
    assert data.sequences()[0].tolist() == [1, 0]  # A1 reviewed B02 first
    lines[1]["overall"] = " 3.0"  # one rating written as text: the numbers beside it were read as NaN
    reviews.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert sorted(load_amazon_reviews(reviews).rating.tolist()) == [3.0, 4.0, 5.0]


def test_amazon_sequences_fixture_with_titles(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "Toy.txt").write_text("1 1 2 3\n2 2 3\n")
    (folder / "Toy_item_asin.tsv").write_text("item_id\tasin\n1\tB01\n2\tB02\n3\tB03\n")
    meta = tmp_path / "meta.json"
    meta.write_text('{"asin": "B02", "title": "Shampoo"}\n')
    data = load_amazon_sequences(folder, file="Toy.txt", metadata=meta, name="toy")
    assert len(data) == 5 and data.item_features["title"].iloc[1] == "Shampoo" and data.name == "toy"


def test_beauty_by_name_keeps_its_asin_map(data_dir, monkeypatch):
    """`load_dataset("amazon-beauty")` (what a config's `[dataset] name` does) finds the folder through
    RECFORGE_DATA_DIR; the shared folder's ASIN map was read only when a path was given."""
    monkeypatch.setenv("RECFORGE_DATA_DIR", str(data_dir))
    data = load_dataset("amazon-beauty")
    assert data.item_features["asin"].iloc[0] == "B004756YJA" and data.item_features["asin"].notna().all()
    assert "item_asin.tsv" in data.source["sha256"]


@pytest.mark.parametrize(
    ("attributes", "asins", "message"),
    [
        ('{"1": [1, 2], "2": [3]', None, r"Toy_item2attributes.json, line 1.*not valid JSON"),
        ('{"1": [1, 2], "2": "x"}', None, r"item 2: attributes must be a list of integer ids"),
        ('{"1": [1, true]}', None, r"item 1: attributes must be a list of integer ids"),
        ("[[1, 2]]", None, r"expected an object of item id -> attribute ids, got list"),
        (None, "item_id\tasin\n1\tB01\nx\tB02\n", r"Toy_item_asin.tsv, line 3.*not an integer: 'x'"),
        (None, "item_id\tasin\n1\tB01\n1\tB02\n", r"Toy_item_asin.tsv, line 3.*item 1 has a second ASIN"),
    ],
)
def test_bad_amazon_side_files_are_named_not_misread(tmp_path, attributes, asins, message):
    (tmp_path / "Toy.txt").write_text("1 1 2 3\n2 2 3\n")
    if attributes is not None:
        (tmp_path / "Toy_item2attributes.json").write_text(attributes)
    if asins is not None:
        (tmp_path / "Toy_item_asin.tsv").write_text(asins)
    with pytest.raises(DataFormatError, match=message):
        load_amazon_sequences(tmp_path, file="Toy.txt")


def write_sequences(folder: Path, name: str = "Toys_and_Games.txt") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("1 10 11 12\n2 11 12 13 10\n3 13 10\n")
    return folder / name


def test_other_amazon_sequence_files_load_by_path_or_name(tmp_path, beauty):
    toys = write_sequences(tmp_path / "amazon")
    (tmp_path / "amazon" / "item_asin.tsv").write_text("item_id\tasin\n10\tB10\n")  # Beauty's map: not Toys'
    by_file = load_amazon_sequences(toys)  # the file's own path
    by_name = load_dataset("amazon-beauty", tmp_path / "amazon", file=toys.name)
    relabelled = load_dataset("amazon-beauty", tmp_path / "amazon", file=toys.name, name="amazon-toys")
    for data in (by_file, by_name, relabelled):
        assert (data.n_users, data.n_items, len(data)) == (3, 4, 9)
        assert data.item_features is None  # item_asin.tsv belongs to Beauty.txt; only Toys_*_item_asin.tsv would apply
    assert by_file.name == by_name.name == "amazon-toys_and_games" and relabelled.name == "amazon-toys"
    generic = load_dataset("sequence-file", toys)
    assert generic.name == "Toys_and_Games" and generic.fingerprint() == by_file.fingerprint()
    assert load_dataset("sequence-file", toys, name="toys").name == "toys"
    assert beauty.name == "amazon-beauty" and "asin" in beauty.item_features  # the shared folder keeps its map
    with pytest.raises(DatasetNotFoundError, match="file="):
        load_dataset("amazon-beauty", tmp_path / "amazon", file="Sports.txt")
    with pytest.raises(DatasetNotFoundError, match="needs the sequence file"):
        load_dataset("sequence-file")


def test_repeated_pairs_are_refused_with_the_option_that_allows_them(tmp_path):
    from recforge.data.splits import leave_last_out
    from recforge.errors import LeakageError
    from recforge.evaluation.guards import check_split

    path = tmp_path / "plays.txt"
    path.write_text("1 10 11 10 12 10\n2 11 12 13\n")  # user 1 re-consumes item 10
    split = leave_last_out(load_dataset("sequence-file", path), k=1)
    with pytest.raises(LeakageError, match="allow_repeat_pairs"):
        check_split(split)
    check_split(split, allow_repeat_pairs=True)


def test_headerless_double_colon_table_loads_with_names_given(tmp_path):
    path = tmp_path / "ratings_subset.dat"
    path.write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    data = load_dataset(
        "table", path, sep="::", header=False, columns=["user", "item", "stars", "time"],
        user="user", item="item", rating="stars", timestamp="time", rating_scale=(1, 5),
    )  # fmt: skip
    assert (data.n_users, data.n_items, len(data), data.n_rated) == (2, 2, 3, 3)
    assert data.timestamp.tolist() == [978300760, 978302109, 978298413]
    with pytest.raises(DataFormatError, match="header=False"):
        load_table(path, user="user", item="item", sep="::")  # the first line is data, not a header
    with pytest.raises(DataFormatError, match=r"separated by '::'"):  # the separator as the user wrote it
        load_table(path, sep="::", header=False, columns=["user", "item", "stars"], user="user", item="item")
    with pytest.raises(DataFormatError, match="columns="):
        load_table(path, sep="::", header=False, user="user", item="item")


def test_ml1m_reads_a_ratings_file_by_the_name_given(tmp_path):
    folder = tmp_path / "ml-1m"
    write_ml1m(folder)
    (folder / "ratings.dat").rename(folder / "ratings_per_user_subset.dat")
    with pytest.raises(DatasetNotFoundError, match="file="):
        load_movielens_1m(folder)
    data = load_movielens_1m(folder, file="ratings_per_user_subset.dat")
    same = load_movielens_1m(folder / "ratings_per_user_subset.dat")
    assert len(data) == 3 and data.fingerprint() == same.fingerprint()
    assert data.name == "ml-1m (ratings_per_user_subset.dat)" and data.item_features is not None
    (folder / "movies.dat").unlink()
    with pytest.raises(DatasetNotFoundError, match="features=False"):
        load_movielens_1m(folder, file="ratings_per_user_subset.dat")
    assert load_movielens_1m(folder, file="ratings_per_user_subset.dat", features=False).item_features is None


def test_every_named_dataset_takes_a_file(ml100k, data_dir, tmp_path):
    from recforge.data.loaders import DATASETS

    assert all("file" in DATASETS[name].__kwdefaults__ for name in DATASETS)
    fold = load_dataset("ml-100k", data_dir / "ml-100k", file="u1.base")
    assert len(fold) == 80000 and fold.name == "ml-100k (u1.base)" and fold.item_features is not None
    sample = load_dataset("anime-kaggle", data_dir / "anime-kaggle" / "rating_sample5000.csv", features=False)
    assert len(sample) == 520609 and sample.name == "anime-kaggle"


def test_generic_table_csv_and_parquet(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("who,what,stars,when\nu1,apple,4.5,2024-01-02\nu2,apple,3,2024-01-03\nu1,pear,,2024-01-04\n")
    data = load_table(
        csv,
        user="who",
        item="what",
        rating="stars",
        timestamp="when",
        rating_scale=(0.5, 5),
        timestamp_format="%Y-%m-%d",
    )
    assert (data.n_users, data.n_items, len(data), data.n_rated) == (2, 2, 3, 2)
    assert data.timestamp[0] == 1704153600
    data.to_frame().to_parquet(tmp_path / "log.parquet")
    again = load_table(tmp_path / "log.parquet", user="user_id", item="item_id", rating="rating", timestamp="timestamp")
    assert np.array_equal(again.timestamp, data.timestamp)


def test_table_reads_a_files_unrated_marker_as_not_rated_in_text_and_parquet(tmp_path, data_dir):
    """The Kaggle anime ratings read as a plain table with the newer catalogue: -1 is "watched, not rated",
    and the 1-10 scale holds for the rest (without `unrated` the scale refused every -1)."""
    ratings = data_dir / "anime-kaggle" / "rating_sample5000.csv"
    options = dict(user="user_id", item="anime_id", rating="rating", rating_scale=[1, 10])
    with pytest.raises(DataFormatError, match=r"outside the scale 1\.\.10: '-1' \(100666 such row"):
        load_table(ratings, **options)
    data = load_table(ratings, unrated=-1, **options)
    named = load_dataset("anime-kaggle", data_dir / "anime-kaggle", features=False)
    assert (len(data), data.n_rated) == (len(named), named.n_rated) == (520609, 520609 - 100666)
    frame = pd.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "r": [8.0, -1.0, 10.0]})
    frame.to_parquet(tmp_path / "typed.parquet")
    typed = load_table(tmp_path / "typed.parquet", user="u", item="i", rating="r", unrated=-1, rating_scale=(1, 10))
    assert np.isnan(typed.rating[1]) and typed.n_rated == 2


def test_table_iso_timestamps_take_every_iso_form_and_numbers_name_the_option(tmp_path):
    csv = tmp_path / "log.csv"
    rows = ["a,x,2024-01-02 03:04:05", "a,y,2024-01-02T03:04:06Z", "b,x,2024-01-03", "b,y,2024-01-02T05:04:07+02:00"]
    csv.write_text("u,i,t\n" + "\n".join(rows) + "\n")
    data = load_table(csv, user="u", item="i", timestamp="t", timestamp_format="iso")
    assert data.timestamp.tolist() == [1704164645, 1704164646, 1704240000, 1704164647]
    with pytest.raises(DataFormatError, match="timestamp_format") as caught:
        load_table(csv, user="u", item="i", timestamp="t")
    assert (caught.value.line, caught.value.column) == (2, "t") and "line 2" in str(caught.value)


def test_table_parquet_datetimes_become_unix_seconds(tmp_path):
    import pandas as pd

    when = pd.to_datetime(["2024-01-02 03:04:05.900", "2024-01-03"], format="ISO8601")
    frame = pd.DataFrame({"u": [1, 2], "i": [10, 11], "t": when})
    frame.to_parquet(tmp_path / "naive.parquet")
    frame.assign(t=when.tz_localize("Europe/Paris")).to_parquet(tmp_path / "paris.parquet")
    naive = load_table(tmp_path / "naive.parquet", user="u", item="i", timestamp="t")
    assert naive.timestamp.tolist() == [1704164645, 1704240000]  # naive = UTC, sub-second parts dropped
    paris = load_table(tmp_path / "paris.parquet", user="u", item="i", timestamp="t")
    assert paris.timestamp.tolist() == [1704164645 - 3600, 1704240000 - 3600]


def test_table_catalogue_gives_titles_and_genres_and_refuses_what_it_cannot_join(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("who,sku\nu1,1\nu1,2\nu2,3\n")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text('id,name,tags\n2,"Pear, green",fruit|green\n1,Apple,fruit\n9,Plum,\n')
    data = load_table(log, user="who", item="sku", items=catalogue, items_id="id", title="name", genres="tags")
    features = data.item_features
    by_id = dict(zip(data.items.ids, zip(features["title"], features["genres"], strict=True), strict=True))
    assert by_id[1] == ("Apple", ["fruit"]) and by_id[2] == ("Pear, green", ["fruit", "green"])
    assert pd_isna(by_id[3][0]) and by_id[3][1] == []  # no catalogue row: no title, no genres
    assert data.source["items_without_catalogue_row"] == 1 and "items.csv" in data.source["catalogue"]
    catalogue.write_text("id,name\n1,Apple\n2,Pear\n1,Apple again\n")
    with pytest.raises(DataFormatError, match="more than once") as caught:
        load_table(log, user="who", item="sku", items=catalogue, items_id="id", title="name")
    assert caught.value.line == 4
    catalogue.write_text("id,name\nA1,Apple\n")
    with pytest.raises(DataFormatError, match="no id in column 'id' matches"):
        load_table(log, user="who", item="sku", items=catalogue, items_id="id", title="name")
    with pytest.raises(DataFormatError, match="missing column"):
        load_table(log, user="who", item="sku", items=catalogue, title="name")  # joined on "sku" by default


def test_table_side_tables_give_typed_item_and_user_features_a_two_tower_reads(tmp_path, ml100k):
    """MovieLens 100K as a shop's export: a log, a catalogue with a year, a user table with age, gender and
    occupation. Until `item_columns`/`user_columns`, a table kept only titles and genres, so no feature tower
    could read a catalogue's numbers or a user table at all."""
    from recforge.models import create_model

    frame = ml100k.to_frame()
    frame[["user_id", "item_id", "rating"]].to_csv(tmp_path / "log.csv", index=False)
    items = ml100k.item_features.assign(item_id=ml100k.items.ids, genres=ml100k.item_features["genres"].map("|".join))
    items["year"] = [str(int(year)) if year == year else "unknown" for year in items["year"]]  # NaN: unknown
    items[["item_id", "title", "genres", "year"]].to_csv(tmp_path / "items.csv", index=False)
    people = ml100k.user_features.assign(user_id=ml100k.users.ids)
    people[["user_id", "age", "gender", "occupation"]].to_csv(tmp_path / "users.csv", index=False)
    options = dict(user="user_id", item="item_id", rating="rating", rating_scale=[1, 5], items=tmp_path / "items.csv")
    data = load_table(
        tmp_path / "log.csv", **options, title="title", genres="genres", item_columns=["year"],
        missing_values=["unknown"], users=tmp_path / "users.csv", user_columns=["age", "gender", "occupation"],
    )  # fmt: skip
    assert data.item_features["year"].dtype == np.float64  # "unknown" is a missing year, not text
    np.testing.assert_array_equal(data.item_features["year"], ml100k.item_features["year"].astype(float))
    assert data.user_features["age"].tolist() == ml100k.user_features["age"].astype(float).tolist()
    assert data.user_features["occupation"].tolist() == ml100k.user_features["occupation"].tolist()
    assert data.source["users_without_table_row"] == 0 and "users.csv" in data.source["user_table"]
    model = create_model("two_tower", user_features=True, item_features=True, n_epochs=1).fit(data)
    assert model.user_feature_kinds() == {"gender": "categorical", "occupation": "categorical", "age": "numeric"}
    assert "year" in model.item_feature_kinds()
    text = load_table(tmp_path / "log.csv", **options, item_columns=["year"])  # "unknown" not declared: text
    assert text.item_features["year"].dtype != np.float64 and "unknown" in set(text.item_features["year"])
    with pytest.raises(ConfigError, match="also pass users="):
        load_table(tmp_path / "log.csv", user="user_id", item="item_id", user_columns=["age"])
    with pytest.raises(ConfigError, match="item feature 'title' is named twice"):
        load_table(tmp_path / "log.csv", **options, title="title", item_columns=["title"])
    with pytest.raises(DataFormatError, match="missing column"):
        load_table(tmp_path / "log.csv", **options, item_columns=["price"])


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))
