"""Anime loaders for two layouts.

(a) Kaggle "Anime Recommendations Database" (CooperUnion, 2016): `anime.csv`
    (anime_id,name,genre,type,episodes,rating,members) and `rating.csv` (user_id,anime_id,rating) where
    rating is 1-10 or -1 for "watched but not rated". A -1 is kept as an interaction without a rating
    (NaN), never as a rating.
(b) MyAnimeList-style exports: `animes.csv` (animeID,title,type,year,score,episodes,genres,genres_detailed
    plus URL columns, which are dropped) and `ratings.csv` (userID,animeID,rating on 0-10). In MAL exports a
    0 means "no score given", so by default a 0 is kept as an unrated interaction (rating scale 1-10);
    pass `zero_is_rating=True` to treat 0 as a real rating (scale 0-10).

Item features share one vocabulary across layouts: title, genres (list), type, episodes, score
(community mean score), members, year (when the layout has it).
"""

from __future__ import annotations

import ast
import html
from pathlib import Path

import numpy as np
import pandas as pd

from recforge.data.interactions import Interactions
from recforge.data.loaders._download import resolve_dataset_dir, split_file_path
from recforge.data.loaders._source import parse_float, parse_int, parse_ratings, read_delimited, source_info
from recforge.errors import DataFormatError, DatasetNotFoundError

KAGGLE_RATING_FILES = ("rating.csv", "rating_sample5000.csv")
_MISSING = ("", "Unknown", "unknown", "NaN", "nan")


def parse_list_column(frame: pd.DataFrame, column: str, path: Path) -> list[list[str]]:
    """Cells like "Action, Comedy" or "['Action', 'Comedy']" -> lists of stripped strings.

    A bracketed cell is read with `ast.literal_eval` (literals only, never code) and must hold strings.
    """
    result: list[list[str]] = []
    for value, line in zip(frame[column].tolist(), frame["_line"].tolist(), strict=True):
        text = str(value).strip()
        if text.startswith("["):
            try:
                parsed = ast.literal_eval(text)
            except (ValueError, SyntaxError) as exc:
                raise DataFormatError(f"malformed list {text[:60]!r}", path=path, line=line, column=column) from exc
            if not isinstance(parsed, (list, tuple)) or not all(isinstance(p, str) for p in parsed):
                raise DataFormatError(
                    f"expected a list of strings, got {text[:60]!r}", path=path, line=line, column=column
                )
            result.append([p.strip() for p in parsed if p.strip()])
        else:
            result.append([p.strip() for p in text.split(",") if p.strip()])
    return result


def read_anime_catalogue(path: str | Path) -> pd.DataFrame:
    """Any of the known anime catalogue layouts -> a frame indexed by anime id with the shared columns.

    Recognised headers: Kaggle 2016 (anime_id,name,genre,type,episodes,rating,members), the 2020
    catalogue (anime_id,Name,Score,Genres,Type,Episodes,Members) and MAL exports
    (animeID,title,type,year,score,episodes,genres,genres_detailed,...). For MAL exports the genres column
    is the union of `genres` and `genres_detailed`.
    """
    path = Path(path)
    head = read_delimited(path, sep=",", columns=(), header=True)
    columns = set(head.columns)
    layouts = {
        "kaggle": (
            {"anime_id", "name", "genre", "type", "episodes", "rating", "members"},
            {
                "id": "anime_id",
                "title": "name",
                "genres": ["genre"],
                "type": "type",
                "episodes": "episodes",
                "score": "rating",
                "members": "members",
            },
        ),
        "catalogue2020": (
            {"anime_id", "Name", "Score", "Genres", "Type", "Episodes", "Members"},
            {
                "id": "anime_id",
                "title": "Name",
                "genres": ["Genres"],
                "type": "Type",
                "episodes": "Episodes",
                "score": "Score",
                "members": "Members",
            },
        ),
        "mal": (
            {"animeID", "title", "type", "year", "score", "episodes", "genres"},
            {
                "id": "animeID",
                "title": "title",
                "genres": ["genres", "genres_detailed"],
                "type": "type",
                "episodes": "episodes",
                "score": "score",
                "year": "year",
            },
        ),
    }
    mapping = next((m for required, m in layouts.values() if required <= columns), None)
    if mapping is None:
        raise DataFormatError(
            f"unrecognised anime catalogue header {sorted(columns)}; expected the Kaggle, 2020 catalogue or MAL layout",
            path=path,
            line=1,
        )
    genre_lists = [parse_list_column(head, c, path) for c in mapping["genres"] if c in columns]
    genres = [sorted({g for lists in per_row for g in lists}) for per_row in zip(*genre_lists, strict=True)]
    frame = pd.DataFrame(
        {
            "title": head[mapping["title"]].map(html.unescape).to_numpy(),
            "genres": genres,
            "type": head[mapping["type"]].replace("", None).to_numpy(),
            "episodes": parse_float(head, mapping["episodes"], path, missing=_MISSING),
            "score": parse_float(head, mapping["score"], path, missing=_MISSING),
        },
        index=pd.Index(parse_int(head, mapping["id"], path), name="item_id"),
    )
    if "members" in mapping:
        frame["members"] = parse_float(head, mapping["members"], path, missing=_MISSING)
    if "year" in mapping:
        frame["year"] = parse_float(head, mapping["year"], path, missing=_MISSING)
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()][0]
        raise DataFormatError(f"anime id {dup} appears more than once", path=path, column=mapping["id"])
    return frame


FILE_HINT = "pass file=<name> (or the ratings file's own path) to read ratings under another name"
FEATURES_HINT = "pass features=False to load the ratings without the anime catalogue"


def load_anime_kaggle(
    path: str | Path | None = None, *, file: str | None = None, features: bool = True
) -> Interactions:
    """Kaggle "Anime Recommendations" layout: anime.csv + rating.csv (1-10; -1 = watched, not rated).

    `path` is the folder or the ratings file itself; `file` names the ratings file in the folder
    (default rating.csv, else the shipped 5000-user sample rating_sample5000.csv)."""
    folder, file = split_file_path(path, file, "")
    side = ("anime.csv",) if features else ()
    hints = {"anime.csv": FEATURES_HINT}
    folder = resolve_dataset_dir("anime-kaggle", folder, side, hints=hints)
    if not file:
        file = next((f for f in KAGGLE_RATING_FILES if (folder / f).exists()), KAGGLE_RATING_FILES[0])
    ratings_path = folder / file
    if not ratings_path.exists():
        raise DatasetNotFoundError(f"{folder} lacks {file!r}; {FILE_HINT}")
    frame = read_delimited(ratings_path, sep=",", columns=("user_id", "anime_id", "rating"), header=True)
    rating = parse_ratings(frame, "rating", ratings_path, (1, 10), unrated=-1)  # -1: watched, not rated
    fraction = ~np.isnan(rating) & (rating % 1 != 0)
    if fraction.any():
        row = int(np.flatnonzero(fraction)[0])
        raise DataFormatError(
            "rating is not an integer", path=ratings_path, line=int(frame["_line"].iloc[row]), column="rating"
        )
    table = pd.DataFrame(
        {
            "user_id": parse_int(frame, "user_id", ratings_path),
            "item_id": parse_int(frame, "anime_id", ratings_path),
            "rating": rating,
        }
    )
    return Interactions.from_frame(
        table,
        rating="rating",
        rating_scale=(1.0, 10.0),
        item_features=read_anime_catalogue(folder / "anime.csv") if features else None,
        name="anime-kaggle" if file in KAGGLE_RATING_FILES else f"anime-kaggle ({file})",
        source=source_info(folder, [*side, file]),
    )


def load_anime_mal(
    path: str | Path | None = None, *, file: str | None = None, zero_is_rating: bool = False, features: bool = True
) -> Interactions:
    """MyAnimeList-style export (animes.csv + ratings.csv); see the module docstring for the 0 convention.
    `path` is the folder or the ratings file itself; `file` names another ratings file in the folder."""
    folder, file = split_file_path(path, file, "ratings.csv")
    side = ("animes.csv",) if features else ()
    hints = {file: FILE_HINT, "animes.csv": FEATURES_HINT}
    folder = resolve_dataset_dir("anime-mal", folder, (*side, file), hints=hints)
    ratings_path = folder / file
    frame = read_delimited(ratings_path, sep=",", columns=("userID", "animeID", "rating"), header=True)
    # 0 is "watched, not rated" unless zero_is_rating (checked against 0..10 either way)
    rating = parse_ratings(frame, "rating", ratings_path, (0, 10), unrated=None if zero_is_rating else 0)
    scale = (0.0, 10.0) if zero_is_rating else (1.0, 10.0)
    table = pd.DataFrame(
        {
            "user_id": parse_int(frame, "userID", ratings_path),
            "item_id": parse_int(frame, "animeID", ratings_path),
            "rating": rating,
        }
    )
    return Interactions.from_frame(
        table,
        rating="rating",
        rating_scale=scale,
        item_features=read_anime_catalogue(folder / "animes.csv") if features else None,
        name="anime-mal" if file == "ratings.csv" else f"anime-mal ({file})",
        source=source_info(folder, [*side, file]),
    )
