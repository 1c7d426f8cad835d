"""The model contract every recommender follows (LensKit/implicit style, adapted).

- Hyper-parameters live in a typed pydantic config (`Model.Config`), which round-trips to TOML/JSON.
- `fit(train, options)` learns from an `Interactions`; the seed, device and progress display come
  in `TrainOptions`, not in the config. Learned state ends with `_`.
- Scoring: `score(users)` scores known users from what the model learned; `score(users, history)`
  scores from interactions given at query time (new users, fresh interactions, the next-item
  protocol) for models that declare the `history` capability.
- `recommend` and `similar_items` are shared and built on one exact top-k kernel.
- State for artifacts is arrays plus JSON (`get_state`/`set_state`); nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict

from recforge.data.interactions import Interactions, Sequences
from recforge.data.vocabulary import Vocabulary
from recforge.errors import CapabilityError, ConfigError, NotFittedError
from recforge.retrieval.topk import batched, default_batch_size, mask_items, topk
from recforge.threads import denormals_flushed, thread_limit

# What a model can serve (RecTools/Cornac style). The router in `recforge.coldstart` reads these.
KNOWN_USERS = "known_users"  # users with training interactions
HISTORY = "history"  # users described only by interactions given at query time
USER_FEATURES = "user_features"  # users described only by features
ITEM_FEATURES = "item_features"  # items described only by features
ANONYMOUS = "anonymous"  # nobody at all: the same list for everyone
RATINGS = "ratings"  # predicts rating values (explicit feedback)
EMBEDDINGS = "embeddings"  # exposes user/item vectors whose inner product is the score


class ModelConfig(BaseModel):
    """Base of every model's hyper-parameter config: strict (unknown keys are errors) and immutable.

    Configs round-trip through TOML; TOML has no null, so fields set to None are listed under `__none__`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    def to_toml(self) -> str:
        import tomli_w

        nones: list[str] = []

        def strip(values: dict[str, Any], prefix: str) -> dict[str, Any]:  # TOML has no null: list the paths
            kept = {}
            for key, value in values.items():
                if value is None:
                    nones.append(prefix + key)
                else:
                    kept[key] = strip(value, f"{prefix}{key}.") if isinstance(value, dict) else value
            return kept

        payload = strip(self.model_dump(mode="json"), "")
        if nones:
            payload["__none__"] = sorted(nones)
        return tomli_w.dumps(payload)

    @classmethod
    def from_toml(cls, text: str) -> ModelConfig:
        from recforge._toml import loads

        payload = loads(text, f"{cls.__name__} TOML")
        for path in payload.pop("__none__", []):
            *parents, key = path.split(".")
            node = payload
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = None
        return cls.model_validate(payload)


def apply_preset(values: Any, presets: dict[str, dict[str, Any]], default: str, nested: tuple[str, ...] = ()) -> Any:
    """Merge a config's `preset` defaults under the values given explicitly (for `mode="before"` validators).

    Keys in `nested` hold sub-configs that merge key by key, so overriding one tower setting keeps the
    preset's others.
    """
    if not isinstance(values, dict):
        return values
    preset = values.get("preset", default)
    if preset is None:
        return values
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(presets)}")
    merged = {**presets[preset], **values}
    for key in nested:
        if isinstance(values.get(key), dict):
            merged[key] = {**presets[preset].get(key, {}), **values[key]}
    return merged


@dataclass
class TrainOptions:
    """How to train, as opposed to what to train: seed, device, progress bars, validation data."""

    seed: int = 0
    device: str = "cpu"
    progress: bool = False
    valid: Interactions | None = None
    # CPU threads for this fit; None = the policy of `recforge.threads` (RECFORGE_THREADS, OMP_NUM_THREADS, or
    # the cores free when the fit starts). The previous counts are restored when the fit ends.
    threads: int | None = None
    # neural models: write a checkpoint here after every epoch, and resume from it when one from the same
    # run (model, config, data, seed) exists — a killed run picks up where it stopped
    checkpoint_dir: str | None = None


@dataclass(frozen=True)
class History:
    """Interactions supplied at query time, one row per query.

    `binary` (n_queries, n_items) marks every item the query interacted with; `ratings` holds the
    rated ones (explicit value), or None when the source has no ratings; `sequences` lists each
    query's items in time order (for sequential models).
    """

    binary: sp.csr_matrix
    ratings: sp.csr_matrix | None
    sequences: Sequences

    def __len__(self) -> int:
        return self.binary.shape[0]

    @classmethod
    def from_interactions(cls, data: Interactions, users: np.ndarray) -> History:
        """The rows of `data` belonging to `users` (user indices of data's vocabulary), one query each."""
        users = np.asarray(users, dtype=np.int64)
        position = np.full(data.n_users, -1, dtype=np.int64)
        position[users] = np.arange(len(users))
        keep = position[data.user_index] >= 0
        part = data.subset(keep)
        query = position[part.user_index]
        remapped = Interactions(
            users=Vocabulary(np.arange(len(users)), "query"),
            items=data.items,
            user_index=query,
            item_index=part.item_index,
            rating=part.rating,
            timestamp=part.timestamp,
            rating_scale=data.rating_scale,
        )
        ratings = remapped.explicit().to_csr("rating") if remapped.rating is not None else None
        return cls(binary=remapped.to_csr("binary"), ratings=ratings, sequences=remapped.sequences())

    @classmethod
    def from_items(
        cls, item_lists: list[list[int]], n_items: int, ratings: list[list[float | None]] | None = None
    ) -> History:
        """Queries given as lists of item indices (in time order), with optional ratings (None = unrated)."""
        lengths = np.array([len(items) for items in item_lists], dtype=np.int64)
        indptr = np.r_[0, np.cumsum(lengths)]
        items = (
            np.concatenate([np.asarray(i, dtype=np.int64) for i in item_lists]) if indptr[-1] else np.zeros(0, np.int64)
        )
        if len(items) and (items.min() < 0 or items.max() >= n_items):
            raise ConfigError("history item index out of range")
        query = np.repeat(np.arange(len(item_lists)), lengths)
        binary = sp.csr_matrix((np.ones(len(items), np.float32), (query, items)), shape=(len(item_lists), n_items))
        binary.data[:] = 1.0
        rating_matrix = None
        if ratings is not None:
            values = np.array([np.nan if r is None else r for row in ratings for r in row], dtype=np.float32)
            if len(values) != len(items):
                raise ConfigError("ratings must match the item lists one for one")
            rated = ~np.isnan(values)
            # the latest rating of a repeated item wins: keep the last occurrence per (query, item)
            frame = pd.DataFrame({"q": query[rated], "i": items[rated], "r": values[rated]}).drop_duplicates(
                ["q", "i"], keep="last"
            )
            rating_matrix = sp.csr_matrix(
                (frame["r"].to_numpy(np.float32), (frame["q"].to_numpy(), frame["i"].to_numpy())),
                shape=(len(item_lists), n_items),
            )
        sequences = Sequences(indptr=indptr, items=items, rows=np.arange(len(items)))
        return cls(binary=binary, ratings=rating_matrix, sequences=sequences)

    def take(self, rows: np.ndarray | slice) -> History:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        starts = self.sequences.indptr[rows]
        lengths = self.sequences.indptr[rows + 1] - starts
        indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        positions = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths) + np.repeat(starts, lengths)
        sequences = Sequences(indptr=indptr, items=self.sequences.items[positions], rows=self.sequences.rows[positions])
        return History(self.binary[rows], None if self.ratings is None else self.ratings[rows], sequences)


@dataclass(frozen=True)
class Recommendations:
    """Top-k lists for a batch of queries: external ids and scores, plus the dense indices.

    `items`/`item_index`/`scores` are (n_queries, k); a short list is padded with item None / index -1 /
    score -inf. `served_by` says which path produced each list (model, history, popularity, ...).
    """

    users: np.ndarray
    item_index: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    served_by: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    def to_frame(self) -> pd.DataFrame:
        """Long frame: user, rank (1-based), item, score; padding is left out."""
        n, k = self.item_index.shape
        frame = pd.DataFrame(
            {
                "user": np.repeat(self.users, k),
                "rank": np.tile(np.arange(1, k + 1), n),
                "item": self.items.ravel(),
                "score": self.scores.ravel(),
            }
        )
        if len(self.served_by) == n:
            frame["served_by"] = np.repeat(self.served_by, k)
        return frame[self.item_index.ravel() >= 0].reset_index(drop=True)


class Recommender(ABC):
    """Base class of all recommenders. Subclasses set `name`, `Config`, `capabilities` and implement
    `_fit` and `_score_known` (plus `_score_history` / `_predict` / `item_vectors` when they can)."""

    name: ClassVar[str] = "recommender"
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({KNOWN_USERS})

    def __init__(self, config: ModelConfig | None = None, **params: Any) -> None:
        if config is not None and params:
            raise ConfigError("pass either a config object or keyword parameters, not both")
        if config is None:
            try:
                config = self.Config(**params)
            except Exception as exc:  # pydantic ValidationError names the field
                raise ConfigError(f"{self.name}: invalid parameters: {exc}") from exc
        self.config = config
        self.fitted_on_: str | None = None
        self.training_log_: list[dict[str, float]] = []
        self.fit_seconds_: float | None = None

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({params})"

    # ------------------------------------------------------------------ training
    def fit(self, train: Interactions, options: TrainOptions | None = None) -> Recommender:
        """Learn from `train`; remembers its vocabularies, seen items and fingerprint. Returns self."""
        options = options or TrainOptions()
        if len(train) == 0:
            raise ConfigError(f"{self.name}: cannot fit on empty data")
        started = time.perf_counter()
        self.users_ = train.users
        self.items_ = train.items
        self.seen_ = train.to_csr("binary")
        self.known_users_ = np.asarray(self.seen_.getnnz(axis=1) > 0)
        self.rating_scale_ = train.rating_scale
        self.training_log_ = []
        with thread_limit(options.threads, self.max_threads(train)) as threads, denormals_flushed():
            self._fit(train, dataclasses.replace(options, threads=threads))  # members of a blend inherit it
        self.fit_threads_ = threads
        self.fitted_on_ = train.fingerprint()
        self.fit_seconds_ = time.perf_counter() - started
        return self

    @abstractmethod
    def _fit(self, train: Interactions, options: TrainOptions) -> None: ...

    def max_threads(self, train: Interactions) -> int | None:
        """The most CPU threads this fit can use profitably (None: no limit); applies when the thread count
        is chosen automatically (see `recforge.threads`)."""
        return None

    def _require_fitted(self) -> None:
        if self.fitted_on_ is None:
            raise NotFittedError(f"{self.name} is not fitted; call fit() first")

    @property
    def n_items(self) -> int:
        self._require_fitted()
        return len(self.items_)

    @property
    def n_users(self) -> int:
        self._require_fitted()
        return len(self.users_)

    # ------------------------------------------------------------------ scoring
    def score(self, users: np.ndarray, history: History | None = None) -> np.ndarray:
        """Scores (len(users), n_items) float32. With `history`, score from the given interactions
        (row q of history belongs to users[q]); models without the history capability refuse."""
        self._require_fitted()
        users = np.asarray(users, dtype=np.int64)
        if history is None:
            if KNOWN_USERS not in self.capabilities:
                raise CapabilityError(self.ranking_refusal())
            return np.asarray(self._score_known(users), dtype=np.float32)
        if HISTORY not in self.capabilities:
            reason = self.ranking_refusal() if KNOWN_USERS not in self.capabilities else ""
            raise CapabilityError(reason or f"{self.name} cannot score from a query-time history")
        if len(history) != len(users):
            raise ConfigError("history must have one row per user")
        return np.asarray(self._score_history(history, users), dtype=np.float32)

    @abstractmethod
    def _score_known(self, users: np.ndarray) -> np.ndarray: ...

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        raise CapabilityError(f"{self.name} cannot score from a query-time history")

    def ranking_refusal(self) -> str:
        """Why this model (as configured) does not rank items for users, for models without KNOWN_USERS."""
        return f"{self.name} does not rank items for users"

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings for (user index, item index) pairs; only rating models implement this."""
        self._require_fitted()
        if RATINGS not in self.capabilities:
            raise CapabilityError(f"{self.name} does not predict ratings")
        return np.asarray(self._predict(np.asarray(users, np.int64), np.asarray(items, np.int64)), dtype=np.float32)

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise CapabilityError(f"{self.name} does not predict ratings")

    # ------------------------------------------------------------------ recommendations
    def recommend(
        self,
        users: np.ndarray | list[Any],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        history: History | None = None,
        external_ids: bool = True,
        batch_size: int | None = None,
    ) -> Recommendations:
        """Top-k for many users at once. `users` are external ids (or indices with external_ids=False).

        Seen items are the training interactions, or the history's items when a history is given.
        """
        self._require_fitted()
        index = self.users_.index(users) if external_ids else np.asarray(users, dtype=np.int64)
        batch_size = batch_size or default_batch_size(self.n_items)
        all_indices, all_scores = [], []
        for rows in batched(len(index), batch_size):
            part = None if history is None else history.take(rows)
            scores = self.score(index[rows], part)
            if exclude_seen:
                mask_items(
                    scores, self.seen_ if part is None else part.binary, None if part is not None else index[rows]
                )
            top_index, top_scores = topk(scores, k)
            all_indices.append(top_index)
            all_scores.append(top_scores)
        item_index = np.concatenate(all_indices) if all_indices else np.zeros((0, k), np.int64)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), np.float32)
        return self._package(
            np.asarray(users) if external_ids else self.users_.lookup(index),
            item_index,
            scores,
            "history" if history is not None else "model",
        )

    def _package(self, users: np.ndarray, item_index: np.ndarray, scores: np.ndarray, path: str) -> Recommendations:
        ids = self.items_.lookup(np.maximum(item_index, 0)).astype(object)
        ids[item_index < 0] = None
        return Recommendations(
            users=users,
            item_index=item_index,
            items=ids,
            scores=scores,
            served_by=np.full(len(users), path, dtype=object),
        )

    def item_vectors(self) -> np.ndarray | None:
        """(n_items, d) vectors for item-item similarity, or None if the model has none."""
        return None

    def similar_items(
        self, items: np.ndarray | list[Any], k: int = 10, *, external_ids: bool = True
    ) -> Recommendations:
        """The k most similar items to each given item (cosine of item vectors; the item itself excluded)."""
        self._require_fitted()
        index = self.items_.index(items) if external_ids else np.asarray(items, dtype=np.int64)
        similarity = self._item_similarity(index)
        similarity[np.arange(len(index)), index] = -np.inf
        top_index, top_scores = topk(similarity, k)
        return self._package(
            np.asarray(items) if external_ids else self.items_.lookup(index), top_index, top_scores, "similar"
        )

    def _item_similarity(self, items: np.ndarray) -> np.ndarray:
        vectors = self.item_vectors()
        if vectors is None:
            raise CapabilityError(f"{self.name} has no notion of item similarity")
        norms = np.linalg.norm(vectors, axis=1)
        norms[norms == 0] = 1.0
        unit = vectors / norms[:, None]
        return (unit[items] @ unit.T).astype(np.float32)

    # ------------------------------------------------------------------ state for artifacts
    def get_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays and JSON-able extras that, with the config, fully restore the fitted model."""
        self._require_fitted()
        arrays = {"seen.indptr": self.seen_.indptr, "seen.indices": self.seen_.indices}
        arrays.update(self._get_arrays())
        extras = {
            "fitted_on": self.fitted_on_,
            "rating_scale": self.rating_scale_,
            "training_log": self.training_log_,
            "users": self.users_.to_list(),
            "items": self.items_.to_list(),
        }
        extras.update(self._get_extras())
        return arrays, extras

    def set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> Recommender:
        self.users_ = Vocabulary(extras["users"], "user")
        self.items_ = Vocabulary(extras["items"], "item")
        indices = arrays["seen.indices"]
        self.seen_ = sp.csr_matrix(
            (np.ones(len(indices), np.float32), indices, arrays["seen.indptr"]),
            shape=(len(self.users_), len(self.items_)),
        )
        self.known_users_ = np.asarray(self.seen_.getnnz(axis=1) > 0)
        self.rating_scale_ = None if extras["rating_scale"] is None else tuple(extras["rating_scale"])
        self.training_log_ = extras.get("training_log", [])
        self.fitted_on_ = extras["fitted_on"]
        self._set_state(arrays, extras)
        return self

    def _get_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def _get_extras(self) -> dict[str, Any]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> None:
        return None

    def save(self, path: Any, extra_files: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None) -> Any:
        """Write a model artifact directory (see `recforge.artifacts`); `recforge.load` reads it back.
        `extra_files` maps file names to callables writing them (an ANN index, the item catalogue)."""
        from recforge.artifacts import write_artifact
        from recforge.errors import ArtifactError
        from recforge.models.registry import model_names

        if self.name not in model_names():
            raise ArtifactError(f"model {self.name!r} is not registered; register it to save it")
        arrays, state = self.get_state()
        return write_artifact(
            path,
            model=self.name,
            config=self.config.model_dump(mode="json"),
            data_fingerprint=self.fitted_on_,
            arrays=arrays,
            state=state,
            extra_files=extra_files,
            metadata=metadata,
        )
