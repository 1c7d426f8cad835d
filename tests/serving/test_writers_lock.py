"""The writers' lock of a SQLite store: threads and processes take turns, and a writer stopped while holding
the lock (simulated by another process that takes it and waits) no longer holds every other write forever."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import threading
import time

import pytest

from recforge.serving.store import EventStore, StoreUnavailableError
from recforge.serving.writers_lock import WritersLock, WritersLockTimeout

EVENT = {"user": 1, "items": [1], "ratings": [None]}


@contextlib.contextmanager
def held_by_another_process(path):
    """Another process holds the flock until the block's `release()` (or its end)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a+b'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.readline()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip

    def release() -> None:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)

    try:
        assert holder.stdout.readline().strip() == "held"
        yield release
    finally:
        holder.kill()
        holder.wait()


def free_for_others(path, within: float = 10.0) -> bool:
    """True once another open file can take the flock (polled: the helper releases it asynchronously)."""
    deadline = time.monotonic() + within
    with open(path, "a+b") as other:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(other, fcntl.LOCK_UN)
                return True
            except BlockingIOError:
                time.sleep(0.01)
    return False


def test_a_writer_stopped_holding_the_lock_fails_other_writes_after_the_bound_and_stores_nothing(tmp_path, monkeypatch):
    from recforge.serving import store as store_module

    monkeypatch.setattr(store_module, "WRITE_LOCK_SECONDS", 1.0)
    path = tmp_path / "events.sqlite"
    store = EventStore(f"sqlite:///{path}")
    before = store.append("interactions", EVENT, user="1")
    with held_by_another_process(f"{path}.writer-lock") as release:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="refused the write"):
            store.append("interactions", EVENT, user="1")
        assert 0.9 < time.monotonic() - started < 5
        assert store.latest_seq() == before == store.committed_seq()  # nothing was written
        release()
    assert free_for_others(f"{path}.writer-lock")  # granted to nobody when it came: released at once
    assert store.append("interactions", EVENT, user="1") == before + 1
    store.close()


def test_a_lock_that_comes_after_one_writer_gave_up_goes_to_the_next_one_waiting(tmp_path):
    path = tmp_path / "writers.lock"
    lock = WritersLock(str(path))
    with held_by_another_process(path) as release:
        with pytest.raises(WritersLockTimeout, match="another process"), lock.held(0.3):
            pass
        inside = threading.Event()
        leave = threading.Event()

        def second_writer() -> None:
            with lock.held(30):
                inside.set()
                leave.wait(30)

        writer = threading.Thread(target=second_writer)
        writer.start()
        time.sleep(0.2)
        assert not inside.is_set()
        release()
        assert inside.wait(10)  # the helper's flock went to the writer waiting now
        assert not free_for_others(path, within=0.3)  # and it is really held
        leave.set()
        writer.join(10)
    assert free_for_others(path)
    lock.close()


def test_threads_of_one_process_take_turns(tmp_path):
    """An flock belongs to an open file, not a thread: two threads of one store both 'held' it before."""
    lock = WritersLock(str(tmp_path / "writers.lock"))
    inside, leave = threading.Event(), threading.Event()

    def first() -> None:
        with lock.held(5):
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(10)
    with pytest.raises(WritersLockTimeout, match="another thread"), lock.held(0.2):
        pass
    leave.set()
    thread.join(10)
    with lock.held(1):
        assert not free_for_others(tmp_path / "writers.lock", within=0.1)
    lock.close()


def test_a_worker_opening_the_store_waits_out_another_ones_schema_work(tmp_path, monkeypatch):
    """Opening a store takes the writers' lock to create what is missing (an upgrade's index on a large log
    takes a while): a worker starting meanwhile waits its turn instead of failing after the write bound."""
    from recforge.serving import store as store_module

    path = tmp_path / "events.sqlite"
    EventStore(f"sqlite:///{path}").close()
    monkeypatch.setattr(store_module, "WRITE_LOCK_SECONDS", 0.3)
    with held_by_another_process(f"{path}.writer-lock") as release:
        timer = threading.Timer(1.5, release)
        timer.start()
        started = time.monotonic()
        store = EventStore(f"sqlite:///{path}")  # waits the 1.5 s, not failing after 0.3
        assert time.monotonic() - started > 1.2
        timer.join()
    # a write still gives up after its own bound
    with held_by_another_process(f"{path}.writer-lock"), pytest.raises(StoreUnavailableError):
        store.append("interactions", EVENT, user="1")
    store.close()
