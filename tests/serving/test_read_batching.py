"""Exact-search reads that arrive together are scored together: each batched answer is the answer the
request gets alone (errors included, each to its own request), and concurrent HTTP requests do share
batches."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from recforge.errors import ConfigError, NonFiniteScoresError, UnknownIdError
from recforge.models import create_model
from recforge.serving.app import create_app
from recforge.serving.batching import ReadBatcher
from recforge.serving.service import RecommenderService

pytestmark = pytest.mark.xdist_group("serving")


@pytest.fixture(scope="module")
def ials_path(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)
    return model.save(tmp_path_factory.mktemp("batching") / "ials")  # no vector index: exact search


@pytest.fixture
def service(ials_path):
    return RecommenderService.from_artifact(ials_path, "sqlite://")


def test_a_batch_answers_each_request_as_it_is_answered_alone(service):
    service.add_interactions(7, [(50, None), (181, None)])  # user 7 now has an update: not batched
    requests = [
        (1, 10, True),
        (2, 3, True),
        (1, 25, False),
        (999999, 10, True),  # unknown
        (7, 10, True),  # updated since training
        (3, 0, True),  # k out of range
        (4, 1, False),
        (2, 10, True),
    ]
    answers = service.recommend_users(requests)
    assert len(answers) == len(requests)
    for (user, k, exclude_seen), answer in zip(requests, answers, strict=True):
        try:
            alone = service.recommend_user(user, k, exclude_seen)
        except Exception as exc:
            assert type(answer) is type(exc) and str(answer) == str(exc)
            continue
        assert [row["item"] for row in answer["items"]] == [row["item"] for row in alone["items"]]
        assert np.allclose([r["score"] for r in answer["items"]], [r["score"] for r in alone["items"]], atol=1e-5)
        assert answer["served_by"] == alone["served_by"] and len(answer["items"]) == k
    assert isinstance(answers[3], UnknownIdError) and isinstance(answers[5], ConfigError)
    assert answers[4]["served_by"] == "model (updated)"


def test_one_user_with_nan_scores_fails_alone(service, monkeypatch):
    model = service.model
    real, row = model._score_known, service.user_index(2)

    def poisoned(users):
        scores = real(users)
        scores[users == row] = np.nan
        return scores

    monkeypatch.setattr(model, "_score_known", poisoned)
    answers = service.recommend_users([(1, 5, True), (2, 5, True), (3, 5, True)])
    assert isinstance(answers[1], NonFiniteScoresError)
    assert len(answers[0]["items"]) == 5 and len(answers[2]["items"]) == 5


def test_the_batcher_coalesces_what_queues_behind_a_running_batch() -> None:
    calls: list[list[int]] = []
    release = threading.Event()

    def run(requests: list[int]) -> list:
        calls.append(list(requests))
        if len(calls) == 1:
            release.wait(5)  # the first batch is busy while the others queue
        return [ValueError(f"odd {r}") if r % 2 else r * 10 for r in requests]

    async def main() -> list:
        batcher = ReadBatcher(run, max_batch=8)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.create_task(batcher.submit(r)) for r in range(1, 21)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    results = asyncio.run(main())
    assert calls[0] == [0] and [len(c) for c in calls[1:]] == [8, 8, 4]  # 20 queued: batches of at most 8
    for request, result in enumerate(results):
        if request % 2:
            assert isinstance(result, ValueError) and str(result) == f"odd {request}"
        else:
            assert result == request * 10


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    def run(requests: list[str]) -> list:
        if "boom" in requests:
            raise RuntimeError("scoring failed")
        return [r.upper() for r in requests]

    async def main() -> tuple:
        batcher = ReadBatcher(run)
        failed = await asyncio.gather(batcher.submit("boom"), return_exceptions=True)
        return failed[0], await batcher.submit("ok"), batcher.draining

    failed, ok, draining = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and ok == "OK" and draining is None


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    def run(requests: list[int]) -> list:
        time.sleep(0.05)
        return [r + 1 for r in requests]

    async def main() -> list:
        batcher = ReadBatcher(run)
        head = asyncio.create_task(batcher.submit(0))
        await asyncio.sleep(0.01)
        gone, kept = asyncio.create_task(batcher.submit(1)), asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await asyncio.gather(head, kept)

    assert asyncio.run(main()) == [1, 3]


def test_concurrent_http_reads_share_batches_and_keep_their_own_statuses(service, monkeypatch):
    monkeypatch.setattr(service, "QUICK_EXACT_WORK", 0)  # as a large catalogue: exact reads leave the event loop
    assert not service.answers_quickly()
    real = service.recommend_users

    def slow(requests):  # a batch takes as long as on a large catalogue: the other reads queue meanwhile
        time.sleep(0.02)
        return real(requests)

    monkeypatch.setattr(service, "recommend_users", slow)
    app = create_app(service)
    users = [1, 2, 3, 999999, 4, 5, 6, 7, 8, 9, 10, 11]

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://recforge") as client:
            return await asyncio.gather(*(client.get(f"/users/{u}/recommendations?k=5") for u in users))

    responses = asyncio.run(main())
    for user, response in zip(users, responses, strict=True):
        if user == 999999:
            assert response.status_code == 404 and "999999" in response.json()["detail"]
            continue
        alone = service.recommend_user(user, 5, True)
        assert response.status_code == 200, response.text
        assert [row["item"] for row in response.json()["items"]] == [row["item"] for row in alone["items"]]
    assert app.state.reads.largest_batch > 1 and app.state.reads.batches < len(users)
    metrics = TestClient(app).get("/metrics").text
    largest = re.search(r"^recforge_read_batch_largest(?:\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
    assert largest is not None and float(largest.group(1)) == app.state.reads.largest_batch
