"""Idempotency keys: a write retried with its key (after a 503 that may hide a commit, a lost answer, a 202,
a client's own timeout) is answered from the event its first attempt committed, never committed twice;
a key reused for another request is refused. In the store (one transaction claims the key with its
event, also when writes with one key arrive together) and through both HTTP write paths."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from recforge.models import create_model
from recforge.serving.service import RecommenderService, request_key
from recforge.serving.store import (
    AlreadyCommitted,
    EventStore,
    RequestKey,
    RequestKeyReusedError,
)
from tests.serving.test_api import _artifact, applying_own_writes_fails, serve

pytestmark = pytest.mark.xdist_group("serving")
EVENT = {"user": 1, "items": [1], "ratings": [None]}


def _outcome(call):
    try:
        return call()
    except (AlreadyCommitted, RequestKeyReusedError) as exc:
        return exc


@pytest.fixture(params=["file", "memory"])
def store(request, tmp_path):
    return EventStore(f"sqlite:///{tmp_path / 'events.sqlite'}" if request.param == "file" else "sqlite://")


def test_a_keyed_write_commits_once_and_its_retry_is_told_its_event(store):
    first = store.append("interactions", EVENT, user="1", key=RequestKey("k-1", "same"))
    retry = _outcome(lambda: store.append("interactions", EVENT, user="1", key=RequestKey("k-1", "same")))
    assert isinstance(retry, AlreadyCommitted) and retry.seq == first == 1
    other = _outcome(lambda: store.append("interactions", EVENT, user="1", key=RequestKey("k-1", "another")))
    assert isinstance(other, RequestKeyReusedError) and "k-1" in str(other)
    assert store.append("interactions", EVENT, user="1") == 2  # without a key: every write commits
    assert store.append("interactions", EVENT, user="1", key=RequestKey("k-2", "same")) == 3  # keys are per write
    assert store.count() == 3
    assert (
        store.committed_request(RequestKey("k-1", "same")) == 1
        and store.committed_request(RequestKey("k-9", "x")) is None
    )
    with pytest.raises(RequestKeyReusedError):
        store.committed_request(RequestKey("k-2", "another"))


def test_writes_with_one_key_at_once_commit_one_event_and_all_are_told_it(store):
    """24 threads (group commits mixing keyed and plain events, and one key several times in a batch): four
    keys sent by four threads each, two of them once with another request, and eight plain writes."""
    outcomes: dict[int, object] = {}
    start = threading.Barrier(24)

    def write(n: int) -> None:
        key = None if n >= 16 else RequestKey(f"key-{n % 4}", "changed" if n in (12, 13) else "same")
        start.wait()
        outcomes[n] = _outcome(lambda: store.append("interactions", {**EVENT, "items": [n]}, user="1", key=key))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = store.events_after(0)
    assert len(events) == 4 + 8  # one per key, and every plain write
    for key in range(4):
        senders = [n for n in range(16) if n % 4 == key]
        written = [n for n in senders if isinstance(outcomes[n], int)]
        assert len(written) <= 1  # (none when the changed request came first and its key was taken by it)
        seqs = {outcomes[n] if isinstance(outcomes[n], int) else getattr(outcomes[n], "seq", None) for n in senders}
        seqs.discard(None)
        assert len(seqs) == 1, outcomes  # every sender that was not refused is told the same event
    changed = [outcomes[n] for n in (12, 13)]
    first = {event.seq: event.payload["items"][0] for event in events}
    for n, outcome in zip((12, 13), changed, strict=True):
        # refused, unless it came first for its key: then the others with that key are the refused ones
        assert isinstance(outcome, RequestKeyReusedError) or first[outcome] == n  # type: ignore[index]
    assert all(isinstance(outcomes[n], int) for n in range(16, 24))


def test_writes_with_one_key_from_an_event_loop_commit_one_event(store):
    async def main() -> list[object]:
        async def write(n: int) -> object:
            try:
                return await store.append_async("interactions", EVENT, "1", key=RequestKey("loop", "same"))
            except AlreadyCommitted as exc:
                return exc

        return await asyncio.gather(*(write(n) for n in range(10)))

    outcomes = asyncio.run(main())
    assert store.count() == 1
    assert sum(isinstance(o, int) for o in outcomes) == 1 and all(getattr(o, "seq", o) == 1 for o in outcomes)


def test_two_stores_on_one_file_commit_a_key_once(tmp_path):
    """Two workers' stores on one SQLite file: the writers' lock makes the key's lookup and claim atomic."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    stores, outcomes = [EventStore(url), EventStore(url)], []
    start = threading.Barrier(8)

    def write(n: int) -> None:
        start.wait()
        key = RequestKey(f"shared-{n % 2}", "same")
        outcomes.append(
            _outcome(lambda: stores[n % 2 if n < 4 else 1 - n % 2].append("interactions", EVENT, "1", key=key))
        )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].count() == 2 and sum(isinstance(o, int) for o in outcomes) == 2


def test_a_store_made_before_request_keys_gets_their_table(tmp_path):
    path = tmp_path / "events.sqlite"
    EventStore(f"sqlite:///{path}").append("interactions", EVENT, user="1")
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE recforge_requests")  # as a store of an older recforge
    store = EventStore(f"sqlite:///{path}")
    assert store.append("interactions", EVENT, user="1", key=RequestKey("k", "f")) == 2
    assert isinstance(
        _outcome(lambda: store.append("interactions", EVENT, "1", key=RequestKey("k", "f"))), AlreadyCommitted
    )


def test_a_request_key_is_visible_ascii_and_its_fingerprint_is_the_request():
    payload = {"user": 1, "items": [50], "ratings": [4.0]}
    assert request_key(None, "interactions", payload) is None
    one = request_key("550e8400-e29b-41d4-a716-446655440000", "interactions", payload)
    assert one == request_key("550e8400-e29b-41d4-a716-446655440000", "interactions", dict(reversed(payload.items())))
    for changed in [{"ratings": [5.0]}, {"user": 2}, {"items": [51]}]:
        assert one.fingerprint != request_key(one.key, "interactions", {**payload, **changed}).fingerprint  # type: ignore[union-attr]
    assert one.fingerprint != request_key(one.key, "items", payload).fingerprint  # type: ignore[union-attr]
    for bad in ["", "a b", "x" * 256, "ключ", "tab\tkey"]:
        with pytest.raises(Exception, match="Idempotency-Key must be 1 to 255 visible ASCII"):
            request_key(bad, "interactions", payload)


# ---------------------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def ials_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=16, n_iterations=4).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("keys") / "ials")


QUICK = pytest.mark.parametrize("quick", [True, False], ids=["quick path", "FastAPI route"])


@QUICK
def test_a_retried_write_is_answered_from_its_first_commit_and_applied_once(ials_dir, quick):
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service, quick_paths=quick)
    key = {"Idempotency-Key": "0b7c6c1e-3f0a-4c55-9c55-5a4f0d1b2e3a"}
    body = {"items": [{"item": 50}, {"item": 172}]}
    first = client.post("/users/13/interactions", json=body, headers=key)
    assert first.status_code == 200 and first.json()["replayed"] is False and first.json()["seq"] == 1
    again = client.post("/users/13/interactions", json=body, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == {**first.json(), "replayed": True}
    assert service.engine.store.count() == 1 and service.engine.applied_total == 1
    assert "recforge_writes_replayed_total 1.0" in client.get("/metrics").text
    plain = client.post("/users/13/interactions", json=body)  # no key: a second write of the same items
    assert plain.json()["seq"] == 2 and plain.json()["replayed"] is False


@QUICK
def test_a_key_reused_for_another_request_or_malformed_is_refused_and_nothing_is_written(ials_dir, quick):
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service, quick_paths=quick)
    assert (
        client.post(
            "/users/13/interactions", json={"items": [{"item": 50}]}, headers={"Idempotency-Key": "k"}
        ).status_code
        == 200
    )
    for user, items in [("13", [{"item": 51}]), ("14", [{"item": 50}]), ("13", [{"item": 50, "rating": 4}])]:
        reused = client.post(f"/users/{user}/interactions", json={"items": items}, headers={"Idempotency-Key": "k"})
        assert reused.status_code == 422 and "Idempotency-Key 'k' was used before" in reused.json()["detail"]
    for bad in ["", "a key", "x" * 256]:
        refused = client.post(
            "/users/13/interactions", json={"items": [{"item": 52}]}, headers={"Idempotency-Key": bad}
        )
        assert refused.status_code == 422, (bad, refused.text)
        assert refused.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert service.engine.store.count() == 1 and service.engine.applied_total == 1


def test_a_write_whose_answer_was_lost_is_found_by_its_retry_through_another_worker(ials_dir, tmp_path):
    """The first attempt committed on worker A and its answer never reached the client (A died, the
    connection broke, the client timed out); the retry lands on worker B: the same event, applied once."""
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    a = RecommenderService.from_artifact(ials_dir, url)
    b = RecommenderService.from_artifact(ials_dir, url)
    lost = a.add_interactions(13, [(50, None)], key="retry-me")
    answer = serve(b).post(
        "/users/13/interactions", json={"items": [{"item": 50}]}, headers={"Idempotency-Key": "retry-me"}
    )
    assert answer.status_code == 200 and answer.json()["replayed"] is True and answer.json()["seq"] == lost["seq"] == 1
    assert b.engine.store.count() == 1 and b.engine.applied == 1 and b.engine.applied_total == 1
    assert 50 not in [row["item"] for row in b.recommend_user("13", 20, True)["items"]]  # B applied it


@QUICK
def test_a_write_answered_202_and_retried_is_not_written_twice(ials_dir, monkeypatch, quick):
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service, quick_paths=quick)
    applying_own_writes_fails(service, monkeypatch)
    key = {"Idempotency-Key": "after-202"}
    late = client.post("/users/13/interactions", json={"items": [{"item": 50}]}, headers=key)
    assert late.status_code == 202 and late.json()["applied"] is False
    retry = client.post("/users/13/interactions", json={"items": [{"item": 50}]}, headers=key)
    assert retry.status_code == 503  # while the store cannot be read, neither can the retry be checked
    monkeypatch.undo()
    retry = client.post("/users/13/interactions", json={"items": [{"item": 50}]}, headers=key)
    assert retry.status_code == 200 and retry.json()["replayed"] is True and retry.json()["applied"] is True
    assert service.engine.store.count() == 1 and service.engine.applied_total == 1


def test_new_items_retried_with_their_key_are_not_a_conflict(ml100k, tmp_path):
    model = create_model("two_tower", item_features=True, n_epochs=1).fit(ml100k)
    service = RecommenderService.from_artifact(_artifact(model, ml100k, tmp_path / "tt"), "sqlite://")
    client = serve(service)
    new = {"item": 99999, "title": "A New Film (1998)", "genres": ["Drama"], "year": 1998}
    key = {"Idempotency-Key": "items-1"}
    first = client.post("/items", json={"items": [new]}, headers=key)
    assert first.status_code == 200 and first.json()["replayed"] is False
    again = client.post("/items", json={"items": [new]}, headers=key)
    assert again.status_code == 200 and again.json() == {**first.json(), "replayed": True}
    assert client.post("/items", json={"items": [new]}).status_code == 409  # without the key: a conflict
    other = client.post("/items", json={"items": [{**new, "item": 99998}]}, headers=key)
    assert other.status_code == 422 and "was used before" in other.json()["detail"]
    assert service.engine.store.count() == 1
    taken = client.post("/items", json={"items": [{**new, "item": 50}]}, headers={"Idempotency-Key": "items-2"})
    assert taken.status_code == 409 and service.engine.store.count() == 1  # a fresh key does not excuse a taken id


def test_a_promotion_retried_with_its_key_is_one_model_event(ials_dir):
    """A retried `POST /admin/models` without a key commits a second model event, and every worker loads
    the model again; with its key the retry is the first promotion's answer."""
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service)
    key = {"Idempotency-Key": "promote-1"}
    first = client.post("/admin/models", json={"path": str(ials_dir)}, headers=key)
    assert first.status_code == 200 and first.json()["replayed"] is False
    again = client.post("/admin/models", json={"path": str(ials_dir)}, headers=key)
    assert again.status_code == 200 and again.json() == {**first.json(), "replayed": True}
    assert service.engine.store.count("model") == 1
    assert client.post("/admin/models", json={"path": str(ials_dir)}).json()["seq"] == first.json()["seq"] + 1


def test_a_promotion_committed_while_the_store_cannot_be_read_answers_202(ials_dir, monkeypatch):
    """As for other writes: a 503 after the commit would invite a retry (a second model event)."""
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service)
    applying_own_writes_fails(service, monkeypatch)
    late = client.post("/admin/models", json={"path": str(ials_dir)})
    assert late.status_code == 202 and late.json() == {"seq": 1, "applied": False, "replayed": False}
    assert service.engine.store.count("model") == 1
