"""Turns of the writers of one SQLite event store, waited for at most a bound.

Writer processes of a SQLite file take an flock on `<file>.writer-lock` before they write: a blocked flock
wakes the moment the lock is released, where SQLite's busy handler sleeps 1, 2, 5, 10... ms whatever the
commit's length (~0.3 ms), with the event loop stopped. An flock is held by an open file, not by a thread,
so the threads of one process (the commit thread, the follower publishing a dead writer's commit, start-up)
also take turns on a threading lock first.

A writer stopped while it holds the lock (SIGSTOP, a debugger, a frozen container sharing the volume) held
every other write forever. flock takes no timeout, so a contended flock is waited for in a helper thread
that the writer stops waiting for after the bound; a lock granted to nobody any more is released at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
from collections.abc import Iterator


class WritersLockTimeout(TimeoutError):
    """Another writer held the lock for the whole bound: nothing was written."""


class WritersLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "a+b")  # noqa: SIM115 - held open for the store's life
        self._threads = threading.Lock()  # this process's writers, one at a time
        self._state = threading.Lock()  # guards the fields below and every flock call but the helper's wait
        self._granted = threading.Event()  # the helper took the flock for the writer that wants it
        self._wanted = False  # a writer waits for the helper's flock
        self._helping = False  # a helper thread is blocked in flock
        self._closed = False
        self._asked = threading.Event()  # the helper is asked to wait in flock
        self._helper: threading.Thread | None = None

    @contextlib.contextmanager
    def held(self, seconds: float) -> Iterator[None]:
        """The block runs holding the lock; WritersLockTimeout if it could not be had within `seconds`."""
        deadline = time.monotonic() + seconds
        if not self._threads.acquire(timeout=max(0.0, seconds)):
            raise WritersLockTimeout(f"another thread of this process held {self.path} for {seconds:g} s")
        try:
            if not self._take(deadline):
                raise WritersLockTimeout(f"another process held {self.path} for {seconds:g} s (stopped while writing?)")
            try:
                yield
            finally:
                with self._state:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _take(self, deadline: float) -> bool:
        with self._state:
            if not self._helping:  # with a helper in flock, this file may already hold it for nobody
                try:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    self._helping = True
                    if self._helper is None:  # one helper for the lock's life, started at the first contention
                        self._helper = threading.Thread(target=self._help, daemon=True, name="recforge-writers-lock")
                        self._helper.start()
                    self._asked.set()
            self._wanted = True
        if self._granted.wait(max(0.0, deadline - time.monotonic())):
            self._granted.clear()
            return True
        with self._state:
            if self._granted.is_set():  # granted between the wait's end and here
                self._granted.clear()
                return True
            self._wanted = False  # the helper releases it when it gets it
            return False

    def _help(self) -> None:
        """The helper: waits in flock whenever asked; hands the lock to the writer that wants it, else releases it."""
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._closed:
                return
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
            except (OSError, ValueError):  # closed between the check and the flock: the store is gone
                return
            with self._state:
                self._helping = False
                if self._closed:  # the store was closed meanwhile: closing the file releases the lock
                    self._file.close()
                    return
                if self._wanted:
                    self._wanted = False
                    self._granted.set()
                else:
                    fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        with self._state:
            self._closed = True
            self._asked.set()  # an idle helper ends
            if self._helping:  # its flock still uses the file: the helper closes it when the flock returns
                return
        self._file.close()
