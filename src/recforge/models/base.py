"""The model contract every recommender follows (LensKit/implicit style, adapted).

- Hyper-parameters live in a typed pydantic config (`Model.Config`), which round-trips to TOML/JSON.
- `fit(train, options)` learns from an `Interactions`; the seed, device and progress display come
  in `TrainOptions`, not in the config. Learned state ends with `_`.
- Scoring: `score(query)` / `recommend(query, k)` take a `Query` (known users, and/or a history given
  at query time, and/or user features; a plain array of user indices means known users).
  `recforge.coldstart` routes each row to the model's primitives (`_score_known`, `_score_history`,
  `_score_features`, `_score_anonymous`) or to popularity, by the capabilities the model declares,
  and every answer says which path served it and why.
- `recommend` and `similar_items` are shared and built on one exact top-k kernel.
- State for artifacts is arrays plus JSON (`get_state`/`set_state`); nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recforge import coldstart
from recforge.coldstart import ANONYMOUS, HISTORY, KNOWN_USERS, RATINGS, USER_FEATURES
from recforge.data.interactions import Interactions
from recforge.data.query import History, Query
from recforge.data.vocabulary import Vocabulary
from recforge.errors import (
    ArtifactError,
    CapabilityError,
    ConfigError,
    NonFiniteScoresError,
    NotFittedError,
    UnknownIdError,
)
from recforge.models.config import ModelConfig, TrainOptions
from recforge.retrieval.topk import batched, default_batch_size, mask_items, topk
from recforge.threads import denormals_flushed, thread_limit


@dataclass(frozen=True)
class Recommendations:
    """Top-k lists for a batch of queries: the one result type for top-k lists in recforge.

    `items`/`item_index`/`scores` are (n_queries, k); a short list is padded with item None / index -1 /
    score -inf. `served_by` (n_queries,) says which path produced each list (model, history, features,
    popularity, ... see `recforge.coldstart`) and `notes` (n_queries,) why, when there is something to say.
    """

    users: np.ndarray
    item_index: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    served_by: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    notes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    def __len__(self) -> int:
        return self.item_index.shape[0]

    def to_frame(self) -> pd.DataFrame:
        """Long frame: user, rank (1-based), item, score (and served_by); padding is left out. When some
        queries are new users (user None), a first column `query` says which row of the batch each list
        answers (0-based), since their user column cannot."""
        n, k = self.item_index.shape
        new_users = self.users.dtype == object and any(user is None for user in self.users)
        anonymous = {"query": np.repeat(np.arange(n), k)} if new_users else {}
        frame = pd.DataFrame(
            {
                **anonymous,
                "user": np.repeat(self.users, k),
                "rank": np.tile(np.arange(1, k + 1), n),
                "item": self.items.ravel(),
                "score": self.scores.ravel(),
            }
        )
        if len(self.served_by) == n:
            frame["served_by"] = np.repeat(self.served_by, k)
        return frame[self.item_index.ravel() >= 0].reset_index(drop=True)


log = logging.getLogger(__name__)
_WARNED_UNSCALED: set[str] = set()


def _warn_unscaled(name: str, fingerprint: str) -> None:
    """Once per data set (by the fingerprint the fit computed): a rating model fitted on ratings without a
    scale predicts unclipped values (RMSE cannot clip them either) and its service's page offers no stars."""
    if fingerprint not in _WARNED_UNSCALED:
        _WARNED_UNSCALED.add(fingerprint)
        log.warning(
            "%s: its ratings have no rating scale, so predictions are not clipped to one and the service's page "
            "offers no stars; load it with rating_scale=[low, high]",
            name,
        )


SHORT_RECOMMENDATIONS = "every other one is seen, excluded or not among the candidates"
SHORT_SIMILAR = "the catalogue has no other items"


def noting_short_lists(item_index: np.ndarray, notes: np.ndarray, reason: str = SHORT_RECOMMENDATIONS) -> np.ndarray:
    """`notes` with a word for every list padded below its width (-1 entries): a list shorter than asked
    for is not a fault to guess at (for recommendations everything else is seen, excluded, or outside the
    candidates; for similar items the catalogue is smaller than k + 1)."""
    found = (item_index >= 0).sum(axis=1)
    short = np.flatnonzero(found < item_index.shape[1])
    if not len(short):
        return notes
    notes = notes.copy()
    for row in short:
        why = f"only {found[row]} item(s) to list: {reason}"
        notes[row] = f"{notes[row]}; {why}" if notes[row] else why
    return notes


@dataclass(frozen=True)
class UserUpdate:
    """A known user's state after interactions added since training, computed without changing the model
    (`Recommender.update_user`): the items they have now (excluded from their lists) and what scoring
    needs — a refolded vector for factor models, else the history to score from (bounded)."""

    user: int
    items: np.ndarray  # sorted unique item indices: training plus added
    # the most recent items with their ratings (training order, then added): what history models score
    # from, and what a factor model's update is explained from (it scores from its vector)
    history: History | None = None
    vector: np.ndarray | None = None  # factor models: the user's vector (d,) after the update
    bias: float = 0.0


# a history model keeps this many of a user's most recent items after updates (older ones are dropped)
MAX_UPDATE_ITEMS = 1000


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
            config = self.Config.from_params(self.name, params)
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
        self.rated_ = bool(train.n_rated)  # trained on ratings: a rating written later has a meaning
        self.training_log_ = []
        with thread_limit(options.threads, self.max_threads(train)) as threads, denormals_flushed():
            self._fit(train, dataclasses.replace(options, threads=threads))  # members of a blend inherit it
        self.seen_ratings_ = self._seen_ratings(train)
        self.fit_threads_ = threads
        self.fitted_on_ = train.fingerprint()
        self.fit_seconds_ = time.perf_counter() - started
        if RATINGS in self.capabilities and self.rated_ and train.rating_scale is None:
            _warn_unscaled(train.name, self.fitted_on_)
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
    def new_users(
        self,
        item_lists: list[list[Any]] | None = None,
        ratings: list[list[float | None]] | None = None,
        features: pd.DataFrame | None = None,
    ) -> Query:
        """Queries for users this model was not trained with, from the items each has (external item ids,
        in time order; ratings optional, None = unrated), their user features (one frame row each, for models
        with a user-feature tower; None values unknown), or both: `model.recommend(model.new_users([[50,
        172]]))`. An unknown item id raises, naming it."""
        self._require_fitted()
        if item_lists is None and features is None:
            raise ConfigError("new_users needs item lists, features, or both")
        if item_lists is None:
            item_lists = [[] for _ in range(len(features))]  # type: ignore[arg-type]
        if ratings is not None and [len(r) for r in ratings] != [len(items) for items in item_lists]:
            raise ConfigError("ratings must have one list per user, as long as that user's items")
        indices = [self.items_.index(list(items)).tolist() if len(items) else [] for items in item_lists]
        history = History.from_items(indices, self.n_items, ratings)
        return Query.from_history(history) if features is None else Query.from_features(features, history)

    def as_query(self, query: Query | np.ndarray | list[int], history: History | None = None) -> Query:
        """A `Query` from a Query, or from user indices (plus an optional history, one row per user)."""
        if isinstance(query, Query):
            if history is not None:
                raise ConfigError("pass the history inside the Query, not beside it")
            return query
        users = np.asarray(query, dtype=np.int64)
        if history is not None and len(history) != len(users):
            raise ConfigError("history must have one row per user")
        return Query(users, history)

    def score(self, query: Query | np.ndarray | list[int], history: History | None = None) -> np.ndarray:
        """Scores (n_queries, n_items) float32, each row from the path `recforge.coldstart` routes it to.
        `query` is a `Query`, or user indices (known users; with `history`, scored from that history)."""
        return self.score_routed(query, history)[0]

    def score_routed(
        self, query: Query | np.ndarray | list[int], history: History | None = None
    ) -> tuple[np.ndarray, coldstart.Routing]:
        """`score` plus the routing: which path served each row and why."""
        self._require_fitted()
        query = self.as_query(query, history)
        if not (self.capabilities & {KNOWN_USERS, HISTORY, USER_FEATURES, ANONYMOUS}):
            raise CapabilityError(self.ranking_refusal())
        self._check_users(query.users)
        scores, routing = coldstart.score(self, query)
        # max propagates NaN: one reduction per row, where isnan().any() wrote a bool matrix of the scores' size
        self._refuse_nan(np.isnan(scores.max(axis=1)), query.users, "scored")
        return scores, routing

    def _refuse_nan(self, bad: np.ndarray, users: np.ndarray, what: str) -> None:
        """Raise when any row is flagged `bad` (holds NaN): a NaN would rank first in top-k, or break a
        JSON answer, where an error names the model and the first user it failed for."""
        if bad.any():
            first = int(np.asarray(users)[np.flatnonzero(bad)[0]])
            raise NonFiniteScoresError(
                f"{self.name} {what} NaN for {int(bad.sum())} of {len(bad)} queries (first: user index {first}; "
                "-1 = a query without a known user): its parameters or that query's inputs are not finite"
            )

    def _check_users(self, users: np.ndarray) -> None:
        bad = (users < -1) | (users >= self.n_users)
        if bad.any():
            raise UnknownIdError(f"user index {int(users[bad][0])} is outside 0..{self.n_users - 1} (-1 = no user)")

    @abstractmethod
    def _score_known(self, users: np.ndarray) -> np.ndarray:
        """(len(users), n_items) scores of users the model was trained on."""

    def _score_history(self, history: History, users: np.ndarray) -> np.ndarray:
        """Scores from interactions given at query time (models with the HISTORY capability)."""
        raise CapabilityError(f"{self.name} cannot score from a query-time history")

    def _score_leaving_out(self, history: History, left_out: np.ndarray, without: Callable[[], History]) -> np.ndarray:
        """(len(left_out), n_items): `history`'s scores (one row, at least two distinct items) with each of
        `left_out` (item indices in it) left out in turn, as `_score_history` scores `without()` — those
        histories, built only when a model needs them. What explanations measure; a model with an exact
        cheaper rule overrides it (linear models: the full scores minus the left-out item's weight row)."""
        return self._score_history(without(), np.full(len(left_out), -1))

    def _score_features(self, features: pd.DataFrame, history: History | None) -> np.ndarray:
        """Scores of users described by features, and their history when given (USER_FEATURES models)."""
        raise CapabilityError(f"{self.name} has no user-feature tower")

    def _score_anonymous(self, n: int) -> np.ndarray:
        """The list for someone the model knows nothing about (ANONYMOUS models: the baselines)."""
        raise CapabilityError(f"{self.name} does not serve anonymous users")

    def popularity_scores(self, n: int) -> np.ndarray:
        """(n, n_items) log(1 + training interactions) per item: the cold-start fallback."""
        self._require_fitted()
        counts = np.asarray(self.seen_.sum(axis=0), dtype=np.float32).ravel()
        return np.broadcast_to(np.log1p(counts), (n, self.n_items)).copy()

    def ranking_refusal(self) -> str:
        """Why this model (as configured) does not rank items for users, for models without KNOWN_USERS."""
        return f"{self.name} does not rank items for users"

    def predict(self, users: np.ndarray, items: np.ndarray, history: Interactions | None = None) -> np.ndarray:
        """Predicted ratings for (user index, item index) pairs; only rating models implement this.

        Routed like `score` (`recforge.coldstart`): a user with rows in `history` (interactions given at
        query time, e.g. a user-disjoint split's fold-in part) is predicted from them; a user the model
        was trained on from the model; a user with neither gets the cold-start rating (`_predict_cold`:
        μ + b_i for biased models)."""
        self._require_fitted()
        if RATINGS not in self.capabilities:
            raise CapabilityError(f"{self.name} does not predict ratings")
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        self._check_users(users)
        distinct = np.unique(users)
        query = Query.from_interactions(history, distinct) if history is not None else Query.known(distinct)
        predictions = np.asarray(coldstart.predict(self, users, items, query)[0], dtype=np.float32)
        self._refuse_nan(np.isnan(predictions), users, "predicted")
        return predictions

    def predict_query(self, query: Query, items: np.ndarray | list[int]) -> tuple[np.ndarray, coldstart.Routing]:
        """Predicted ratings of `items` (item indices) for the one user `query` describes — a new user's
        history, features or both, as `new_users` builds it — routed like `predict`, with the routing (which
        path served, and why): `model.predict_query(model.new_users([[50, 172]], [[5, 4]]), [181])`."""
        self._require_fitted()
        if RATINGS not in self.capabilities:
            raise CapabilityError(f"{self.name} does not predict ratings")
        if len(query) != 1:
            raise ConfigError(f"predict_query takes one user's query, got {len(query)} rows")
        index = self._item_positions(items, external_ids=False)
        self._check_users(query.users)
        predicted, routing = coldstart.predict(self, np.repeat(query.users, len(index)), index, query)
        predictions = np.asarray(predicted, dtype=np.float32)
        self._refuse_nan(np.isnan(predictions).any(keepdims=True), query.users, "predicted")
        return predictions, routing

    def _predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise CapabilityError(f"{self.name} does not predict ratings")

    def _predict_cold(self, items: np.ndarray) -> np.ndarray:
        """Ratings for a user of whom nothing is known: by default the model's own history path given an
        empty history (fold-in of nothing: μ + b_i for biased factor models)."""
        if HISTORY not in self.capabilities:
            raise CapabilityError(f"{self.name} cannot predict ratings for a user without training data or history")
        return self._score_history(History.empty(1, self.n_items), np.array([-1]))[0, items]

    # ------------------------------------------------------------------ recommendations
    def recommend(
        self,
        users: Query | np.ndarray | list[Any] | Any,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        history: History | None = None,
        external_ids: bool = True,
        batch_size: int | None = None,
        candidates: np.ndarray | list[Any] | None = None,
        exclude_items: np.ndarray | list[Any] | None = None,
    ) -> Recommendations:
        """Top-k for many queries at once: a `Query`, or users as external ids (indices with
        external_ids=False; one id alone is one user), optionally with a `history` (one row per user).

        Seen items (with exclude_seen) are a known user's training interactions plus the items of the
        query's history. Business rules: only `candidates` may be recommended (e.g. one category, what is
        in stock) and never `exclude_items` (item ids, indices with external_ids=False); a list shorter
        than k is padded, never filled with other items. Each list says which path served it
        (`served_by`) and why (`notes`).
        """
        self._require_fitted()
        query, labels = self.query_and_labels(users, history, external_ids)
        blocked = self.blocked_items(candidates, exclude_items, external_ids)
        batch_size = batch_size or default_batch_size(self.n_items)
        all_indices, all_scores, paths, notes = [], [], [], []
        for rows in batched(len(query), batch_size):
            part = query.take(rows) if len(query) > batch_size else query
            scores, routing = self.score_routed(part)
            if exclude_seen:
                mask_items(scores, self.seen_by(part))
            if blocked is not None:
                scores[:, blocked] = -np.inf
            top_index, top_scores = topk(scores, k)
            all_indices.append(top_index)
            all_scores.append(top_scores)
            paths.append(routing.paths)
            notes.append(routing.notes)
        width = min(k, self.n_items)
        item_index = np.concatenate(all_indices) if all_indices else np.zeros((0, width), np.int64)
        scores = np.concatenate(all_scores) if all_scores else np.zeros((0, width), np.float32)
        return self._package(
            labels,
            item_index,
            scores,
            np.concatenate(paths) if paths else np.zeros(0, object),
            np.concatenate(notes) if notes else np.zeros(0, object),
        )

    def blocked_items(self, candidates: Any, exclude_items: Any, external_ids: bool = True) -> np.ndarray | None:
        """(n_items,) True for items a list may not hold: outside `candidates` (when given) or in
        `exclude_items`; None when neither is given. Unknown ids raise UnknownIdError."""
        if candidates is None and exclude_items is None:
            return None
        blocked = np.zeros(self.n_items, dtype=bool)
        if candidates is not None:
            blocked[:] = True
            blocked[self._item_positions(candidates, external_ids)] = False
        if exclude_items is not None:
            blocked[self._item_positions(exclude_items, external_ids)] = True
        return blocked

    def _item_positions(self, items: Any, external_ids: bool) -> np.ndarray:
        if external_ids:
            return self.items_.index(list(items))
        index = np.asarray(items, dtype=np.int64)
        if len(index) and (index.min() < 0 or index.max() >= self.n_items):
            raise ConfigError(f"item indices must lie in [0, {self.n_items}), got {index.min()}..{index.max()}")
        return index

    def query_and_labels(
        self, users: Query | np.ndarray | list[Any], history: History | None, external_ids: bool
    ) -> tuple[Query, np.ndarray]:
        """A `recommend` call's query and the user label of each row (external ids; None for a row that
        names no known user)."""
        if isinstance(users, Query):
            query = self.as_query(users, history)
            return query, np.where(query.users >= 0, self.users_.lookup(np.maximum(query.users, 0)), None)
        if np.isscalar(users) or isinstance(users, str):
            users = [users]  # model.recommend(1): one user
        index = self.users_.index(users) if external_ids else np.asarray(users, dtype=np.int64)
        labels = np.asarray(users) if external_ids else self.users_.lookup(index)
        return self.as_query(index, history), labels

    # ------------------------------------------------------------------ updates without retraining
    def update_user(self, user: int, added: History, previous: UserUpdate | None = None) -> UserUpdate:
        """The state of known user `user` after the interactions in `added` (one row), on top of an earlier
        update. History models keep the user's most recent MAX_UPDATE_ITEMS items (training first, then
        added) and score from them; models without the HISTORY capability cannot take updates."""
        self._require_fitted()
        if HISTORY not in self.capabilities:
            raise CapabilityError(f"{self.name} cannot take new interactions without retraining")
        history = self._history_after(user, added, previous)
        return UserUpdate(user, self._items_after(user, added, previous), history=history)

    def start_user(self, added: History, previous: UserUpdate | None = None) -> UserUpdate:
        """The state of a user this model was not trained with (`user` -1), after the interactions in
        `added` on top of those written for them before: scored by the model's history path for unknown
        users (fold-in, towers, item-item, sequence), from their most recent MAX_UPDATE_ITEMS items."""
        self._require_fitted()
        if HISTORY not in self.capabilities:
            raise CapabilityError(f"{self.name} cannot score a user it was not trained with from interactions")
        before = previous.history if previous is not None else History.from_items([[]], self.n_items)
        history = self._merged_history(before, added)
        items = np.union1d(before.row_items(0), added.row_items(0)).astype(np.int64)
        return UserUpdate(-1, items, history=history)

    def _history_after(self, user: int, added: History, previous: UserUpdate | None) -> History:
        """A known user's history after `added`: on top of the previous update's, else their training one."""
        before = previous.history if previous is not None and previous.history is not None else None
        return self._merged_history(self.training_history(user) if before is None else before, added)

    def _merged_history(self, before: History, added: History) -> History:
        """One history row: `before`'s items then `added`'s, the most recent occurrence of each item kept
        (in that order) with its rating, at most MAX_UPDATE_ITEMS of the newest."""
        items = np.concatenate([before.row_items(0), added.row_items(0)])
        ratings = before.row_ratings(0) + added.row_ratings(0)
        order = items[::-1]  # the most recent occurrence of each item wins, order kept
        _, first = np.unique(order, return_index=True)
        keep = np.sort(len(items) - 1 - first)[-MAX_UPDATE_ITEMS:]
        return History.from_items([items[keep].tolist()], self.n_items, [[ratings[i] for i in keep]])

    def extend_items(self, ids: list[Any], features: pd.DataFrame) -> Recommender:
        """A new model with brand-new items described by features appended (models with an item-feature
        tower); this model is left unchanged."""
        raise CapabilityError(f"{self.name} cannot embed items from features; retrain to add items")

    def _seen_ratings(self, train: Interactions) -> np.ndarray | None:
        """For rating models that score histories: each seen entry's latest rating (NaN where unrated), on
        `seen_`'s pattern, so a known user's training history carries the ratings its fold-in reads (and
        their recommendations can be explained); None for other models."""
        if not {RATINGS, HISTORY} <= self.capabilities or not train.n_rated:
            return None
        users, items, ratings = train.rated_triples(self.name)
        n_users, n_items = self.seen_.shape
        rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(self.seen_.indptr))
        seen_keys = rows * n_items + self.seen_.indices  # canonical CSR: sorted
        aligned = np.full(self.seen_.nnz, np.nan, dtype=np.float32)
        aligned[np.searchsorted(seen_keys, users * n_items + items)] = ratings
        return aligned

    @property
    def keeps_time_order(self) -> bool:
        """True when `training_history` gives a user's items in time order (sequence models, EASE with
        `history_decay`): scoring depends on it, and an update must append to it."""
        return False

    def training_history(self, user: int) -> History:
        """A known user's training interactions as a one-row History (item index order; models that keep
        the time order override this, and `keeps_time_order`)."""
        row = slice(self.seen_.indptr[user], self.seen_.indptr[user + 1])
        ratings = None if self.seen_ratings_ is None else [self.seen_ratings_[row].tolist()]
        return History.from_items([self.seen_.indices[row].tolist()], self.n_items, ratings)

    def score_updated(self, update: UserUpdate) -> np.ndarray:
        """(1, n_items) scores of a user after `update`: from the updated history (factor models: vector)."""
        return self.score(Query(np.array([update.user]), update.history))

    def _items_after(self, user: int, added: History, previous: UserUpdate | None) -> np.ndarray:
        before = (
            previous.items
            if previous is not None
            else self.seen_.indices[self.seen_.indptr[user] : self.seen_.indptr[user + 1]]
        )
        return np.union1d(before, added.row_items(0)).astype(np.int64)

    def seen_by(self, query: Query) -> sp.csr_matrix:
        """(n_queries, n_items) binary: each row's training items (known users) plus its history's items."""
        known = np.flatnonzero(query.users >= 0)
        if len(known) == len(query):
            seen = self.seen_[query.users]
        else:  # a selection matrix: known users' rows, empty rows for the others
            ones = np.ones(len(known), dtype=np.float32)
            selector = sp.csr_matrix((ones, (known, query.users[known])), shape=(len(query), self.n_users))
            seen = (selector @ self.seen_).tocsr()
        if query.history is not None:
            seen = (seen + query.history.binary).tocsr()
        return seen

    def _package(
        self,
        users: np.ndarray,
        item_index: np.ndarray,
        scores: np.ndarray,
        paths: Any,
        notes: Any = None,
        short: str = SHORT_RECOMMENDATIONS,
    ) -> Recommendations:
        ids = self.items_.lookup(np.maximum(item_index, 0)).astype(object)
        ids[item_index < 0] = None
        n = len(users)
        paths = np.full(n, paths, dtype=object) if isinstance(paths, str) else np.asarray(paths, dtype=object)
        notes = np.full(n, "", dtype=object) if notes is None else np.asarray(notes, dtype=object)
        notes = noting_short_lists(item_index, notes, short)
        return Recommendations(
            users=np.asarray(users), item_index=item_index, items=ids, scores=scores, served_by=paths, notes=notes
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
        queries = np.asarray(items) if external_ids else self.items_.lookup(index)
        return self._package(queries, top_index, top_scores, "similar", short=SHORT_SIMILAR)

    def explain(
        self,
        user: Any,
        items: np.ndarray | list[Any],
        top: int = 3,
        *,
        history: History | None = None,
        external_ids: bool = True,
    ) -> pd.DataFrame:
        """Why each of `items` suits `user`: the `top` items of their history whose removal lowers its score
        most (`recforge.models.explain`). A known user is explained from their training history; for
        anyone else pass `history` (one row) and user=None. A frame of item, rank, because, weight (the
        score it would lose), ids external unless external_ids=False."""
        from recforge.models.explain import explain_history

        self._require_fitted()
        index = self.items_.index(items) if external_ids else np.asarray(items, dtype=np.int64)
        if history is None:
            if user is None:
                raise ConfigError("explain needs a known user or a history")
            user_index = int(self.users_.index(user)[0]) if external_ids else int(user)
            self._check_users(np.array([user_index]))
            history = self.training_history(user_index)
        reasons = explain_history(self, history, index, top)
        label = self.items_.lookup if external_ids else (lambda x: x)
        rows = [
            (item, rank, reason.item, reason.weight)
            for item, listed in zip(label(index), reasons, strict=True)
            for rank, reason in enumerate(listed, 1)
        ]
        frame = pd.DataFrame(rows, columns=["item", "rank", "because", "weight"])
        if external_ids and len(frame):
            frame["because"] = self.items_.lookup(frame["because"].to_numpy())
        return frame

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
        if self.seen_ratings_ is not None:
            arrays["seen.ratings"] = self.seen_ratings_
        arrays.update(self._get_arrays())
        extras = {
            "fitted_on": self.fitted_on_,
            "rating_scale": self.rating_scale_,
            "rated": self.rated_,
            "training_log": self.training_log_,
            "users": self.users_.to_list(),
            "items": self.items_.to_list(),
        }
        extras.update(self._get_extras())
        return arrays, extras

    def set_state(self, arrays: dict[str, np.ndarray], extras: dict[str, Any]) -> Recommender:
        self.users_ = Vocabulary(extras["users"], "user")
        self.items_ = Vocabulary(extras["items"], "item")
        ones = np.ones(len(arrays["seen.indices"]), np.float32)
        self.seen_ = stored_csr(arrays, "seen", (len(self.users_), len(self.items_)), data=ones)
        self.known_users_ = np.asarray(self.seen_.getnnz(axis=1) > 0)
        self.seen_ratings_ = arrays.get("seen.ratings")  # absent in artifacts of other models (and older ones)
        if self.seen_ratings_ is not None and len(self.seen_ratings_) != self.seen_.nnz:
            raise ArtifactError(f"seen.ratings has {len(self.seen_ratings_)} values for {self.seen_.nnz} seen entries")
        self.rating_scale_ = None if extras["rating_scale"] is None else tuple(extras["rating_scale"])
        self.rated_ = bool(extras.get("rated", True))  # artifacts before 2026-12-03: as if rated (writes allowed)
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

    def save(
        self,
        path: Any,
        extra_files: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        catalogue: Any = None,
    ) -> Any:
        """Write a model artifact directory (see `recforge.artifacts`); `recforge.load` reads it back.
        `extra_files` maps file names to callables writing them (an ANN index). `catalogue` — the
        Interactions the model was fitted on, or a frame of item_id, title, genres — stores the item
        titles and genres the service, its page and `recforge recommend`/`similar` show (and find items by)."""
        from recforge.artifacts import write_artifact
        from recforge.data.catalogue import ITEMS_FILE, item_metadata
        from recforge.models.registry import model_names

        if self.name not in model_names():
            raise ArtifactError(f"model {self.name!r} is not registered; register it to save it")
        items = item_metadata(catalogue) if catalogue is not None else None
        if items is not None:
            extra_files = {**(extra_files or {}), ITEMS_FILE: lambda target: items.to_parquet(target, index=False)}
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


def csr_arrays(name: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as the three arrays an artifact stores (`<name>.data`, `.indices`, `.indptr`); read back
    with `stored_csr`."""
    return {f"{name}.data": matrix.data, f"{name}.indices": matrix.indices, f"{name}.indptr": matrix.indptr}


def stored_csr(
    arrays: dict[str, np.ndarray], name: str, shape: tuple[int, int], data: np.ndarray | None = None
) -> sp.csr_matrix:
    """The CSR matrix an artifact stores as `<name>.data`, `<name>.indices` and `<name>.indptr` (or with
    `data` given, e.g. ones), checked in full against `shape`: an index out of range or a malformed
    indptr would otherwise reach scipy's compiled loops unchecked."""
    values = arrays[f"{name}.data"] if data is None else data
    try:
        matrix = sp.csr_matrix((values, arrays[f"{name}.indices"], arrays[f"{name}.indptr"]), shape=shape)
        matrix.check_format(full_check=True)
    except ValueError as exc:
        raise ValueError(f"the stored {name} matrix does not fit its {shape[0]} x {shape[1]} shape ({exc})") from exc
    return matrix
