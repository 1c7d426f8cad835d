"""Which path serves each query, and why: the one home of cold-start routing for the library, the
evaluator and the service alike.

Models declare what they can serve (RecTools/Cornac style) with the capability names below, and
implement the matching scoring primitives (`_score_known`, `_score_history`, `_score_features`,
`_score_anonymous`). For every row of a `Query`, in this order:

1. user features given and the model has a user-feature tower (USER_FEATURES) -> "features", or
   "features+history" when the row also carries interactions (the tower reads both);
2. interactions given and the model scores histories (HISTORY) -> "history" (fold-in, weighted
   average, item-item, the sequence, ...). A known user with fresh interactions takes this path too,
   so what they just did counts;
3. a user the model was trained on (KNOWN_USERS) -> "model", its trained state;
4. a model that serves everyone the same list (ANONYMOUS: the baselines) -> "model";
5. otherwise -> "popularity": the training interactions' most popular items, with the reason.

Input a path cannot use is named in the row's note ("features ignored: ...", "history not used: ..."),
never dropped silently; so are feature values a user-feature tower reads as unknown (USER_FEATURES models
implement `unseen_feature_values`). `score` fills one (n, n_items) block, calling each primitive once for its rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recforge.data.query import Query

# What a model can serve. A model's `capabilities` is a frozenset of these names.
KNOWN_USERS = "known_users"  # users with training interactions
HISTORY = "history"  # users described by interactions given at query time
USER_FEATURES = "user_features"  # users described by features (a user-feature tower)
ITEM_FEATURES = "item_features"  # items described only by features (new items through an item tower)
ANONYMOUS = "anonymous"  # nobody at all: the same list for everyone (baselines)
RATINGS = "ratings"  # predicts rating values (explicit feedback)
EMBEDDINGS = "embeddings"  # exposes user/item vectors whose inner product is the score

MODEL, HISTORY_PATH, FEATURES, FEATURES_HISTORY, POPULARITY = (
    "model",
    "history",
    "features",
    "features+history",
    "popularity",
)


@dataclass(frozen=True)
class Routing:
    """Per query row: the path that serves it and a note (empty when there is nothing to say)."""

    paths: np.ndarray  # (n,) object
    notes: np.ndarray  # (n,) object

    def rows(self, path: str) -> np.ndarray:
        return np.flatnonzero(self.paths == path)


def route(model: Any, query: Query) -> Routing:
    """The path of every row of `query` for a fitted `model` (see the module docstring for the order)."""
    capabilities = model.capabilities
    n = len(query)
    in_vocabulary, known = _known(model, query.users)
    has_history, has_features = query.has_history(), query.has_features()
    paths = np.full(n, POPULARITY, dtype=object)
    notes = np.full(n, "", dtype=object)

    if USER_FEATURES in capabilities:
        by_features = has_features
        paths[by_features] = np.where(has_history[by_features], FEATURES_HISTORY, FEATURES)
        rows = np.flatnonzero(by_features)
        if len(rows):  # a typo or a category new since training must not pass for a value the tower used
            unseen = model.unseen_feature_values(query.features.iloc[rows], "user")  # type: ignore[union-attr]
            for row, values in zip(rows, unseen, strict=True):
                if values:  # rows start without a note here
                    notes[row] = unknown_values_note(values)
    else:
        by_features = np.zeros(n, dtype=bool)
        _note(notes, has_features, f"features ignored: {model.name} has no user-feature tower")
    open_rows = ~by_features
    if HISTORY in capabilities:
        paths[open_rows & has_history] = HISTORY_PATH
        open_rows &= ~has_history
    else:
        _note(notes, open_rows & has_history, f"history not used: {model.name} cannot score a query-time history")
    if KNOWN_USERS in capabilities:
        paths[open_rows & known] = MODEL
        open_rows &= ~known
    if ANONYMOUS in capabilities:
        paths[open_rows] = MODEL
        _note(notes, open_rows, "the same list for every user")
        open_rows[:] = False
    why = np.select(
        [has_history, in_vocabulary, has_features],
        [
            f"popularity: {model.name} cannot score a history",
            "popularity: the user has no training interactions",
            "popularity: no usable description of the user",
        ],
        "popularity: no history given",
    )
    for reason in np.unique(why[open_rows]):
        _note(notes, open_rows & (why == reason), str(reason))
    return Routing(paths, notes)


def score(model: Any, query: Query) -> tuple[np.ndarray, Routing]:
    """Scores (n, n_items) float32 for every row of `query`, each from its routed path, and the routing."""
    routing = route(model, query)
    out = np.empty((len(query), model.n_items), dtype=np.float32)
    for path in (MODEL, HISTORY_PATH, FEATURES, FEATURES_HISTORY, POPULARITY):
        rows = routing.rows(path)
        if not len(rows):
            continue
        part = query.take(rows) if len(rows) < len(query) else query
        out[rows] = _score_path(model, path, part)
    return out, routing


def predict(model: Any, users: np.ndarray, items: np.ndarray, query: Query) -> tuple[np.ndarray, Routing]:
    """Predicted ratings of (user, item) pairs, each user served by its routed path. `query` describes
    the distinct users (`query.users` sorted, covering `users`). Known users and the baselines use the
    model's own `_predict`; users described by a history or features are scored by that path and read at
    the pair's item; users with nothing get the model's cold-start rating (`_predict_cold`), never the
    popularity scores a ranking falls back to, which are not ratings."""
    routing = route(model, query)
    # a trained user's ratings come from the model even when it does not rank (a rating-only KNN)
    _, known = _known(model, query.users)
    routed = np.where((routing.paths == POPULARITY) & known, MODEL, routing.paths)
    routing = Routing(routed, np.where(routed == routing.paths, routing.notes, ""))
    row = np.searchsorted(query.users, users)
    out = np.empty(len(users), dtype=np.float64)
    paths = routing.paths[row]
    for path in np.unique(paths):
        pairs = np.flatnonzero(paths == path)
        if path == MODEL:
            out[pairs] = model._predict(users[pairs], items[pairs])
        elif path == POPULARITY:
            out[pairs] = model._predict_cold(items[pairs])
        else:
            rows = routing.rows(path)
            for start in range(0, len(rows), PREDICT_BATCH):  # at most PREDICT_BATCH x n_items scores at once
                block_rows = rows[start : start + PREDICT_BATCH]
                block = _score_path(model, path, query.take(block_rows))
                inside = pairs[np.isin(row[pairs], block_rows)]
                out[inside] = block[np.searchsorted(block_rows, row[inside]), items[inside]]
    return out, routing


PREDICT_BATCH = 1024


def _score_path(model: Any, path: str, part: Query) -> np.ndarray:
    if path == MODEL:
        _, known = _known(model, part.users)
        if known.all():
            return model._score_known(part.users)
        block = np.empty((len(part), model.n_items), dtype=np.float32)
        if known.any():
            block[known] = model._score_known(part.users[known])
        block[~known] = model._score_anonymous(int((~known).sum()))
        return block
    if path == HISTORY_PATH:
        return model._score_history(part.history, part.users)
    if path in (FEATURES, FEATURES_HISTORY):
        return model._score_features(part.features, part.history if path == FEATURES_HISTORY else None)
    return model.popularity_scores(len(part))


def _known(model: Any, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows name a user index of the model's vocabulary, and which of those it was trained on."""
    in_vocabulary = (users >= 0) & (users < len(model.known_users_))
    known = np.zeros(len(users), dtype=bool)
    known[in_vocabulary] = model.known_users_[users[in_vocabulary]]
    return in_vocabulary, known


def unknown_values_note(values: list[str]) -> str:
    """The note for feature values a tower reads as unknown ("occupation 'astronaut'", ...)."""
    return f"read as unknown, not among the values the model was trained with: {', '.join(values)}"


def _note(notes: np.ndarray, mask: np.ndarray, text: str) -> None:
    """Add `text` to the notes of the rows in `mask` (joined with "; " after an earlier note)."""
    if not mask.any():
        return
    current = notes[mask]
    notes[mask] = np.where(current == "", text, current.astype(str) + "; " + text)
