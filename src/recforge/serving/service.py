"""What the HTTP service does, without HTTP: a loaded model plus item metadata and an optional ANN index.

Every answer says which path served it (`served_by`):
- "model": a known user, scored by the trained model (through the ANN index when the artifact has one:
  "model+ann");
- "model (updated)": a known user whose vector was updated in place by `add_interactions`;
- "history": a query-time history scored by the model (fold-in, weighted average, item-item, ...);
- "features" / "features+history": a new user described by features (and items), through the user tower;
- "popularity": an empty history, or a model that cannot use one (the reason is given in `note`).
Nothing falls back silently: unknown user or item ids raise `UnknownIdError`.

Updates without retraining (`add_interactions`): explicit factor models take a MAP step for that user
only, with the trained vector as the prior mean (argmin Σ_new (r − μ − b_u − b_i − xᵀq_i)² + λ‖x − x₀‖²);
implicit factor models refold the user from all their items (training + new) against fixed item
factors; other history models (EASE, KNN) keep the new items as a per-user history overlay.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge.data.catalogue import ITEMS_FILE
from recforge.errors import CapabilityError, ConfigError, UnknownIdError
from recforge.models.base import HISTORY, KNOWN_USERS, RATINGS, USER_FEATURES, History, Recommender
from recforge.models.factorization import FactorModel
from recforge.retrieval.ann import VectorIndex
from recforge.retrieval.topk import topk


@dataclass
class Answer:
    items: list[dict[str, Any]]
    served_by: str
    note: str = ""


@dataclass
class _Overlay:
    """Interactions a known user added after training."""

    items: list[int] = field(default_factory=list)
    ratings: list[float | None] = field(default_factory=list)


class RecommenderService:
    def __init__(
        self, model: Recommender, items: pd.DataFrame | None = None, index: VectorIndex | None = None, max_k: int = 1000
    ) -> None:
        self.model, self.index, self.max_k = model, index, max_k
        self.items = _catalogue(model, items)
        counts = np.asarray(model.seen_.sum(axis=0)).ravel()
        self.popularity = counts.astype(np.float64)
        self._lock = threading.Lock()  # guards in-place updates; reads need no lock (numpy releases the GIL)
        self._overlays: dict[int, _Overlay] = {}
        self._index_catalogue()

    def _index_catalogue(self) -> None:
        """Plain-Python columns of the catalogue: answers read them per item (pandas .iloc is ~100x slower)."""
        self._ids = [_plain(v) for v in self.items["item_id"]]
        self._titles = self.items["title"].tolist()
        self._genres = self.items["genres"].tolist()
        self._title_lower = self.items["title"].fillna("").str.lower()

    @classmethod
    def from_artifact(cls, path: str | Path, **options: Any) -> RecommenderService:
        from recforge.artifacts import read_index
        from recforge.models import load_model as load

        path = Path(path)
        model = load(path)
        items = pd.read_parquet(path / ITEMS_FILE) if (path / ITEMS_FILE).exists() else None
        return cls(model, items, read_index(path), **options)

    # work per exact request (items x dimensions) under which it finishes in ~0.1 ms on one core
    QUICK_EXACT_WORK = 1 << 20

    def answers_quickly(self) -> bool:
        """True when a known user's recommendations cost well under a millisecond: served from the ANN
        index, or an exact scan of a small catalogue (the HTTP layer then skips the thread pool)."""
        model = self.model
        if not isinstance(model, FactorModel):
            return False
        if self.index is not None:
            return True
        return model.n_items * model.item_factors_.shape[1] <= self.QUICK_EXACT_WORK

    # ------------------------------------------------------------------ ids
    def user_index(self, user: Any) -> int:
        return _resolve(self.model.users_, user, "user")

    def item_index(self, item: Any) -> int:
        return _resolve(self.model.items_, item, "item")

    def _check_k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise ConfigError(f"k must be between 1 and {self.max_k}, got {k}")
        return min(k, self.model.n_items)

    # ------------------------------------------------------------------ recommendations
    def recommend_user(self, user: Any, k: int = 10, exclude_seen: bool = True) -> Answer:
        k = self._check_k(k)
        index = self.user_index(user)
        model = self.model
        if KNOWN_USERS not in model.capabilities or not model.known_users_[index]:
            raise UnknownIdError(f"user {user!r} has no training data in this model; POST /recommendations instead")
        overlay = self._overlays.get(index)
        exclude = None
        if exclude_seen:
            seen = model.seen_  # the row's indices straight from CSR: a scipy row slice costs ~25 µs
            exclude = seen.indices[seen.indptr[index] : seen.indptr[index + 1]]
            if overlay is not None:
                exclude = np.union1d(exclude, overlay.items)
        if overlay is not None and not isinstance(model, FactorModel):
            scores = model.score(np.array([index]), self._history_of(index, overlay))
            return self._answer(scores, k, exclude, "history (updated)")
        path = "model (updated)" if overlay is not None else "model"
        if self.index is not None and isinstance(model, FactorModel):
            items, scores = self.index.search_one(model.user_embeddings(np.array([index]))[0], k, exclude)
            return Answer(self._rows(items, scores), path + "+ann")
        return self._answer(model.score(np.array([index])), k, exclude, path)

    def recommend_new(
        self, ratings: list[tuple[Any, float | None]], k: int = 10, features: dict[str, Any] | None = None
    ) -> Answer:
        """A user unknown to the model, described by the items they rated now (rating None = interacted)
        and/or by user features (e.g. age, gender, occupation). Routes to the user-feature tower when the
        model has one and features are given ("features", "features+history"), else to the model's history
        scoring ("history"), else to popularity; features a model cannot read are reported in `note`."""
        k = self._check_k(k)
        items = [self.item_index(item) for item, _ in ratings]
        exclude = np.array(items, dtype=np.int64) if items else None
        history = History.from_items([items], self.model.n_items, ratings=[[r for _, r in ratings]]) if items else None
        if features and USER_FEATURES in self.model.capabilities and hasattr(self.model, "score_new_users"):
            frame = pd.DataFrame([self._checked_features(features)])
            scores = self.model.score_new_users(frame, history)
            return self._answer(scores, k, exclude, "features+history" if items else "features")
        if not items:
            answer = self._popular(k, None, "no history given")
        elif HISTORY not in self.model.capabilities:
            answer = self._popular(k, exclude, f"{self.model.name} cannot score a history")
        else:
            answer = self._answer(self.model.score(np.array([-1]), history), k, exclude, "history")
        if features:
            ignored = f"features ignored: {self.model.name} has no user-feature tower"
            answer.note = "; ".join(filter(None, [answer.note, ignored]))
        return answer

    def _checked_features(self, features: dict[str, Any]) -> dict[str, Any]:
        """Request features, validated against what the user tower reads: unknown names and non-numeric
        values of numeric features are errors that name the field; missing ones count as unknown. (The
        model itself reads unparseable numbers as missing, as it does for catalogue values like "Unknown";
        a JSON request that sends text for a number is a client error.)"""
        kinds = self.model.user_feature_kinds()
        unknown = sorted(set(features) - set(kinds))
        if unknown:
            raise ConfigError(f"unknown user feature(s) {unknown}; this model reads {list(kinds)}")
        for name, value in features.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if kinds[name] == "numeric" and value is not None and not numeric:
                raise ConfigError(f"user feature {name!r} must be a number, got {value!r}")
        return features

    def similar(self, item: Any, k: int = 10) -> Answer:
        k = self._check_k(k)
        result = self.model.similar_items(np.array([self.item_index(item)]), k, external_ids=False)
        return Answer(self._rows(result.item_index[0], result.scores[0]), "similar")

    def predict(self, pairs: list[tuple[Any, Any]]) -> list[float]:
        if RATINGS not in self.model.capabilities:
            raise CapabilityError(f"{self.model.name} does not predict ratings")
        users = np.array([self.user_index(u) for u, _ in pairs], dtype=np.int64)
        items = np.array([self.item_index(i) for _, i in pairs], dtype=np.int64)
        predictions = self.model.predict(users, items)
        if self.model.rating_scale_ is not None:
            predictions = np.clip(predictions, *self.model.rating_scale_)
        return [float(p) for p in predictions]

    def search_items(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        query = query.strip().lower()
        if not query:
            return []
        hits = np.flatnonzero(self._title_lower.str.contains(query, regex=False).to_numpy())
        hits = hits[np.argsort(-self.popularity[hits], kind="stable")][:limit]  # popular titles first
        return [self._item_row(int(i)) for i in hits]

    # ------------------------------------------------------------------ updates
    def add_interactions(self, user: Any, ratings: list[tuple[Any, float | None]]) -> str:
        """Fold new interactions of a known user into their vector (or history); returns how."""
        index = self.user_index(user)
        items = [self.item_index(item) for item, _ in ratings]
        model = self.model
        if not isinstance(model, FactorModel) and HISTORY not in model.capabilities:
            raise CapabilityError(f"{model.name} cannot take new interactions without retraining")
        with self._lock:
            overlay = self._overlays.setdefault(index, _Overlay())
            overlay.items += items
            overlay.ratings += [r for _, r in ratings]
            if not isinstance(model, FactorModel):
                return "history overlay"
            if RATINGS in model.capabilities and any(r is not None for _, r in ratings):
                self._map_update(index, [(i, r) for i, (_, r) in zip(items, ratings, strict=True) if r is not None])
                return "MAP update of the user's factors"
            vectors, bias = model.fold_in(self._history_of(index, overlay))
            model.user_factors_[index] = vectors[0]
            model.user_bias_[index] = bias[0]
            return "fold-in of the user's whole history"

    def add_items(self, items: list[dict[str, Any]]) -> str:
        """Add brand-new items described by features (two-tower models with an item tower): each gets a
        vector from the tower with the unknown ID and joins the catalogue, the index and search at once.
        Each dict: `item` (new id), optional `title`, and the model's item-feature columns."""
        from recforge.models.base import ITEM_FEATURES

        model = self.model
        if ITEM_FEATURES not in model.capabilities or not hasattr(model, "embed_items"):
            raise CapabilityError(f"{model.name} cannot embed items from features; retrain to add items")
        ids = [entry["item"] for entry in items]
        clashes = [i for i in ids if i in model.items_ or str(i) in model.items_]
        if clashes:
            raise ConfigError(f"items already in the catalogue: {clashes[:5]}")
        if len(set(ids)) != len(ids):
            raise ConfigError("duplicate item ids in the request")
        frame = pd.DataFrame([{k: v for k, v in entry.items() if k != "item"} for entry in items])
        vectors = model.embed_items(frame)
        with self._lock:
            model.items_ = model.items_.extend(ids)
            model.item_factors_ = np.vstack([model.item_factors_, vectors.astype(np.float32)])
            model.item_bias_ = np.concatenate([model.item_bias_, np.zeros(len(ids))])
            model.seen_ = sp.hstack([model.seen_, sp.csr_matrix((model.seen_.shape[0], len(ids)))]).tocsr()
            self.popularity = np.concatenate([self.popularity, np.zeros(len(ids))])
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
            self.items = _catalogue(model, pd.concat([self.items, added], ignore_index=True))
            self._index_catalogue()
            if self.index is not None:
                self.index = VectorIndex(self.index.config).build(model.item_embeddings())
        return "item tower (features, unknown ID)"

    def _map_update(self, user: int, rated: list[tuple[int, float]]) -> None:
        model: FactorModel = self.model  # type: ignore[assignment]
        items = np.array([i for i, _ in rated])
        q = model.item_factors_[items].astype(np.float64)
        residual = (
            np.array([r for _, r in rated]) - model.global_bias_ - model.user_bias_[user] - model.item_bias_[items]
        )
        reg = max(float(model.fold_in_reg), 1e-6) * (len(items) if model.fold_in_per_rating else 1)
        prior = model.user_factors_[user].astype(np.float64)
        system = q.T @ q + reg * np.eye(q.shape[1])
        model.user_factors_[user] = np.linalg.solve(system, q.T @ residual + reg * prior).astype(np.float32)

    def _history_of(self, index: int, overlay: _Overlay) -> History:
        seen = self.model.seen_[index].indices.tolist()
        already = set(seen)
        items = seen + [i for i in dict.fromkeys(overlay.items) if i not in already]
        known = dict(zip(overlay.items, overlay.ratings, strict=True))
        return History.from_items([items], self.model.n_items, ratings=[[known.get(i) for i in items]])

    # ------------------------------------------------------------------ helpers
    def _answer(self, scores: np.ndarray, k: int, exclude: np.ndarray | None, path: str) -> Answer:
        """Top-k of one row of scores, leaving out the item indices in `exclude`."""
        scores = np.array(scores, dtype=np.float32)
        if exclude is not None:
            scores[0, exclude] = -np.inf
        items, top = topk(scores, k)
        return Answer(self._rows(items[0], top[0]), path)

    def _popular(self, k: int, exclude: np.ndarray | None, why: str) -> Answer:
        answer = self._answer(self.popularity[None, :].astype(np.float32), k, exclude, "popularity")
        answer.note = why
        return answer

    def _rows(self, items: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        return [self._item_row(int(i), float(s)) for i, s in zip(items, scores, strict=True) if i >= 0]

    def _item_row(self, index: int, score: float | None = None) -> dict[str, Any]:
        out = {"item": self._ids[index], "title": self._titles[index], "genres": self._genres[index]}
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
