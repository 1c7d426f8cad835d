"""What the HTTP service does, without HTTP: answers from the engine's current snapshot, and writes
validated against it, committed to the event store, then applied (`recforge.serving.engine`).

Every answer says which path served it (`served_by`, from `recforge.coldstart`, plus "+ann" when the
vector index answered, "(updated)" for a user with writes since training) and why (`note`). The service
does no model math: routing is `Recommender.recommend` with a `Query`, a user's writes become
`Recommender.update_user`, new items `Recommender.extend_items`.

Input is strict (docs/serving.md): ids are the vocabulary's own type (a JSON string is not an integer
id; a URL id must be ASCII digits for integer vocabularies) and at most 256 characters; ratings are
finite and inside the model's rating scale, and written only to a model trained with ratings; item
features are finite. Unknown ids raise
`UnknownIdError`, malformed ones `ConfigError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.coldstart import (
    HISTORY,
    ITEM_FEATURES,
    KNOWN_USERS,
    POPULARITY,
    RATINGS,
    USER_FEATURES,
    unknown_values_note,
)
from recforge.data.query import History, Query
from recforge.errors import CapabilityError, ConfigError, UnknownIdError
from recforge.models.base import Recommendations, Recommender, UserUpdate
from recforge.models.explain import Reason, explain_history
from recforge.models.factorization import FactorModel
from recforge.serving.engine import MAX_NEW_USERS, Engine, Snapshot, check_same_interface
from recforge.serving.schemas import INTEGER_PATTERN, MAX_ID_LENGTH, MAX_INTEGER_ID, MAX_K
from recforge.serving.store import (
    CONNECTIONS,
    MAX_REQUEST_KEY,
    AlreadyCommitted,
    Event,
    EventStore,
    RequestKey,
    StoreUnavailableError,
)

EXPLAIN_TOP = 3  # reasons per recommended item
STORE_WAIT = 60.0  # seconds a starting worker waits for its database (RECFORGE_STORE_WAIT overrides)
STORE_RETRY = 1.0  # seconds stale reads go without asking a store that failed (the follower asks each second)
STALE_PATIENCE = 0.5  # seconds an ask may wait on the store before stale reads stop waiting for it
ASKERS = 8  # threads asking a database server for reads that may be answered stale (`current`)
MAX_EXCLUDED = 10_000  # items one request may exclude
# a write committed while this worker could not read the store to apply it (answered 202)
NOT_YET_APPLIED = "not yet: committed; this worker applies it once it can read the event store again"
_INTEGER = re.compile(INTEGER_PATTERN)
REQUEST_KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_KEY}}}")  # an idempotency key: visible ASCII


class RecommenderService:
    """Reads and writes over an `Engine`. Construct from an artifact and a store (`from_artifact`), or from
    a fitted model for tests and notebooks (an in-memory store: nothing survives the process)."""

    def __init__(
        self,
        model: Recommender | None = None,
        items: pd.DataFrame | None = None,
        index: Any = None,
        max_k: int = MAX_K,
        *,
        engine: Engine | None = None,
        stale_reads: float = 0.0,
    ) -> None:
        """`stale_reads`: seconds a read may still be answered from this worker's state while the event store
        cannot be read, counted from the last time that state was known to hold every acknowledged write
        (0, the default: such reads answer 503)."""
        if isinstance(stale_reads, bool) or not (isinstance(stale_reads, (int, float)) and 0 <= stale_reads < math.inf):
            raise ConfigError(f"stale_reads must be a number of seconds of at least 0, not {stale_reads!r}")
        self.max_k, self.stale_reads = max_k, float(stale_reads)
        self.answered_stale_at = -math.inf  # monotonic time of the latest read answered while unconfirmed
        self.stale_answers = 0  # reads answered so (for /metrics)
        self.replayed_writes = 0  # writes answered from an earlier commit of their idempotency key (for /metrics)
        self._asking: ThreadPoolExecutor | None = None  # stale reads' asks of a database server (`current`)
        self._counts_lock = threading.Lock()
        if engine is None:
            if model is None:
                raise ConfigError("a service needs a model or an engine")
            engine = Engine(Snapshot.of(model, items, index), EventStore("sqlite://"))
        self.engine = engine

    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        store: str | EventStore | None = None,
        store_wait: float = 0.0,
        store_connections: int = CONNECTIONS,
        **options: Any,
    ) -> RecommenderService:
        """The service of an artifact directory; events go to `store` (a URL or an EventStore), by default a
        SQLite file beside the artifact. `store_wait`: seconds to wait for a PostgreSQL server that does not
        answer yet, or stops answering while this worker starts (`recforge serve` waits STORE_WAIT);
        `store_connections`: the most connections this process opens to it."""
        if store is None:
            store = EventStore.beside(path)
        elif isinstance(store, str):
            store = EventStore(store, wait=store_wait, connections=store_connections)
        return cls(engine=Engine.open(path, store, wait=store_wait), **options)

    # ------------------------------------------------------------------ state
    @property
    def snapshot(self) -> Snapshot:
        return self.engine.snapshot

    @property
    def model(self) -> Recommender:
        return self.engine.snapshot.model

    @property
    def index(self) -> Any:
        return self.engine.snapshot.index

    def current(self) -> Snapshot:
        """The snapshot a read works on, after catching up with every committed write (read-your-writes
        across workers). While the store cannot be read: the snapshot as it is, if it was last confirmed
        within `stale_reads` seconds (noted in `answered_stale_at`), else StoreUnavailableError."""
        engine = self.engine
        if (
            self.stale_reads
            and (engine.failed_lately(STORE_RETRY) or engine.waiting_on_store() > STALE_PATIENCE)
            and engine.unconfirmed_for() <= self.stale_reads
        ):
            # the store failed under 1 s ago, or another ask has waited on it for over STALE_PATIENCE: not
            # asked by every read (a database that accepts and stays silent holds each asking read for its
            # silence bound); the follower thread, and the read already waiting, ask
            self._answered_stale()
            return engine.snapshot
        if self.stale_reads and engine.store.networked:
            return self._current_within_patience()
        try:
            engine.catch_up()
        except StoreUnavailableError as exc:
            self._stale_within_allowance(exc)
        return engine.snapshot

    def _current_within_patience(self) -> Snapshot:
        """`current` with stale reads allowed on a database server, which can go silent mid-ask (each ask then
        waits out its silence bound, ~10 s): the read asks in a helper thread and, once the ask has taken
        STALE_PATIENCE, answers from the state, marked, while the ask goes on (it confirms the state if it
        succeeds). Past the allowance the read waits for the ask's outcome, as without stale reads. Every
        read still asks for itself (joining an ask that began before the read could miss a write
        acknowledged in between)."""
        engine = self.engine
        asking = self._askers().submit(engine.catch_up)
        try:
            asking.result(timeout=STALE_PATIENCE)
        except FutureTimeout:
            not_started = asking.cancel()  # every helper is held by a silent store: this ask need not run
            if engine.unconfirmed_for() <= self.stale_reads:
                self._answered_stale()
            elif not_started:
                engine.catch_up()
            else:
                asking.result()
        except StoreUnavailableError as exc:
            self._stale_within_allowance(exc)
        return engine.snapshot

    def _stale_within_allowance(self, failure: StoreUnavailableError) -> None:
        """After the store failed a read's ask: the read is answered from the state (counted) if that state
        was confirmed within the allowance; otherwise the failure is raised."""
        if self.engine.unconfirmed_for() > self.stale_reads:
            raise failure
        self._answered_stale()

    def _askers(self) -> ThreadPoolExecutor:
        with self._counts_lock:
            if self._asking is None:
                self._asking = ThreadPoolExecutor(ASKERS, thread_name_prefix="recforge-ask")
            return self._asking

    def _answered_stale(self) -> None:
        with self._counts_lock:
            self.answered_stale_at = time.monotonic()
            self.stale_answers += 1

    def _count_replay(self) -> None:
        """A write answered from its key's earlier commit (for /metrics)."""
        with self._counts_lock:
            self.replayed_writes += 1

    def stale_for(self, since: float) -> float | None:
        """How many seconds the state was unconfirmed if a read was answered from it while unconfirmed at
        or after the monotonic time `since` (the HTTP layer marks such answers), else None. A read answered
        fresh beside a stale one is marked too: never the other way round."""
        if self.answered_stale_at < since:
            return None
        return self.engine.unconfirmed_for()

    # work per exact request (items x dimensions) under which it finishes in ~0.1 ms on one core
    QUICK_EXACT_WORK = 1 << 20

    def answers_quickly(self) -> bool:
        """True when a known user's recommendations cost well under a millisecond: served from the ANN
        index, or an exact scan of a small catalogue (the HTTP layer then skips the thread pool)."""
        snapshot = self.engine.snapshot
        if not self.engine.store.sqlite or not isinstance(snapshot.model, FactorModel):
            return False  # a read first asks the store for news: a network round trip belongs in a thread
        if snapshot.indexed is not None:
            return True
        return snapshot.model.n_items * snapshot.model.item_factors_.shape[1] <= self.QUICK_EXACT_WORK

    def writes_quickly(self) -> bool:
        """True when checking and applying a user's new interactions costs well under a millisecond (a
        factor model's closed-form update) and asking the store for news a few microseconds (a local
        SQLite file): the HTTP layer then runs the write on the event loop, its commit in the store's
        commit thread (`add_interactions_async`)."""
        return self.engine.store.sqlite and isinstance(self.engine.snapshot.model, FactorModel)

    # ------------------------------------------------------------------ ids
    def user_index(self, user: Any, snapshot: Snapshot | None = None, field: str = "user_id", url: bool = True) -> int:
        """A user id from a URL (default) or, with url=False, from a JSON body."""
        return resolve((snapshot or self.engine.snapshot).model.users_, user, field, from_url=url)

    def known_or_new(
        self, user: Any, snapshot: Snapshot, field: str = "user_id", url: bool = True
    ) -> tuple[int | None, Any]:
        """(the model's index or None for a user it was not trained with, the id as the vocabulary types it);
        an id of the wrong type is a ConfigError either way."""
        return lookup(snapshot.model.users_, user, field, from_url=url)

    def item_index(self, item: Any, snapshot: Snapshot | None = None, field: str = "item", url: bool = False) -> int:
        """An item id from a JSON body (default) or, with url=True, from a URL."""
        return resolve((snapshot or self.engine.snapshot).model.items_, item, field, from_url=url)

    def _check_k(self, k: int, snapshot: Snapshot) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.max_k:
            raise ConfigError(f"k must be an integer between 1 and {self.max_k}, got {k!r}")
        return min(k, snapshot.model.n_items)

    # ------------------------------------------------------------------ recommendations
    def recommend_user(
        self,
        user: Any,
        k: int = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        genres: list[str] | None = None,
        exclude_items: list[Any] | None = None,
    ) -> dict[str, Any]:
        """A known user's top k: from their update when they wrote since training, else the trained state
        (through the vector index when there is one). With `explain`, each item says `because` of which of
        the user's items (`recforge.models.explain`). `genres` keeps items of any of them, `exclude_items`
        (ids as a URL gives them) leaves those out; such lists are scored exactly."""
        snapshot = self.current()
        blocked = self._blocked(snapshot, genres, exclude_items, url=True)
        answer = self._recommend_user(snapshot, user, k, exclude_seen, blocked)
        if explain:
            self._explain(snapshot, answer, self._history_of(snapshot, user))
        return answer

    def recommend_users(self, requests: list[tuple[Any, int, bool]]) -> list[dict[str, Any] | Exception]:
        """`recommend_user` for many (user, k, exclude_seen) at once, each answer or its error in its place.
        The users served from the trained state by exact search are scored together (one matrix product
        over the catalogue instead of one pass each, which is what an exact scan of a large catalogue
        spends its time on); the others, and all errors, are as `recommend_user` gives them, on the same
        snapshot."""
        snapshot = self.current()
        model = snapshot.model
        answers: list[dict[str, Any] | Exception | None] = [None] * len(requests)
        together: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}  # position, row, k
        for position, (user, k, exclude_seen) in enumerate(requests):
            try:
                k = self._check_k(k, snapshot)
                index, _ = self.known_or_new(user, snapshot)
                if index is None:
                    answers[position] = self._recommend_user(snapshot, user, k, exclude_seen)
                elif snapshot.indexed is None and index not in snapshot.updates and self._trained(model, index):
                    together[exclude_seen].append((position, index, k))
                else:
                    answers[position] = self._recommend_user(snapshot, user, k, exclude_seen)
            except Exception as exc:
                answers[position] = exc
        for exclude_seen, rows in together.items():
            if not rows:
                continue
            positions, indices, ks = zip(*rows, strict=True)
            try:
                recs = model.recommend(np.array(indices), max(ks), exclude_seen=exclude_seen, external_ids=False)
            except Exception:  # e.g. one user's NaN scores: each request alone, so only that one fails
                for position in positions:
                    user, k, _ = requests[position]
                    try:
                        answers[position] = self._recommend_user(snapshot, user, k, exclude_seen)
                    except Exception as exc:
                        answers[position] = exc
                continue
            for row, (position, k) in enumerate(zip(positions, ks, strict=True)):
                answers[position] = self.render(snapshot, recs, row, k)
        return answers  # type: ignore[return-value]

    @staticmethod
    def _trained(model: Recommender, index: int) -> bool:
        return KNOWN_USERS in model.capabilities and bool(model.known_users_[index])

    def _recommend_user(
        self, snapshot: Snapshot, user: Any, k: int, exclude_seen: bool, blocked: np.ndarray | None = None
    ) -> dict[str, Any]:
        k = self._check_k(k, snapshot)
        index, plain = self.known_or_new(user, snapshot)
        model = snapshot.model
        if index is None:
            update = snapshot.newcomers.get(plain)
            if update is None:
                raise UnknownIdError(
                    f"unknown user id {plain!r}: the model was not trained with them and nothing was written for "
                    "them; recommend from their items instead (POST /recommendations, recforge recommend --item)"
                )
        else:
            update = snapshot.updates.get(index)
            if update is None and not self._trained(model, index):
                raise UnknownIdError(f"user {user!r} has no training data in this model; POST /recommendations instead")
        if update is not None:
            exclude = update.items if exclude_seen else None
            how = "model" if update.vector is not None else "history"
            path = f"{how} (new user)" if index is None else f"{how} (updated)"
            if snapshot.indexed is not None and update.vector is not None and blocked is None:
                vector = model.augmented(update.vector[None, :], np.array([update.bias]))[0]  # type: ignore[attr-defined]
                return self._searched(snapshot, vector, k, exclude, path)
            return self._top(snapshot, model.score_updated(update), k, exclude, path, blocked)
        if blocked is not None:  # a restricted list: exact scores (an ANN graph cannot promise k from a subset)
            exclude = np.flatnonzero(blocked)
            return self.render(
                snapshot,
                model.recommend(
                    np.array([index]), k, exclude_seen=exclude_seen, external_ids=False, exclude_items=exclude
                ),
            )
        if snapshot.indexed is not None:
            seen = model.seen_  # the row's indices straight from CSR: a scipy row slice costs ~25 µs
            exclude = seen.indices[seen.indptr[index] : seen.indptr[index + 1]] if exclude_seen else None
            vector = model.user_embeddings(np.array([index]))[0]  # type: ignore[attr-defined]
            return self._searched(snapshot, vector, k, exclude, "model")
        return self.render(
            snapshot, model.recommend(np.array([index]), k, exclude_seen=exclude_seen, external_ids=False)
        )

    def recommend_new(
        self,
        ratings: list[tuple[Any, float | None]],
        k: int = 10,
        features: dict[str, Any] | None = None,
        explain: bool = False,
        genres: list[str] | None = None,
        exclude_items: list[Any] | None = None,
    ) -> dict[str, Any]:
        """A user unknown to the model, described by the items they rated now (rating None = interacted)
        and/or user features; `recforge.coldstart` picks the path (features, history or popularity) and
        says what it could not use. With `explain`, each item says `because` of which of those items;
        `genres` and `exclude_items` restrict the list as for `recommend_user`."""
        snapshot = self.current()
        model = snapshot.model
        k = self._check_k(k, snapshot)
        items, values = self._checked_ratings(snapshot, ratings)
        history = History.from_items([items], model.n_items, ratings=[values])
        frame = pd.DataFrame([self._checked_user_features(model, features)]) if features else None
        blocked = self._blocked(snapshot, genres, exclude_items, url=False)
        ranker = snapshot.indexed or model  # the index answers vector paths when there is one
        query = Query(np.array([-1]), history, frame)
        excluded = None if blocked is None else np.flatnonzero(blocked)
        answer = self.render(snapshot, ranker.recommend(query, k, external_ids=False, exclude_items=excluded))
        if explain:
            self._explain(snapshot, answer, history)
        return answer

    def _blocked(
        self, snapshot: Snapshot, genres: list[str] | None, exclude_items: list[Any] | None, url: bool
    ) -> np.ndarray | None:
        """(n_items,) True for items a restricted list may not hold (outside every genre asked for, or
        excluded), or None for an unrestricted list. Bounded: 100 genres, MAX_EXCLUDED items."""
        if not genres and not exclude_items:
            return None
        if len(genres or ()) > 100 or len(exclude_items or ()) > MAX_EXCLUDED:
            raise ConfigError(f"at most 100 genres and {MAX_EXCLUDED:,} excluded items per request")
        candidates = snapshot.catalogue.items_of_genres(genres) if genres else None
        excluded = [
            self.item_index(item, snapshot, f"exclude_items.{n}", url=url) for n, item in enumerate(exclude_items or ())
        ]
        return snapshot.model.blocked_items(candidates, excluded or None, external_ids=False)

    def _history_of(self, snapshot: Snapshot, user: Any) -> History:
        """What a user's recommendations are explained from: their history after their writes (with the
        written ratings; factor models keep it beside the vector they score from), else their training
        history."""
        index, plain = self.known_or_new(user, snapshot)
        update = snapshot.newcomers.get(plain) if index is None else snapshot.updates.get(index)
        if update is not None and update.history is not None:
            return update.history
        if index is None:
            return History.from_items([[]], snapshot.model.n_items)
        return snapshot.model.training_history(index)

    def _explain(self, snapshot: Snapshot, answer: dict[str, Any], history: History) -> None:
        """Adds `because` (at most EXPLAIN_TOP of the history's items, each with the score the item would
        lose without it) to every item of `answer`; a model that cannot explain says so in the note."""
        model, rows = snapshot.model, answer["items"]
        if HISTORY not in model.capabilities:
            why = f"no explanations: {model.name} scores users from their trained state only"
            _add_note(answer, why)
            reasons: list[list[Reason]] = [[] for _ in rows]
        else:
            indices = model.items_.index([row["item"] for row in rows])
            reasons = explain_history(model, history, indices, top=EXPLAIN_TOP)
            if rows and not any(reasons):  # e.g. popularity: the user's items raise no listed item's score
                why = "no explanations: none of the user's items raises the score of a listed item"
                _add_note(answer, why)
        for row, listed in zip(rows, reasons, strict=True):
            row["because"] = [
                {"item": snapshot.catalogue.ids[r.item], "title": snapshot.catalogue.titles[r.item], "weight": r.weight}
                for r in listed
            ]

    def similar(self, item: Any, k: int = 10) -> dict[str, Any]:
        snapshot = self.current()
        k = self._check_k(k, snapshot)
        index = self.item_index(item, snapshot, "item_id", url=True)
        recs = snapshot.model.similar_items(np.array([index]), k, external_ids=False)
        return self.render(snapshot, recs)

    def store_problem(self) -> str | None:
        """Why the event store cannot be read now, or None when it answers (`/health`, `/ready`): while it
        cannot, writes answer 503, and reads too (a read could miss a write another worker acknowledged)
        unless `stale_reads` allows them."""
        try:
            self.engine.store.latest_seq()
        except StoreUnavailableError as exc:
            return str(exc)
        return None

    def predict(self, pairs: list[tuple[Any, Any]]) -> list[float]:
        """Predicted ratings (clipped to the scale); users with writes since training use their update, and
        users the model was not trained with the state their writes gave them."""
        snapshot = self.current()
        model = snapshot.model
        if RATINGS not in model.capabilities:
            raise CapabilityError(f"{model.name} does not predict ratings")
        resolved = [self.known_or_new(u, snapshot, f"pairs.{n}.user", url=False) for n, (u, _) in enumerate(pairs)]
        items = np.array([self.item_index(i, snapshot, f"pairs.{n}.item") for n, (_, i) in enumerate(pairs)])
        written: dict[int, UserUpdate] = {}  # row -> the state to predict from
        for row, (index, plain) in enumerate(resolved):
            update = snapshot.newcomers.get(plain) if index is None else snapshot.updates.get(index)
            if index is None and (update is None or update.vector is None):
                raise UnknownIdError(f"unknown user id {plain!r}")
            if update is not None and update.vector is not None:
                written[row] = update
        users = np.array([0 if index is None else index for index, _ in resolved], dtype=np.int64)
        predictions = np.asarray(model.predict(users, items.astype(np.int64)), dtype=np.float64)
        for row, update in written.items():
            predictions[row] = float(model.score_updated(update)[0, items[row]])
        if model.rating_scale_ is not None:
            predictions = np.clip(predictions, *model.rating_scale_)
        return [float(p) for p in predictions]

    def predict_new(
        self, ratings: list[tuple[Any, float | None]], items: list[Any], features: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Predicted ratings of `items` for a user unknown to the model, described by the items they rated
        now and/or features (nothing is stored): "what would I give this?" before signing up."""
        snapshot = self.current()
        model = snapshot.model
        if RATINGS not in model.capabilities:
            raise CapabilityError(f"{model.name} does not predict ratings")
        rated, values = self._checked_ratings(snapshot, ratings)
        history = History.from_items([rated], model.n_items, ratings=[values])
        frame = pd.DataFrame([self._checked_user_features(model, features)]) if features else None
        wanted = [self.item_index(item, snapshot, f"predict.{n}") for n, item in enumerate(items)]
        predictions, routing = model.predict_query(Query(np.array([-1]), history, frame), wanted)
        if model.rating_scale_ is not None:
            predictions = np.clip(predictions, *model.rating_scale_)
        path = str(routing.paths[0])
        return {
            # with nothing usable the model's own prior rating answers (mu + b_i), not popularity scores
            "served_by": "cold start" if path == POPULARITY else path,
            "note": str(routing.notes[0]).removeprefix("popularity: "),
            "predictions": [{"item": item, "rating": float(p)} for item, p in zip(items, predictions, strict=True)],
        }

    def search_items(self, query: str, limit: int = 20) -> dict[str, Any]:
        """Titles containing `query`, popular ones first; when none does, the titles closest to it (a
        misspelling), nearest first, with `closest` true."""
        snapshot = self.current()
        query = query.strip().lower()
        if not query:
            return {"items": [], "closest": False}
        hits = np.flatnonzero(snapshot.catalogue.containing(query))  # "the matrix" finds "Matrix, The (1999)"
        closest = not len(hits)
        if closest:
            hits = snapshot.catalogue.closest(query, limit)
        else:
            hits = hits[np.argsort(-snapshot.popularity[hits], kind="stable")][:limit]  # popular titles first
        return {"items": [snapshot.catalogue.row(int(i)) for i in hits], "closest": closest and len(hits) > 0}

    def find_item(self, text: str) -> Any:
        """The item a person means by `text` on a command line: the item with that id when the model has
        one, else the one title equal to it (ignoring case, a trailing year in brackets and where the
        catalogue puts an article: "toy story" finds "Toy Story (1995)", "the matrix" "Matrix, The (1999)"),
        else the one title containing it. Several matches raise a ConfigError listing the most popular
        candidates with their ids; none, one listing the closest titles (a misspelling)."""
        snapshot = self.current()
        try:
            index, plain = lookup(snapshot.model.items_, text, "item", from_url=True)
        except ConfigError:
            index = None  # not an id of this vocabulary's type: a title
        if index is not None:
            return plain
        query = text.strip().lower()
        if not query:
            raise ConfigError("an item id or title is empty")
        for matches in snapshot.catalogue.title_matches(query):
            hits = np.flatnonzero(matches)
            if len(hits) == 1:
                return snapshot.catalogue.ids[int(hits[0])]
            if len(hits) > 1:
                hits = hits[np.argsort(-snapshot.popularity[hits], kind="stable")]
                listed = snapshot.catalogue.named(hits[:5])
                more = f" and {len(hits) - 5} more" if len(hits) > 5 else ""
                raise ConfigError(f"{text!r} matches {len(hits)} titles ({listed}{more}): give the item id")
        near = snapshot.catalogue.closest(query)
        hint = f"; closest titles: {snapshot.catalogue.named(near)}" if len(near) else ""
        raise ConfigError(f"{text!r} is neither an item id of this model nor part of a title{hint}")

    def genres(self) -> list[dict[str, Any]]:
        """The catalogue's genres with their item counts, most items first (what `genre=` accepts)."""
        return [{"genre": name, "items": count} for name, count in self.current().catalogue.genre_counts()]

    # ------------------------------------------------------------------ writes
    def add_interactions(
        self, user: Any, ratings: list[tuple[Any, float | None]], key: str | None = None
    ) -> dict[str, Any]:
        """Validate a known user's new interactions, commit them as an event, apply it; returns how.
        Concurrent writers share commits (the store's group commit) and no process-wide lock: whether
        these interactions are valid does not depend on any other write. With an idempotency `key` (the
        client's, e.g. a UUID): a retry of a write already committed under it is answered from that
        write's event (`replayed`) instead of committing a second copy."""
        payload = self._interactions_event(user, ratings)
        keyed = request_key(key, "interactions", payload)
        try:
            seq = self.engine.store.append("interactions", payload, user=str(payload["user"]), key=keyed)
        except AlreadyCommitted as earlier:
            return self._interactions_applied(payload, earlier.seq, replayed=True)
        return self._interactions_applied(payload, seq)

    async def add_interactions_async(
        self,
        user: Any,
        ratings: list[tuple[Any, float | None]],
        then: Callable[[dict[str, Any]], Any] | None = None,
        key: str | None = None,
    ) -> Any:
        """`add_interactions` on an event loop: validation and the update run on the loop, the commit (an
        fsync) in the store's commit thread while the loop serves other requests. Returns the answer, or
        what `then(answer)` returns: `then` runs on the loop as soon as it notices the commit, after the
        update (the HTTP layer sends the answer from it)."""
        payload = self._interactions_event(user, ratings)
        keyed = request_key(key, "interactions", payload)

        def applied(seq: int) -> Any:
            answer = self._interactions_applied(payload, seq)
            return answer if then is None else then(answer)

        try:
            return await self.engine.store.append_async(
                "interactions", payload, user=str(payload["user"]), then=applied, key=keyed
            )
        except AlreadyCommitted as earlier:
            answer = self._interactions_applied(payload, earlier.seq, replayed=True)
            return answer if then is None else then(answer)

    def _interactions_event(self, user: Any, ratings: list[tuple[Any, float | None]]) -> dict[str, Any]:
        """The event payload of a user's new interactions, validated against the current state (a user the
        model was not trained with is created by it, up to MAX_NEW_USERS)."""
        snapshot = self.current()
        model = snapshot.model
        index, plain = self.known_or_new(user, snapshot)
        if HISTORY not in model.capabilities:
            raise CapabilityError(f"{model.name} cannot take new interactions without retraining")
        if index is None and plain not in snapshot.newcomers and len(snapshot.newcomers) >= MAX_NEW_USERS:
            raise CapabilityError(
                f"this model already serves {MAX_NEW_USERS:,} users created since it was trained; "
                "retrain (`recforge retrain`) to learn them before more are added"
            )
        items, values = self._checked_ratings(snapshot, ratings, write=True)
        payload = {
            "user": _plain(plain if index is None else model.users_.ids[index]),
            "items": [_plain(model.items_.ids[i]) for i in items],
            "ratings": values,
        }
        return payload

    def _interactions_applied(self, payload: dict[str, Any], seq: int, replayed: bool = False) -> dict[str, Any]:
        """The answer to a write committed as event `seq` once this worker has applied it (a `replayed`
        write's event, committed by an earlier attempt, is read back from the store)."""
        own = None if replayed else Event(seq, "interactions", str(payload["user"]), payload, time.time())
        if replayed:
            self._count_replay()
        try:
            self.engine.catch_up(upto=seq, own=own)
        except StoreUnavailableError:  # committed: a 503 would invite a retry, a second copy of the write
            return {"seq": seq, "updated_by": NOT_YET_APPLIED, "applied": False, "replayed": replayed}
        return {"seq": seq, "updated_by": self._updated_by(payload), "replayed": replayed}

    def _updated_by(self, payload: dict[str, Any]) -> str:
        """How the user's state took a write of `payload` (after it was applied)."""
        snapshot = self.engine.snapshot
        model = snapshot.model
        index = model.users_.position(payload["user"])  # (a model swap in between may have learned a newcomer)
        if index is None:
            update = snapshot.newcomers.get(payload["user"])
            folded = update is not None and update.vector is not None
            return "new user: " + ("fold-in of their interactions" if folded else "history")
        update = snapshot.updates.get(index)
        if update is None or update.vector is None:
            return "history overlay"
        if RATINGS in model.capabilities and any(v is not None for v in payload["ratings"]):
            return "MAP update of the user's factors"
        return "fold-in of the user's whole history"

    def add_items(self, items: list[dict[str, Any]], key: str | None = None) -> dict[str, Any]:
        """Validate brand-new items (models with an item tower), claim their ids in the store (one writer
        wins a race for an id; the others get a 409), commit, apply. With an idempotency `key`, a retry of
        a write committed under it is answered from that write (`replayed`), not with a 409 for its own
        items."""
        from recforge.serving.store import DuplicateItemError

        with self.engine.write_lock:
            snapshot = self.current()
            model = snapshot.model
            if ITEM_FEATURES not in model.capabilities:
                raise CapabilityError(f"{model.name} cannot embed items from features; retrain to add items")
            entries = [self._checked_item(model, n, entry) for n, entry in enumerate(items)]
            ids = [entry["item"] for entry in entries]
            if len(set(map(str, ids))) != len(ids):
                raise ConfigError("items: the same new item id is given twice")
            taken = [i for i in ids if model.items_.position(i) is not None]
            keyed = request_key(key, "items", entries)
            earlier = None if keyed is None or not taken else self.engine.store.committed_request(keyed)
            if taken and earlier is None:  # (a retry of a committed write finds its own items: not a 409)
                raise DuplicateItemError(f"items already in the catalogue: {taken[:5]}")
            if earlier is None:
                snapshot.with_items(entries)  # fails here, before anything is committed, if the tower cannot embed them
                try:
                    seq = self.engine.store.append_items([str(i) for i in ids], {"items": entries}, key=keyed)
                except AlreadyCommitted as committed:  # (another worker, a moment ago)
                    earlier = committed.seq
            replayed = earlier is not None
            if replayed:
                seq = earlier
                self._count_replay()
            try:
                self.engine.catch_up()
            except StoreUnavailableError:  # committed (a retry without the key would meet its own ids: 409)
                return {"seq": seq, "embedded_by": NOT_YET_APPLIED, "applied": False, "replayed": replayed}
        described = pd.DataFrame([{k: v for k, v in entry.items() if k not in ("item", "title")} for entry in entries])
        unseen = [value for row in model.unseen_feature_values(described, "item") for value in row]  # type: ignore[attr-defined]
        note = unknown_values_note(unseen) if unseen else ""
        return {"seq": seq, "embedded_by": "item tower (features, unknown ID)", "note": note, "replayed": replayed}

    def promote(self, path: str, key: str | None = None) -> dict[str, Any]:
        """Record a model artifact as the one to serve: checked first (it must load, and fit the catalogue
        of items added through the service), then committed as a `model` event that every worker applies
        by swapping in the background. With an idempotency `key`, a retry of a promotion committed under
        it is answered from that event (`replayed`) instead of making every worker load the model again."""
        from recforge.artifacts import read_manifest

        try:  # (resolving is checking too: a path with a NUL byte raised ValueError there, answered 500)
            artifact = Path(path).resolve()
            read_manifest(artifact)
            fresh = Snapshot.load(artifact)
            check_same_interface(self.model, fresh.model)
        except Exception as exc:
            raise ConfigError(f"path: cannot serve {path!r}: {exc}") from exc
        payload = {"path": str(artifact), "cutoff": fresh.cutoff}
        with self.engine.write_lock:
            replayed = False
            try:
                seq = self.engine.store.append("model", payload, key=request_key(key, "model", payload))
            except AlreadyCommitted as earlier:
                seq, replayed = earlier.seq, True
                self._count_replay()
            try:
                self.engine.catch_up()
            except StoreUnavailableError:  # committed: every worker swaps once it reads the store again
                return {"seq": seq, "replayed": replayed, "applied": False}
        return {"seq": seq, "replayed": replayed}

    # ------------------------------------------------------------------ validation
    def _checked_ratings(
        self, snapshot: Snapshot, ratings: list[tuple[Any, float | None]], write: bool = False
    ) -> tuple[list[int], list]:
        model = snapshot.model
        scale = model.rating_scale_
        items, values = [], []
        for n, (item, rating) in enumerate(ratings):
            items.append(self.item_index(item, snapshot, f"items.{n}.item"))
            if rating is not None:
                if write and not model.rated_:  # the data has no rating column to keep it in
                    raise ConfigError(
                        f"items.{n}.rating: {model.name} was trained on interactions without ratings, so a rating "
                        "would be lost; send the item without one"
                    )
                if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating):
                    raise ConfigError(f"items.{n}.rating must be a finite number, got {rating!r}")
                if scale is not None and not scale[0] <= rating <= scale[1]:
                    raise ConfigError(
                        f"items.{n}.rating {rating:g} is outside this model's scale {scale[0]:g}..{scale[1]:g}"
                    )
                rating = float(rating)
            values.append(rating)
        return items, values

    @staticmethod
    def _checked_user_features(model: Recommender, features: dict[str, Any]) -> dict[str, Any]:
        """Request features, validated against what the user tower reads: unknown names, non-numeric or
        non-finite values of numeric features are errors naming the field; missing ones count as unknown.
        A model without a user-feature tower ignores features (the answer's note says so)."""
        if USER_FEATURES not in model.capabilities:
            return features
        return _checked_features(features, model.user_feature_kinds(), "features")  # type: ignore[attr-defined]

    def _checked_item(self, model: Recommender, n: int, entry: dict[str, Any]) -> dict[str, Any]:
        item = entry.get("item")
        check_id(model.items_, item, f"items.{n}.item")
        kinds = model.item_feature_kinds()  # type: ignore[attr-defined]
        features = {k: v for k, v in entry.items() if k not in ("item", "title")}
        checked = _checked_features(features, kinds, f"items.{n}")
        title = entry.get("title")
        if title is not None and (not isinstance(title, str) or len(title) > 1000):
            raise ConfigError(f"items.{n}.title must be text of at most 1000 characters")
        return {"item": item, "title": title, **checked}

    # ------------------------------------------------------------------ answers
    def render(self, snapshot: Snapshot, recs: Recommendations, row: int = 0, k: int | None = None) -> dict[str, Any]:
        """One list of a `Recommendations` (its first k) as the service's JSON shape."""
        pairs = zip(recs.item_index[row][:k], recs.scores[row][:k], strict=True)
        return {
            "served_by": str(recs.served_by[row]),
            "note": str(recs.notes[row]) if len(recs.notes) else "",
            "items": [snapshot.catalogue.row(int(i), float(s)) for i, s in pairs if i >= 0],
        }

    def _top(
        self, snapshot: Snapshot, scores: np.ndarray, k: int, exclude: Any, path: str, blocked: Any = None
    ) -> dict[str, Any]:
        from recforge.retrieval.topk import topk

        scores = np.array(scores, dtype=np.float32)
        if exclude is not None:
            scores[0, exclude] = -np.inf
        if blocked is not None:
            scores[0, blocked] = -np.inf
        items, top = topk(scores, k)
        return self.render(snapshot, _one(snapshot.model, items, top, path))

    def _searched(self, snapshot: Snapshot, vector: np.ndarray, k: int, exclude: Any, path: str) -> dict[str, Any]:
        items, scores = snapshot.indexed.recommend_vector(vector, k, exclude)  # type: ignore[union-attr]
        return self.render(snapshot, _one(snapshot.model, items[None, :], scores[None, :], path + "+ann"))


def request_key(key: str | None, *request: Any) -> RequestKey | None:
    """The store's RequestKey of a write with an idempotency key: the key (checked: 1 to 255 visible ASCII
    characters) and a digest of the request (`request`: the write's kind and its validated event payload,
    in which ids have the vocabulary's type), so a key reused for another request is told apart from a
    retry."""
    if key is None:
        return None
    if not isinstance(key, str) or not REQUEST_KEY.fullmatch(key):
        raise ConfigError(
            f"Idempotency-Key must be 1 to {MAX_REQUEST_KEY} visible ASCII characters (a UUID, say), "
            f"not {str(key)[:80]!r}"
        )
    text = json.dumps(request, default=str, separators=(",", ":"), sort_keys=True, allow_nan=True)
    return RequestKey(key, hashlib.sha256(text.encode()).hexdigest())


def resolve(vocabulary: Any, raw: Any, field: str, from_url: bool = False) -> int:
    """The model's index of an external id from a URL (a string) or JSON (the vocabulary's own type)."""
    position, plain = lookup(vocabulary, raw, field, from_url)
    if position is None:
        where = f" ({field})" if "." in field else ""  # a body's path, e.g. pairs.3.item
        raise UnknownIdError(f"unknown {vocabulary.name} id {plain!r}{where}")
    return position


def lookup(vocabulary: Any, raw: Any, field: str, from_url: bool = False) -> tuple[int | None, Any]:
    """(the id's index, or None when the vocabulary lacks it; the id in the vocabulary's own type), after
    `check_id`: a URL segment of ASCII digits becomes an integer for integer vocabularies."""
    check_id(vocabulary, raw, field, from_url)
    plain = int(raw) if isinstance(raw, str) and vocabulary.ids.dtype.kind in "iu" else raw
    return vocabulary.position(plain), plain


def check_id(vocabulary: Any, raw: Any, field: str, from_url: bool = False) -> None:
    """Raise ConfigError naming `field` unless `raw` is an id of the vocabulary's type: in JSON an integer
    (not a bool, not a string) for integer vocabularies and a string of at most 256 characters otherwise;
    in a URL, where everything is text, ASCII digits for integer vocabularies."""
    integer = vocabulary.ids.dtype.kind in "iu"
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ConfigError(f"{field} must be an id ({'integer' if integer else 'text'}), got {raw!r}")
    if integer and isinstance(raw, str) and not from_url:
        raise ConfigError(f"{field}: this model's ids are integers; send {raw[:40]!r} as a number, not a string")
    if isinstance(raw, str) and len(raw) > MAX_ID_LENGTH:
        raise ConfigError(f"{field} is longer than {MAX_ID_LENGTH} characters")
    if integer and isinstance(raw, str) and not _INTEGER.match(raw):
        raise ConfigError(f"{field} must be an integer id of ASCII digits, got {raw[:40]!r}")
    if integer and isinstance(raw, int) and not -MAX_INTEGER_ID <= raw <= MAX_INTEGER_ID:
        raise ConfigError(f"{field} is outside the range of integer ids (at most 15 digits)")
    if not integer and isinstance(raw, int):
        raise ConfigError(f"{field}: this model's ids are text; send {str(raw)!r} as a string")


def _checked_features(features: dict[str, Any], kinds: dict[str, str], where: str) -> dict[str, Any]:
    unknown = sorted(set(features) - set(kinds))
    if unknown:
        raise ConfigError(f"{where}: unknown feature(s) {unknown}; this model reads {sorted(kinds)}")
    for name, value in features.items():
        if value is None:
            continue
        kind = kinds[name]
        if kind == "numeric":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}.{name} must be a finite number, got {value!r}")
        elif kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 200 for v in value):
                raise ConfigError(f"{where}.{name} must be a list of strings")
        elif not isinstance(value, (str, int)) or isinstance(value, bool) or len(str(value)) > 200:
            raise ConfigError(f"{where}.{name} must be a category (text), got {value!r}")
    return features


def _add_note(answer: dict[str, Any], why: str) -> None:
    answer["note"] = f"{answer['note']}; {why}" if answer["note"] else why


def _one(model: Recommender, items: np.ndarray, scores: np.ndarray, path: str) -> Recommendations:
    return model._package(np.array([None], dtype=object), items, scores, path)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
