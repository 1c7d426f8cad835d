"""Every request the issue found breaking the service, as a regression test: each is a 4xx naming the
field (or a correct 200), never a 500, and no request leaves the state broken for later ones."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recforge.models import create_model
from recforge.models.base import MAX_UPDATE_ITEMS
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService
from tests.serving.test_api import TOKEN, _artifact, serve

pytestmark = pytest.mark.xdist_group("serving")


@pytest.fixture(scope="module")
def tower_dir(ml100k, tmp_path_factory):
    model = create_model("two_tower", item_features=True, id_dropout=0.3, n_epochs=2).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("tt") / "tower")


@pytest.fixture(scope="module")
def mf_dir(ml100k, tmp_path_factory):
    return _artifact(create_model("mf", n_epochs=5).fit(ml100k), ml100k, tmp_path_factory.mktemp("mf") / "mf")


@pytest.fixture(scope="module")
def hnsw_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("hnsw") / "ials", index={"kind": "hnsw", "m": 4})


def raw_post(client: TestClient, url: str, text: str):
    return client.post(url, content=text.encode(), headers={"content-type": "application/json"})


def test_a_new_item_does_not_break_new_user_requests(tower_dir):
    client = serve(tower_dir)
    new = {"item": 99999, "title": "The Lost Reel", "genres": ["Sci-Fi"], "year": 1977}
    assert client.post("/items", json={"items": [new]}).status_code == 200
    for _ in range(3):
        response = client.post("/recommendations", json={"items": [{"item": 50, "rating": 5}], "k": 3})
        assert response.status_code == 200 and len(response.json()["items"]) == 3


def test_racing_writers_of_one_item_id_get_one_200_and_409s_and_reads_never_fail(tower_dir):
    client = serve(tower_dir)
    new = {"item": 77777, "title": "Twice", "genres": ["Drama"], "year": 1990}
    statuses, read_statuses = [], []
    start = threading.Barrier(9)

    def write():
        start.wait()
        statuses.append(client.post("/items", json={"items": [new]}).status_code)

    def read():
        start.wait()
        for _ in range(20):
            read_statuses.append(client.get("/users/1/recommendations", params={"k": 50}).status_code)

    threads = [threading.Thread(target=write) for _ in range(8)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [409] * 7 and set(read_statuses) == {200}
    assert client.get("/users/1/recommendations", params={"k": 1000}).status_code == 200
    assert client.get("/items/2/similar", params={"k": 1000}).status_code == 200
    assert client.app.state.service.model.n_items == 1683  # added once


@pytest.mark.parametrize("rating", ["NaN", "Infinity", "-Infinity", "1000", "-1e6", "true", '"5"'])
def test_ratings_must_be_finite_numbers_inside_the_scale(mf_dir, rating):
    client = serve(mf_dir)
    response = raw_post(client, "/users/2/interactions", f'{{"items": [{{"item": 50, "rating": {rating}}}]}}')
    assert response.status_code == 422 and "rating" in json.dumps(response.json())
    scores = client.post("/predict", json={"pairs": [{"user": 2, "item": 50}]}).json()["predictions"]
    assert np.isfinite(scores[0]["rating"])  # the user is not corrupted
    assert client.app.state.service.engine.store.count() == 0  # nothing was written


@pytest.mark.parametrize("user", ["²", "١", "1" * 4400, "-", "1.0", "0x1", " 1"])
def test_malformed_ids_are_422_and_never_another_user(mf_dir, user):
    client = serve(mf_dir)
    response = client.get(f"/users/{user}/recommendations")
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("k", ["NaN", "Infinity", "1e400", "true", "2.5", '"10"', "0", "1001"])
def test_k_in_a_body_must_be_a_bounded_integer(mf_dir, k):
    client = serve(mf_dir)
    response = raw_post(client, "/recommendations", f'{{"items": [], "k": {k}}}')
    assert response.status_code == 422 and "k" in json.dumps(response.json())


def test_ids_must_have_the_vocabularys_type(mf_dir):
    client = serve(mf_dir)
    assert client.post("/recommendations", json={"items": [{"item": "50"}]}).status_code == 422
    assert client.post("/recommendations", json={"items": [{"item": True}]}).status_code == 422
    assert client.post("/recommendations", json={"items": [{"item": 2**70}]}).status_code == 422
    assert client.post("/recommendations", json={"items": [{"item": 50}]}).status_code == 200


@pytest.mark.parametrize("path", ["\u0000", "models/\u0000x", "/nonexistent/model", "."])
def test_a_promotion_of_a_path_that_is_no_artifact_is_422_naming_it(mf_dir, path):
    """The fuzzer found `{"path": "\u0000"}` answered 500: resolving the path raised ValueError before the
    artifact checks began."""
    client = serve(mf_dir)
    response = client.post("/admin/models", json={"path": path})
    assert response.status_code == 422 and response.json()["detail"].startswith("path: cannot serve"), response.text
    assert client.app.state.service.engine.store.count("model") == 0


def test_new_item_features_are_checked_by_name(tower_dir):
    client = serve(tower_dir)
    cases = {
        "NaN year": '{"items": [{"item": 88001, "genres": ["Drama"], "year": NaN}]}',
        "string year": '{"items": [{"item": 88002, "genres": ["Drama"], "year": "old"}]}',
        "unknown feature": '{"items": [{"item": 88003, "colour": "red"}]}',
        "genres not a list": '{"items": [{"item": 88005, "genres": "Drama"}]}',
        "string id": '{"items": [{"item": "88006", "genres": ["Drama"]}]}',
    }
    for case, body in cases.items():
        response = raw_post(client, "/items", body)
        assert response.status_code == 422, (case, response.text)
    missing_year = client.post("/items", json={"items": [{"item": 88007, "genres": ["Drama"]}]})
    assert missing_year.status_code == 200  # a missing feature is unknown (the fitted fill value)
    title_only = client.post("/items", json={"items": [{"item": 88004, "title": "Nothing else"}]})
    assert title_only.status_code == 200  # every feature unknown: the item tower's prior for an item


def test_hnsw_answers_are_exactly_k_through_the_api(hnsw_dir, ml100k):
    client = serve(hnsw_dir)
    unseen = ml100k.n_items - int((ml100k.user_index == ml100k.users.index([13])[0]).sum())
    body = client.get("/users/13/recommendations", params={"k": 1000}).json()
    assert body["served_by"] == "model+ann" and len(body["items"]) == min(1000, unseen)


def test_a_users_overlay_stays_bounded(ml100k, tmp_path):
    client = serve(_artifact(create_model("ease").fit(ml100k), ml100k, tmp_path / "ease"))
    items = [int(i) for i in ml100k.items.ids]
    for start in range(0, 1600, 400):
        batch = [{"item": i} for i in items[start : start + 400]]
        assert client.post("/users/3/interactions", json={"items": batch}).status_code == 200
    update = client.app.state.service.snapshot.updates[ml100k.users.index([3])[0]]
    assert len(update.history.row_items(0)) <= MAX_UPDATE_ITEMS and len(update.items) <= ml100k.n_items
    assert client.get("/users/3/recommendations").status_code == 200


def test_writes_need_the_token_and_reads_can_too(mf_dir):
    service = RecommenderService.from_artifact(mf_dir, "sqlite://")
    body = {"items": [{"item": 50, "rating": 4}]}
    closed = TestClient(create_app(service))  # no token configured: writes are disabled
    assert closed.post("/users/2/interactions", json=body).status_code == 403
    open_reads = TestClient(create_app(service, write_token=TOKEN))
    assert open_reads.post("/users/2/interactions", json=body).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * len(TOKEN)}
    assert open_reads.post("/users/2/interactions", json=body, headers=wrong).status_code == 403
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert open_reads.post("/users/2/interactions", json=body, headers=right).status_code == 200
    assert open_reads.get("/users/2/recommendations").status_code == 200
    guarded = TestClient(create_app(service, write_token=TOKEN, read_token="reader-token-0123456789"))
    assert guarded.get("/users/2/recommendations").status_code == 401
    assert (
        guarded.get("/users/2/recommendations", headers={"Authorization": "Bearer reader-token-0123456789"}).status_code
        == 200
    )
    assert guarded.get("/health").status_code == 200  # health stays open for load balancers


def test_ids_holding_slashes_and_url_characters_are_served_by_their_percent_encoding(ml100k, tmp_path):
    """A shop's SKUs and customer ids are text: "SKU/12 #3?x=1" is sent as one %-encoded path segment. An
    id with a "/" was 404 "Not Found" on every path route (and the page's "more like this")."""
    from urllib.parse import quote

    from recforge.data.interactions import Interactions

    frame = ml100k.to_frame()
    frame["user_id"] = [f"cust/{u} %{u}" for u in frame["user_id"]]
    frame["item_id"] = [f"SKU/{i} #{i % 7}?x=1" for i in frame["item_id"]]
    shop = Interactions.from_frame(frame, timestamp="timestamp")
    model = create_model("ials", n_factors=16, n_iterations=4).fit(shop)
    client = serve(model.save(tmp_path / "shop"))
    user, item = "cust/1 %1", "SKU/50 #1?x=1"
    listed = client.get(f"/users/{quote(user, safe='')}/recommendations", params={"k": 3})
    assert listed.status_code == 200 and listed.json()["user"] == user and len(listed.json()["items"]) == 3
    assert all(row["item"].startswith("SKU/") for row in listed.json()["items"])
    similar = client.get(f"/items/{quote(item, safe='')}/similar", params={"k": 2})
    assert similar.status_code == 200 and similar.json()["item"] == item
    first = listed.json()["items"][0]["item"]
    written = client.post(f"/users/{quote(user, safe='')}/interactions", json={"items": [{"item": first}]})
    assert written.status_code == 200 and written.json()["user"] == user
    after = client.get(f"/users/{quote(user, safe='')}/recommendations", params={"k": 3}).json()
    assert after["served_by"].startswith("model (updated)") and first not in [row["item"] for row in after["items"]]
    missing = client.get(f"/users/{quote('cust/99999', safe='')}/recommendations")
    assert missing.status_code == 404 and "cust/99999" in missing.json()["detail"]
    counts = client.get("/metrics/json").json()["requests"]
    assert counts["/users/{user_id}/recommendations 200"] == 2 and counts["/items/{item_id}/similar 200"] == 1
