"""The serving engine: one consistent state built from a model artifact plus the event log.

State a request reads is a `Snapshot`: the model (and its vector index), the item catalogue, item
popularity, and the users updated since training (`UserUpdate`s, one immutable entry per user). It is
never edited under a reader: a user's update replaces that user's entry in one assignment, and new items
or a new model build a whole new snapshot aside that replaces the old one in one assignment. A request
takes the snapshot once and finishes on it, so a model swap never changes an answer half-way.

Writes are events (`recforge.serving.store`): validated against the current state, committed, then
applied here in sequence order by every worker, so workers agree once caught up. Reads first catch up
with the store (one indexed query), so a client that wrote through one worker and reads through another
sees its write. A `model` event (from `recforge retrain`) makes each worker load the promoted artifact
in the background, replay the events newer than its training cut-off, and swap.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recforge.coldstart import HISTORY, ITEM_FEATURES
from recforge.data.query import History, Query
from recforge.errors import CapabilityError, ConfigError, RecforgeError
from recforge.models.base import Recommender, UserUpdate
from recforge.models.indexed import IndexedRecommender
from recforge.serving.catalogue import Catalogue, read_catalogue
from recforge.serving.store import Event, EventStore, StoreUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Everything a read needs; replaced as a whole (never edited) when the catalogue or model changes."""

    model: Recommender
    catalogue: Catalogue
    indexed: IndexedRecommender | None  # the model behind its vector index, when the artifact has one
    popularity: np.ndarray
    artifact: str | None = None
    cutoff: int = 0  # the last event the model was trained with
    updates: dict[int, UserUpdate] = field(default_factory=dict)  # user index -> state after their writes
    # users the model was not trained with, by external id -> their state after their writes (`start_user`)
    newcomers: dict[Any, UserUpdate] = field(default_factory=dict)

    @property
    def index(self) -> Any:
        return None if self.indexed is None else self.indexed.index

    @classmethod
    def of(
        cls,
        model: Any,
        items: pd.DataFrame | None = None,
        index: Any = None,
        artifact: str | None = None,
        cutoff: int = 0,
    ) -> Snapshot:
        if isinstance(model, IndexedRecommender):
            model, index = model.model, model.index
        popularity = np.asarray(model.seen_.sum(axis=0), dtype=np.float64).ravel()
        indexed = None if index is None else IndexedRecommender(model, index)
        _warm_up(model)
        return cls(model, Catalogue.build(model, items), indexed, popularity, artifact, cutoff)

    @classmethod
    def load(cls, path: str | Path) -> Snapshot:
        """A snapshot from an artifact directory (its index and item catalogue, when it has them)."""
        from recforge.models import load_model

        path = Path(path)
        model = load_model(path)
        items = read_catalogue(path)
        manifest = model.manifest_ if hasattr(model, "manifest_") else model.model.manifest_
        cutoff = int(manifest.get("metadata", {}).get("event_cutoff", 0))
        return cls.of(model, items, artifact=str(path), cutoff=cutoff)

    def with_items(self, entries: list[dict[str, Any]]) -> Snapshot:
        """A new snapshot with brand-new items (`extend_items` of the model), their titles and genres in the
        catalogue, the index rebuilt; user updates carry over (item indices are only appended)."""
        ids = [entry["item"] for entry in entries]
        features = pd.DataFrame([{k: v for k, v in entry.items() if k != "item"} for entry in entries])
        model = self.model.extend_items(ids, features)
        catalogue = self.catalogue.extended(model, ids, features)
        indexed = None if self.indexed is None else IndexedRecommender.build(model, self.indexed.index.config)
        popularity = np.concatenate([self.popularity, np.zeros(len(ids))])
        return replace(self, model=model, catalogue=catalogue, indexed=indexed, popularity=popularity)


def _warm_up(model: Recommender) -> None:
    """Score one rated one-item history before the snapshot serves, so the first real request does not pay
    for loading or compiling the fold-in's loops: the first ridge fold-in of an explicit MF took 2.2 s in a
    fresh installation (numba compiling) and 0.6 s with its on-disk cache (loading), then 2 ms."""
    if HISTORY not in model.capabilities or model.n_items == 0:
        return
    try:
        model.score(Query.from_items([[0]], model.n_items, [[1.0]]))
    except RecforgeError as exc:  # a model that refuses this history refuses it for requests too, with a 4xx
        logger.info("warm-up of %s skipped: %s", type(model).__name__, exc)


class Engine:
    """The current snapshot, the sequence number of the last applied event, and the store."""

    def __init__(self, snapshot: Snapshot, store: EventStore, horizon: int | None = None) -> None:
        """`horizon` pins the engine at a point of the log: it never applies events after it and ignores
        model promotions (how `recforge retrain` replays what the service answered at that point)."""
        self.snapshot, self.store, self.horizon = snapshot, store, horizon
        self.applied = snapshot.cutoff
        self._apply_lock = threading.RLock()  # one applier at a time; readers never take it when caught up
        self.write_lock = threading.Lock()  # writes of this process queue here (the database orders processes)
        self._swapping: int | None = None
        self.swaps = 0
        self.applied_total = 0  # events this engine applied (a gap in the sequence would show here)
        self.swap_error: str | None = None  # why the last promotion could not be served (for /health)
        # monotonic time at which the store was last asked for its newest event, every event up to that
        # one then applied: each write acknowledged before it is in the snapshot (`unconfirmed_for`)
        self.confirmed_at: float | None = None
        self.failed_at: float | None = None  # monotonic time catching up last met the store unavailable
        self._asking: dict[int, float] = {}  # asks of the store under way (a token each) -> when they began
        self._asking_lock = threading.Lock()
        self._replay_items_missing_from(self.snapshot)

    @classmethod
    def open(cls, artifact: str | Path, store: EventStore, wait: float = 0.0) -> Engine:
        """The engine of a worker: the newest promoted model in the store (else `artifact`), caught up.
        `wait`: seconds in all to keep retrying a PostgreSQL store that cannot be reached (a database
        restarting while the worker loads its model; a worker that fails its start-up stops the server)."""
        deadline = time.monotonic() + wait
        remaining = lambda: max(0.0, deadline - time.monotonic())  # noqa: E731
        promoted = store.when_reachable(store.latest_model, remaining())
        path = promoted.payload["path"] if promoted is not None else str(artifact)
        snapshot = Snapshot.load(path)
        engine = store.when_reachable(lambda: cls(snapshot, store), remaining())
        store.when_reachable(engine.catch_up, remaining())
        return engine

    # ------------------------------------------------------------------ catching up
    def catch_up(self, upto: int | None = None, own: Event | None = None) -> int:
        """Apply every committed event this worker has not applied yet (or those up to `upto`, a seq known
        to be committed: a writer's own event), in order; returns the applied seq. A writer passes its
        just-committed event as `own`: when it is the next one in sequence it is applied as is, without
        reading it back from the store."""
        asked = time.monotonic() if upto is None and self.horizon is None else None
        if asked is not None:
            token = threading.get_ident()  # one ask per thread at a time
            with self._asking_lock:
                self._asking[token] = asked
        try:
            return self._catch_up(asked, upto, own)
        except StoreUnavailableError:
            self.failed_at = time.monotonic()
            raise
        finally:
            if asked is not None:
                with self._asking_lock:
                    self._asking.pop(token, None)

    def _catch_up(self, asked: float | None, upto: int | None, own: Event | None) -> int:
        latest = upto if upto is not None else self.store.latest_seq() if self.horizon is None else self.horizon
        if latest <= self.applied:
            self._confirmed(asked)
            return self.applied
        with self._apply_lock:
            if latest > self.applied:
                if own is not None and own.seq == latest == self.applied + 1:
                    events = [own]
                else:
                    events = self.store.events_after(self.applied, latest)
                for event in events:
                    self._apply(event)
                    self.applied = event.seq
                    self.applied_total += 1
        self._confirmed(asked)
        return self.applied

    def _confirmed(self, asked: float | None) -> None:
        if asked is not None and (self.confirmed_at is None or asked > self.confirmed_at):
            self.confirmed_at = asked

    def failed_lately(self, within: float) -> bool:
        """Whether catching up met the store unavailable in the last `within` seconds, after the last
        confirmation (the follower thread, or a read, asks again)."""
        failed, confirmed = self.failed_at, self.confirmed_at
        return failed is not None and (confirmed is None or failed > confirmed) and time.monotonic() - failed < within

    def waiting_on_store(self) -> float:
        """Seconds the longest ask of the store under way (a read's or the follower's) has waited; 0 with
        none under way."""
        with self._asking_lock:
            oldest = min(self._asking.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def unconfirmed_for(self) -> float:
        """Seconds since the snapshot was last known to hold every acknowledged write (the store asked and
        caught up with); infinite before the first time. While the store cannot be read this grows: an
        answer from the snapshot may miss the writes acknowledged in that time, never older ones."""
        return math.inf if self.confirmed_at is None else time.monotonic() - self.confirmed_at

    def _apply(self, event: Event) -> None:
        """Apply one event to the current snapshot. An event this model cannot use (an item it does not
        know after a model swap) is skipped with a warning: every worker skips it alike."""
        try:
            if event.kind == "interactions":
                self.snapshot = apply_interactions(self.snapshot, event)
            elif event.kind == "items":
                self.snapshot = apply_items(self.snapshot, event)
            elif event.kind == "model" and self.horizon is None:
                self._start_swap(event)
        except RecforgeError as exc:
            logger.warning("event %d (%s) not applied: %s", event.seq, event.kind, exc)

    def _replay_items_missing_from(self, snapshot: Snapshot) -> None:
        """Items added through the service before the model's cut-off but absent from it (items nobody
        interacted with are not learned by a retrain) are added again, so the catalogue never shrinks."""
        if ITEM_FEATURES not in snapshot.model.capabilities:
            return
        for event in self.store.events_after(0, snapshot.cutoff, kinds=("items",)):
            self._apply(event)

    def follow(self, interval: float = 1.0) -> threading.Event:
        """Catch up every `interval` seconds in a daemon thread, so an idle worker stays current and swaps
        to a promoted model without waiting for a request; set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            failing = False  # said once when the store stops answering and once when it is back
            while not stop.wait(interval):
                try:
                    self.store.refresh_published()  # a writer that died between its commit and publishing it
                    self.catch_up()
                except Exception as exc:  # the store is down: requests say so; keep trying
                    if not failing:
                        logger.warning("catching up with the event store failed (retrying each %gs): %s", interval, exc)
                    failing = True
                else:
                    if failing:
                        logger.warning("the event store answers again; caught up to event %d", self.applied)
                    failing = False

        threading.Thread(target=loop, daemon=True, name="follow-store").start()
        return stop

    # ------------------------------------------------------------------ model swaps
    def _start_swap(self, event: Event) -> None:
        if self._swapping is not None and self._swapping >= event.seq:
            return
        self._swapping = event.seq
        threading.Thread(target=self._swap, args=(event,), daemon=True, name=f"swap-{event.seq}").start()

    def _swap(self, event: Event) -> None:
        """Load the promoted artifact aside, replay the events newer than its cut-off, then swap under the
        apply lock after the last few; requests in flight finish on the snapshot they took. A store that
        cannot be read is retried; an artifact that cannot be served keeps the current model (and says
        why in `swap_error`)."""
        try:
            for attempt in range(SWAP_ATTEMPTS):
                try:
                    self._swap_once(event)
                    return
                except StoreUnavailableError as exc:
                    if attempt == SWAP_ATTEMPTS - 1:
                        raise
                    logger.warning("swap to event %d: %s; retrying", event.seq, exc)
                    time.sleep(0.2 * 2**attempt)
        except Exception as exc:
            self.swap_error = f"event {event.seq}: {type(exc).__name__}: {exc}"
            logger.exception("could not swap to the model of event %d", event.seq)
        finally:
            if self._swapping == event.seq:
                self._swapping = None

    def _swap_once(self, event: Event) -> None:
        fresh = Snapshot.load(event.payload["path"])
        check_same_interface(self.snapshot.model, fresh.model)
        staging = Engine(fresh, self.store)
        staging.applied = fresh.cutoff
        for replayed in self.store.events_after(fresh.cutoff, self.applied):
            if replayed.kind != "model":
                staging._apply(replayed)
            staging.applied = replayed.seq
        with self._apply_lock:
            for replayed in self.store.events_after(staging.applied, self.applied):
                if replayed.kind != "model":
                    staging._apply(replayed)
            if self._swapping == event.seq:
                self.snapshot = staging.snapshot
                self.swaps += 1
                self.swap_error = None
                logger.info("swapped to %s (events after %d replayed)", fresh.artifact, fresh.cutoff)


SWAP_ATTEMPTS = 6  # ~6 s of retries when the store cannot be read
# users created by writes that one model keeps state for (a few KB each); past it, writes for further new
# ids are refused (409) until a retrain learns them, so no client can grow a worker's memory without bound
MAX_NEW_USERS = 100_000


def interface(model: Recommender) -> dict[str, Any]:
    """What the HTTP schema of a service is built from: id types, rating scale, feature names and kinds.
    A model swap keeps it (the published schema cannot change under running clients)."""
    from recforge.coldstart import RATINGS, USER_FEATURES

    return {
        "user_ids": "integer" if model.users_.ids.dtype.kind in "iu" else "text",
        "item_ids": "integer" if model.items_.ids.dtype.kind in "iu" else "text",
        "rating_scale": list(model.rating_scale_) if RATINGS in model.capabilities and model.rating_scale_ else None,
        "user_features": model.user_feature_kinds() if USER_FEATURES in model.capabilities else None,  # type: ignore[attr-defined]
        "item_features": model.item_feature_kinds() if ITEM_FEATURES in model.capabilities else None,  # type: ignore[attr-defined]
    }


def check_same_interface(serving: Recommender, candidate: Recommender) -> None:
    """ConfigError naming the difference when `candidate` would need another HTTP schema than `serving`."""
    old, new = interface(serving), interface(candidate)
    changed = [f"{key}: {old[key]} -> {new[key]}" for key in old if old[key] != new[key]]
    if changed:
        raise ConfigError(
            "the promoted model needs a different API (" + "; ".join(changed) + "); start a new service for it"
        )


def apply_interactions(snapshot: Snapshot, event: Event) -> Snapshot:
    """A user's new interactions: their update replaces their entry (the snapshot object stays). A user the
    model was not trained with becomes a newcomer, scored from what they wrote."""
    model = snapshot.model
    user = model.users_.position(event.payload["user"])
    if HISTORY not in model.capabilities:
        raise CapabilityError(f"{model.name} cannot take new interactions")
    positions = [model.items_.position(item) for item in event.payload["items"]]
    kept = [(p, r) for p, r in zip(positions, event.payload["ratings"], strict=True) if p is not None]
    if not kept:
        raise CapabilityError("none of its items is in this model")
    ratings = [[r for _, r in kept]] if any(r is not None for _, r in kept) else None  # None: interactions only
    added = History.from_items([[p for p, _ in kept]], model.n_items, ratings=ratings)
    if user is None:
        newcomer = event.payload["user"]
        snapshot.newcomers[newcomer] = model.start_user(added, snapshot.newcomers.get(newcomer))
    else:
        snapshot.updates[user] = model.update_user(user, added, snapshot.updates.get(user))
    return snapshot


def apply_items(snapshot: Snapshot, event: Event) -> Snapshot:
    """New items: a new snapshot with them (ids the model already has are left as they are)."""
    entries = [e for e in event.payload["items"] if snapshot.model.items_.position(e["item"]) is None]
    return snapshot.with_items(entries) if entries else snapshot
