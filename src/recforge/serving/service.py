"""What the HTTP service does, without HTTP: a loaded model, its item catalogue and an optional ANN index.

Every answer says which path served it (`served_by`, from `recforge.coldstart`, plus "+ann" when the
index answered) and why (`note`). The service does no model math: routing is `Recommender.recommend`
with a `Query`, a known user's new interactions are `Recommender.update_user`, new items are
`Recommender.extend_items`. Unknown user or item ids raise `UnknownIdError`.

State a request can change is never edited under readers: a user's update is a new immutable
`UserUpdate` that replaces the old one in one dictionary assignment, and new items build a whole new
`Snapshot` (model, catalogue, index) aside that replaces the old one in one assignment; a request reads
the snapshot once and works on it to the end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.coldstart import KNOWN_USERS, RATINGS, USER_FEATURES
from recforge.data.catalogue import ITEMS_FILE
from recforge.data.query import History, Query
from recforge.errors import CapabilityError, ConfigError, UnknownIdError
from recforge.models.base import Recommendations, Recommender, UserUpdate
from recforge.models.factorization import FactorModel
from recforge.models.indexed import IndexedRecommender
from recforge.retrieval.ann import VectorIndex

MAX_K = 1000  # the longest list a request may ask for


@dataclass(frozen=True)
class Catalogue:
    """Plain-Python columns of item id, title and genres in model index order (answers read them per
    item: pandas .iloc is ~100x slower), plus lower-cased titles for search."""

    ids: list[Any]
    titles: list[str]
    genres: list[list[str]]
    title_lower: pd.Series

    @classmethod
    def build(cls, model: Recommender, items: pd.DataFrame | None) -> Catalogue:
        frame = _catalogue(model, items)
        return cls(
            [_plain(v) for v in frame["item_id"]],
            frame["title"].tolist(),
            frame["genres"].tolist(),
            frame["title"].fillna("").str.lower(),
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"item_id": self.ids, "title": self.titles, "genres": self.genres})


@dataclass(frozen=True)
class Snapshot:
    """Everything a read needs, replaced as a whole (never edited) when the catalogue changes."""

    model: Recommender
    catalogue: Catalogue
    indexed: IndexedRecommender | None  # the model behind its vector index, when the artifact has one
    popularity: np.ndarray

    @property
    def index(self) -> VectorIndex | None:
        return None if self.indexed is None else self.indexed.index


class RecommenderService:
    def __init__(
        self,
        model: Recommender,
        items: pd.DataFrame | None = None,
        index: VectorIndex | None = None,
        max_k: int = MAX_K,
    ) -> None:
        self.max_k = max_k
        if isinstance(model, IndexedRecommender):
            model, index = model.model, model.index
        popularity = np.asarray(model.seen_.sum(axis=0), dtype=np.float64).ravel()
        indexed = None if index is None else IndexedRecommender(model, index)
        self.snapshot = Snapshot(model, Catalogue.build(model, items), indexed, popularity)
        self.updates: dict[int, UserUpdate] = {}
        self._write_lock = threading.Lock()  # writers queue; readers never wait

    @property
    def model(self) -> Recommender:
        return self.snapshot.model

    @property
    def index(self) -> VectorIndex | None:
        return self.snapshot.index

    @classmethod
    def from_artifact(cls, path: str | Path, **options: Any) -> RecommenderService:
        from recforge.models import load_model

        path = Path(path)
        model = load_model(path)  # an IndexedRecommender when the artifact holds an index
        items = pd.read_parquet(path / ITEMS_FILE) if (path / ITEMS_FILE).exists() else None
        return cls(model, items, **options)

    # work per exact request (items x dimensions) under which it finishes in ~0.1 ms on one core
    QUICK_EXACT_WORK = 1 << 20

    def answers_quickly(self) -> bool:
        """True when a known user's recommendations cost well under a millisecond: served from the ANN
        index, or an exact scan of a small catalogue (the HTTP layer then skips the thread pool)."""
        snapshot = self.snapshot
        if not isinstance(snapshot.model, FactorModel):
            return False
        if snapshot.index is not None:
            return True
        return snapshot.model.n_items * snapshot.model.item_factors_.shape[1] <= self.QUICK_EXACT_WORK

    # ------------------------------------------------------------------ ids
    def user_index(self, user: Any, snapshot: Snapshot | None = None) -> int:
        return _resolve((snapshot or self.snapshot).model.users_, user, "user")

    def item_index(self, item: Any, snapshot: Snapshot | None = None) -> int:
        return _resolve((snapshot or self.snapshot).model.items_, item, "item")

    def _check_k(self, k: int, snapshot: Snapshot) -> int:
        if not 1 <= k <= self.max_k:
            raise ConfigError(f"k must be between 1 and {self.max_k}, got {k}")
        return min(k, snapshot.model.n_items)

    # ------------------------------------------------------------------ recommendations
    def recommend_user(self, user: Any, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """A known user's top k: from their update when they added interactions, else the trained state
        (through the ANN index when there is one)."""
        snapshot = self.snapshot
        k = self._check_k(k, snapshot)
        index = self.user_index(user, snapshot)
        model = snapshot.model
        update = self.updates.get(index)
        if update is None and (KNOWN_USERS not in model.capabilities or not model.known_users_[index]):
            raise UnknownIdError(f"user {user!r} has no training data in this model; POST /recommendations instead")
        if update is not None:
            exclude = update.items if exclude_seen else None
            path = "model (updated)" if update.vector is not None else "history (updated)"
            if snapshot.index is not None and update.vector is not None:
                vector = model.augmented(update.vector[None, :], np.array([update.bias]))[0]
                return self._searched(snapshot, vector, k, exclude, path)
            return self._top(snapshot, model.score_updated(update), k, exclude, path)
        if snapshot.index is not None and isinstance(model, FactorModel):
            seen = model.seen_  # the row's indices straight from CSR: a scipy row slice costs ~25 µs
            exclude = seen.indices[seen.indptr[index] : seen.indptr[index + 1]] if exclude_seen else None
            return self._searched(snapshot, model.user_embeddings(np.array([index]))[0], k, exclude, "model")
        recs = model.recommend(np.array([index]), k, exclude_seen=exclude_seen, external_ids=False)
        return self.render(snapshot, recs)

    def recommend_new(
        self, ratings: list[tuple[Any, float | None]], k: int = 10, features: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A user unknown to the model, described by the items they rated now (rating None = interacted)
        and/or user features; `recforge.coldstart` picks the path (features, history or popularity) and
        says what it could not use."""
        snapshot = self.snapshot
        model = snapshot.model
        k = self._check_k(k, snapshot)
        items = [self.item_index(item, snapshot) for item, _ in ratings]
        history = History.from_items([items], model.n_items, ratings=[[r for _, r in ratings]])
        frame = None
        if features:
            frame = pd.DataFrame([self._checked_features(model, features)])
        ranker = snapshot.indexed or model  # the index answers vector paths when there is one
        recs = ranker.recommend(Query(np.array([-1]), history, frame), k, external_ids=False)
        return self.render(snapshot, recs)

    @staticmethod
    def _checked_features(model: Recommender, features: dict[str, Any]) -> dict[str, Any]:
        """Request features, validated against what the user tower reads: unknown names and non-numeric
        values of numeric features are errors that name the field; missing ones count as unknown. A model
        without a user-feature tower ignores features (the answer's note says so)."""
        if USER_FEATURES not in model.capabilities:
            return features
        kinds = model.user_feature_kinds()
        unknown = sorted(set(features) - set(kinds))
        if unknown:
            raise ConfigError(f"unknown user feature(s) {unknown}; this model reads {list(kinds)}")
        for name, value in features.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kinds[name] == "numeric" and value is not None and not numeric:
                raise ConfigError(f"user feature {name!r} must be a number, got {value!r}")
        return features

    def similar(self, item: Any, k: int = 10) -> dict[str, Any]:
        snapshot = self.snapshot
        k = self._check_k(k, snapshot)
        recs = snapshot.model.similar_items(np.array([self.item_index(item, snapshot)]), k, external_ids=False)
        return self.render(snapshot, recs)

    def predict(self, pairs: list[tuple[Any, Any]]) -> list[float]:
        model = self.snapshot.model
        if RATINGS not in model.capabilities:
            raise CapabilityError(f"{model.name} does not predict ratings")
        users = np.array([self.user_index(u) for u, _ in pairs], dtype=np.int64)
        items = np.array([self.item_index(i) for _, i in pairs], dtype=np.int64)
        predictions = self._updated_predictions(model, users, items)
        if model.rating_scale_ is not None:
            predictions = np.clip(predictions, *model.rating_scale_)
        return [float(p) for p in predictions]

    def _updated_predictions(self, model: Recommender, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings; users with an update are predicted from their updated vector."""
        predictions = np.asarray(model.predict(users, items), dtype=np.float64)
        for row, (user, item) in enumerate(zip(users, items, strict=True)):
            update = self.updates.get(int(user))
            if update is not None and update.vector is not None:
                predictions[row] = float(model.score_updated(update)[0, item])
        return predictions

    def search_items(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        snapshot = self.snapshot
        query = query.strip().lower()
        if not query:
            return []
        hits = np.flatnonzero(snapshot.catalogue.title_lower.str.contains(query, regex=False).to_numpy())
        hits = hits[np.argsort(-snapshot.popularity[hits], kind="stable")][:limit]  # popular titles first
        return [_item_row(snapshot.catalogue, int(i)) for i in hits]

    # ------------------------------------------------------------------ updates
    def add_interactions(self, user: Any, ratings: list[tuple[Any, float | None]]) -> str:
        """Fold a known user's new interactions into their state (`Recommender.update_user`); returns how."""
        with self._write_lock:
            snapshot = self.snapshot
            model = snapshot.model
            index = self.user_index(user, snapshot)
            items = [self.item_index(item, snapshot) for item, _ in ratings]
            added = History.from_items([items], model.n_items, ratings=[[r for _, r in ratings]])
            update = model.update_user(index, added, self.updates.get(index))
            self.updates[index] = update  # one assignment: readers see the old update or the new one
        if update.vector is None:
            return "history overlay"
        rated = RATINGS in model.capabilities and any(r is not None for _, r in ratings)
        return "MAP update of the user's factors" if rated else "fold-in of the user's whole history"

    def add_items(self, items: list[dict[str, Any]]) -> str:
        """Add brand-new items described by features (models with an item tower): each gets a vector from
        the tower with the unknown ID and joins the catalogue, the index and search at once. Each dict:
        `item` (new id), optional `title`, and the model's item-feature columns."""
        ids = [entry["item"] for entry in items]
        frame = pd.DataFrame([{k: v for k, v in entry.items() if k != "item"} for entry in items])
        with self._write_lock:
            snapshot = self.snapshot
            model = snapshot.model.extend_items(ids, frame)
            added = pd.DataFrame(
                {
                    "item_id": ids,
                    "title": frame.get("title", pd.Series([None] * len(ids))).tolist(),
                    "genres": [
                        list(g) if isinstance(g, (list, tuple)) else []
                        for g in frame.get("genres", pd.Series([None] * len(ids)))
                    ],
                }
            )
            catalogue = Catalogue.build(model, pd.concat([snapshot.catalogue.frame(), added], ignore_index=True))
            indexed = None
            if snapshot.index is not None:
                indexed = IndexedRecommender.build(model, snapshot.index.config)
            popularity = np.concatenate([snapshot.popularity, np.zeros(len(ids))])
            self.snapshot = Snapshot(model, catalogue, indexed, popularity)  # one assignment swaps it all
        return "item tower (features, unknown ID)"

    # ------------------------------------------------------------------ answers
    def render(self, snapshot: Snapshot, recs: Recommendations, row: int = 0) -> dict[str, Any]:
        """One list of a `Recommendations` as the service's JSON shape."""
        items, scores = recs.item_index[row], recs.scores[row]
        return {
            "served_by": str(recs.served_by[row]),
            "note": str(recs.notes[row]) if len(recs.notes) else "",
            "items": [
                _item_row(snapshot.catalogue, int(i), float(s)) for i, s in zip(items, scores, strict=True) if i >= 0
            ],
        }

    def _top(
        self, snapshot: Snapshot, scores: np.ndarray, k: int, exclude: np.ndarray | None, path: str
    ) -> dict[str, Any]:
        from recforge.retrieval.topk import topk

        scores = np.array(scores, dtype=np.float32)
        if exclude is not None:
            scores[0, exclude] = -np.inf
        items, top = topk(scores, k)
        return self.render(snapshot, _one(snapshot.model, items, top, path))

    def _searched(
        self, snapshot: Snapshot, vector: np.ndarray, k: int, exclude: np.ndarray | None, path: str
    ) -> dict[str, Any]:
        items, scores = snapshot.indexed.recommend_vector(vector, k, exclude)  # type: ignore[union-attr]
        return self.render(snapshot, _one(snapshot.model, items[None, :], scores[None, :], path + "+ann"))


def _one(model: Recommender, items: np.ndarray, scores: np.ndarray, path: str) -> Recommendations:
    return Recommendations(
        users=np.array([None]),
        item_index=items,
        items=model.items_.lookup(np.maximum(items, 0)).astype(object),
        scores=scores,
        served_by=np.array([path], dtype=object),
        notes=np.array([""], dtype=object),
    )


def _item_row(catalogue: Catalogue, index: int, score: float | None = None) -> dict[str, Any]:
    out = {"item": catalogue.ids[index], "title": catalogue.titles[index], "genres": catalogue.genres[index]}
    if score is not None:
        out["score"] = score
    return out


def _catalogue(model: Recommender, items: pd.DataFrame | None) -> pd.DataFrame:
    """item_id, title, genres per model item (in index order); titles default to the id."""
    ids = model.items_.ids
    frame = pd.DataFrame({"item_id": ids})
    if items is not None and len(items):
        meta = items.drop_duplicates("item_id").set_index("item_id")
        frame = frame.join(meta[[c for c in ("title", "genres") if c in meta.columns]], on="item_id")
    if "title" not in frame:
        frame["title"] = None
    frame["title"] = frame["title"].where(frame["title"].notna(), frame["item_id"].astype(str))
    if "genres" not in frame:
        frame["genres"] = [[] for _ in range(len(frame))]
    frame["genres"] = [list(g) if isinstance(g, (list, tuple, np.ndarray)) else [] for g in frame["genres"]]
    return frame


def _resolve(vocabulary: Any, raw: Any, kind: str) -> int:
    """An external id from a URL or JSON (often a string) to the model's index, trying the raw value,
    then its integer form, then its string form."""
    candidates = [raw]
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        # integer vocabularies (MovieLens, most logs) cannot hold the string: try the number first
        numeric = vocabulary.ids.dtype.kind in "iu"
        candidates = [int(raw), raw] if numeric else [raw, int(raw)]
    if not isinstance(raw, str):
        candidates.append(str(raw))
    for candidate in candidates:
        position = vocabulary.position(candidate)
        if position is not None:
            return position
    raise UnknownIdError(f"unknown {kind} id {raw!r}")


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
