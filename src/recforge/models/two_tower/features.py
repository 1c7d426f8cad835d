"""What the two towers read besides IDs, built once from the training data and applied to new users,
new items and query-time histories: multi-hot genres, range-scaled and learned-range numerics,
categoricals, and the user taste profile (per-genre means and shares) recomputed from any history.

`TowerFeatures.fit` decides the columns (`recforge.data.features` infers them from the tables), keeps the
fitted builders, the training users' raw feature columns (to rebuild a known user's row for a history
query) and the dense/categorical tensors of every training user and item. It round-trips through arrays
plus JSON for artifacts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from recforge.data.features import (
    FeatureMatrix,
    ItemFeatureBuilder,
    UserFeatureBuilder,
    genre_lists,
    infer_item_columns,
    infer_user_columns,
)
from recforge.data.interactions import Interactions
from recforge.data.query import History
from recforge.data.vocabulary import Vocabulary
from recforge.errors import ConfigError
from recforge.models.two_tower.config import TwoTowerConfig


class TowerFeatures:
    """Fitted feature builders plus the feature tensors of the training users and items."""

    def __init__(self) -> None:
        self.item_builder: ItemFeatureBuilder | None = None
        self.user_builder: UserFeatureBuilder | None = None
        self.genre_names: list[str] = []
        self.item_genres = np.zeros((0, 0), np.float32)
        self.user_frame: pd.DataFrame | None = None  # training users' raw feature columns the tower reads
        self.user_tensors: dict[str, torch.Tensor] = {}
        self.item_tensors: dict[str, torch.Tensor] = {}
        self.meta: dict[str, Any] = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, train: Interactions, config: TwoTowerConfig) -> TowerFeatures:
        self = cls()
        self.item_genres = np.zeros((train.n_items, 0), np.float32)
        if train.item_features is not None:
            columns = infer_item_columns(train.item_features)
            builder = ItemFeatureBuilder(
                genre_columns=columns["genres"],
                min_genre_quantile=config.min_genre_quantile,
                numeric_ranges={k: v for k, v in config.item_numeric_ranges.items() if k in columns["numeric"]},
                learned_numeric=tuple(k for k in columns["numeric"] if k not in config.item_numeric_ranges),
                log_numeric=tuple(k for k in columns["log_numeric"] if k not in config.item_numeric_ranges),
                categorical=columns["categorical"],
            ).fit(train)
            self.genre_names = builder.genres_
            self.item_genres = builder.transform(train.item_features).dense[:, : len(self.genre_names)]
            if config.item_features:
                self.item_builder = builder
        if config.user_features:
            columns = infer_user_columns(train.user_features)
            self.user_builder = UserFeatureBuilder(
                taste=config.taste_features and bool(self.genre_names) and train.n_rated > 0,
                numeric_ranges={k: v for k, v in config.user_numeric_ranges.items() if k in columns["numeric"]},
                categorical=columns["categorical"],
            ).fit(train)
            self.user_frame = self._kept_user_columns(train.user_features)
        users = self.user_matrix(train, train.user_features)
        items = self.item_matrix(train.item_features, train.n_items)
        self.user_tensors, self.item_tensors = tensors(users), tensors(items)
        self.meta = {"user": _meta(users), "item": _meta(items)}
        return self

    def _kept_user_columns(self, frame: pd.DataFrame | None) -> pd.DataFrame | None:
        """The raw user-feature columns the builder reads (kept to rebuild features for history queries)."""
        if self.user_builder is None or frame is None:
            return None
        builder = self.user_builder
        wanted = [c for c in (*builder.categorical, *builder.numeric_ranges, "age") if c in frame.columns]
        return frame[list(dict.fromkeys(wanted))].reset_index(drop=True)

    # ------------------------------------------------------------------ transforming
    def item_matrix(self, frame: pd.DataFrame | None, n: int) -> FeatureMatrix:
        if self.item_builder is None or frame is None:
            return empty_features(n)
        return self.item_builder.transform(frame)

    def item_feature_kinds(self) -> dict[str, str]:
        """The item-feature columns the item tower reads, each "list" (genres), "numeric" or "categorical"."""
        builder = self.item_builder
        if builder is None:
            return {}
        kinds = {c: "list" for c in builder.genre_columns}
        kinds |= {c: "numeric" for c in (builder.scaler_.columns if builder.scaler_ is not None else ())}
        return kinds | {c: "categorical" for c in builder.categorical}

    def new_item_rows(self, frame: pd.DataFrame) -> tuple[FeatureMatrix, np.ndarray]:
        """(features, genre block) of items described only by `frame` (the training item-feature columns; a
        missing column counts as unknown: the fitted fill value or the unknown category)."""
        if self.item_builder is None:
            raise ConfigError("this two-tower has no item features")
        frame = frame.reset_index(drop=True)
        for column, kind in self.item_feature_kinds().items():
            if column not in frame.columns:
                frame[column] = [[] for _ in range(len(frame))] if kind == "list" else np.nan
        try:
            matrix = self.item_builder.transform(frame)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"new item features do not fit the item tower: {exc}") from exc
        return matrix, matrix.dense[:, : len(self.genre_names)]

    def user_matrix(self, history: Interactions, features: pd.DataFrame | None) -> FeatureMatrix:
        if self.user_builder is None:
            return empty_features(history.n_users)
        return self.user_builder.transform(history, self.item_genres, self.genre_names, features)

    def history_rows(
        self,
        history: History,
        features: pd.DataFrame | None,
        users: np.ndarray,
        known: np.ndarray,
        items: Vocabulary,
        rating_scale: tuple[float, float] | None,
    ) -> FeatureMatrix:
        """Feature rows for history queries: demographics from `features`, or from the training table for
        known users, and the taste profile recomputed from the history."""
        if self.user_builder is None:
            return empty_features(len(history))
        if features is None and self.user_frame is not None:
            frame = self.user_frame.iloc[np.where(known, users, 0)].reset_index(drop=True)
            frame.loc[~known, :] = None
        else:
            frame = features
        as_data = history_interactions(history, items, rating_scale)
        return self.user_builder.transform(as_data, self.item_genres, self.genre_names, frame)

    def user_feature_kinds(self) -> dict[str, str]:
        """The raw user-feature columns the user tower reads (what a features-only user may carry), each
        "numeric" (range-scaled) or "categorical"."""
        if self.user_frame is None:
            return {}
        numeric = set(self.user_builder.numeric_ranges) if self.user_builder is not None else set()
        return {str(c): "numeric" if c in numeric else "categorical" for c in self.user_frame.columns}

    def unseen_values(self, frame: pd.DataFrame, side: str) -> list[list[str]]:
        """Per row of `frame` (user or item features), the categories and genres no training row had, as
        "column 'value'": the towers read them as unknown, which a client should be told."""
        builder = self.user_builder if side == "user" else self.item_builder
        unseen: list[list[str]] = [[] for _ in range(len(frame))]
        if builder is None:
            return unseen
        known = {column: set(values) for column, values in builder.vocabularies_.items()}
        genre_columns = self.item_builder.genre_columns if side == "item" else ()  # type: ignore[union-attr]
        known |= {column: set(self.genre_names) for column in genre_columns}
        for column in frame.columns.intersection(list(known)):
            if column in genre_columns:  # normalised as the tower reads them
                rows = genre_lists(frame, (column,))
            else:
                rows = [[] if pd.isna(value) else [str(value)] for value in frame[column]]
            for row, values in enumerate(rows):
                unseen[row] += [f"{column} {value!r}" for value in sorted(set(values) - known[column])]
        return unseen

    def with_new_items(self, genres: np.ndarray) -> TowerFeatures:
        """A copy whose item genre block (used by taste profiles) has rows for appended items."""
        extended = TowerFeatures()
        extended.__dict__.update(self.__dict__)
        extended.item_genres = np.vstack([self.item_genres, genres.astype(self.item_genres.dtype)])
        return extended

    # ------------------------------------------------------------------ state
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"user_features/{k}": v.numpy() for k, v in self.user_tensors.items()}
        out |= {f"item_features/{k}": v.numpy() for k, v in self.item_tensors.items()}
        out["item_genres"] = self.item_genres
        return out

    def extras(self) -> dict[str, Any]:
        frame = None
        if self.user_frame is not None:
            frame = {
                column: [None if pd.isna(v) else (v.item() if isinstance(v, np.generic) else v) for v in values]
                for column, values in self.user_frame.items()
            }
        return {
            "feature_meta": self.meta,
            "genre_names": self.genre_names,
            "item_builder": None if self.item_builder is None else self.item_builder.to_dict(),
            "user_builder": None if self.user_builder is None else self.user_builder.to_dict(),
            "user_frame": frame,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> TowerFeatures:
        self = cls()
        self.meta, self.genre_names = extras["feature_meta"], extras["genre_names"]
        if extras["item_builder"] is not None:
            self.item_builder = ItemFeatureBuilder.from_dict(extras["item_builder"])
        if extras["user_builder"] is not None:
            self.user_builder = UserFeatureBuilder.from_dict(extras["user_builder"])
        self.item_genres = arrays["item_genres"]
        self.user_frame = None if extras["user_frame"] is None else pd.DataFrame(extras["user_frame"])
        self.user_tensors = {k: torch.from_numpy(arrays[f"user_features/{k}"]) for k in ("dense", "categorical")}
        self.item_tensors = {k: torch.from_numpy(arrays[f"item_features/{k}"]) for k in ("dense", "categorical")}
        return self


def history_interactions(history: History, items: Vocabulary, rating_scale: tuple[float, float] | None) -> Interactions:
    """A History as Interactions over `items` (one pseudo-user per query), ratings where given."""
    coo = history.binary.tocoo()
    ratings = None
    if history.ratings is not None:
        ratings = np.asarray(history.ratings.tocsr()[coo.row, coo.col]).ravel().astype(np.float32)
        ratings[ratings == 0] = np.nan
    return Interactions(
        users=Vocabulary(np.arange(len(history)), "query"),
        items=items,
        user_index=coo.row,
        item_index=coo.col,
        rating=ratings,
        rating_scale=rating_scale,
    )


def empty_features(n: int) -> FeatureMatrix:
    return FeatureMatrix(np.zeros((n, 0), np.float32), [], np.zeros((n, 0), np.int64), [], [])


def tensors(matrix: FeatureMatrix) -> dict[str, torch.Tensor]:
    return {
        "dense": torch.from_numpy(np.ascontiguousarray(matrix.dense, dtype=np.float32)),
        "categorical": torch.from_numpy(np.ascontiguousarray(matrix.categorical, dtype=np.int64)),
    }


def _meta(matrix: FeatureMatrix) -> dict[str, Any]:
    return {
        "dense_dim": int(matrix.dense.shape[1]),
        "cardinalities": [int(c) for c in matrix.cardinalities],
        "dense_names": matrix.dense_names,
        "categorical_names": matrix.categorical_names,
    }
