"""MovieLens loaders: 100K (GroupLens layout, with its shipped folds), 1M (`::`, latin-1) and latest-small (CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.loaders._download import RemoteSource, resolve_dataset_dir, split_file_path
from recforge.data.loaders._source import parse_int, parse_ratings, read_delimited, source_info
from recforge.data.splits import Split
from recforge.errors import DataFormatError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
ML1M_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer", "programmer",
    "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)  # fmt: skip
ML1M_AGES = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}

ML100K_REMOTE = RemoteSource(
    url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
    archive_checksum=("md5", "0e33842e24a9c977be4e0107933c0723"),
    inner_folder="ml-100k",
    key_file="u.data",
    key_sha256="06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
)
ML1M_REMOTE = RemoteSource(
    url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
    archive_checksum=("md5", "c4d9eecfca2ab87c1945afe126590906"),
    inner_folder="ml-1m",
    key_file="ratings.dat",
)
ML_LATEST_SMALL_REMOTE = RemoteSource(
    url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
    archive_checksum=None,
    inner_folder="ml-latest-small",
    key_file="ratings.csv",
    key_sha256="aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
)


FILE_HINT = "pass file=<name> (or the ratings file's own path) to read ratings under another name"
FEATURES_HINT = "pass features=False to load the ratings without movie and user features"


def _locate(
    dataset: str, path: str | Path | None, file: str | None, default: str, side: tuple[str, ...], remote: RemoteSource
) -> tuple[Path, str, str]:
    """(folder, ratings file name, dataset label) for a MovieLens loader's `path` / `file` options.

    Another ratings file (a subset, a fold) keeps the layout's parsing; its name goes into the label so
    reports say which file they describe. The download applies to the published file only."""
    folder, file = split_file_path(path, file, default)
    hints = {file: FILE_HINT} | {name: FEATURES_HINT for name in side}
    folder = resolve_dataset_dir(dataset, folder, (file, *side), remote if file == default else None, hints)
    return folder, file, dataset if file == default else f"{dataset} ({file})"


def _year_from_title(titles: pd.Series) -> np.ndarray:
    """'Toy Story (1995)' -> 1995.0; titles without a trailing year give NaN."""
    return pd.to_numeric(titles.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce").to_numpy(dtype=np.float64)


def _ratings_frame(path: Path, *, sep: str, header: bool, encoding: str, scale: tuple[float, float]) -> pd.DataFrame:
    columns = ("userId", "movieId", "rating", "timestamp") if header else ("user", "item", "rating", "timestamp")
    frame = read_delimited(path, sep=sep, columns=columns, header=header, encoding=encoding, quoting=csv.QUOTE_NONE)
    user, item, rating, timestamp = columns
    ratings = parse_ratings(frame, rating, path, scale)
    return pd.DataFrame(
        {
            "user_id": parse_int(frame, user, path),
            "item_id": parse_int(frame, item, path),
            "rating": ratings,
            "timestamp": parse_int(frame, timestamp, path),
        }
    )


# ----------------------------------------------------------------------------- 100K
def _ml100k_items(folder: Path) -> pd.DataFrame:
    path = folder / "u.item"
    flag_columns = [f"genre_{i}" for i in range(len(ML100K_GENRES))]
    columns = ["item", "title", "release_date", "video_release_date", "imdb_url", *flag_columns]
    frame = read_delimited(path, sep="|", columns=columns, header=False, encoding="latin-1", quoting=csv.QUOTE_NONE)
    flags = np.stack([parse_int(frame, c, path) for c in flag_columns], axis=1)
    if not np.isin(flags, (0, 1)).all():
        row, col = np.argwhere(~np.isin(flags, (0, 1)))[0]
        raise DataFormatError(
            "genre flag must be 0 or 1", path=path, line=int(frame["_line"].iloc[row]), column=flag_columns[col]
        )
    names = np.array(ML100K_GENRES, dtype=object)
    release = pd.to_datetime(
        frame["release_date"].where(frame["release_date"] != ""), format="%d-%b-%Y", errors="coerce"
    )
    items = pd.DataFrame(
        {
            "title": frame["title"].to_numpy(),
            "year": release.dt.year.to_numpy(dtype=np.float64, na_value=np.nan),
            "release_date": frame["release_date"].to_numpy(),
            "imdb_url": frame["imdb_url"].to_numpy(),
            "genres": [list(names[row.astype(bool)]) for row in flags],
        },
        index=pd.Index(parse_int(frame, "item", path), name="item_id"),
    )
    return items


def _ml100k_users(folder: Path) -> pd.DataFrame:
    path = folder / "u.user"
    frame = read_delimited(
        path,
        sep="|",
        columns=("user", "age", "gender", "occupation", "zip"),
        header=False,
        encoding="latin-1",
        quoting=csv.QUOTE_NONE,
    )
    return pd.DataFrame(
        {
            "age": parse_int(frame, "age", path),
            "gender": frame["gender"].to_numpy(),
            "occupation": frame["occupation"].to_numpy(),
            "zip": frame["zip"].to_numpy(),
        },
        index=pd.Index(parse_int(frame, "user", path), name="user_id"),
    )


def load_movielens_100k(
    path: str | Path | None = None, *, file: str | None = None, features: bool = True
) -> Interactions:
    """MovieLens 100K: 100000 ratings (1-5) by 943 users on 1682 movies, with movie and user features.

    `path` is the folder, or the ratings file itself; `file` names another ratings file in the folder
    (same tab-separated layout, e.g. `u1.base`). Item features: title, year, release_date, imdb_url,
    genres (list of the 19 u.item genre flags). User features: age, gender, occupation, zip.
    """
    side = ("u.item", "u.user") if features else ()
    folder, file, name = _locate("ml-100k", path, file, "u.data", side, ML100K_REMOTE)
    frame = _ratings_frame(folder / file, sep="\t", header=False, encoding="latin-1", scale=(1, 5))
    return Interactions.from_frame(
        frame,
        rating="rating",
        timestamp="timestamp",
        rating_scale=(1.0, 5.0),
        item_features=_ml100k_items(folder) if features else None,
        user_features=_ml100k_users(folder) if features else None,
        name=name,
        source=source_info(folder, [file, *side]),
    )


def load_movielens_100k_fold(fold: str = "u1", path: str | Path | None = None, *, features: bool = True) -> Split:
    """One of the folds GroupLens ships with 100K (`u1`..`u5`, `ua`, `ub`) as a `Split` over the full vocabulary.

    Every base/test row is matched to its row in u.data, so ids, features and fingerprints agree with
    `load_movielens_100k`; a row that is not in u.data raises.
    """
    if fold not in ML100K_FOLDS:
        raise ValueError(f"fold must be one of {ML100K_FOLDS}, got {fold!r}")
    folder = resolve_dataset_dir("ml-100k", path, ("u.data", f"{fold}.base", f"{fold}.test"), ML100K_REMOTE)
    full = load_movielens_100k(folder, features=features)
    full_keys = pd.Index(full.user_index.astype(np.int64) * full.n_items + full.item_index)
    rows = {}
    for part in ("base", "test"):
        part_path = folder / f"{fold}.{part}"
        frame = _ratings_frame(part_path, sep="\t", header=False, encoding="latin-1", scale=(1, 5))
        keys = full.users.index(frame["user_id"].to_numpy()) * full.n_items + full.items.index(
            frame["item_id"].to_numpy()
        )
        found = full_keys.get_indexer(keys)
        if (found < 0).any():
            raise DataFormatError("row is not in u.data", path=part_path, line=int(np.flatnonzero(found < 0)[0]) + 1)
        rows[part] = found
    return Split.from_rows(full, train=rows["base"], test=rows["test"], name=f"ml-100k shipped fold {fold}")


# ----------------------------------------------------------------------------- 1M
def load_movielens_1m(
    path: str | Path | None = None, *, file: str | None = None, features: bool = True
) -> Interactions:
    """MovieLens 1M: 1000209 ratings (1-5) by 6040 users on 3706 movies; `::`-separated latin-1 files.

    `path` is the folder, or the ratings file itself; `file` names another ratings file in the folder
    (same layout, e.g. a per-user subset)."""
    side = ("movies.dat", "users.dat") if features else ()
    folder, file, name = _locate("ml-1m", path, file, "ratings.dat", side, ML1M_REMOTE)
    frame = _ratings_frame(folder / file, sep="::", header=False, encoding="latin-1", scale=(1, 5))
    item_features = user_features = None
    if features:
        movies_path = folder / "movies.dat"
        movies = read_delimited(
            movies_path,
            sep="::",
            columns=("item", "title", "genres"),
            header=False,
            encoding="latin-1",
            quoting=csv.QUOTE_NONE,
        )
        item_features = pd.DataFrame(
            {
                "title": movies["title"].to_numpy(),
                "year": _year_from_title(movies["title"]),
                "genres": movies["genres"].map(lambda g: [x for x in g.split("|") if x]).to_numpy(),
            },
            index=pd.Index(parse_int(movies, "item", movies_path), name="item_id"),
        )
        users_path = folder / "users.dat"
        users = read_delimited(
            users_path,
            sep="::",
            columns=("user", "gender", "age", "occupation", "zip"),
            header=False,
            encoding="latin-1",
            quoting=csv.QUOTE_NONE,
        )
        occupation = parse_int(users, "occupation", users_path)
        if ((occupation < 0) | (occupation >= len(ML1M_OCCUPATIONS))).any():
            bad = (occupation < 0) | (occupation >= len(ML1M_OCCUPATIONS))
            raise DataFormatError(
                "unknown occupation code",
                path=users_path,
                line=int(users["_line"].iloc[np.flatnonzero(bad)[0]]),
                column="occupation",
            )
        age = parse_int(users, "age", users_path)
        user_features = pd.DataFrame(
            {
                "age": age,
                "age_group": [ML1M_AGES.get(int(a), str(a)) for a in age],
                "gender": users["gender"].to_numpy(),
                "occupation": np.array(ML1M_OCCUPATIONS, dtype=object)[occupation],
                "zip": users["zip"].to_numpy(),
            },
            index=pd.Index(parse_int(users, "user", users_path), name="user_id"),
        )
    return Interactions.from_frame(
        frame,
        rating="rating",
        timestamp="timestamp",
        rating_scale=(1.0, 5.0),
        item_features=item_features,
        user_features=user_features,
        name=name,
        source=source_info(folder, [file, *side]),
    )


# ----------------------------------------------------------------------------- latest-small
def load_movielens_latest_small(
    path: str | Path | None = None, *, file: str | None = None, features: bool = True
) -> Interactions:
    """MovieLens latest-small (2018): 100836 ratings (0.5-5 in half stars) by 610 users on 9724 movies.

    `path` is the folder, or the ratings file itself; `file` names another ratings file in the folder
    (same CSV layout). Item features: title, year, genres (list; "(no genres listed)" becomes []), tags
    (distinct lower-cased user tags). Tags are user-generated, so they can carry information about test
    interactions; leave them out of features when that matters.
    """
    side = ("movies.csv",) if features else ()
    folder, file, name = _locate("ml-latest-small", path, file, "ratings.csv", side, ML_LATEST_SMALL_REMOTE)
    ratings_path = folder / file
    frame = _ratings_frame(ratings_path, sep=",", header=True, encoding="utf-8", scale=(0.5, 5))
    half_stars = frame["rating"].to_numpy() * 2
    if (half_stars % 1 != 0).any():
        raw = read_delimited(ratings_path, sep=",", columns=("rating",), header=True)
        row = int(np.flatnonzero(half_stars % 1 != 0)[0])
        raise DataFormatError(
            "rating is not a multiple of 0.5", path=ratings_path, line=int(raw["_line"].iloc[row]), column="rating"
        )
    item_features = None
    if features:
        movies_path = folder / "movies.csv"
        movies = read_delimited(movies_path, sep=",", columns=("movieId", "title", "genres"), header=True)
        genres = movies["genres"].map(lambda g: [] if g == "(no genres listed)" else [x for x in g.split("|") if x])
        item_features = pd.DataFrame(
            {
                "title": movies["title"].str.strip().to_numpy(),
                "year": _year_from_title(movies["title"].str.strip()),
                "genres": genres.to_numpy(),
            },
            index=pd.Index(parse_int(movies, "movieId", movies_path), name="item_id"),
        )
        tags_path = folder / "tags.csv"
        if tags_path.exists():
            tags = read_delimited(tags_path, sep=",", columns=("userId", "movieId", "tag", "timestamp"), header=True)
            tags["movie"] = parse_int(tags, "movieId", tags_path)
            tag_lists = (
                tags.assign(tag=tags["tag"].str.strip().str.lower())
                .groupby("movie")["tag"]
                .agg(lambda t: sorted(set(t)))
            )
            item_features["tags"] = [tag_lists.get(i, []) for i in item_features.index]
    return Interactions.from_frame(
        frame,
        rating="rating",
        timestamp="timestamp",
        rating_scale=(0.5, 5.0),
        item_features=item_features,
        name=name,
        source=source_info(folder, [file, *side, "tags.csv"] if features else [file]),
    )
