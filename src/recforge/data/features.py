"""Feature building: genres (union, normalisation, rare-genre filter, multi-hot), fixed-range min-max
scaling, categorical codes, and user taste profiles from training interactions.

Everything learned (genre list, category vocabularies, learned ranges) is learned in `fit` from the
training split only; each fitted object records the fingerprint of the data it saw, so the evaluation
guards can refuse a builder fitted on test data. Fitted objects round-trip through plain dicts (JSON),
never pickle.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.data.interactions import Interactions
from recforge.errors import ConfigError, NotFittedError


# ----------------------------------------------------------------------------- genres
def normalise_genre(name: str) -> str:
    """' Sci-Fi ' -> 'sci-fi': lower-case, trimmed, inner whitespace collapsed."""
    return " ".join(str(name).strip().lower().split())


def genre_lists(frame: pd.DataFrame, columns: tuple[str, ...] = ("genres",)) -> list[list[str]]:
    """Per row, the sorted union of normalised genres over several list (or comma-separated) columns."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(f"genre column(s) {missing} not in the feature table {list(frame.columns)}")
    result = []
    for cells in zip(*(frame[c].tolist() for c in columns), strict=True):
        union: set[str] = set()
        for cell in cells:
            values = (
                cell.split(",")
                if isinstance(cell, str)
                else (cell if isinstance(cell, (list, tuple, np.ndarray)) else [])
            )
            union.update(normalise_genre(v) for v in values if str(v).strip())
        result.append(sorted(union))
    return result


def select_genres(lists: list[list[str]], min_frequency_quantile: float | None = None) -> list[str]:
    """The genre vocabulary: all genres, or only those whose item count exceeds the given quantile of
    genre counts (0.9 keeps roughly the 10% most frequent, as in the anime study's rare-genre filter)."""
    return genres_above_quantile(
        pd.Series([g for row in lists for g in row], dtype=object).value_counts(), min_frequency_quantile
    )


def genres_above_quantile(counts: pd.Series, min_frequency_quantile: float | None) -> list[str]:
    """Genres (index of `counts`, item counts as values) whose count exceeds the quantile, sorted."""
    if min_frequency_quantile is not None and len(counts):
        threshold = np.quantile(counts.to_numpy(), min_frequency_quantile)
        counts = counts[counts > threshold]
    return sorted(counts.index.tolist())


def multi_hot(lists: list[list[str]], vocabulary: list[str]) -> np.ndarray:
    """(n_rows, len(vocabulary)) float32 matrix with 1 where the row has the genre; unknown genres ignored."""
    position = {g: j for j, g in enumerate(vocabulary)}
    rows = [i for i, row in enumerate(lists) for g in row if g in position]
    cols = [position[g] for row in lists for g in row if g in position]
    matrix = np.zeros((len(lists), len(vocabulary)), dtype=np.float32)
    matrix[rows, cols] = 1.0
    return matrix


def item_value_lists(train: Interactions, column: str, owner: str) -> tuple[list[list[str]], list[str]]:
    """Each item's values in a list column of the item features (in item-index order) and their sorted
    vocabulary; a ConfigError naming `owner` and the column when the data has no such column or it holds
    no values (never a silent fall-back to ids alone)."""
    frame = train.item_features
    if frame is None or column not in frame.columns:
        available = [] if frame is None else list(frame.columns)
        raise ConfigError(f"{owner}: item_features={column!r} is not a column of the item features {available}")
    lists = genre_lists(frame, (column,))
    vocabulary = select_genres(lists)
    if not vocabulary:
        raise ConfigError(f"{owner}: the item feature column {column!r} holds no values")
    return lists, vocabulary


def value_bags(lists: list[list[str]], vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The rows' values as positions in `vocabulary`, flattened, and where each row starts (the
    `input`/`offsets` pair of torch's EmbeddingBag); values outside the vocabulary are left out."""
    position = {g: j for j, g in enumerate(vocabulary)}
    kept = [[position[g] for g in row if g in position] for row in lists]
    lengths = np.array([len(row) for row in kept], dtype=np.int64)
    values = np.fromiter((j for row in kept for j in row), dtype=np.int64, count=int(lengths.sum()))
    return values, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


# ----------------------------------------------------------------------------- scaling
@dataclass
class RangeScaler:
    """Min-max scaling to [0, 1] with fixed, user-chosen ranges (e.g. year 1900-2030, episodes 0-4000);
    columns without a fixed range learn theirs in `fit`. Values outside are clipped and counted in
    `out_of_range_`; missing values become the column's training median and are counted in `missing_`."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    learned: tuple[str, ...] = ()
    log: tuple[str, ...] = ()  # columns scaled as log1p(x) (heavy-tailed counts such as `members`)
    fitted_ranges_: dict[str, tuple[float, float]] = field(default_factory=dict)
    medians_: dict[str, float] = field(default_factory=dict)
    out_of_range_: dict[str, int] = field(default_factory=dict)
    missing_: dict[str, int] = field(default_factory=dict)
    fitted_on_: str | None = None

    @property
    def columns(self) -> list[str]:
        return list(self.ranges) + [c for c in self.learned if c not in self.ranges]

    def fit(self, frame: pd.DataFrame, fingerprint: str | None = None) -> RangeScaler:
        self.fitted_ranges_ = {c: (float(lo), float(hi)) for c, (lo, hi) in self.ranges.items()}
        for column in self.columns:
            values = self._values(frame, column)
            finite = values[np.isfinite(values)]
            if column not in self.fitted_ranges_:
                if not len(finite):
                    raise ConfigError(f"cannot learn a range for {column!r}: no values")
                self.fitted_ranges_[column] = (float(finite.min()), float(finite.max()))
            low, high = self.fitted_ranges_[column]
            if high <= low:
                raise ConfigError(f"range for {column!r} is empty: {low}..{high}")
            self.medians_[column] = float(np.median(finite)) if len(finite) else low
        self.fitted_on_ = fingerprint
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(n_rows, n_columns) float32 in [0, 1]."""
        if not self.fitted_ranges_:
            raise NotFittedError("RangeScaler.transform before fit")
        out = np.empty((len(frame), len(self.columns)), dtype=np.float32)
        for j, column in enumerate(self.columns):
            low, high = self.fitted_ranges_[column]
            values = self._values(frame, column)
            missing = ~np.isfinite(values)
            values[missing] = self.medians_[column]
            outside = (values < low) | (values > high)
            self.out_of_range_[column] = self.out_of_range_.get(column, 0) + int(outside.sum())
            self.missing_[column] = self.missing_.get(column, 0) + int(missing.sum())
            out[:, j] = (np.clip(values, low, high) - low) / (high - low)
        return out

    def _values(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64, copy=True)
        if column in self.log:
            with np.errstate(invalid="ignore"):
                values = np.log1p(np.where(values >= 0, values, np.nan))
        return values

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranges": self.ranges,
            "learned": list(self.learned),
            "log": list(self.log),
            "fitted_ranges": self.fitted_ranges_,
            "medians": self.medians_,
            "fitted_on": self.fitted_on_,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RangeScaler:
        return cls(
            ranges={k: tuple(v) for k, v in payload["ranges"].items()},
            learned=tuple(payload["learned"]),
            log=tuple(payload.get("log", ())),
            fitted_ranges_={k: tuple(v) for k, v in payload["fitted_ranges"].items()},
            medians_=payload["medians"],
            fitted_on_=payload["fitted_on"],
        )


def pooled_rows(seen: sp.csr_matrix, norm: str = "sqrt") -> sp.csr_matrix:
    """Interaction rows as bags: binary, divided by √n ("sqrt": SVD++'s |N(u)|^-½, Mult-DAE's L2-normalised
    input, the two-tower's history pooling) or by n ("mean"); an empty row stays empty."""
    binary = seen.tocsr().astype(np.float64)
    binary.data[:] = 1.0
    counts = np.diff(binary.indptr).astype(np.float64)
    scale = np.sqrt(counts) if norm == "sqrt" else counts
    return sp.diags(1.0 / np.maximum(scale, 1.0)) @ binary


def categorical_codes(values: pd.Series, vocabulary: list[str]) -> np.ndarray:
    """Codes 1..len(vocabulary) for known values, 0 for missing or unseen (a shared 'unknown' slot)."""
    position = pd.Index(vocabulary).get_indexer(values.astype(str).where(values.notna(), None))
    return (position + 1).astype(np.int64)


def age_bucket(age: pd.Series, edges: tuple[int, ...] = (18, 25, 35, 45, 50, 56)) -> pd.Series:
    """Ages into the MovieLens 1M groups: '<18', '18-24', ..., '56+'."""
    labels = [f"<{edges[0]}"] + [f"{a}-{b - 1}" for a, b in itertools.pairwise(edges)] + [f"{edges[-1]}+"]
    bins = [-np.inf, *edges, np.inf]
    return pd.cut(pd.to_numeric(age, errors="coerce"), bins=bins, labels=labels, right=False).astype(object)


# ----------------------------------------------------------------------------- feature matrices
@dataclass
class FeatureMatrix:
    """Model-ready features for n entities: dense (n, d) float32 plus categorical codes (n, c) int64
    (0 = unknown), with names and cardinalities (including the unknown slot)."""

    dense: np.ndarray
    dense_names: list[str]
    categorical: np.ndarray
    categorical_names: list[str]
    cardinalities: list[int]

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: np.ndarray) -> FeatureMatrix:
        return FeatureMatrix(
            self.dense[rows], self.dense_names, self.categorical[rows], self.categorical_names, self.cardinalities
        )


@dataclass
class ItemFeatureBuilder:
    """Item features: multi-hot genres, range-scaled numerics, categorical codes, optional text embeddings.

    `text_embeddings` is an (n_items, d) array aligned with the item index (see `recforge.nn.text`).
    """

    genre_columns: tuple[str, ...] = ("genres",)
    min_genre_quantile: float | None = None
    numeric_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    learned_numeric: tuple[str, ...] = ()
    log_numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    genres_: list[str] = field(default_factory=list)
    scaler_: RangeScaler | None = None
    vocabularies_: dict[str, list[str]] = field(default_factory=dict)
    fitted_on_: str | None = None

    def fit(self, train: Interactions) -> ItemFeatureBuilder:
        """Learn the genre list from the catalogue and category/range statistics from training items."""
        frame = _require_features(train.item_features, "item")
        present = [c for c in self.genre_columns if c in frame.columns]
        self.genres_ = select_genres(genre_lists(frame, tuple(present)), self.min_genre_quantile) if present else []
        in_train = frame.iloc[np.unique(train.item_index)]
        self.scaler_ = RangeScaler(dict(self.numeric_ranges), tuple(self.learned_numeric)).fit(
            in_train, train.fingerprint()
        )
        self.vocabularies_ = {c: sorted(in_train[c].dropna().astype(str).unique().tolist()) for c in self.categorical}
        self.fitted_on_ = train.fingerprint()
        return self

    def transform(self, frame: pd.DataFrame, text_embeddings: np.ndarray | None = None) -> FeatureMatrix:
        if self.scaler_ is None:
            raise NotFittedError("ItemFeatureBuilder.transform before fit")
        present = tuple(c for c in self.genre_columns if c in frame.columns)
        parts = [
            multi_hot(genre_lists(frame, present), self.genres_) if present else np.zeros((len(frame), 0), np.float32)
        ]
        names = [f"genre:{g}" for g in self.genres_]
        if self.scaler_.columns:
            parts.append(self.scaler_.transform(frame))
            names += [f"num:{c}" for c in self.scaler_.columns]
        if text_embeddings is not None:
            if len(text_embeddings) != len(frame):
                raise ConfigError(f"text embeddings have {len(text_embeddings)} rows for {len(frame)} items")
            parts.append(np.asarray(text_embeddings, dtype=np.float32))
            names += [f"text:{j}" for j in range(text_embeddings.shape[1])]
        return _matrix(parts, names, frame, self.categorical, self.vocabularies_)

    def to_dict(self) -> dict[str, Any]:
        return {
            "genre_columns": list(self.genre_columns),
            "min_genre_quantile": self.min_genre_quantile,
            "categorical": list(self.categorical),
            "genres": self.genres_,
            "vocabularies": self.vocabularies_,
            "scaler": None if self.scaler_ is None else self.scaler_.to_dict(),
            "fitted_on": self.fitted_on_,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ItemFeatureBuilder:
        scaler = None if payload["scaler"] is None else RangeScaler.from_dict(payload["scaler"])
        return cls(
            genre_columns=tuple(payload["genre_columns"]),
            min_genre_quantile=payload["min_genre_quantile"],
            numeric_ranges=dict(scaler.ranges) if scaler else {},
            learned_numeric=scaler.learned if scaler else (),
            log_numeric=scaler.log if scaler else (),
            categorical=tuple(payload["categorical"]),
            genres_=payload["genres"],
            scaler_=scaler,
            vocabularies_=payload["vocabularies"],
            fitted_on_=payload["fitted_on"],
        )


def user_taste_features(
    history: Interactions, item_genres: np.ndarray, genre_names: list[str], users: np.ndarray | None = None
) -> pd.DataFrame:
    """Taste profile per user from their interactions (use the training split only).

    Columns: n_ratings, mean_rating (normalised to [0, 1] by the rating scale), and per genre g:
    `genre_mean:g` = mean normalised rating over the user's rated items of genre g (0 when none), and
    `genre_pref:g` = the user's share of interaction weight in genre g, weighting each rated item by its
    normalised rating and each unrated interaction by 1 (a watch is a positive signal).
    `item_genres` is (n_items, n_genres) multi-hot aligned with the item index.
    """
    n_users = history.n_users
    rated = history.is_rated
    if history.rating_scale is not None and rated.any():
        low, high = history.rating_scale
        normalised = np.where(rated, (np.nan_to_num(history.rating) - low) / (high - low), 0.0)
    else:
        normalised = np.zeros(len(history))
    shape = (n_users, history.n_items)
    rating_matrix = sp.csr_matrix((normalised, (history.user_index, history.item_index)), shape=shape)
    rated_matrix = sp.csr_matrix((rated.astype(np.float64), (history.user_index, history.item_index)), shape=shape)
    weight = np.where(rated, normalised, 1.0)
    weight_matrix = sp.csr_matrix((weight, (history.user_index, history.item_index)), shape=shape)
    genres = np.asarray(item_genres, dtype=np.float64)
    n_ratings = np.asarray(rated_matrix.sum(axis=1)).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_rating = np.where(n_ratings > 0, np.asarray(rating_matrix.sum(axis=1)).ravel() / n_ratings, 0.0)
        genre_sum = rating_matrix @ genres
        genre_count = rated_matrix @ genres
        genre_mean = np.where(genre_count > 0, genre_sum / genre_count, 0.0)
        weighted = weight_matrix @ genres
        total = weighted.sum(axis=1, keepdims=True)
        genre_pref = np.where(total > 0, weighted / total, 0.0)
    frame = pd.DataFrame({"n_ratings": n_ratings, "mean_rating": mean_rating})
    frame = pd.concat(
        [
            frame,
            pd.DataFrame(genre_mean, columns=[f"genre_mean:{g}" for g in genre_names]),
            pd.DataFrame(genre_pref, columns=[f"genre_pref:{g}" for g in genre_names]),
        ],
        axis=1,
    )
    return frame if users is None else frame.iloc[users].reset_index(drop=True)


@dataclass
class UserFeatureBuilder:
    """User features: taste profile from training interactions (needs the item genre matrix), range-scaled
    numerics (n_ratings is scaled by log1p against the training maximum) and categorical codes such
    as gender, occupation and age bucket (`age_bucket` is derived from an `age` column when asked for)."""

    taste: bool = True
    numeric_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    categorical: tuple[str, ...] = ()
    vocabularies_: dict[str, list[str]] = field(default_factory=dict)
    max_log_ratings_: float = 1.0
    scaler_: RangeScaler | None = None
    fitted_on_: str | None = None

    def fit(self, train: Interactions) -> UserFeatureBuilder:
        frame = self._base_frame(train.user_features, train.n_users)
        self.scaler_ = (
            RangeScaler(dict(self.numeric_ranges)).fit(frame, train.fingerprint()) if self.numeric_ranges else None
        )
        self.vocabularies_ = {c: sorted(frame[c].dropna().astype(str).unique().tolist()) for c in self.categorical}
        self.max_log_ratings_ = float(np.log1p(train.user_counts().max())) if len(train) else 1.0
        self.fitted_on_ = train.fingerprint()
        return self

    def _base_frame(self, features: pd.DataFrame | None, n_users: int) -> pd.DataFrame:
        frame = features.copy() if features is not None else pd.DataFrame(index=range(n_users))
        if "age_bucket" in self.categorical and "age_bucket" not in frame.columns and "age" in frame.columns:
            frame["age_bucket"] = age_bucket(frame["age"])
        missing = [c for c in (*self.categorical, *self.numeric_ranges) if c not in frame.columns]
        if missing:
            raise ConfigError(f"user feature column(s) {missing} not available; have {list(frame.columns)}")
        return frame

    def transform(
        self,
        history: Interactions,
        item_genres: np.ndarray | None,
        genre_names: list[str],
        features: pd.DataFrame | None = None,
    ) -> FeatureMatrix:
        """Features for every user index of `history` (its vocabulary), from their rows in `history`."""
        if self.fitted_on_ is None:
            raise NotFittedError("UserFeatureBuilder.transform before fit")
        frame = self._base_frame(features if features is not None else history.user_features, history.n_users)
        parts, names = [], []
        if self.taste:
            if item_genres is None:
                raise ConfigError("taste features need the item genre matrix")
            taste = user_taste_features(history, item_genres, genre_names)
            taste["n_ratings"] = np.log1p(taste["n_ratings"]) / max(self.max_log_ratings_, 1e-9)
            parts.append(taste.to_numpy(dtype=np.float32))
            names += [f"taste:{c}" for c in taste.columns]
        if self.scaler_ is not None:
            parts.append(self.scaler_.transform(frame))
            names += [f"num:{c}" for c in self.scaler_.columns]
        if not parts:
            parts.append(np.zeros((len(frame), 0), dtype=np.float32))
        return _matrix(parts, names, frame, self.categorical, self.vocabularies_)

    def to_dict(self) -> dict[str, Any]:
        return {
            "taste": self.taste,
            "categorical": list(self.categorical),
            "vocabularies": self.vocabularies_,
            "max_log_ratings": self.max_log_ratings_,
            "scaler": None if self.scaler_ is None else self.scaler_.to_dict(),
            "fitted_on": self.fitted_on_,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> UserFeatureBuilder:
        scaler = None if payload["scaler"] is None else RangeScaler.from_dict(payload["scaler"])
        return cls(
            taste=payload["taste"],
            numeric_ranges=dict(scaler.ranges) if scaler else {},
            categorical=tuple(payload["categorical"]),
            vocabularies_=payload["vocabularies"],
            max_log_ratings_=payload["max_log_ratings"],
            scaler_=scaler,
            fitted_on_=payload["fitted_on"],
        )


_TEXT_LIKE = {"title", "name", "imdb_url", "url", "release_date", "asin", "zip", "description"}
_LIST_FEATURES = ("genres", "attributes", "categories")


def infer_item_columns(frame: pd.DataFrame | None) -> dict[str, tuple[str, ...]]:
    """Which item-feature columns to use and how: list columns named genres/attributes/categories become
    multi-hot; numeric columns are scaled (log1p first when heavy-tailed: max > 100 x median); text-free
    columns with 2..64 distinct values become categorical. Free text and ids (title, url, asin) are left out."""
    result: dict[str, tuple[str, ...]] = {"genres": (), "numeric": (), "log_numeric": (), "categorical": ()}
    if frame is None:
        return result
    genres, numeric, log_numeric, categorical = [], [], [], []
    for column in frame.columns:
        series = frame[column]
        if column in _TEXT_LIKE:
            continue
        sample = series.dropna()
        if column in _LIST_FEATURES or (len(sample) and isinstance(sample.iloc[0], (list, tuple, np.ndarray))):
            if column in _LIST_FEATURES:
                genres.append(column)
            continue
        if pd.api.types.is_numeric_dtype(series):
            numeric.append(column)
            values = sample.to_numpy(dtype=np.float64)
            if len(values) and values.min() >= 0 and values.max() > 100 * max(np.median(values), 1.0):
                log_numeric.append(column)
        elif 2 <= sample.astype(str).nunique() <= 64:
            categorical.append(column)
    return {
        "genres": tuple(genres),
        "numeric": tuple(numeric),
        "log_numeric": tuple(log_numeric),
        "categorical": tuple(categorical),
    }


def infer_user_columns(frame: pd.DataFrame | None) -> dict[str, tuple[str, ...]]:
    """User-feature columns to use: numeric columns scaled, low-cardinality columns as categories, and an
    age bucket derived from `age` when present (zip codes and other ids are left out)."""
    columns = infer_item_columns(frame)
    categorical = list(columns["categorical"])
    if frame is not None and "age" in frame.columns and "age_bucket" not in categorical:
        categorical.append("age_bucket")
    return {"numeric": columns["numeric"], "categorical": tuple(categorical)}


def _require_features(frame: pd.DataFrame | None, kind: str) -> pd.DataFrame:
    if frame is None:
        raise ConfigError(f"this data has no {kind} feature table")
    return frame


def _matrix(
    parts: list[np.ndarray],
    names: list[str],
    frame: pd.DataFrame,
    categorical: tuple[str, ...],
    vocabularies: dict[str, list[str]],
) -> FeatureMatrix:
    codes = (
        np.stack([categorical_codes(frame[c], vocabularies[c]) for c in categorical], axis=1)
        if categorical
        else np.zeros((len(frame), 0), dtype=np.int64)
    )
    return FeatureMatrix(
        dense=np.concatenate(parts, axis=1).astype(np.float32),
        dense_names=names,
        categorical=codes,
        categorical_names=list(categorical),
        cardinalities=[len(vocabularies[c]) + 1 for c in categorical],
    )
