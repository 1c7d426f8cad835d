"""`recforge retrain` on MovieLens 100K: the model serves the first 90% of ratings by time, the newest 10%
arrive through the service as events (those of users and items the model knows), and retrain compares a
candidate with the serving model on the most recent of those events, then promotes or refuses it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from recforge.serving.retrain import report_paths, retrain, with_events
from recforge.serving.service import RecommenderService
from recforge.serving.store import EventStore
from recforge.train import TrainConfig, train
from tests.serving.servers import postgres_binaries, postgres_server

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("retrain")]
HOLDOUT = 0.3  # ML-100K's late ratings are mostly new users': 30% of the known users' events is ~40 users


@pytest.fixture(scope="module")
def stream(ml100k, tmp_path_factory):
    """(saved first 90% by time, the newest 10% of known users and items as (user, hour) batches)."""
    frame = ml100k.to_frame().sort_values("timestamp", kind="stable")
    cut = int(len(frame) * 0.9)
    base = ml100k.subset(frame.index.to_numpy()[:cut]).compact()
    path = base.save(tmp_path_factory.mktemp("retrain") / "base")
    tail = frame.iloc[cut:]
    tail = tail[tail["user_id"].isin(base.users.ids) & tail["item_id"].isin(base.items.ids)]
    batches = [
        (int(user), [(int(i), float(r)) for i, r in zip(group["item_id"], group["rating"], strict=True)])
        for (_, user), group in tail.groupby([tail["timestamp"] // 3600, "user_id"], sort=True)
    ]
    return path, batches


def config_for(base_path, model: str = "ials", index: str | None = None, **params) -> TrainConfig:
    defaults = {"ials": {"n_factors": 32, "n_iterations": 8}}.get(model, {})
    return TrainConfig.model_validate(
        {
            "seed": 0,
            "dataset": {"name": "saved", "path": str(base_path)},
            "model": {"model": model, "params": defaults | params},
            "index": {"kind": index} if index else None,
        }
    )


@pytest.fixture
def served(stream, tmp_path):
    """v1 trained on the base, a service over a SQLite store, and the stream posted through it."""
    return serve_stream(stream, tmp_path, f"sqlite:///{tmp_path / 'events.sqlite'}")


def serve_stream(stream, tmp_path, store_url: str):
    base_path, batches = stream
    config = config_for(base_path)
    v1 = train(config, tmp_path / "v1")
    service = RecommenderService.from_artifact(v1, store_url)
    for user, ratings in batches:
        service.add_interactions(str(user), ratings)
    return config, v1, service, EventStore(store_url), tmp_path


def test_retrain_promotes_a_candidate_that_is_not_worse_and_every_worker_swaps(served):
    _promotes_and_swaps(*served)


def test_retrain_over_postgresql_promotes_and_every_worker_swaps(stream, tmp_path):
    """The same cycle with the service's events in PostgreSQL, where deployments keep them."""
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql package)")
    with postgres_server() as url:
        config, v1, service, store, tmp_path = serve_stream(stream, tmp_path, url)
        _promotes_and_swaps(config, v1, service, store, tmp_path)
        assert store.count("model") == 1 and store.count("interactions") == len(stream[1])
        store.close()
        service.engine.store.close()


def _promotes_and_swaps(config, v1, service, store, tmp_path):
    latest = store.latest_seq()
    report = retrain(config, store, tmp_path / "v2", serving=v1, holdout=HOLDOUT)
    assert report["events"]["after_cutoff_until"] < latest  # the hold-out is the newest events
    assert report["events"]["holdout_users"] >= 30 and report["events"]["holdout_pairs"] >= 500
    assert report["serving_metrics"]["ndcg"] > 0.02  # a real comparison, not two empty lists
    assert report["decision"] == "promoted", report["reason"]
    assert report["candidate_metrics"]["ndcg"] >= report["serving_metrics"]["ndcg"]
    assert report["artifact"]["event_cutoff"] == latest  # refitted on every event
    written = json.loads(report_paths(tmp_path / "v2")[0].read_text())
    assert written["decision"] == "promoted" and "NDCG@10" in report_paths(tmp_path / "v2")[1].read_text()
    # the running service sees the model event and swaps in the background
    deadline = time.monotonic() + 60
    while service.engine.swaps == 0 and time.monotonic() < deadline:
        service.current()
        time.sleep(0.05)
    assert service.engine.swaps == 1 and service.snapshot.artifact == str((tmp_path / "v2").resolve())
    assert service.snapshot.cutoff == latest
    # a restarted worker starts on the promoted model
    restarted = RecommenderService.from_artifact(v1, store.url)
    assert restarted.snapshot.artifact == str((tmp_path / "v2").resolve())


def test_retrain_refuses_a_worse_candidate_and_says_why(served):
    config, v1, _, store, tmp_path = served
    worse = config_for(config.dataset.path, "most_popular")
    models_before = store.count("model")
    report = retrain(worse, store, tmp_path / "pop", serving=v1, holdout=HOLDOUT)
    assert report["decision"] == "refused" and "below the serving model's" in report["reason"]
    assert report["candidate_metrics"]["ndcg"] < report["serving_metrics"]["ndcg"]
    assert store.count("model") == models_before  # nothing was promoted
    assert "refused" in report_paths(tmp_path / "pop")[1].read_text()


def test_retrain_without_new_events_refuses(stream, tmp_path):
    base_path, _ = stream
    config = config_for(base_path)
    v1 = train(config, tmp_path / "v1")
    report = retrain(config, EventStore.beside(v1), tmp_path / "v2", serving=v1)
    assert report["decision"] == "refused" and "no interaction events" in report["reason"]


def test_retrain_with_too_few_users_refuses_and_says_what_to_do(stream, tmp_path):
    base_path, _ = stream
    config = config_for(base_path)
    v1 = train(config, tmp_path / "v1")
    store = EventStore.beside(v1)
    store.append("interactions", {"user": 999_999, "items": [2, 3], "ratings": [None, None]}, "999999")
    report = retrain(config, store, tmp_path / "v2", serving=v1)
    assert report["decision"] == "refused"
    assert "only 1 user in the hold-out (at least 10" in report["reason"] and "--holdout" in report["reason"]


def test_events_join_the_training_data(served):
    config, _, _, store, _ = served
    from recforge.data.loaders import load_dataset

    raw = load_dataset("saved", config.dataset.path)
    events = store.events_after(0)
    combined = with_events(raw, events, store.latest_seq())
    n_event_rows = sum(len(e.payload["items"]) for e in events if e.kind == "interactions")
    assert len(combined) == len(raw) + n_event_rows
    assert combined.timestamp.max() > raw.timestamp.max()  # event rows carry their commit time
    assert np.isfinite(combined.rating).all() and combined.rating_scale == raw.rating_scale


def test_ratings_for_data_without_ratings_are_refused_or_reported_never_dropped_silently(stream, tmp_path):
    """A model trained on interactions without ratings: the service refuses a rated write (the data has no
    rating column to keep it in) and takes the same items unrated; ratings already in a store (written by a
    service from before that check) are counted in the retrain report as not used."""
    from recforge.data import Interactions
    from recforge.data.loaders import load_dataset
    from recforge.errors import ConfigError

    base_path, batches = stream
    unrated = Interactions.from_frame(load_dataset("saved", base_path).to_frame(), timestamp="timestamp")
    config = config_for(unrated.save(tmp_path / "unrated"))
    v1 = train(config, tmp_path / "v1")
    service = RecommenderService.from_artifact(v1, f"sqlite:///{tmp_path / 'events.sqlite'}")
    user, ratings = batches[0]
    with pytest.raises(ConfigError, match=r"items\.0\.rating: ials was trained on interactions without ratings"):
        service.add_interactions(str(user), ratings)
    store = EventStore(service.engine.store.url)
    assert store.latest_seq() == 0  # nothing was written
    for user, ratings in batches:
        if user % 2:
            service.add_interactions(str(user), [(item, None) for item, _ in ratings])
        else:  # as an older service wrote them
            items, values = [item for item, _ in ratings], [value for _, value in ratings]
            store.append("interactions", {"user": user, "items": items, "ratings": values})
    report = retrain(config, store, tmp_path / "v2", serving=v1, holdout=HOLDOUT)
    written = sum(len(ratings) for user, ratings in batches if user % 2 == 0)
    assert report["events"]["ratings_not_used"] == written > 500
    text = report_paths(tmp_path / "v2")[1].read_text()
    assert f"{written} ratings written through the service were not used" in text


def test_the_service_swaps_to_a_retrained_model_without_failing_a_request(stream, tmp_path):
    """Two `recforge serve` workers under read/write load; `recforge retrain` (the CLI) promotes a candidate;
    both workers swap to it while every request keeps succeeding."""
    import subprocess
    import sys
    import threading

    import httpx

    from tests.serving.servers import Server

    base_path, batches = stream
    config_path = tmp_path / "serve.toml"
    config_path.write_text(
        f'seed = 0\n[dataset]\nname = "saved"\npath = "{base_path}"\n'
        '[model]\nmodel = "ials"\nparams = { n_factors = 32, n_iterations = 8 }\n[index]\nkind = "hnsw"\n'
    )
    v1 = train(config_for(base_path, index="hnsw"), tmp_path / "v1")
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    server = Server(v1, store_url, workers=2)
    try:
        with server.client() as client:
            for user, ratings in batches:  # the newest ratings arrive through the API
                body = {"items": [{"item": i, "rating": r} for i, r in ratings]}
                assert client.post(f"/users/{user}/interactions", json=body).status_code == 200
        users = sorted({user for user, _ in batches})
        items = sorted({item for _, ratings in batches for item, _ in ratings})  # known to v1
        outcomes: list[int | str] = []
        stop = threading.Event()

        def load(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with server.client() as client:
                while not stop.is_set():
                    user = int(rng.choice(users))
                    try:
                        if rng.random() < 0.1:
                            item = int(rng.choice(items))
                            response = client.post(f"/users/{user}/interactions", json={"items": [{"item": item}]})
                        else:
                            response = client.get(f"/users/{user}/recommendations", params={"k": 10})
                        outcomes.append(response.status_code)
                    except httpx.HTTPError as exc:
                        outcomes.append(type(exc).__name__)

        threads = [threading.Thread(target=load, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        command = [sys.executable, "-m", "recforge.cli", "retrain", str(config_path), "--output", str(tmp_path / "v2")]
        command += ["--serving", str(v1), "--store", store_url, "--holdout", str(HOLDOUT), "--tolerance", "0.05"]
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert finished.returncode == 0 and "promoted" in finished.stdout, finished.stdout + finished.stderr
        target = str((tmp_path / "v2").resolve())
        swapped: dict[int, str] = {}
        deadline = time.monotonic() + 120
        while len([a for a in swapped.values() if a == target]) < 2 and time.monotonic() < deadline:
            with server.client() as client:  # a new connection each time reaches either worker
                health = client.get("/health").json()
            swapped[health["worker"]] = health["artifact"]
            time.sleep(0.05)
        time.sleep(1.0)  # keep the load on the new model for a moment
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert list(swapped.values()) == [target, target], (swapped, server.process.stderr.read().decode()[-3000:])
    failures = [o for o in outcomes if o != 200]
    assert len(outcomes) > 500 and not failures, (len(outcomes), failures[:10])
    print(f"swap under load: {len(outcomes)} requests, 0 failed")


def test_an_idle_worker_follows_the_store_and_refuses_a_model_with_another_api(stream, tmp_path):
    base_path, _ = stream
    v1 = train(config_for(base_path), tmp_path / "v1")
    v2 = train(config_for(base_path, n_factors=16), tmp_path / "v2")
    rated = train(config_for(base_path, "mf", n_epochs=2), tmp_path / "mf")  # ratings: another request schema
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    idle = RecommenderService.from_artifact(v1, store_url)
    stop = idle.engine.follow(interval=0.05)
    try:
        admin = RecommenderService.from_artifact(v1, store_url)
        with pytest.raises(Exception, match="different API"):
            admin.promote(str(rated))
        admin.promote(str(v2))
        deadline = time.monotonic() + 30
        while idle.engine.swaps == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # no request reaches `idle`: only its follower thread can notice
    finally:
        stop.set()
    assert idle.engine.swaps == 1 and idle.snapshot.artifact == str(v2.resolve())


def test_users_the_model_never_saw_are_served_from_their_writes_then_learned_by_retrain(ml100k, stream, tmp_path):
    """All late ratings of ML-100K on items the model knows, posted through the service in time order,
    including those of users who joined after the 90% cut-off: each newcomer is served from what they wrote,
    and the model retrain promotes has every one of them as a user."""
    from recforge.models import load_model

    base_path, _ = stream
    frame = ml100k.to_frame().sort_values("timestamp", kind="stable")
    cut = int(len(frame) * 0.9)
    base_users, base_items = set(frame["user_id"].iloc[:cut]), set(frame["item_id"].iloc[:cut])
    tail = frame.iloc[cut:]
    tail = tail[tail["item_id"].isin(base_items)]
    newcomers = sorted({int(u) for u in tail["user_id"]} - {int(u) for u in base_users})
    config = config_for(base_path)
    v1 = train(config, tmp_path / "v1")
    store_url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    service = RecommenderService.from_artifact(v1, store_url)
    for (_, user), group in tail.groupby([tail["timestamp"] // 3600, "user_id"], sort=True):
        ratings = [(int(i), float(r)) for i, r in zip(group["item_id"], group["rating"], strict=True)]
        answer = service.add_interactions(str(user), ratings)
        assert answer["updated_by"].startswith("new user") == (int(user) in newcomers)
    assert len(newcomers) >= 20
    first = service.recommend_user(str(newcomers[0]), 10)
    assert first["served_by"] == "model (new user)" and len(first["items"]) == 10
    # promoted unless clearly worse: the hold-out's few dozen users make small differences noise
    report = retrain(config, EventStore(store_url), tmp_path / "v2", serving=v1, holdout=HOLDOUT, tolerance=0.02)
    assert report["decision"] == "promoted", report["reason"]
    promoted = load_model(tmp_path / "v2")
    assert all(promoted.users_.position(u) is not None for u in newcomers)  # learned from their events
    deadline = time.monotonic() + 60
    while service.engine.swaps == 0 and time.monotonic() < deadline:
        service.current()
        time.sleep(0.05)
    assert service.recommend_user(str(newcomers[0]), 10)["served_by"] == "model"  # a trained user now
    assert service.engine.snapshot.newcomers == {}
