"""A bound on how long a PostgreSQL server may stay silent while the event store waits for it.

libpq bounds the opening of a connection (`connect_timeout`) and data the server does not acknowledge
(`tcp_user_timeout`), but not a server that acknowledges and never answers: a paused (SIGSTOP) or frozen
process, a host whose disk stalls, a proxy whose own queue never moves. A statement, commit or pre-ping on
an open connection then waited forever (measured: a read still waiting after 20 s), with it the request and
the worker thread it held, and the stale-reads allowance never began because nothing failed.

Every wait of a store's connection for the server (psycopg's `Connection.wait`: a statement, its results,
a commit) gives up once the server has sent nothing for the current bound, closes the connection (the pool
replaces it) and raises OperationalError, which the store turns into StoreUnavailableError (a 503, or a
stale answer where allowed). The bound is silence, not duration: a long result that keeps arriving is not
cut. A write given up after its COMMIT was sent may still have been committed by the server, as with any
connection lost mid-commit; it was not acknowledged.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterator
from typing import Any

# seconds of silence: reads on the request path (the newest sequence number, the events after a known one)
# answer in milliseconds; writes may wait WRITE_LOCK_SECONDS (10 s) for the writers' lock, and the rarer
# reads of the whole log (start-up reads, counts, the index an upgrade builds) get the same room
READ_SILENCE = 5.0
SLOW_SILENCE = 30.0

_current = threading.local()


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Waits for the server in this thread, within the block, give up after `seconds` of silence."""
    previous = getattr(_current, "seconds", None)
    _current.seconds = seconds
    try:
        yield
    finally:
        _current.seconds = previous


def current_bound() -> float:
    return getattr(_current, "seconds", None) or SLOW_SILENCE


def _until_silent_for(gen: Generator[Any, Any, Any], seconds: float, silent: list[bool]) -> Generator[Any, Any, Any]:
    """`gen` (a psycopg generator: it yields what it waits for and is sent what became ready), ended once
    nothing has become ready for `seconds` (psycopg's wait sends "nothing ready" every 0.1 s)."""
    heard = time.monotonic()
    try:
        waiting_for = next(gen)
        while True:
            ready = yield waiting_for
            if ready:
                heard = time.monotonic()
            elif time.monotonic() - heard > seconds:
                silent[0] = True
                return None
            waiting_for = gen.send(ready)
    except StopIteration as done:
        return done.value


_connection_class: Any = None


def connection_class() -> Any:
    """psycopg's Connection with its waits bounded (made on first use: psycopg is an optional dependency)."""
    global _connection_class
    if _connection_class is None:
        import psycopg

        class SilenceBoundedConnection(psycopg.Connection):  # type: ignore[type-arg]
            def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
                own = kwargs.get("timeout", args[1] if len(args) > 1 else None)  # wait(gen, interval, timeout)
                if own is not None:  # a caller with its own bound (psycopg's notifies, cancel) keeps it
                    return super().wait(gen, *args, **kwargs)
                seconds, silent = current_bound(), [False]
                answer = super().wait(_until_silent_for(gen, seconds, silent), *args, **kwargs)
                if silent[0]:
                    self.close()  # mid-protocol: unusable; closed, the pool drops it (SQLAlchemy: a disconnect)
                    raise psycopg.OperationalError(
                        f"the database server sent nothing for {seconds:g} s (paused, hung or overloaded); "
                        "the connection was closed"
                    )
                return answer

        _connection_class = SilenceBoundedConnection
    return _connection_class
