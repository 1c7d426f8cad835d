"""Why an item was recommended: which of the user's items it owes its score to.

An item's explanation is leave-one-out over the history the model scores from: for each history item j,
how much the recommended item's score falls when j is left out (score(history) - score(history \\ j)).
One rule for every model that scores histories: for models linear in the history (EASE, SLIM, item KNN,
RP3β) it is exactly the item-item weight times j's query weight; for iALS it includes how leaving j out
re-weights the others (Hu, Koren & Volinsky 2008 explain iALS by a related per-item sum); for a blend it is
measured on the blended score; for sequence models it is the item's effect at its place in the sequence.
Models that score users only from a trained state (user KNN, popularity) have nothing to attribute.

Each model measures the histories with an item left out by `Recommender._score_leaving_out`: in general
by scoring each shorter history; linear models and iALS have exact rules that cost one scoring in all.
Long histories are narrowed first (more than EXACT_UP_TO items: the SCREEN most similar to each
recommended item by the model's item similarity), then measured exactly; docs/serving.md has the costs and
how often narrowing changes the reasons.

A known user is explained from their training history (the newest 1,000 items are candidates), scored
by the model's history path: exact for item-item models, a fold-in for factor models, whose served list
comes from the vector learned in training (the two rank alike but are not equal).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from recforge.coldstart import HISTORY
from recforge.data.query import History
from recforge.errors import CapabilityError, ConfigError

MAX_CELLS = 1 << 24  # scores held at once while leaving items out (64 MB of float32)
EXACT_UP_TO = 300  # history items measured without screening
SCREEN = 100  # beyond that, the history items most similar to each recommended item that are measured


@dataclass(frozen=True)
class Reason:
    """One history item behind a recommendation: its index and how much the score falls without it."""

    item: int
    weight: float


def explain_history(
    model: Any,
    history: History,
    items: np.ndarray,
    top: int = 3,
    max_items: int = 1000,
    exact_up_to: int | None = EXACT_UP_TO,
    screen: int = SCREEN,
) -> list[list[Reason]]:
    """For each of `items` (indices), the `top` items of `history` (one row) whose removal lowers its score
    most, largest first; items that would not lose score leave no reason (an empty list when none do), and
    an item already in the history is never its own reason.
    The newest `max_items` history items are candidates (older ones are kept in every scored history).
    More than `exact_up_to` candidates (None: no limit) are first narrowed to the `screen` most similar to
    each item by the model's own item similarity (or, without one, to the newest `exact_up_to`); each
    candidate left is then measured exactly."""
    if HISTORY not in model.capabilities:
        raise CapabilityError(
            f"{model.name} scores users from their trained state only, so it cannot say which of their "
            "items led to a recommendation"
        )
    if len(history) != 1:
        raise ConfigError("explain one history at a time")
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    items = np.asarray(items, dtype=np.int64)
    sequence = history.sequences.items[history.sequences.indptr[0] : history.sequences.indptr[1]]
    ratings = None if history.ratings is None else np.array(history.row_ratings(0), dtype=object)
    candidates = np.unique(sequence)
    leaves_some = len(candidates) > 1  # leaving one out leaves at least one item in every history
    candidates = candidates[np.argsort(_last_position(sequence, candidates), kind="stable")][-max_items:]
    if exact_up_to is not None and len(candidates) > exact_up_to:
        candidates = _screened(model, candidates, items, exact_up_to, screen)
    full = _history_scores(model, history)[0, items]
    drops = np.empty((len(candidates), len(items)), np.float64)
    rows_at_once = max(1, MAX_CELLS // max(model.n_items, 1))
    for start in range(0, len(candidates), rows_at_once):
        left_out = candidates[start : start + rows_at_once]
        without = functools.cache(functools.partial(_without, sequence, ratings, left_out, model.n_items))
        if leaves_some:  # the model's own (often cheaper) rule, also for each blend member
            scores = model._score_leaving_out(history, left_out, without)[:, items]
        else:  # the one item left out leaves nothing: the history path itself, as `_history_scores` says
            scores = _history_scores(model, without())[:, items]
        drops[start : start + len(left_out)] = full[None, :] - scores
    drops[candidates[:, None] == items[None, :]] = -np.inf  # an item is not its own reason
    explained = []
    for column in range(len(items)):
        order = np.argsort(-drops[:, column], kind="stable")[:top]
        explained.append([Reason(int(candidates[r]), float(drops[r, column])) for r in order if drops[r, column] > 0])
    return explained


def _without(sequence: np.ndarray, ratings: np.ndarray | None, left_out: np.ndarray, n_items: int) -> History:
    """One history per left-out item: the sequence without (every occurrence of) that item."""
    keep = sequence[None, :] != left_out[:, None]
    lists = [sequence[row] for row in keep]
    values = None if ratings is None else [ratings[row].tolist() for row in keep]
    return History.from_items(lists, n_items, ratings=values)


def _screened(model: Any, candidates: np.ndarray, items: np.ndarray, exact_up_to: int, screen: int) -> np.ndarray:
    """The candidates among the `screen` most similar to any of `items`, by the model's item similarity."""
    try:
        similarity = np.asarray(model._item_similarity(items))[:, candidates]
    except CapabilityError:
        return candidates[-exact_up_to:]  # the newest
    width = min(screen, len(candidates))
    nearest = np.argpartition(-similarity, width - 1, axis=1)[:, :width]
    return np.sort(candidates[np.unique(nearest)])


def _history_scores(model: Any, history: History) -> np.ndarray:
    """Scores from the model's history path itself, also for a history left empty (a one-item history
    without its item): routing would send that row to popularity, whose scores are not comparable."""
    return model._score_history(history, np.full(len(history), -1))


def _last_position(sequence: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Where each item last occurs in the sequence (the newest items are the last candidates kept)."""
    last = np.full(items.max() + 1 if len(items) else 0, -1)
    last[sequence] = np.arange(len(sequence))  # later positions overwrite earlier ones
    return last[items]
