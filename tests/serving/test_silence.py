"""The bound on a PostgreSQL server's silence is on silence, not on duration: a result that keeps arriving
is never cut, a server that says nothing for the bound is given up on. (The real server, paused with
SIGSTOP, is in test_engine.py.)"""

from __future__ import annotations

import pytest

from recforge.serving import silence

READ, NOTHING = 1, 0  # what psycopg's wait sends a generator: something became ready, or the 0.1 s tick


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def protocol(rounds: int):
    """A psycopg-like generator: waits for `rounds` reads, ignoring the ticks in between; returns "done"."""
    heard = 0
    while heard < rounds:
        ready = yield "waiting for the server"
        heard += bool(ready)
    return "done"


def drive(gen, clock: Clock, sends: list[tuple[float, int]]):
    """psycopg's wait: (seconds later, what became ready) sent in turn; the generator's value, or "cut"."""
    try:
        next(gen)
        for later, ready in sends:
            clock.now += later
            gen.send(ready)
    except StopIteration as done:
        return done.value
    raise AssertionError("the generator neither finished nor was cut")


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(silence.time, "monotonic", fake)
    return fake


def test_a_long_answer_that_keeps_arriving_is_not_cut(clock):
    silent = [False]
    sends = [(0.1, NOTHING), (0.1, NOTHING), (0.7, READ)] * 40  # 36 s in all, never 1 s without a word
    assert drive(silence._until_silent_for(protocol(40), 1.0, silent), clock, sends) == "done"
    assert clock.now > 30 and not silent[0]


def test_a_server_silent_for_the_bound_is_given_up_on(clock):
    silent = [False]
    sends = [(0.1, READ), *[(0.1, NOTHING)] * 30]
    assert drive(silence._until_silent_for(protocol(5), 1.0, silent), clock, sends) is None
    assert silent[0] and 1.0 < clock.now - 0.1 <= 1.2  # cut at the first tick past a second of silence


def test_the_bound_is_the_innermost_blocks_and_the_slow_one_outside_any():
    assert silence.current_bound() == silence.SLOW_SILENCE
    with silence.bounded(5.0):
        with silence.bounded(0.5):
            assert silence.current_bound() == 0.5
        assert silence.current_bound() == 5.0
    assert silence.current_bound() == silence.SLOW_SILENCE
