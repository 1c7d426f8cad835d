"""Bad input must raise a `DataFormatError` naming file, line and column; nothing is dropped silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recforge.data.interactions import Interactions
from recforge.data.loaders import load_anime_kaggle, load_dataset, load_movielens_100k, load_table
from recforge.errors import ConfigError, DataFormatError


def ml100k_folder(tmp_path: Path, u_data: bytes) -> Path:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_bytes(u_data)
    (folder / "u.item").write_bytes(b"1|Toy Story (1995)|01-Jan-1995||http://x|" + b"|".join([b"0"] * 19) + b"\n")
    (folder / "u.user").write_bytes(b"1|24|M|technician|85711\n")
    return folder


@pytest.mark.parametrize(
    ("content", "line", "column", "message"),
    [
        (b"1\t1\t5\t881250949\n1\t1\tfive\t881250950\n", 2, "rating", "not a number"),
        (b"1\t1\t5\t881250949\n1\t1\t7\t881250950\n", 2, "rating", "outside the scale"),
        (b"1\t1\t5\t881250949\n1\tx\t4\t881250950\n", 2, "item", "not an integer"),
        (b"1\t1\t5\t881250949\n1\t1\t4\n", 2, None, "expected 4 fields"),
        (b"1\t1\t5\t881250949\n1\t1\t4\t881250950\t99\n", 2, None, "expected 4 fields"),
        (b"1\t1\t5\t881250949\n1\t\t4\t881250950\n", 2, "item", "not an integer"),
        (b"1,1,5,881250949\n", 1, None, "separator"),
        (b"1\t1\t5\t881250949\n\n1\t1\t4\t1.5\n", 3, "timestamp", "not an integer"),
    ],
)
def test_ml100k_malformed_rows(tmp_path, content, line, column, message):
    folder = ml100k_folder(tmp_path, content)
    with pytest.raises(DataFormatError, match=message) as info:
        load_movielens_100k(folder)
    error = info.value
    assert error.path.endswith("u.data") and error.line == line and error.column == column


def test_loader_options_are_checked_against_the_loader_by_name(tmp_path):
    """A misspelt or missing option is a ConfigError naming the dataset and its options (it was a
    TypeError from the call: a traceback on the command line)."""
    path = tmp_path / "log.csv"
    path.write_text("customer,sku\n1,2\n")
    with pytest.raises(
        ConfigError, match=r"'table' takes no option 'usr' \(did you mean 'user'\?\); its options: user"
    ):
        load_dataset("table", path, usr="customer", item="sku")
    with pytest.raises(ConfigError, match=r"'table' needs the option\(s\) user, item: the names of the file's columns"):
        load_dataset("table", path)
    with pytest.raises(
        ConfigError, match=r"'ml-100k' takes no option 'fil' \(did you mean 'file'\?\); its options: file"
    ):
        load_dataset("ml-100k", tmp_path, fil="u1.base")
    with pytest.raises(ConfigError, match=r"'saved' takes no option 'user'; its options: none"):
        load_dataset("saved", tmp_path, user="customer")
    assert len(load_dataset("table", path, user="customer", item="sku")) == 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        # `-o rating_scale=0.5,5` on the command line: the text's characters were unpacked, a ValueError traceback
        ("rating_scale", "0.5,5", r"option 'rating_scale' should be a list of 2 numbers, e.g. \[1, 5\]; got '0.5,5'"),
        ("rating_scale", [5, 1], r"rating_scale must be two finite numbers with low < high"),
        ("rating_scale", [1, float("nan")], r"rating_scale must be two finite numbers with low < high"),
        ("on_missing", "skip", r"option 'on_missing' should be one of 'raise', 'drop'; got 'skip'"),
        ("columns", "customer,sku", r"option 'columns' should be a list such as \[\"user\", \"item\"\]"),
        # `header=no` was truthy, so the file's first line was read as column names
        ("header", "maybe", r"option 'header' should be true or false; got 'maybe'"),
    ],
)
def test_loader_option_values_are_checked_against_their_types(tmp_path, option, value, message):
    path = tmp_path / "log.csv"
    path.write_text("customer,sku,stars\n1,2,4.5\n")
    with pytest.raises(ConfigError, match=message):
        load_dataset("table", path, user="customer", item="sku", rating="stars", **{option: value})


def test_loader_option_values_are_converted_where_unambiguous(tmp_path):
    """What TOML and the command line give: a list for a tuple, "no" for false."""
    path = tmp_path / "log.csv"
    path.write_text("1,2,4.5\n3,2,1\n")
    data = load_dataset(
        "table", path, user="u", item="i", rating="r", header="no", columns=["u", "i", "r"], rating_scale=[0.5, 5]
    )
    assert data.rating_scale == (0.5, 5.0) and len(data) == 2
    with pytest.raises(ConfigError, match="rating_scale must be two numbers"):
        Interactions.from_frame(pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [3.0]}), rating_scale="15")


def test_empty_file(tmp_path):
    folder = ml100k_folder(tmp_path, b"")
    with pytest.raises(DataFormatError, match="empty") as info:
        load_movielens_100k(folder)
    assert info.value.path.endswith("u.data")


def test_undecodable_bytes_name_the_line(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_bytes(b"user,item\nu1,caf\xe9\n")
    with pytest.raises(DataFormatError, match="latin-1") as info:
        load_table(csv, user="user", item="item")
    assert info.value.line == 2
    assert load_table(csv, user="user", item="item", encoding="latin-1").items.ids.tolist() == ["café"]


def test_missing_column_and_wrong_separator(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("user:item:rating\nu1:a:4\n")  # a separator nobody sniffs for
    with pytest.raises(DataFormatError, match="separator") as info:
        load_table(csv, user="user", item="item", rating="rating")
    assert info.value.line == 1
    assert len(load_table(csv, user="user", item="item", rating="rating", sep=":")) == 1
    with pytest.raises(DataFormatError, match="separator ','") as info:
        load_table(csv, user="user", item="item", rating="rating", sep=",")  # given, not sniffed
    assert info.value.line == 1


@pytest.mark.parametrize(
    "content",
    [
        "user,item,rating\n1,10,4,999\n2,11,3,999\n",  # a column the header does not name
        '\n"user",item,rating\n\n1,10,4,999\n',  # quoted (pandas' path), after blank lines
    ],
)
def test_rows_wider_than_the_header_are_refused_not_shifted(tmp_path, content):
    """pandas takes the first field of each row as an index when the first row has one field more than
    the header: user 1's row was read as user 10, item 4, rating 999 (and refused for its rating only when
    the scale caught it)."""
    csv = tmp_path / "wide.csv"
    csv.write_text(content)
    with pytest.raises(DataFormatError, match=r"more fields than the header has names \(user, item, rating\)") as info:
        load_table(csv, user="user", item="item")
    assert info.value.line == content.split("\n").index("1,10,4,999") + 1


def test_the_separator_is_sniffed_and_utf16_is_read(tmp_path):
    """A spreadsheet's semicolon export (decimal commas in the ratings) and Excel's "Unicode Text" (UTF-16
    with a byte-order mark, tab-separated, CRLF) read without options; the log's own decimal commas are
    then a named error, not a wrong split."""
    rows = [("u1", "a", "4"), ("u1", "b", "5"), ("u2", "a", "3")]
    semicolons = tmp_path / "export.csv"
    semicolons.write_text("user;item;rating\n" + "".join(f"{u};{i};{r}\n" for u, i, r in rows))
    excel = tmp_path / "unicode.txt"
    excel.write_bytes(("user\titem\trating\r\n" + "".join(f"{u}\t{i}\t{r}\r\n" for u, i, r in rows)).encode("utf-16"))
    assert excel.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    for path in (semicolons, excel):
        data = load_table(path, user="user", item="item", rating="rating")
        assert data.users.ids.tolist() == ["u1", "u2"] and sorted(data.rating.tolist()) == [3.0, 4.0, 5.0]
    decimal = tmp_path / "decimal.csv"
    decimal.write_text("user;item;rating\nu1;a;4,5\nu1;b;3,5\n")
    with pytest.raises(DataFormatError, match=r"not a number: '4,5' .*a decimal comma\? pass decimal=','") as info:
        load_table(decimal, user="user", item="item", rating="rating")
    assert (info.value.line, info.value.column) == (2, "rating")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text('item;price;size\na;12,99;"1,5"\nb;-0,5;big\n')  # "big": a text column stays text
    data = load_table(
        decimal, user="user", item="item", rating="rating", decimal=",", items=catalogue, item_columns=["price", "size"]
    )
    assert data.rating.tolist() == [4.5, 3.5]
    headerless = tmp_path / "headerless.csv"  # a comma in every line: sniffed alone, "," would split them in two
    headerless.write_text("u1;a;4,5\nu1;b;3,5\n")
    options = {"user": "u", "item": "i", "rating": "r", "header": False, "columns": ["u", "i", "r"]}
    assert load_table(headerless, **options, decimal=",").rating.tolist() == [4.5, 3.5]
    assert data.item_features["price"].tolist() == [12.99, -0.5] and data.item_features["size"].tolist() == [
        "1.5",
        "big",
    ]


def test_millisecond_timestamps_are_refused_as_seconds_and_read_with_their_unit(tmp_path):
    """Event logs count milliseconds: read as seconds they were the year 55,972 (which crashed `recforge
    data describe`) and scaled every time-decayed model's kernel by 1,000."""
    from recforge.data.describe import as_utc_date, describe

    stamps = [1_704_153_600_123, 1_704_240_000_999]  # 2024-01-02, 2024-01-03
    log = tmp_path / "events.csv"
    log.write_text("user,item,ts\n" + "".join(f"u1,{i},{t}\n" for i, t in zip("ab", stamps, strict=True)))
    options = {"user": "user", "item": "item", "timestamp": "ts"}
    with pytest.raises(DataFormatError, match=r"after the year 3000 read as unix seconds.*timestamp_unit='ms'") as info:
        load_table(log, **options)
    assert (info.value.line, info.value.column) == (2, "ts")
    pd.DataFrame({"user": ["u1", "u1"], "item": ["a", "b"], "ts": stamps}).to_parquet(tmp_path / "events.parquet")
    for path in (log, tmp_path / "events.parquet"):
        data = load_table(path, **options, timestamp_unit="ms")
        assert data.timestamp.tolist() == [1_704_153_600, 1_704_240_000]  # floored, as datetimes' fractions are
    assert load_table(log, **options, timestamp_unit="us").timestamp.tolist() == [1_704_153, 1_704_240]  # 1970
    with pytest.raises(ConfigError, match="timestamp_unit counts numeric timestamps"):
        load_table(log, **options, timestamp_unit="ms", timestamp_format="iso")
    frame = pd.DataFrame({"user": [1, 1], "item": [1, 2], "ts": stamps})
    with pytest.raises(DataFormatError, match=r"pandas.to_datetime\(values, unit='ms'\)") as info:
        Interactions.from_frame(frame, user="user", item="item", timestamp="ts")
    assert info.value.row == 0
    converted = frame.assign(ts=pd.to_datetime(frame["ts"], unit="ms"))
    assert Interactions.from_frame(converted, user="user", item="item", timestamp="ts").timestamp[0] == 1_704_153_600
    built = Interactions.from_frame(frame.assign(ts=[0, 1]), user="user", item="item", timestamp="ts")
    late = type(built)(**{**built.__dict__, "timestamp": np.array(stamps, dtype=np.int64)})  # built around the check
    assert describe(late).time_range == tuple(stamps) and as_utc_date(stamps[0]) is None  # no date, no crash


def test_ids_written_with_leading_zeros_stay_text_and_distinct(tmp_path):
    """Read as numbers, "007" and "7" were one user and the SKU "00123" became item 123; a column with such
    a value is text, and a catalogue joins it by text even when its own ids have no leading zero."""
    log = tmp_path / "log.csv"
    log.write_text("user,item\n007,00123\n7,123\n8,0456\n")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item,title\n123,Plain\n00123,Padded\n")  # 0456 has no row
    data = load_table(log, user="user", item="item", items=catalogue, title="title")
    assert data.users.ids.tolist() == ["007", "7", "8"] and data.items.ids.tolist() == ["00123", "0456", "123"]
    assert data.user_counts().tolist() == [1, 1, 1]
    assert data.item_features["title"].fillna("-").tolist() == ["Padded", "-", "Plain"]
    plain = tmp_path / "plain.csv"
    plain.write_text("user,item\n7,123\n8,456\n")
    numbers = load_table(plain, user="user", item="item", items=catalogue, title="title")
    assert numbers.items.ids.tolist() == [123, 456]  # integers as before; the catalogue joins by number
    assert numbers.item_features["title"].fillna("-").tolist() == ["Plain", "-"]  # "00123" is another item


def test_missing_ids_raise_or_are_dropped_with_a_count(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("user,item\nu1,a\n,b\nu2,c\n")
    with pytest.raises(DataFormatError, match="missing value") as info:
        load_table(csv, user="user", item="item")
    assert (info.value.line, info.value.column) == (3, "user")
    data = load_table(csv, user="user", item="item", on_missing="drop")
    assert len(data) == 2 and data.source["dropped_missing"] == 1


def test_anime_rating_outside_scale(tmp_path):
    folder = tmp_path / "anime"
    folder.mkdir()
    (folder / "anime.csv").write_text("anime_id,name,genre,type,episodes,rating,members\n1,A,Action,TV,1,7.0,10\n")
    (folder / "rating.csv").write_text("user_id,anime_id,rating\n1,1,-1\n1,1,11\n")
    with pytest.raises(DataFormatError, match="outside the scale") as info:
        load_anime_kaggle(folder)
    assert (info.value.line, info.value.column) == (3, "rating")


def test_anime_catalogue_bad_list(tmp_path):
    folder = tmp_path / "mal"
    folder.mkdir()
    (folder / "animes.csv").write_text(
        "animeID,title,type,year,score,episodes,genres,genres_detailed\n1,A,TV,2000,7,12,\"['Action'\",\n"
    )
    (folder / "ratings.csv").write_text("userID,animeID,rating\n1,1,5\n")
    from recforge.data.loaders import load_anime_mal

    with pytest.raises(DataFormatError, match="malformed list") as info:
        load_anime_mal(folder)
    assert (info.value.line, info.value.column) == (2, "genres")


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(1, 50), st.integers(1, 50), st.integers(1, 5)), min_size=1, max_size=30),
    bad_row=st.integers(0, 29),
    bad_value=st.sampled_from(["x", "3.5.1", "", "nan?", "1e999x"]),
)
def test_any_corrupted_rating_cell_is_reported_at_its_line(tmp_path_factory, rows, bad_row, bad_value):
    bad_row = bad_row % len(rows)
    lines = ["user,item,rating"] + [f"{u},{i},{r}" for u, i, r in rows]
    u, i, _ = rows[bad_row]
    lines[bad_row + 1] = f"{u},{i},{bad_value}"
    path = tmp_path_factory.mktemp("csv") / "r.csv"
    path.write_text("\n".join(lines) + "\n")
    if bad_value == "":  # an empty rating is an unrated interaction, which is allowed
        assert load_table(path, user="user", item="item", rating="rating").n_rated == len(rows) - 1
        return
    with pytest.raises(DataFormatError) as info:
        load_table(path, user="user", item="item", rating="rating")
    assert info.value.line == bad_row + 2 and info.value.column == "rating"


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 10**9),
            st.text("abcxyz", min_size=1, max_size=5),
            st.floats(0.5, 5, allow_nan=False).map(lambda x: round(x * 2) / 2),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_valid_tables_roundtrip_exactly(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("csv") / "r.csv"
    path.write_text("u,i,r\n" + "".join(f"{u},{i},{r}\n" for u, i, r in rows))
    data = load_table(path, user="u", item="i", rating="r", rating_scale=(0.5, 5))
    frame = data.to_frame()
    assert frame["user_id"].tolist() == [u for u, _, _ in rows]
    assert frame["item_id"].tolist() == [i for _, i, _ in rows]
    assert frame["rating"].tolist() == [r for _, _, r in rows]


def test_typed_parquet_matches_the_text_path_and_reports_rows(tmp_path):
    import pandas as pd

    rows = pd.DataFrame(
        {"user": [1, 2, 2, 3], "item": ["10", "11", "x", "10"], "stars": [4.0, None, 2.5, 5.0], "t": [5, 6, 7, 8]}
    )
    rows.to_csv(tmp_path / "log.csv", index=False)
    rows.to_parquet(tmp_path / "log.parquet", index=False)
    options = {"user": "user", "item": "item", "rating": "stars", "timestamp": "t", "rating_scale": (0.5, 5)}
    text, typed = load_table(tmp_path / "log.csv", **options), load_table(tmp_path / "log.parquet", **options)
    assert typed.fingerprint() == text.fingerprint()

    rows.loc[2, "user"] = None  # an integer column with a hole becomes float: the text path reads it
    rows.to_parquet(tmp_path / "hole.parquet", index=False)
    with pytest.raises(DataFormatError, match="missing value") as info:
        load_table(tmp_path / "hole.parquet", **options)
    assert (info.value.line, info.value.column) == (3, "user")

    with_fraction = rows.assign(user=[1.0, 2.0, None, 3.5])  # whole floats are ids; 3.5 is no id
    with_fraction.to_parquet(tmp_path / "fraction.parquet", index=False)
    with pytest.raises(DataFormatError, match=r"ids must be integers or text, not 3\.5") as info:
        load_table(tmp_path / "fraction.parquet", **options | {"on_missing": "drop"})
    assert (info.value.line, info.value.column) == (4, "user")
    whole = load_table(tmp_path / "hole.parquet", **options | {"on_missing": "drop"})
    assert whole.users.ids.tolist() == [1, 2, 3]

    rows = rows.dropna(subset=["user"]).astype({"user": "int64"})
    rows.loc[3, "stars"] = 9.0
    rows.to_parquet(tmp_path / "scale.parquet", index=False)
    with pytest.raises(DataFormatError, match="outside the scale") as info:
        load_table(tmp_path / "scale.parquet", **options)
    assert (info.value.line, info.value.column) == (3, "stars")


@settings(max_examples=60, deadline=None)
@given(
    stamps=st.lists(
        st.tuples(st.integers(0, 2_000_000_000), st.sampled_from(["space", "T", "Z", "offset", "date"])),
        min_size=1,
        max_size=20,
    ),
    offset_minutes=st.integers(-12 * 60, 14 * 60),
)
def test_iso_timestamps_in_any_mix_of_forms_read_as_their_unix_seconds(tmp_path_factory, stamps, offset_minutes):
    from datetime import UTC, datetime, timedelta, timezone

    zone = timezone(timedelta(minutes=offset_minutes))
    cells, expected = [], []
    for seconds, form in stamps:
        moment = datetime.fromtimestamp(seconds, UTC)
        if form == "date":  # midnight UTC of that day
            cells.append(moment.strftime("%Y-%m-%d"))
            expected.append(seconds - seconds % 86400)
        elif form == "offset":
            cells.append(moment.astimezone(zone).isoformat())
            expected.append(seconds)
        else:
            text = {"space": "%Y-%m-%d %H:%M:%S", "T": "%Y-%m-%dT%H:%M:%S", "Z": "%Y-%m-%dT%H:%M:%SZ"}[form]
            cells.append(moment.strftime(text))
            expected.append(seconds)
    path = tmp_path_factory.mktemp("csv") / "r.csv"
    path.write_text("u,i,t\n" + "".join(f"u{k},i,{cell}\n" for k, cell in enumerate(cells)))
    data = load_table(path, user="u", item="i", timestamp="t", timestamp_format="iso")
    assert data.timestamp.tolist() == expected


_FRAME = {
    "u": [1, 2, 3],
    "i": ["a", "b", "c"],
    "r": [4.0, 5.0, 3.0],
    "t": [1_577_836_800, 1_577_923_200, 1_578_009_600],
}


@pytest.mark.parametrize(
    ("column", "values", "options", "row", "message"),
    [
        ("r", ["4", "5", "x"], {}, 12, r"not a number: 'x' \(1 such row\(s\)\); ratings are numbers"),
        ("r", [np.inf, 1.0, 2.0], {}, 10, "rating is not finite: inf"),
        ("r", [True, False, True], {}, 10, "not booleans"),
        ("r", [4.0, 5.0, 3.0], {"rating_scale": (1, 4)}, 11, r"rating outside the scale 1..4: 5.0"),
        ("t", [1.5, 2.0, 3.0], {}, 10, "timestamp is not whole seconds: 1.5"),
        ("t", [1.0, 2.0, np.nan], {}, 12, "timestamp is missing or not finite: nan"),
        ("t", ["2020-01-01", "x", "y"], {}, 10, "parse text with pandas.to_datetime first"),
        ("t", pd.to_datetime(["2020-01-01", None, "2020-01-03"]), {}, 11, "timestamp is missing: NaT"),
        ("u", [1, None, 3], {}, 11, r"missing id \(1 such row\(s\)\)"),
        ("i", [1.0, 2.5, 3.0], {}, 11, r"ids must be integers or text, not 2.5 \(is 'i' the id column\?\)"),
    ],
)
def test_a_frames_bad_value_names_its_column_and_row(column, values, options, row, message):
    """Interactions.from_frame checks ratings and timestamps as the loaders do (it cast them: a datetime
    column became microseconds, NaN timestamps int64's minimum, inf and out-of-scale ratings were kept)."""
    frame = pd.DataFrame(_FRAME, index=[10, 11, 12]).assign(**{column: values})
    with pytest.raises(DataFormatError, match=message) as info:
        Interactions.from_frame(frame, user="u", item="i", rating="r", timestamp="t", **options)
    assert (info.value.row, info.value.column) == (row, column)


def test_a_frames_datetimes_become_unix_seconds_and_missing_ratings_unrated():
    naive = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03"])  # read as UTC
    frame = pd.DataFrame(_FRAME).assign(t=naive, r=pd.array([4, None, 3], dtype="Int64"))
    data = Interactions.from_frame(frame, user="u", item="i", rating="r", timestamp="t")
    assert data.timestamp.tolist() == _FRAME["t"]
    assert np.isnan(data.rating[1]) and data.n_rated == 2
    paris = Interactions.from_frame(
        frame.assign(t=naive.tz_localize("Europe/Paris")), user="u", item="i", timestamp="t"
    )
    assert paris.timestamp.tolist() == [t - 3600 for t in _FRAME["t"]]


def test_a_frames_whole_float_ids_are_integers_as_a_files_are(tmp_path):
    """pandas makes an integer id column with a gap float; kept float, the ids of a saved model matched
    neither 1 nor "1" in the service (every user unknown). They are read as the table loader reads "1.0"."""
    frame = pd.DataFrame({"u": [1.0, 1.0, 2.0], "i": [10.0, 11.0, 10.0]})
    data = Interactions.from_frame(frame, user="u", item="i")
    frame.to_csv(tmp_path / "log.csv", index=False)
    read = load_table(tmp_path / "log.csv", user="u", item="i")
    for ours, theirs in ((data.users, read.users), (data.items, read.items)):
        assert ours.ids.dtype == np.int64 and ours == theirs
    assert data.items.ids.tolist() == [10, 11]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    ("column", "values", "row", "message"),
    [
        ("r", [4.0, np.inf, 3.0], 1, "rating is not finite"),
        ("t", [1.0, 2.5, 3.0], 1, "timestamp is not whole seconds"),
        ("t", [1.0, 2.0, np.inf], 2, "timestamp is missing or not finite"),
    ],
)
def test_files_refuse_infinite_ratings_and_fractional_timestamps_at_their_line(
    tmp_path, suffix, column, values, row, message
):
    """The text path parsed "inf" as a rating and cast "2.5" seconds to 2; typed Parquet cast too."""
    frame = pd.DataFrame(_FRAME).assign(**{column: values})
    path = tmp_path / f"log{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    with pytest.raises(DataFormatError, match=message) as info:
        load_table(path, user="u", item="i", rating="r", timestamp="t")
    line = row + (2 if suffix == ".csv" else 1)  # a text file's header is line 1; Parquet counts rows from 1
    assert (info.value.path, info.value.line, info.value.column) == (str(path), line, column)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3)),
            st.sampled_from(["", "Unknown", "NA"]),
        ),
        min_size=1,
        max_size=20,
    ),
    text=st.booleans(),
)
def test_a_catalogue_column_is_numbers_exactly_when_every_present_value_is_one(tmp_path_factory, values, text):
    """Side-table features: "Unknown" (declared) and NA (a default marker) are missing; one word among the
    numbers keeps the column text, with nothing dropped or coerced."""
    cells = [str(v) for v in values] + (["many"] if text else [])
    folder = tmp_path_factory.mktemp("side")
    (folder / "log.csv").write_text("u,i\n" + "".join(f"1,{n}\n" for n in range(len(cells))))
    (folder / "items.csv").write_text("i,size\n" + "".join(f"{n},{cell}\n" for n, cell in enumerate(cells)))
    data = load_table(
        folder / "log.csv", user="u", item="i", items=folder / "items.csv", item_columns=["size"],
        missing_values=["Unknown", "NA"],
    )  # fmt: skip
    size = data.item_features["size"].set_axis(data.items.ids).reindex(range(len(cells)))
    missing = [cell in ("", "Unknown", "NA") for cell in cells]
    assert size.isna().tolist() == missing
    if text:
        assert size.dtype != np.float64 and size.iloc[-1] == "many"
        assert [v for v, gone in zip(size, missing, strict=True) if not gone] == [
            c for c, gone in zip(cells, missing, strict=True) if not gone
        ]
    else:
        assert size.dtype == np.float64
        assert size.dropna().tolist() == [float(c) for c, gone in zip(cells, missing, strict=True) if not gone]


@settings(max_examples=300, deadline=None)
@given(
    cells=st.lists(
        st.one_of(
            st.from_regex(r"[+-]?[0-9]{1,20}(\.[0-9]{0,8})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
            st.from_regex(r"[+-]?\.[0-9]{1,5}", fullmatch=True),
            st.sampled_from(["nan", "inf", "-inf", "1_000", "0x10", "1,5", "", " 5", "5 ", "١٢", "1e", "."]),
            st.text(max_size=6),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_vectorised_number_reader_agrees_with_pandas_wherever_it_answers(cells):
    """`plain_numbers` (Arrow's cast) answers only for plain literals; there it reads Python's correctly
    rounded value (pandas.to_numeric can be a bit off: 1e200 read as 1.0000000000000001e+200), integers
    stay exact, and anything else goes to the general path."""
    from recforge.data.columns import DECIMAL, INTEGER, plain_numbers

    values = pd.Series(cells, dtype="str")
    reference = pd.to_numeric(values, errors="coerce")
    decimals = plain_numbers(values, DECIMAL)
    if decimals is not None:
        assert decimals.tolist() == [float(c) for c in cells]
        np.testing.assert_allclose(decimals, reference.to_numpy(dtype=np.float64), rtol=4e-16)
    integers = plain_numbers(values, INTEGER)
    if integers is not None:
        assert integers.dtype == np.int64 and integers.tolist() == [int(c) for c in cells]
    if any(not c or c.strip() != c or c.lower() in ("nan", "inf", "-inf") for c in cells):
        assert decimals is None and integers is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("a1, \t\r\n\n\xa0é\u2003\x1f\x0b中\u3000")), max_size=40), st.booleans())
def test_data_line_numbers_are_the_lines_with_more_than_whitespace(text, header):
    """The vectorised line numbering agrees with reading the lines one by one (`str.strip`)."""
    from recforge.data.loaders._source import _data_line_numbers

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    expected = [number for number, line in enumerate(lines, 1) if line.strip()]
    assert _data_line_numbers(text, header).tolist() == (expected[1:] if header else expected)


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab17,;\t |\n\n\r \xa0é")), max_size=60),  # quotes: declined
    st.booleans(),
    st.sampled_from([",", ";", "\t", "|"]),
)
def test_arrows_cells_equal_pandas_cells_wherever_arrow_answers(text, header, sep):
    """The fast reader of a text table's cells (Arrow) answers only with the frame pandas' tokenizer makes;
    elsewhere it declines and pandas reads (or refuses) the text."""
    import csv

    from recforge.data.loaders._source import _arrow_cells, _data_line_numbers, _pandas_cells

    fast = _arrow_cells(text, sep, header, len(_data_line_numbers(text, header=False)))
    if fast is None:
        return
    for quoting in (csv.QUOTE_MINIMAL, csv.QUOTE_NONE):
        pd.testing.assert_frame_equal(fast, _pandas_cells(text, sep, header, quoting), check_dtype=False)


def test_plain_tables_are_read_by_arrow_and_quoted_ones_by_pandas(data_dir, tmp_path):
    """The fast path is the one real logs take (ml-latest-small's ratings.csv, a headerless TSV); quoting
    (catalogues with titles) takes pandas' tokenizer, and both give the same interactions."""
    from recforge.data.loaders._source import _arrow_cells, _data_line_numbers, decode_file

    ratings = decode_file(data_dir / "ml-latest-small" / "ratings.csv", "utf-8")
    fast = _arrow_cells(ratings, ",", True, len(_data_line_numbers(ratings, header=False)))
    assert fast is not None and fast.shape == (100_836, 4) and fast.iloc[0].tolist() == ["1", "1", "4.0", "964982703"]
    udata = decode_file(data_dir / "ml-100k" / "u.data", "utf-8")
    assert _arrow_cells(udata, "\t", False, len(_data_line_numbers(udata, header=False))).shape == (100_000, 4)
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('user,item,note\n1,10,"a, b"\n2,11,plain\n')
    assert _arrow_cells(quoted.read_text(), ",", True, 3) is None
    assert load_table(quoted, user="user", item="item").items.ids.tolist() == [10, 11]
