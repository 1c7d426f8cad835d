"""The service's event store: an append-only log of accepted writes in a real database.

Every write the service accepts (a user's new interactions, new items, a promoted model) is first
committed here as an event with a sequence number; only then is it applied to the in-memory state and
acknowledged. Workers (processes, or machines sharing a PostgreSQL server) apply the log in sequence
order, so they agree once caught up, and a restarted worker replays what its model has not seen.

One code path for every database, through SQLAlchemy Core:
- SQLite (the default, nothing to install): `sqlite:///path/to/events.sqlite`, in WAL mode (readers
  never block the writer) with synchronous=FULL (a committed event survives a crash of the machine,
  not only of the process) and a busy timeout for concurrent writers;
- PostgreSQL: `postgresql://user@host:port/db` (psycopg 3).

Tables: `events(seq, kind, user_id, payload, created)` where payload is JSON; `items(item_id, seq)`,
whose primary key makes concurrent additions of one item id resolve to exactly one winner; and
`requests(request_key, fingerprint, seq)`, the idempotency keys of writes that carried one (a retried
write finds its first attempt's event instead of committing a second copy).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import mmap
import os
import re
import socket
import sqlite3
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from recforge.errors import ConfigError
from recforge.serving import silence
from recforge.serving.writers_lock import WritersLock, WritersLockTimeout

EVENT_KINDS = ("interactions", "items", "model")
logger = logging.getLogger(__name__)
T = TypeVar("T")
CONNECTIONS = 16  # PostgreSQL connections per process at most (RECFORGE_STORE_CONNECTIONS overrides)
SCHEMA_WAIT = 3600.0  # seconds the schema step may wait (the server, a SQLite file's lock): index builds
WRITE_LOCK_SECONDS = 10.0  # the longest a write waits for the writers' lock (or, on PostgreSQL, an item's row)
_TOO_MANY_HINT = (
    " (each worker opens up to RECFORGE_STORE_CONNECTIONS connections, default 16: workers x connections, plus"
    " other clients, must stay under the server's max_connections)"
)
MAX_REQUEST_KEY = 255  # characters of an idempotency key
SCHEMA_LOCK_KEY = 0x7265_6366_6F72_6765 & 0x7FFF_FFFF_FFFF_FFFF  # "recforge": PostgreSQL advisory lock id


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    user: str | None
    payload: dict[str, Any]
    created: float


class DuplicateItemError(ConfigError):
    """An item id that is already in the store (a concurrent or repeated addition)."""


class StoreUnavailableError(RuntimeError):
    """The database could not be reached or refused the write: nothing was committed."""


@dataclass(frozen=True)
class RequestKey:
    """A write's idempotency key (chosen by the client) and the fingerprint of what the write asks (the
    service's digest of the request), committed with the write's event."""

    key: str
    fingerprint: str


class AlreadyCommitted(Exception):
    """The write's request key was committed before, with the same request: its event is `seq`, and
    nothing new was written."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"already committed as event {seq}")
        self.seq = seq


class RequestKeyReusedError(ConfigError):
    """A request key committed before with a different request: nothing was written."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key[:80]!r} was used before for a different request; a retry must repeat its "
            "request exactly, and a new request needs a new key"
        )


_POSTGRESQL = ("postgresql", "postgres", "postgresql+psycopg")  # the spellings of PostgreSQL URLs in use
# libpq's bounds on a PostgreSQL connection, unless the URL sets its own (`?connect_timeout=3`): without them
# a database host that accepts TCP and never answers (a hung server, a half-open firewall) held the opening,
# and every request after it, forever; a peer gone from the network held an open connection's query for the
# kernel's ~15-minute retransmission limit. Seconds, except tcp_user_timeout (milliseconds).
CONNECTION_BOUNDS: dict[str, int] = {
    "connect_timeout": 10,  # the whole connection start, per host
    "keepalives": 1,
    "keepalives_idle": 30,  # an idle pooled connection is probed after 30 s, every 10 s, given up after 3
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # data sent and not acknowledged for 30 s: the connection is dead
}


def redacted(url: str) -> str:
    """A store URL with its password shown as *** (for reports and start-up lines)."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return url


class EventStore:
    """Append and read events; thread-safe (one SQLAlchemy engine, a connection per call)."""

    def __init__(self, url: str, wait: float = 0.0, connections: int = CONNECTIONS) -> None:
        """Open (and create the tables of) the store at `url`. `wait`: seconds to keep retrying a PostgreSQL
        server that does not answer yet (a service started beside its database, or during a restart);
        0 fails at once. `connections`: the most PostgreSQL connections this process opens (half kept in
        its pool, half opened for bursts); every worker of a service has its own."""
        try:
            import sqlalchemy as sa
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("the event store needs SQLAlchemy: pip install 'recforge[serve]'") from exc
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.networked = not self.sqlite  # a database server: it can go silent mid-ask (`recforge.serving.silence`)
        scheme, _, rest = url.partition("://")
        if not self.sqlite and scheme not in _POSTGRESQL:
            raise ConfigError(
                f"the event store must be SQLite (sqlite:///path) or PostgreSQL (postgresql://user@host:port/db), "
                f"not {scheme[:40]!r}: sequence numbers become visible in order only on those two (docs/serving.md)"
            )
        if scheme in _POSTGRESQL:
            url = "postgresql+psycopg://" + rest
        options: dict[str, Any] = {}
        if self.sqlite:
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
            if url in ("sqlite://", "sqlite:///:memory:"):  # one shared in-memory database (tests, notebooks)
                options["poolclass"] = sa.pool.StaticPool
        else:
            if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
                raise ConfigError(f"connections must be a whole number of at least 1, not {connections!r}")
            kept = (connections + 1) // 2
            options |= {"pool_size": kept, "max_overflow": connections - kept, "pool_pre_ping": True}
            given = set(sa.engine.make_url(url).query)  # the URL's own settings win
            options["connect_args"] = {key: value for key, value in CONNECTION_BOUNDS.items() if key not in given}
        try:
            self.engine = sa.create_engine(url, **options)
        except Exception as exc:
            raise ConfigError(f"cannot open the event store {redacted(self.url)!r}: {exc}") from exc
        if self.sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            own_timeout = "connect_timeout" in sa.engine.make_url(url).query
            sa.event.listen(self.engine, "do_connect", functools.partial(_silence_bounded_connect, own_timeout))
        metadata = sa.MetaData()
        self.events = sa.Table(
            "recforge_events",
            metadata,
            sa.Column(
                "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
            ),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("user_id", sa.String(256), nullable=True),
            sa.Column("payload", sa.Text, nullable=False),
            sa.Column("created", sa.Float, nullable=False),
            # the start-up reads of one kind (the newest model, the items to replay) without a scan of the log
            sa.Index("recforge_events_kind_seq", "kind", "seq"),
        )
        self.items = sa.Table(
            "recforge_items",
            metadata,
            sa.Column("item_id", sa.String(256), primary_key=True),
            sa.Column("seq", sa.BigInteger, nullable=False),
        )
        self.requests = sa.Table(  # (a store made before it gets it at its next opening: `_create_missing`)
            "recforge_requests",
            metadata,
            sa.Column("request_key", sa.String(MAX_REQUEST_KEY), primary_key=True),
            sa.Column("fingerprint", sa.String(64), nullable=False),
            sa.Column("seq", sa.BigInteger, nullable=False),
        )
        self._sa = sa
        database = self.engine.url.database
        self._sqlite_file = database if self.sqlite and database not in (None, "", ":memory:") else None
        self._local = threading.local()
        self._said: dict[str, float] = {}  # reasons logged by `_unavailable`, and when
        self._writers_lock: WritersLock | None = None
        self._writer: sqlite3.Connection | None = None
        self._published: _PublishedSeq | None = None
        # an in-memory database is one connection shared by every thread (StaticPool): a reader returning
        # it to the pool rolled back whatever a writer had open on it, so its uses take turns
        self._shared_connection = threading.RLock() if options.get("poolclass") is not None else None
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._committing = False
        # `append_async`'s commits run here: never queued behind other blocking work
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="recforge-commit")
        self._bells: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Doorbell] = weakref.WeakKeyDictionary()
        try:
            self._create_tables_when_reachable(metadata, wait)
            if self._sqlite_file is not None:
                self._published = _PublishedSeq(f"{self._sqlite_file}.seq")
                self.refresh_published()
        except Exception as exc:
            raise ConfigError(f"cannot open the event store {redacted(self.url)!r}: {exc}") from exc

    def _create_tables_when_reachable(self, metadata: Any, wait: float) -> None:
        """`_create_tables`, retried for `wait` seconds while the database server cannot be reached."""
        self.when_reachable(lambda: self._create_tables(metadata), wait)

    def when_reachable(self, call: Callable[[], T], wait: float) -> T:
        """`call()`, retried for `wait` seconds while a PostgreSQL server cannot be reached (not answering
        yet, or restarting under a worker that is still starting; said once in the log); any other error,
        a SQLite store's, one that waiting cannot mend (a database or role that does not exist, a refused
        password) or the last one is raised."""
        deadline, pause = time.monotonic() + wait, 0.25
        while True:
            try:
                return call()
            except (self._sa.exc.OperationalError, StoreUnavailableError) as exc:
                if self.sqlite or _refused_for_good(exc) or time.monotonic() + pause > deadline:
                    raise
                if pause == 0.25:
                    cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
                    reason = getattr(cause, "orig", None) or cause or exc
                    logger.warning("waiting up to %gs for the event store %s: %s", wait, redacted(self.url), reason)
                time.sleep(pause)
                pause = min(2 * pause, 2.0)

    def _create_tables(self, metadata: Any) -> None:
        """Create the tables that do not exist yet, one process at a time: workers starting together on a
        fresh store each found the tables missing and the slower one's CREATE TABLE failed ("table
        recforge_items already exists"), which stopped `recforge serve --workers 2` at start-up. SQLite
        files take the writers' file lock; PostgreSQL takes a transaction-scoped advisory lock (its DDL
        is transactional, so the second process sees the first one's tables once it gets the lock)."""
        if self._sqlite_file is not None:  # (another worker may be building an index an upgrade added)
            with self._writers_of_this_file(SCHEMA_WAIT), self.engine.begin() as connection:
                self._create_missing(metadata, connection)
        elif self.sqlite:
            with self._connection(begin=True) as connection:
                self._create_missing(metadata, connection)
        else:  # an index an upgrade adds to a large log sends nothing for minutes: not a silent server
            with silence.bounded(SCHEMA_WAIT), self.engine.begin() as connection:
                connection.execute(self._sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                self._create_missing(metadata, connection)

    @staticmethod
    def _create_missing(metadata: Any, connection: Any) -> None:
        """The tables that do not exist, with their indexes, and the indexes a store made by an older recforge
        lacks (`create_all` skips an existing table's indexes): built once, in this transaction, on the first
        start after an upgrade (writes wait for it on PostgreSQL: 1.1 s for 3M events)."""
        metadata.create_all(connection)
        for table in metadata.sorted_tables:
            for index in table.indexes:
                index.create(connection, checkfirst=True)

    @contextlib.contextmanager
    def _connection(self, begin: bool = False, bound: float | None = None) -> Iterator[Any]:
        """A SQLAlchemy connection (in a transaction committed on success with `begin`); on an in-memory
        database, one thread's use at a time. On PostgreSQL, each wait for the server (the pool's ping, a
        statement, the commit) gives up after `bound` seconds without a word from it (the ping READ_SILENCE;
        the rest, by default, SLOW_SILENCE in a transaction and READ_SILENCE otherwise;
        `recforge.serving.silence`)."""
        with self._shared_connection or contextlib.nullcontext():  # entered before the connection is taken
            with silence.bounded(silence.READ_SILENCE):  # the pool's ping: a server that is up answers it at once
                connection = self.engine.connect()
            with (
                silence.bounded(bound or (silence.SLOW_SILENCE if begin else silence.READ_SILENCE)),
                connection,
                connection.begin() if begin else contextlib.nullcontext(),
            ):
                yield connection

    def _unavailable(self, doing: str, exc: BaseException) -> StoreUnavailableError:
        """The error of a read or write the database failed (`doing`: "cannot be read", "refused the
        write"). Clients get the error's class; the database's own words, which name hosts and ports, go to
        the log, at most once a minute per reason in each process (the follower thread says when an outage
        starts and ends; this says why requests fail, also when the database itself is up)."""
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:400]
        now = time.monotonic()
        if now - self._said.get(reason, -math.inf) >= 60.0:
            if len(self._said) >= 256:  # reasons that vary (a number in each) must not grow without end
                self._said.clear()
            self._said[reason] = now
            hint = _TOO_MANY_HINT if "too many clients" in reason else ""
            logger.warning("the event store %s %s: %s%s", redacted(self.url), doing, reason, hint)
        return StoreUnavailableError(f"the event store {doing}: {exc.__class__.__name__}")

    @classmethod
    def beside(cls, artifact: str | Path) -> EventStore:
        """The default store: a SQLite file next to the model artifact (`<artifact>.events.sqlite`)."""
        artifact = Path(artifact).resolve()
        return cls(f"sqlite:///{artifact.parent / (artifact.name + '.events.sqlite')}")

    # ------------------------------------------------------------------ writing
    def append(self, kind: str, payload: dict[str, Any], user: str | None = None, key: RequestKey | None = None) -> int:
        """Commit one event; returns its sequence number. Nothing is acknowledged before this returns.

        Group commit: events appended concurrently by this process (threads, or `append_async` on an event
        loop) share one transaction (one fsync). A thread that finds no commit in progress leads: it
        commits every event waiting when it starts, then those that arrived meanwhile, until none is left;
        the others wait for their event's outcome. A failed transaction fails every event in it and
        commits none.

        With a request `key`, the event is committed only if the key is new (the key with it, in the same
        transaction); a key committed before raises AlreadyCommitted with that event's seq (the same
        request) or RequestKeyReusedError (another one), and nothing is written. Of writes carrying one key
        at once, one commits and the others meet it."""
        pending = _Pending(kind, _encode(kind, payload), user, key=key)
        if self._enqueue(pending):
            self._drain()
        else:
            pending.done.wait()
        return pending.outcome()

    async def append_async(
        self,
        kind: str,
        payload: dict[str, Any],
        user: str | None = None,
        then: Callable[[int], Any] | None = None,
        key: RequestKey | None = None,
    ) -> Any:
        """`append` for an event loop, which serves other requests while the commit runs in the store's
        commit thread; returns the sequence number, or what `then(seq)` returns. `then` runs on the loop
        as soon as it notices the commit (`_Doorbell`), before the coroutine resumes: the HTTP layer sends
        the write's answer from it (not for a key committed before: AlreadyCommitted is raised instead).
        On the loop, a SQLite commit stopped every request of the process for its fsync (~0.3 ms alone,
        ~0.9 ms on a loaded machine, plus any wait for another worker's commit: 15% of a loaded worker's
        time at 10% writes). One thread leads every commit of the loop's writes: a thread per write made
        them contend with the loop for the GIL."""
        loop = asyncio.get_running_loop()
        with self._queue_lock:
            bell = self._bells.get(loop)
            if bell is None:
                bell = self._bells[loop] = _Doorbell(loop)
        pending = _Pending(
            kind, _encode(kind, payload), user, key=key, bell=bell, future=loop.create_future(), then=then
        )
        if self._enqueue(pending):
            self._committer.submit(self._drain)
        return await pending.future  # type: ignore[misc]

    def _enqueue(self, pending: _Pending) -> bool:
        """Queue an event for the next commit; True when the caller must lead (no commit in progress)."""
        with self._queue_lock:
            self._queue.append(pending)
            lead = not self._committing
            self._committing = True
        return lead

    def _drain(self) -> None:
        """Commit the queued events, batch after batch, until the queue is empty."""
        while True:
            with self._queue_lock:
                batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
                if not batch:
                    self._committing = False
                    return
            try:
                if self._sqlite_file is not None:
                    outcomes = self._commit_sqlite(batch)
                else:
                    outcomes = self._write(lambda connection, rows=batch: self._insert_rows(connection, rows))
                for entry, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        entry.error = outcome
                    else:
                        entry.seq = outcome
            except Exception as exc:
                for entry in batch:
                    entry.error = exc
            for entry in batch:
                entry.settle()
            for bell in {entry.bell for entry in batch if entry.bell is not None}:  # one wake-up per loop
                bell.ring()

    MAX_BATCH = 1000  # events per group commit: one INSERT of 4 parameters a row stays under SQLite's limit

    def _commit_sqlite(self, batch: list[_Pending]) -> list[int]:
        """One group commit on a SQLite file through a plain sqlite3 connection (only the leader uses it),
        with the pragmas of every connection (WAL, synchronous=FULL), published to the other processes
        before the writers' lock is released. Through SQLAlchemy's pool and Core the same commit cost ~8% of
        a loaded server's CPU; this is the hot path of every write. Other writes (items, models) and every
        other database go through Core."""
        connection = self._writer
        try:
            if connection is None:
                connection = sqlite3.connect(
                    self._sqlite_file, timeout=30, isolation_level=None, check_same_thread=False
                )
                _sqlite_pragmas(connection, None)
                self._writer = connection
            with self._writers_of_this_file():
                if any(entry.key is not None for entry in batch):
                    outcomes = self._insert_keyed_batch(connection, batch)
                else:
                    outcomes = self._insert_batch(connection, batch)
                seqs = [outcome for outcome in outcomes if not isinstance(outcome, Exception)]
                if seqs:  # (none when every write of the batch was committed before)
                    self._published.publish(max(seqs))  # type: ignore[union-attr]
                return outcomes
        except sqlite3.Error as exc:
            raise self._unavailable("refused the write", exc) from exc

    def _insert_keyed_batch(self, connection: sqlite3.Connection, batch: list[_Pending]) -> list[int | Exception]:
        """`_insert_batch` for a batch with request keys: one transaction that looks the keys up, inserts
        the events of the new ones and commits those keys with them (the writers' lock is held: nobody
        commits a key in between)."""
        keys = sorted({entry.key.key for entry in batch if entry.key is not None})
        connection.execute("BEGIN IMMEDIATE")
        try:
            rows = connection.execute(
                f"SELECT request_key, fingerprint, seq FROM recforge_requests WHERE request_key IN "
                f"({','.join('?' * len(keys))})",
                keys,
            ).fetchall()
            plan = _KeyedBatch(batch, {key: (fingerprint, int(seq)) for key, fingerprint, seq in rows})
            seqs = self._insert_batch(connection, plan.fresh) if plan.fresh else []
            connection.executemany("INSERT INTO recforge_requests VALUES (?, ?, ?)", plan.key_rows(seqs))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return plan.outcomes(seqs)

    def _insert_batch(self, connection: sqlite3.Connection, batch: list[_Pending]) -> list[int]:
        """The batch as one multi-row INSERT in autocommit mode: one statement is one transaction (its
        write lock taken as it starts, as BEGIN IMMEDIATE would; all rows or none), so the commit thread
        releases and retakes the GIL once per commit instead of around BEGIN, every insert and COMMIT
        (each a chance for the event loop to find the GIL taken). Rowids of one statement are
        consecutive: the sequence numbers are the last rowid and the ones before it."""
        rows = ",".join(["(?, ?, ?, ?)"] * len(batch))
        now = time.time()
        values = [value for p in batch for value in (p.kind, p.user, p.text, now)]
        last = connection.execute(
            f"INSERT INTO recforge_events (kind, user_id, payload, created) VALUES {rows}", values
        ).lastrowid
        return list(range(int(last) - len(batch) + 1, int(last) + 1))

    @contextlib.contextmanager
    def _writers_of_this_file(self, seconds: float | None = None) -> Iterator[None]:
        """Writers of one SQLite file (threads and processes) take turns (`recforge.serving.writers_lock`),
        each waiting at most `seconds` (default WRITE_LOCK_SECONDS), then failing with
        sqlite3.OperationalError (a 503 for a write: nothing was written). SQLite's own locking still
        decides (the busy timeout remains for writers that do not take this lock)."""
        if self._writers_lock is None:
            self._writers_lock = WritersLock(f"{self._sqlite_file}.writer-lock")
        try:
            with self._writers_lock.held(WRITE_LOCK_SECONDS if seconds is None else seconds):
                yield
        except WritersLockTimeout as exc:
            raise sqlite3.OperationalError(f"the writers' lock: {exc}") from exc

    def append_items(self, item_ids: list[str], payload: dict[str, Any], key: RequestKey | None = None) -> int:
        """Commit an `items` event together with the item ids it claims, in one transaction: if any id is
        already claimed (now, or by a concurrent writer), nothing is written and DuplicateItemError says
        which. A request `key` as in `append` (looked up first: a retry of a committed write raises
        AlreadyCommitted, not DuplicateItemError for its own items)."""
        sa = self._sa

        def write(connection: Any) -> int:
            earlier = None if key is None else self._earlier_commit(connection, key)
            if earlier is not None:
                raise AlreadyCommitted(earlier)
            seq = self._insert(connection, "items", payload, None)
            if key is not None:
                self._insert_keys(connection, [(key.key, key.fingerprint, seq)])
            try:
                connection.execute(self.items.insert(), [{"item_id": i, "seq": seq} for i in item_ids])
            except sa.exc.IntegrityError as exc:
                taken = connection.execute(
                    sa.select(self.items.c.item_id).where(self.items.c.item_id.in_(item_ids))
                ).scalars()
                raise DuplicateItemError(f"items already in the catalogue: {sorted(taken)[:5]}") from exc
            return seq

        return self._write(write)

    def _insert(self, connection: Any, kind: str, payload: dict[str, Any], user: str | None) -> int:
        return self._insert_text(connection, _Pending(kind, _encode(kind, payload), user))

    def _insert_rows(self, connection: Any, batch: list[_Pending]) -> list[int | Exception]:
        """A group commit's events through Core (writers already serialized), and the request keys of the
        ones that carry a key not committed before."""
        keys = sorted({entry.key.key for entry in batch if entry.key is not None})
        if not keys:
            return [self._insert_text(connection, entry) for entry in batch]
        plan = _KeyedBatch(batch, self._committed_keys(connection, keys))
        seqs = [self._insert_text(connection, entry) for entry in plan.fresh]
        self._insert_keys(connection, plan.key_rows(seqs))
        return plan.outcomes(seqs)

    def _insert_keys(self, connection: Any, rows: list[tuple[str, str, int]]) -> None:
        if rows:
            connection.execute(
                self.requests.insert(), [{"request_key": k, "fingerprint": f, "seq": seq} for k, f, seq in rows]
            )

    def committed_request(self, key: RequestKey) -> int | None:
        """The seq of the event committed under `key` (None if none was; RequestKeyReusedError if it came
        with another request)."""
        sa = self._sa
        try:
            with self._connection() as connection:
                return self._earlier_commit(connection, key)
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable("cannot be read", exc) from exc

    def _earlier_commit(self, connection: Any, key: RequestKey) -> int | None:
        found = self._committed_keys(connection, [key.key]).get(key.key)
        if found is not None and found[0] != key.fingerprint:
            raise RequestKeyReusedError(key.key)
        return None if found is None else found[1]

    def _committed_keys(self, connection: Any, keys: list[str]) -> dict[str, tuple[str, int]]:
        """{key: (fingerprint, seq)} of those of `keys` committed before."""
        table = self.requests
        query = self._sa.select(table.c.request_key, table.c.fingerprint, table.c.seq).where(
            table.c.request_key.in_(keys)
        )
        return {row.request_key: (row.fingerprint, int(row.seq)) for row in connection.execute(query)}

    def _insert_text(self, connection: Any, pending: _Pending) -> int:
        result = connection.execute(
            self.events.insert().values(
                kind=pending.kind, user_id=pending.user, payload=pending.text, created=time.time()
            )
        )
        return int(result.inserted_primary_key[0])

    def _write(self, work: Any) -> Any:
        sa = self._sa
        try:
            with self._connection(begin=True) as connection:  # commits on success, rolls back on any error
                self.serialize_writers(connection)
                done = work(connection)
            if self._published is not None:  # elsewhere there is no shared counter, only the database
                self.refresh_published()
            return done
        except (DuplicateItemError, AlreadyCommitted, RequestKeyReusedError):
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable("refused the write", exc) from exc

    def serialize_writers(self, connection: Any) -> None:
        """Sequence numbers must become visible in order, or a worker that has read seq 10 would never
        apply a seq 9 committed after it. SQLite has one writer at a time; on PostgreSQL a table lock
        taken first in every write transaction makes writers take numbers and commit one after another
        (readers are not blocked), each waiting at most WRITE_LOCK_SECONDS."""
        if not self.sqlite:
            # a writer that never finishes (a paused process, a forgotten session holding the lock) must not
            # hold every other write forever: they give up after WRITE_LOCK_SECONDS and answer 503
            milliseconds = round(WRITE_LOCK_SECONDS * 1000)
            connection.execute(self._sa.text(f"SET LOCAL lock_timeout = {milliseconds}"))
            connection.execute(self._sa.text("LOCK TABLE recforge_events IN SHARE ROW EXCLUSIVE MODE"))

    # ------------------------------------------------------------------ reading
    def latest_seq(self) -> int:
        """The newest committed sequence number every process of this store has been told of (0 for an
        empty store). Every read of the service asks this. A SQLite file's writers publish each commit's
        last seq in shared memory before the commit is acknowledged (`_PublishedSeq`), so an acknowledged
        write is always counted; reading 8 bytes costs ~0.3 µs and, unlike a query, never lets go of the
        GIL, which the commit thread may then hold when the event loop wants it back. PostgreSQL is asked."""
        if self._published is not None:
            return self._published.read()
        return self.committed_seq()

    def committed_seq(self) -> int:
        """The newest committed sequence number, asked of the database (a SQLite file through one plain
        sqlite3 connection per thread, ~3 µs; SQLAlchemy's pool and Core cost ~56 µs)."""
        if self._sqlite_file is not None:
            try:
                value = self._reader().execute("SELECT max(seq) FROM recforge_events").fetchone()[0]
            except sqlite3.Error as exc:
                raise self._unavailable("cannot be read", exc) from exc
            return int(value or 0)
        sa = self._sa
        try:
            with self._connection() as connection:
                value = connection.execute(sa.select(sa.func.max(self.events.c.seq))).scalar()
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable("cannot be read", exc) from exc
        return int(value or 0)

    def refresh_published(self) -> int:
        """Publish the database's newest seq if the shared counter is behind it (events a process committed
        and died before publishing, or committed through another program); returns it. At open, after
        each write through Core, and every second in a worker's follower thread."""
        if self._published is None:
            return self.latest_seq()
        committed = self.committed_seq()
        if committed > self._published.read():
            with self._writers_of_this_file():
                self._published.publish(self.committed_seq())
        return self._published.read()

    def events_after(self, seq: int, upto: int | None = None, kinds: tuple[str, ...] | None = None) -> list[Event]:
        """Events with seq in (seq, upto], in sequence order. (A SQLite file is read through the thread's
        plain sqlite3 connection, as `latest_seq`: workers call this whenever another one has written.)"""
        if self._sqlite_file is not None and kinds is None:
            try:
                rows = (
                    self._reader()
                    .execute(
                        "SELECT seq, kind, user_id, payload, created FROM recforge_events WHERE seq > ? AND seq <= ? "
                        "ORDER BY seq",
                        (seq, upto if upto is not None else 2**62),
                    )
                    .fetchall()
                )
            except sqlite3.Error as exc:
                raise self._unavailable("cannot be read", exc) from exc
            return [Event(int(r[0]), r[1], r[2], json.loads(r[3]), float(r[4])) for r in rows]
        sa = self._sa
        query = sa.select(self.events).where(self.events.c.seq > seq).order_by(self.events.c.seq)
        if upto is not None:
            query = query.where(self.events.c.seq <= upto)
        if kinds is not None:
            query = query.where(self.events.c.kind.in_(kinds))
        try:  # a read on the request path, or (`kinds`) a start-up scan of the log up to a point
            with self._connection(bound=silence.SLOW_SILENCE if kinds is not None else None) as connection:
                rows = connection.execute(query).all()
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable("cannot be read", exc) from exc
        return [Event(int(r.seq), r.kind, r.user_id, json.loads(r.payload), float(r.created)) for r in rows]

    def _reader(self) -> sqlite3.Connection:
        """This thread's plain sqlite3 connection to the store's file (reads only)."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self._sqlite_file, timeout=30, check_same_thread=False)  # type: ignore[arg-type]
            self._local.connection = connection
        return connection

    def latest_model(self) -> Event | None:
        """The newest `model` event (a promoted artifact), or None."""
        sa = self._sa
        query = sa.select(self.events).where(self.events.c.kind == "model").order_by(self.events.c.seq.desc()).limit(1)
        try:  # at start-up: with no model event among millions, the scan may take seconds
            with self._connection(bound=silence.SLOW_SILENCE) as connection:
                row = connection.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise self._unavailable("cannot be read", exc) from exc
        return None if row is None else Event(int(row.seq), row.kind, row.user_id, json.loads(row.payload), row.created)

    def count(self, kind: str | None = None) -> int:
        sa = self._sa
        query = sa.select(sa.func.count()).select_from(self.events)
        if kind is not None:
            query = query.where(self.events.c.kind == kind)
        with self._connection(bound=silence.SLOW_SILENCE) as connection:
            return int(connection.execute(query).scalar() or 0)

    def close(self) -> None:
        self._committer.shutdown(wait=True)
        for bell in list(self._bells.values()):
            bell.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._writers_lock is not None:
            self._writers_lock.close()
            self._writers_lock = None
        if self._published is not None:
            self._published.close()
            self._published = None
        self.engine.dispose()


@dataclass
class _Pending:
    """An event waiting for its group commit; a thread waits on `done`, a coroutine on `future` (and its
    loop runs `then(seq)` when it is committed)."""

    kind: str
    text: str
    user: str | None
    key: RequestKey | None = None
    seq: int | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    bell: _Doorbell | None = None
    future: asyncio.Future | None = None
    then: Callable[[int], Any] | None = None

    def settle(self) -> None:
        """Wake a waiting thread; a coroutine's loop is woken by its bell's `ring`, once per batch."""
        self.done.set()
        if self.bell is not None:
            self.bell.settled.append(self)

    def outcome(self) -> int:
        if self.error is not None:
            raise self.error
        return self.seq  # type: ignore[return-value]


class _KeyedBatch:
    """Which events of a group commit to insert, given the request keys committed before (`committed`:
    {key: (fingerprint, seq)}): those without a key and those whose key is new (`fresh`). An event whose
    key was committed before is answered with its earlier event (AlreadyCommitted) or refused
    (RequestKeyReusedError, another request); one whose key an earlier event of this batch carries waits
    for that event's seq."""

    def __init__(self, batch: list[_Pending], committed: dict[str, tuple[str, int]]) -> None:
        self.batch = batch
        self.fresh: list[_Pending] = []  # the events to insert, in batch order
        self._first: dict[str, int] = {}  # key -> index in `fresh` of the batch's first event with it
        self._settled: dict[int, tuple[str, tuple[str, int] | int]] = {}  # index in batch -> (key, earlier)
        for n, entry in enumerate(batch):
            key = entry.key
            if key is not None and key.key in committed:
                self._settled[n] = (key.key, committed[key.key])
            elif key is not None and key.key in self._first:
                self._settled[n] = (key.key, self._first[key.key])
            else:
                if key is not None:
                    self._first[key.key] = len(self.fresh)
                self.fresh.append(entry)

    def key_rows(self, seqs: list[int]) -> list[tuple[str, str, int]]:
        """(key, fingerprint, seq) of the keys the fresh events commit, given their seqs."""
        return [
            (entry.key.key, entry.key.fingerprint, seq)
            for entry, seq in zip(self.fresh, seqs, strict=True)
            if entry.key is not None
        ]

    def outcomes(self, seqs: list[int]) -> list[int | Exception]:
        """Each event's outcome in batch order: its seq, AlreadyCommitted or RequestKeyReusedError."""
        fresh = iter(seqs)
        answers: list[int | Exception] = []
        for n, entry in enumerate(self.batch):
            if n not in self._settled:
                answers.append(next(fresh))
                continue
            key, earlier = self._settled[n]
            if isinstance(earlier, int):  # an event of this batch
                first = self.fresh[earlier]
                earlier = (first.key.fingerprint, seqs[earlier])  # type: ignore[union-attr]
            fingerprint, seq = earlier
            same = fingerprint == entry.key.fingerprint  # type: ignore[union-attr]
            answers.append(AlreadyCommitted(seq) if same else RequestKeyReusedError(key))
        return answers


class _Doorbell:
    """How the commit thread hands committed events back to the event loop whose coroutines wait for
    them: it queues them and writes a byte to a socket pair the loop watches, and the loop runs each
    event's `then` and resolves its future from its I/O phase, first thing in its next iteration.
    `call_soon_threadsafe` would queue the callback behind every request the busy loop has ready, and the
    coroutine resumes only one iteration after that: a write took ~3 loop iterations to a read's one
    (writes' p50 ~15 ms against ~6.5 ms for reads at 4,000 requests/s; ~11 ms with the doorbell and the
    answer sent from `then`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the store's registry of bells must not keep a closed loop alive
        self.settled: deque[_Pending] = deque()  # filled by the commit thread, emptied by the loop
        self._ours, self._theirs = socket.socketpair()
        for end in (self._ours, self._theirs):
            end.setblocking(False)
        loop.add_reader(self._ours.fileno(), self._answer)

    def ring(self) -> None:
        """From the commit thread, after adding to `settled`."""
        with contextlib.suppress(BlockingIOError, OSError):  # full: earlier rings are unread and wake it for
            self._theirs.send(b"\0")  # this one too; closed: the loop is gone and nobody waits

    def _answer(self) -> None:
        """On the loop."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._ours.recv(4096):
                pass
        while self.settled:
            pending = self.settled.popleft()
            future = pending.future
            if future is None or future.done():  # a cancelled request: its event is committed all the same,
                continue  # and the engine applies it when it next catches up with the store
            try:
                value = pending.outcome()
                if pending.then is not None:
                    value = pending.then(value)
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(value)

    def close(self) -> None:
        loop = self._loop()
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop runs in another thread
                loop.remove_reader(self._ours.fileno())
        self._ours.close()
        self._theirs.close()


class _PublishedSeq:
    """The newest committed seq of a SQLite store in 8 bytes of shared memory (`<store>.seq`, mapped by
    every process that opens the store), so a read learns of other workers' writes without a query.
    Writers store a commit's last seq while they hold the writers' lock, after COMMIT and before the
    write is acknowledged, and never lower it; a process that dies between its COMMIT and the store is
    caught up by `EventStore.refresh_published` (its write was never acknowledged). One aligned 8-byte
    native store and load (a memcpy of 8 bytes: one instruction on x86-64 and arm64), so a reader sees
    the old value or the new one."""

    def __init__(self, path: str) -> None:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(descriptor).st_size < 8:
                os.ftruncate(descriptor, 8)  # zero-filled: nothing published yet (refreshed at open)
            self._map = mmap.mmap(descriptor, 8)
        finally:
            os.close(descriptor)

    def read(self) -> int:
        return struct.unpack_from("q", self._map)[0]

    def publish(self, seq: int) -> None:
        """Raise the published seq to `seq` (holding the writers' lock)."""
        if seq > self.read():
            struct.pack_into("q", self._map, 0, seq)

    def close(self) -> None:
        self._map.close()


# what a PostgreSQL server or libpq says when the URL itself is wrong (libpq gives connection errors no
# SQLSTATE, so the message is all there is; a server localised to another language is then waited for):
# a misspelt database or user, a refused password, and the URL's own settings — an unknown option or value
# (libpq's English, never localised here), TLS the server does not offer or a certificate that fails
_WRONG_URL = (
    "does not exist",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    "invalid connection option",
    "invalid URI query parameter",
    "but SSL was required",
    "certificate verify failed",
    "does not match host name",
)
_WRONG_VALUE = re.compile(r'invalid \w+ value: "')  # libpq: invalid sslmode value: "bogus"


def _refused_for_good(exc: BaseException) -> bool:
    """True when the URL itself is wrong: a misspelt database or user, a wrong password, an unknown option
    or value, TLS that cannot work — these fail at once instead of after RECFORGE_STORE_WAIT."""
    cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) else exc
    said = str(getattr(cause, "orig", None) or cause)
    return any(phrase in said for phrase in _WRONG_URL) or _WRONG_VALUE.search(said) is not None


def _silence_bounded_connect(own_timeout: bool, dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
    """SQLAlchemy's `do_connect`: psycopg's connection with its waits for the server bounded. A connection
    opened inside a read (the pool replacing one a silent server made it drop) starts within the read's
    bound, unless the URL sets its own `connect_timeout` (libpq counts whole seconds, at least 2)."""
    bound = silence.current_bound()
    if not own_timeout and bound < float(cparams.get("connect_timeout", math.inf)):
        cparams = {**cparams, "connect_timeout": max(2, math.ceil(bound))}
    return silence.connection_class().connect(*cargs, **cparams)


def _encode(kind: str, payload: dict[str, Any]) -> str:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    return json.dumps(payload, allow_nan=False, separators=(",", ":"))


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
