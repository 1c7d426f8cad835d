"""Reads through a store outage (`stale_reads`): answered from the worker's last confirmed state for as
long as allowed, each answer marked with how old that state is; 503 once the allowance is spent, and
plain answers again once the store is back. The PostgreSQL version is in test_engine.py."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from recforge.errors import ConfigError
from recforge.models import create_model
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService
from recforge.serving.store import StoreUnavailableError
from tests.serving.test_api import _artifact

pytestmark = pytest.mark.xdist_group("serving")
ALLOWED = 4.0  # seconds: room for a loaded machine between the outage and the last stale read


@pytest.fixture(scope="module")
def ials_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=16, n_iterations=4).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("stale") / "ials")


class _Unavailable:
    """A store's `latest_seq` while its database is down, counting how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        raise StoreUnavailableError("the event store cannot be read: OperationalError")


def _gauge(client: TestClient, name: str) -> float:
    line = next(line for line in client.get("/metrics").text.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def _until(condition, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = condition()
        if answer:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


def test_reads_through_an_outage_are_answered_for_their_allowance_and_marked(ials_dir, ml100k, monkeypatch):
    service = RecommenderService.from_artifact(ials_dir, "sqlite://", stale_reads=ALLOWED)
    user = int(ml100k.users.ids[0])
    path = f"/users/{user}/recommendations"
    with TestClient(create_app(service)) as client:  # the lifespan starts the follower thread
        fresh = client.get(path)
        assert fresh.status_code == 200 and "x-recforge-stale" not in fresh.headers
        assert client.get("/ready").json() == {"ready": True, "events_applied": 0}
        down = _Unavailable()
        monkeypatch.setattr(service.engine.store, "latest_seq", down)  # the database stops answering
        started = time.monotonic()
        stale = client.get(path)
        assert stale.status_code == 200 and stale.json() == fresh.json()
        assert 0 <= float(stale.headers["x-recforge-stale"]) <= ALLOWED
        ready = client.get("/ready").json()
        assert ready["ready"] and 0 <= ready["stale_seconds"] <= ALLOWED
        assert client.get("/health").json()["status"] == "degraded"
        similar = client.get(f"/items/{int(ml100k.items.ids[0])}/similar")  # every read, not one route
        assert similar.status_code == 200 and "x-recforge-stale" in similar.headers
        asked, burst = down.asked, time.monotonic()
        for _ in range(20):  # a failed store is not asked again by every read (a silent one holds each)
            assert client.get(path).status_code == 200
        # asked once a second by the follower thread, and by a read once the last failure is a second old
        assert down.asked - asked <= 2 + 2 * (time.monotonic() - burst), down.asked - asked
        assert _gauge(client, "recforge_stale_answers_total") == 22  # for an operator's alert: all counted
        assert 0 < _gauge(client, "recforge_store_unconfirmed_seconds") <= ALLOWED
        time.sleep(max(0.0, ALLOWED + 0.2 - (time.monotonic() - started)))
        spent = client.get(path)
        assert spent.status_code == 503 and "event store" in spent.json()["detail"]
        assert client.get("/ready").status_code == 503
        monkeypatch.undo()  # the database is back: the follower (or the next read) confirms the state
        back = _until(
            lambda: (r := client.get(path)).status_code == 200 and "x-recforge-stale" not in r.headers and r, 3.0
        )
        assert back.json() == fresh.json() and client.get("/ready").json() == {"ready": True, "events_applied": 0}
        assert _gauge(client, "recforge_store_unconfirmed_seconds") < 1.5  # the follower confirms each second


def test_without_an_allowance_reads_answer_503_as_before(ials_dir, ml100k, monkeypatch):
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    with TestClient(create_app(service)) as client:
        monkeypatch.setattr(service.engine.store, "latest_seq", _Unavailable())
        assert client.get(f"/users/{int(ml100k.users.ids[0])}/recommendations").status_code == 503
        assert client.get("/ready").status_code == 503


@pytest.mark.parametrize("allowance", [-1.0, float("inf"), float("nan"), "5", True])
def test_an_allowance_is_a_finite_number_of_seconds(ials_dir, allowance):
    with pytest.raises(ConfigError, match="stale_reads"):
        RecommenderService.from_artifact(ials_dir, "sqlite://", stale_reads=allowance)


def test_reads_do_not_all_wait_on_a_store_that_has_gone_silent(ials_dir, ml100k, monkeypatch):
    """A database that accepts and never answers holds each read that asks it for the read's silence bound
    (5 s, then a connection that cannot open). With stale reads allowed, once one ask has waited
    STALE_PATIENCE the other reads are answered from the state at once, marked, instead of joining it;
    without an allowance they wait, as before, for the store's answer."""
    import threading

    from recforge.serving.service import STALE_PATIENCE

    for allowance in (ALLOWED, 0.0):
        service = RecommenderService.from_artifact(ials_dir, "sqlite://", stale_reads=allowance)
        service.current()  # confirmed now
        silent, asked = threading.Event(), threading.Event()

        def hung(asked=asked, silent=silent) -> int:
            asked.set()
            silent.wait(30)  # a store that says nothing until released
            return 0

        monkeypatch.setattr(service.engine.store, "latest_seq", hung)
        first = threading.Thread(target=service.current, daemon=True)
        first.start()
        assert asked.wait(10)
        time.sleep(STALE_PATIENCE + 0.2)
        second = threading.Thread(target=service.current, daemon=True)
        started = time.monotonic()
        second.start()
        second.join(2.0)
        if allowance:
            assert not second.is_alive() and time.monotonic() - started < 1.0  # answered without asking
            assert service.stale_answers == 1 and service.stale_for(started) is not None
        else:
            assert second.is_alive() and service.stale_answers == 0  # waits for the store, as before
        silent.set()
        first.join(10)
        second.join(10)
        assert not first.is_alive() and not second.is_alive()
        monkeypatch.undo()


def test_a_read_whose_own_ask_meets_a_silent_server_is_answered_after_the_patience(ials_dir, monkeypatch):
    """On a database server (which can go silent mid-ask: each ask then waits out its silence bound, ~10 s)
    a read allowed to be stale asks in a helper thread and is answered from the state, marked, once its ask
    has taken STALE_PATIENCE: before, the reads already asking when the server went silent waited the whole
    bound. Past the allowance, or without one, the read waits for the store's answer as before."""
    import threading

    from recforge.serving.service import STALE_PATIENCE
    from tests.serving.servers import outcome_within

    for allowance, unconfirmed_first in ((ALLOWED, 0.0), (0.3, 0.5), (0.0, 0.0)):
        service = RecommenderService.from_artifact(ials_dir, "sqlite://", stale_reads=allowance)
        monkeypatch.setattr(service.engine.store, "networked", True)  # as PostgreSQL's, which can go silent
        service.current()  # confirmed now
        time.sleep(unconfirmed_first)
        silent = threading.Event()
        latest_seq = service.engine.store.latest_seq
        hung = lambda silent=silent, latest_seq=latest_seq: silent.wait(30) and latest_seq()  # noqa: E731
        monkeypatch.setattr(service.engine.store, "latest_seq", hung)
        threading.Timer(2.0, silent.set).start()  # the server answers again after 2 s
        outcome, seconds = outcome_within(service.current, give_up=10)
        assert outcome is service.engine.snapshot, outcome
        if unconfirmed_first < allowance:
            assert STALE_PATIENCE <= seconds < STALE_PATIENCE + 0.8 and service.stale_answers == 1, seconds
        else:  # past the allowance, or without one: the store's answer
            assert seconds >= 1.9 and service.stale_answers == 0, seconds
        silent.set()
        _until(lambda s=service: s.engine.waiting_on_store() == 0 and s.engine.unconfirmed_for() < 3, 5)
        monkeypatch.undo()
