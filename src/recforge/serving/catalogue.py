"""The catalogue a service shows: item id, title and genres per model item, in index order."""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from recforge.artifacts import artifact_file
from recforge.data.catalogue import ITEMS_FILE
from recforge.errors import ConfigError

_TRAILING_YEAR = r"\s*\(\d{4}\)\s*$"
# MovieLens-style "Title, The", also before an alternative title in brackets, in the catalogues' languages
_TRAILING_ARTICLE = (
    r"^(?P<head>.*?), (?P<article>the|a|an|les|le|la|l'|il|el|los|las|das|der|die|den|det)(?P<rest>(?: \(.*\))?)$"
)


@dataclass(frozen=True)
class Catalogue:
    """Plain-Python columns (answers read them per item: pandas .iloc is ~100x slower), plus lower-cased
    titles for search. Titles default to the id; genres to []."""

    ids: list[Any]
    titles: list[str]
    genres: list[list[str]]
    title_lower: pd.Series

    @classmethod
    def build(cls, model: Any, items: pd.DataFrame | None) -> Catalogue:
        frame = pd.DataFrame({"item_id": model.items_.ids})
        if items is not None and len(items):
            meta = items.drop_duplicates("item_id").set_index("item_id")
            frame = frame.join(meta[[c for c in ("title", "genres") if c in meta.columns]], on="item_id")
        if "title" not in frame:
            frame["title"] = None
        frame["title"] = frame["title"].where(frame["title"].notna(), frame["item_id"].astype(str))
        if "genres" not in frame:
            frame["genres"] = [[] for _ in range(len(frame))]
        frame["genres"] = [_list(g) for g in frame["genres"]]
        return cls(
            [_plain(v) for v in frame["item_id"]],
            frame["title"].tolist(),
            frame["genres"].tolist(),
            # str.lower, as queries are lowered: pandas' Arrow strings lower some letters otherwise ("İ")
            pd.Series([str(title).lower() for title in frame["title"].fillna("")], dtype=object),
        )

    def extended(self, model: Any, ids: list[Any], features: pd.DataFrame) -> Catalogue:
        """The catalogue of `model` after `ids` were appended, titles and genres from `features`."""
        n = len(ids)
        titles = features["title"].tolist() if "title" in features else [None] * n
        genres = features["genres"].tolist() if "genres" in features else [None] * n
        added = pd.DataFrame({"item_id": ids, "title": titles, "genres": [_list(g) for g in genres]})
        return Catalogue.build(model, pd.concat([self.frame(), added], ignore_index=True))

    @cached_property
    def bare_lower(self) -> pd.Series:
        """Lower-cased titles without a trailing "(year)"."""
        return self.title_lower.str.replace(_TRAILING_YEAR, "", regex=True)

    @cached_property
    def spoken_lower(self) -> pd.Series:
        """Titles as people type them: `bare_lower` with a catalogue's trailing article moved back to the
        front ("Matrix, The (1999)" -> "the matrix")."""
        return self.bare_lower.str.replace(_TRAILING_ARTICLE, r"\g<article> \g<head>\g<rest>", regex=True)

    @cached_property
    def _folded(self) -> tuple[pd.Series, pd.Series, pd.Series]:
        """`folded` titles: as written, without the year, and as typed."""
        return folded(self.title_lower), folded(self.bare_lower), folded(self.spoken_lower)

    def containing(self, query: str) -> np.ndarray:
        """(n_items,) True where the title contains `query` (lower case) as written or as typed, also once
        both are `folded` ("steins gate" is in "Steins;Gate", "amelie" in "Amélie (2001)")."""
        found = self.title_lower.str.contains(query, regex=False) | self.spoken_lower.str.contains(query, regex=False)
        plain = folded(pd.Series([query])).iloc[0]
        if plain:
            title, _, spoken = self._folded
            found |= title.str.contains(plain, regex=False) | spoken.str.contains(plain, regex=False)
        return found.to_numpy()

    def title_matches(self, query: str) -> list[np.ndarray]:
        """Masks from the strictest reading of a typed title (lower case) to the loosest: the title itself,
        then the title without its year, with its article in front or `folded` ("fullmetal alchemist
        brotherhood" is "Fullmetal Alchemist: Brotherhood"), then titles containing it."""
        loose = (self.bare_lower == query) | (self.spoken_lower == query)
        plain = folded(pd.Series([query])).iloc[0]
        if plain:
            loose |= np.logical_or.reduce([column == plain for column in self._folded])
        return [(self.title_lower == query).to_numpy(), np.asarray(loose), self.containing(query)]

    def named(self, indices: np.ndarray) -> str:
        """Items as a person reads them in a message: "50 Star Wars (1977); 181 Return of the Jedi (1983)"."""
        return "; ".join(f"{self.ids[i]} {self.titles[i]}" for i in indices)

    def closest(self, query: str, limit: int = 5, cutoff: float = 0.6) -> np.ndarray:
        """Indices of the titles nearest a typed title that no title contains (a misspelling: "naruto
        shippuden" is close to "Naruto: Shippuuden"), best first: difflib's similarity ratio of the `folded`
        query to each title as typed (no year, article in front), at least `cutoff` and within 0.15 of the
        best.

        The ratio is at most difflib's `quick_ratio` (2·characters in common, counted with repeats, over
        both lengths), computed for every title at once from `_character_counts`; ratios are computed in
        decreasing order of that bound and stop once it cannot beat the answer so far (a Python loop over
        every title took 0.1-0.4 s per misspelt query on 10^5 titles, holding a worker)."""
        plain = folded(pd.Series([query])).iloc[0]
        if not plain:
            return np.empty(0, dtype=np.int64)
        bound = self._quick_ratios(plain)
        candidates = np.flatnonzero(bound >= cutoff)
        candidates = candidates[np.argsort(-bound[candidates], kind="stable")]
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(plain)
        titles = self._folded[2]
        scored: list[tuple[float, int]] = []  # (-ratio, index), the best `limit` so far
        for index in candidates.tolist():
            if scored and (
                bound[index] < -scored[0][0] - 0.15 or (len(scored) == limit and bound[index] < -scored[-1][0])
            ):
                break  # this title and every later one is too far behind the best, or below the limit-th
            matcher.set_seq1(titles.iat[index])
            ratio = matcher.ratio()
            if ratio >= cutoff:
                scored = sorted([*scored, (-ratio, index)])[:limit]
        return np.array([index for negative, index in scored if -negative >= -scored[0][0] - 0.15], dtype=np.int64)

    def _quick_ratios(self, plain: str) -> np.ndarray:
        """(n_items,) difflib's `quick_ratio` of `plain` to every typed title: 2·(characters in common,
        counted with repeats)/(both lengths), an upper bound of their `ratio`."""
        counts, lengths, codes = self._character_counts
        common = np.zeros(len(lengths))
        for character, times in Counter(plain).items():
            column = codes.get(character)
            if column is not None:
                span = slice(counts.indptr[column], counts.indptr[column + 1])
                common[counts.indices[span]] += np.minimum(counts.data[span], times)
        return 2.0 * common / (lengths + len(plain))

    @cached_property
    def _character_counts(self) -> tuple[sparse.csc_matrix, np.ndarray, dict[str, int]]:
        """How often each character occurs in each typed title (titles x characters, by column), the
        titles' lengths, and each character's column; built at the first misspelt query."""
        titles = self._folded[2].tolist()
        lengths = np.array([len(title) for title in titles], dtype=np.int64)
        points = np.frombuffer("".join(titles).encode("utf-32-le"), dtype=np.uint32)
        characters, columns = np.unique(points, return_inverse=True)
        rows = np.repeat(np.arange(len(titles)), lengths)
        counts = sparse.csc_matrix((np.ones(len(points)), (rows, columns)), shape=(len(titles), len(characters)))
        counts.sum_duplicates()
        return counts, lengths, {chr(point): column for column, point in enumerate(characters.tolist())}

    @cached_property
    def _genre_index(self) -> dict[str, np.ndarray]:
        """Lower-cased genre -> item indices, built at the first filtered request (a catalogue never changes:
        adding items builds a new one)."""
        by_genre: dict[str, list[int]] = {}
        for index, names in enumerate(self.genres):
            for name in names:
                by_genre.setdefault(name.lower(), []).append(index)
        return {genre: np.array(indices, dtype=np.int64) for genre, indices in by_genre.items()}

    def genre_counts(self) -> list[tuple[str, int]]:
        """Every genre (as first spelled in the catalogue) with its number of items, most items first."""
        spelled: dict[str, str] = {}
        for names in self.genres:
            for name in names:
                spelled.setdefault(name.lower(), name)
        counts = [(spelled[key], len(items)) for key, items in self._genre_index.items()]
        return sorted(counts, key=lambda pair: (-pair[1], pair[0]))

    def genre_items(self, genre: str) -> np.ndarray:
        """Indices of the items listing `genre` (case ignored); an unknown genre is a ConfigError naming some
        known ones, never an empty list."""
        found = self._genre_index.get(genre.lower())
        if found is None:
            known = sorted(name for name, _ in self.genre_counts())
            listed = ", ".join(known[:30]) + (" ..." if len(known) > 30 else "") if known else "none"
            spelled = {name.lower(): name for name in known}
            close = difflib.get_close_matches(genre[:60].lower(), list(spelled), n=1, cutoff=0.6)
            hint = f" (did you mean {spelled[close[0]]!r}?)" if close else ""
            raise ConfigError(f"unknown genre {genre[:60]!r}{hint}; the catalogue's genres: {listed}")
        return found

    def items_of_genres(self, genres: list[str]) -> np.ndarray:
        """Indices of the items listing any of `genres` (each checked as in `genre_items`), sorted."""
        return np.unique(np.concatenate([self.genre_items(genre) for genre in genres]))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"item_id": self.ids, "title": self.titles, "genres": self.genres})

    def row(self, index: int, score: float | None = None) -> dict[str, Any]:
        out = {"item": self.ids[index], "title": self.titles[index], "genres": self.genres[index]}
        if score is not None:
            out["score"] = score
        return out


def folded(titles: pd.Series) -> pd.Series:
    """Titles reduced to what people type alike: accents dropped (NFKD), lower case, every run of
    punctuation or spaces one space ("Pokémon: The First Movie" -> "pokemon the first movie")."""
    # object dtype: Python's str methods, as queries get (Arrow strings lower some letters otherwise)
    plain = titles.astype(object).str.normalize("NFKD").str.replace(r"[\u0300-\u036f]", "", regex=True).str.lower()
    return plain.str.replace(r"[\W_]+", " ", regex=True).str.strip()


def _list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple, np.ndarray)) else []


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_catalogue(artifact: Any) -> pd.DataFrame | None:
    """An artifact directory's item catalogue (`items.parquet`, checksum verified), or None without one."""
    path = artifact_file(artifact, ITEMS_FILE, required=False)
    return pd.read_parquet(path) if path is not None else None
