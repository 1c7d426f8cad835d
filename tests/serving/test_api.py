"""The HTTP service on real MovieLens 100K models, through FastAPI's test client: every endpoint and
every error path, plus in-place updates and agreement between ANN and exact retrieval."""

from __future__ import annotations

import json
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import event, given, settings
from hypothesis import strategies as st

from recforge.artifacts import index_writers
from recforge.data.catalogue import ITEMS_FILE, item_metadata
from recforge.data.query import History
from recforge.models import create_model
from recforge.retrieval.ann import VectorIndex
from recforge.serving.app import create_app
from recforge.serving.service import RecommenderService

pytestmark = pytest.mark.xdist_group("serving")
TOKEN = "test-token-0123456789abcdef"


def serve(source, store: str = "sqlite://", **options) -> TestClient:
    """A client of an artifact path (or a ready service) with its own in-memory event store and the write
    token in every request."""
    service = source if isinstance(source, RecommenderService) else RecommenderService.from_artifact(source, store)
    app = create_app(service, write_token=TOKEN, **options)
    return TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})


def _artifact(model, data, path, index=None):
    items = item_metadata(data)
    extra = {ITEMS_FILE: lambda p: items.to_parquet(p, index=False)}
    if index is not None:
        extra |= index_writers(VectorIndex(index).build(model.item_embeddings()))
    return model.save(path, extra_files=extra)


@pytest.fixture(scope="module")
def ials_dir(ml100k, tmp_path_factory):
    model = create_model("ials", n_factors=32, n_iterations=8).fit(ml100k)
    return _artifact(model, ml100k, tmp_path_factory.mktemp("a") / "ials", index={"kind": "hnsw"})


@pytest.fixture
def client(ials_dir):
    return serve(ials_dir)


@pytest.fixture(scope="module")
def mf_client(ml100k, tmp_path_factory):
    model = create_model("mf", n_epochs=10).fit(ml100k)
    path = _artifact(model, ml100k, tmp_path_factory.mktemp("b") / "mf")
    return serve(path)


def test_health(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "ials" and body["n_items"] == 1682 and body["ann"] is True


def test_user_recommendations_match_exact_search_and_exclude_seen(client, ml100k):
    body = client.get("/users/1/recommendations", params={"k": 10}).json()
    assert body["served_by"] == "model+ann" and len(body["items"]) == 10
    service = client.app.state.service
    exact = service.model.recommend([1], k=10)
    assert [row["item"] for row in body["items"]] == list(exact.items[0])
    seen = set(ml100k.items.lookup(ml100k.item_index[ml100k.user_index == ml100k.users.index([1])[0]]))
    assert not seen & {row["item"] for row in body["items"]}
    assert all("title" in row and isinstance(row["genres"], list) for row in body["items"])
    again = client.get("/users/1/recommendations", params={"k": 5, "exclude_seen": False}).json()
    assert len(again["items"]) == 5


@pytest.mark.parametrize("k", [0, -1, 1001, "ten"])
def test_k_is_bounded(client, k):
    response = client.get("/users/1/recommendations", params={"k": k})
    assert response.status_code == 422 and "k" in str(response.json()["detail"])


def test_unknown_ids_are_404_with_a_message(client):
    response = client.get("/users/999999/recommendations")
    assert response.status_code == 404
    assert response.json()["detail"].startswith("unknown user id 999999: the model was not trained with them")
    assert "POST /recommendations" in response.json()["detail"]  # what to do instead ("user_id id" before)
    assert client.get("/items/99999999/similar").status_code == 404
    assert client.get("/items/nope/similar").status_code == 422  # not an integer id: malformed, not unknown
    for path, kind in (("/items/nope/similar", "item"), ("/users/alice/recommendations", "user")):
        (error,) = client.get(path).json()["detail"]  # said in words, not as the regular expression
        assert error["msg"] == f"this model's {kind} ids are integers (up to 15 digits, optionally negative)"
        assert error["loc"] == ["path", f"{kind}_id"]
    response = client.post("/users/alice/interactions", json={"items": [{"item": 50}]})
    assert response.status_code == 422 and "user ids are integers" in response.json()["detail"][0]["msg"]
    response = client.post("/recommendations", json={"items": [{"item": 123456, "rating": 4}]})
    assert response.status_code == 404 and "123456" in response.json()["detail"]


def test_new_user_is_served_from_their_history_and_empty_means_popularity(client):
    star_wars = client.post("/recommendations", json={"items": [{"item": 50, "rating": 5}, {"item": 172}], "k": 5})
    body = star_wars.json()
    assert star_wars.status_code == 200 and body["served_by"] == "history+ann"  # the index answers new users too
    assert 50 not in [r["item"] for r in body["items"]] and 181 in [
        r["item"] for r in body["items"]
    ]  # Return of the Jedi
    empty = client.post("/recommendations", json={"items": []}).json()
    assert empty["served_by"] == "popularity" and empty["note"] and empty["items"][0]["item"] == 50  # most rated


def test_malformed_bodies_name_the_field(client):
    response = client.post("/recommendations", json={"items": [{"rating": 4}]})
    assert response.status_code == 422 and "item" in str(response.json()["detail"])
    response = client.post("/recommendations", json={"items": [], "unexpected": 1})
    assert response.status_code == 422 and "unexpected" in str(response.json()["detail"])
    response = client.post("/recommendations", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def test_request_body_size_is_bounded(client):
    payload = b'{"items": [' + b'{"item": 1},' * 200_000 + b'{"item": 1}]}'
    response = client.post("/recommendations", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_a_chunked_body_without_a_length_is_bounded_too(client):
    def chunks():  # no Content-Length: the limit must count bytes as they arrive
        yield b'{"items": ['
        for _ in range(200_000):
            yield b'{"item": 1},'
        yield b'{"item": 1}]}'

    response = client.post("/recommendations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "bytes" in response.json()["detail"]
    small = client.post(
        "/recommendations",
        content=iter([b'{"items": [', b'{"item": 50}]}']),
        headers={"content-type": "application/json"},
    )
    assert small.status_code == 200 and small.json()["served_by"] == "history+ann"


def test_similar_items(client):
    body = client.get("/items/50/similar", params={"k": 3}).json()
    assert body["served_by"] == "similar" and len(body["items"]) == 3 and 50 not in [r["item"] for r in body["items"]]


def test_title_search(client):
    body = client.get("/items", params={"query": "star wars"}).json()
    assert body["items"][0]["title"] == "Star Wars (1977)"
    assert client.get("/items", params={"query": ""}).status_code == 422
    nothing = client.get("/items", params={"query": "zzzzqqq"}).json()
    assert nothing == {"query": "zzzzqqq", "items": [], "closest": False}
    assert body["closest"] is False
    misspelt = client.get("/items", params={"query": "strar wars"}).json()  # no title contains it
    assert misspelt["closest"] is True and misspelt["items"][0]["title"] == "Star Wars (1977)"
    # people type the article first; MovieLens writes it last ("Usual Suspects, The (1995)")
    typed = client.get("/items", params={"query": "the usual suspects"}).json()["items"]
    assert [row["item"] for row in typed] == [12]
    # ... without accents or punctuation ("Misérables, Les (1995)", "Terminator 2: Judgment Day (1991)")
    assert [row["item"] for row in client.get("/items", params={"query": "les miserables"}).json()["items"]] == [543]
    plain = client.get("/items", params={"query": "terminator 2 judgment"}).json()["items"]
    assert [row["item"] for row in plain] == [96]


def test_predict_needs_a_rating_model(client, mf_client):
    response = client.post("/predict", json={"pairs": [{"user": 1, "item": 50}]})
    assert response.status_code == 409 and "does not predict" in response.json()["detail"]
    strings = mf_client.post("/predict", json={"pairs": [{"user": "2", "item": "1"}]})
    assert strings.status_code == 422 and "user" in str(strings.json()["detail"])  # ids keep their type
    body = mf_client.post("/predict", json={"pairs": [{"user": 1, "item": 50}, {"user": 2, "item": 1}]}).json()
    ratings = [p["rating"] for p in body["predictions"]]
    assert all(1 <= r <= 5 for r in ratings) and ratings[0] > 4  # user 1 rated Star Wars 5
    assert mf_client.post("/predict", json={"pairs": []}).status_code == 422


def test_a_model_that_scores_nan_answers_503_naming_it(mf_client, monkeypatch):
    model = mf_client.app.state.service.model
    monkeypatch.setattr(model, "_score_known", lambda users: np.full((len(users), model.n_items), np.nan, np.float32))
    monkeypatch.setattr(model, "_predict", lambda users, items: np.full(len(users), np.nan, np.float32))
    for response in (
        mf_client.get("/users/1/recommendations"),
        mf_client.post("/predict", json={"pairs": [{"user": 1, "item": 50}]}),
    ):
        assert response.status_code == 503 and "mf" in response.json()["detail"] and "NaN" in response.json()["detail"]


def test_new_interactions_update_the_user_in_place(client):
    before = client.get("/users/1/recommendations", params={"k": 10}).json()["items"]
    added = [before[0]["item"], before[1]["item"]]
    response = client.post("/users/1/interactions", json={"items": [{"item": i} for i in added]})
    assert response.status_code == 200 and "fold-in" in response.json()["updated_by"]
    after = client.get("/users/1/recommendations", params={"k": 10}).json()
    assert after["served_by"] == "model (updated)+ann"
    assert not set(added) & {r["item"] for r in after["items"]}


def test_explicit_model_takes_a_map_step_towards_new_ratings(mf_client):
    service = mf_client.app.state.service
    before = service.predict([(5, 1)])[0]
    response = mf_client.post(
        "/users/5/interactions", json={"items": [{"item": 1, "rating": 5}, {"item": 2, "rating": 5}]}
    )
    assert response.json()["updated_by"].startswith("MAP")
    assert service.predict([(5, 1)])[0] > before


def test_non_factor_models_keep_a_history_overlay(ml100k, tmp_path):
    path = _artifact(create_model("ease").fit(ml100k), ml100k, tmp_path / "ease")
    client = serve(path)
    first = client.get("/users/1/recommendations", params={"k": 3}).json()["items"][0]["item"]
    assert (
        client.post("/users/1/interactions", json={"items": [{"item": first}]}).json()["updated_by"]
        == "history overlay"
    )
    after = client.get("/users/1/recommendations", params={"k": 3}).json()
    assert after["served_by"] == "history (updated)" and first not in [r["item"] for r in after["items"]]


def test_metrics_count_requests_and_latency(client):
    client.get("/health")
    client.get("/users/999999/recommendations")
    metrics = client.get("/metrics/json").json()
    assert metrics["requests"]["/health 200"] >= 1 and metrics["requests"]["/users/{user_id}/recommendations 404"] >= 1
    assert sum(metrics["latency_ms_histogram"].values()) == metrics["n"] >= 2


def test_metrics_in_the_prometheus_text_format(client):
    from prometheus_client.parser import text_string_to_metric_families

    client.get("/health")
    client.get("/users/999999/recommendations")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(response.text)}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["recforge_requests"].samples
        if s.name == "recforge_requests_total"
    }
    assert requests[("/health", "200")] >= 1 and requests[("/users/{user_id}/recommendations", "404")] >= 1
    histogram = {s.name: s for s in families["recforge_request_duration_seconds"].samples}
    assert histogram["recforge_request_duration_seconds_count"].value >= 2
    assert "recforge_events_applied" in families and "recforge_model_swaps" in families


def test_web_page_is_served(client):
    response = client.get("/")
    assert response.status_code == 200 and "Recommended for you" in response.text


def test_hnsw_index_roundtrips_and_agrees_with_exact_search(ials_dir):
    from recforge.artifacts import read_index

    index = read_index(ials_dir)
    service = RecommenderService.from_artifact(ials_dir)
    queries = service.model.user_embeddings(np.arange(100))
    approx, _ = index.search(queries, 10, service.model.seen_[:100])
    exact = service.model.recommend(np.arange(100), k=10, external_ids=False).item_index
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(approx, exact, strict=True)])
    assert recall >= 0.99


def test_new_items_from_features_join_the_catalogue(ml100k, tmp_path, monkeypatch):
    model = create_model("two_tower", item_features=True, id_dropout=0.3, n_epochs=3).fit(ml100k)
    service = RecommenderService.from_artifact(_artifact(model, ml100k, tmp_path / "tt"))
    client = serve(service)
    star_wars = ml100k.item_features.iloc[ml100k.items.index([50])[0]]
    new = {"item": 99999, "title": "Star Wars: The Lost Reel (1977)", "genres": list(star_wars["genres"]), "year": 1977}
    response = client.post("/items", json={"items": [new]})
    assert response.status_code == 200 and "item tower" in response.json()["embedded_by"]
    assert client.get("/items", params={"query": "lost reel"}).json()["items"][0]["item"] == 99999
    similar = client.get("/items/99999/similar", params={"k": 20}).json()["items"]
    assert len(similar) == 20
    genres = [set(row["genres"]) for row in similar]
    assert np.mean([bool(g & set(star_wars["genres"])) for g in genres]) > 0.5  # neighbours share its genres
    assert client.post("/items", json={"items": [new]}).status_code == 409  # already there now: a conflict
    described = pd.DataFrame({"genres": [["Sci-Fi", "Space Opera"], None], "year": [1977, None]})
    assert model.unseen_feature_values(described, "item") == [["genres 'space opera'"], []]  # read as no genre
    assert response.json()["note"] == ""
    odd = client.post("/items", json={"items": [{**new, "item": 99998, "genres": ["Sci-Fi", "Space Opera"]}]})
    assert odd.json()["note"].endswith("not among the values the model was trained with: genres 'space opera'")
    # committed, then the store could not be read to apply it: 202, applied once it can be read
    applying_own_writes_fails(service, monkeypatch)
    late = client.post("/items", json={"items": [{**new, "item": 99997, "title": "Star Wars: Later (1978)"}]})
    assert late.status_code == 202 and late.json()["applied"] is False and "not yet" in late.json()["embedded_by"]
    monkeypatch.undo()
    assert client.get("/items", params={"query": "star wars: later"}).json()["items"][0]["item"] == 99997
    ials = serve(RecommenderService(create_model("ials", n_iterations=2).fit(ml100k)))
    assert ials.post("/items", json={"items": [{"item": 5}]}).status_code == 409


def test_a_model_that_cannot_take_new_interactions_refuses_and_keeps_its_state(ml100k, tmp_path):
    path = _artifact(create_model("user_knn", feedback="implicit").fit(ml100k), ml100k, tmp_path / "uknn")
    client = serve(path)
    before = client.get("/users/1/recommendations", params={"k": 5}).json()
    response = client.post("/users/1/interactions", json={"items": [{"item": before["items"][0]["item"]}]})
    assert response.status_code == 409 and "retraining" in response.json()["detail"]
    after = client.get("/users/1/recommendations", params={"k": 5}).json()
    assert after == before and after["served_by"] == "model"  # the refused request left nothing behind
    newcomer = client.post("/users/9000/interactions", json={"items": [{"item": before["items"][0]["item"]}]})
    assert newcomer.status_code == 409 and client.get("/users/9000/recommendations").status_code == 404


@pytest.fixture(scope="module")
def features_client(ml100k, tmp_path_factory):
    model = create_model("two_tower", user_features=True, n_epochs=3).fit(ml100k)
    path = _artifact(model, ml100k, tmp_path_factory.mktemp("f") / "tt-features")
    return serve(path)


def test_a_new_user_with_only_features_goes_through_the_user_tower(features_client, client):
    student = {"age": 21, "gender": "M", "occupation": "student"}
    retiree = {"age": 68, "gender": "F", "occupation": "retired"}
    answers = [
        features_client.post("/recommendations", json={"features": f, "k": 20}).json() for f in (student, retiree)
    ]
    assert [a["served_by"] for a in answers] == ["features", "features"]
    assert all(len(a["items"]) == 20 for a in answers)
    assert [r["item"] for r in answers[0]["items"]] != [r["item"] for r in answers[1]["items"]]  # features matter
    both = features_client.post("/recommendations", json={"features": student, "items": [{"item": 50, "rating": 5}]})
    assert both.json()["served_by"] == "features+history" and 50 not in [r["item"] for r in both.json()["items"]]
    partial = features_client.post("/recommendations", json={"features": {"gender": "F"}}).json()
    assert partial["served_by"] == "features"  # missing features count as unknown
    assert answers[0]["note"] == partial["note"] == ""
    # a category no training user had is read as unknown too, and the answer says so (it was silent)
    astronaut = features_client.post("/recommendations", json={"features": {**student, "occupation": "astronaut"}})
    assert astronaut.status_code == 200 and astronaut.json()["served_by"] == "features"
    assert astronaut.json()["note"] == (
        "read as unknown, not among the values the model was trained with: occupation 'astronaut'"
    )
    # a model without a user-feature tower says it ignored them instead of pretending
    ignored = client.post("/recommendations", json={"features": student, "items": [{"item": 50}]}).json()
    assert ignored["served_by"] == "history+ann" and "features ignored" in ignored["note"]
    nothing = client.post("/recommendations", json={"features": student}).json()
    assert nothing["served_by"] == "popularity" and "features ignored" in nothing["note"]


@pytest.mark.parametrize(
    ("features", "named"),
    [({"shoe_size": 43}, "shoe_size"), ({"age": "old"}, "age"), ({"age": [1, 2]}, "features")],
)
def test_bad_user_features_are_422_naming_the_field(features_client, features, named):
    response = features_client.post("/recommendations", json={"features": features})
    assert response.status_code == 422 and named in str(response.json()["detail"])


def _one_service(ials_dir) -> tuple[TestClient, TestClient]:
    """Two apps over one service: with the quick read path (the default) and without it."""
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    return serve(service), serve(service, quick_paths=False)


@pytest.fixture(scope="module")
def quick_and_plain(ials_dir) -> tuple[TestClient, TestClient]:
    return _one_service(ials_dir)


@settings(max_examples=150, deadline=None)
@given(
    user=st.one_of(st.sampled_from(["1", "13", "943", "0", "944", "-1", "007", "1" * 16]), st.text(max_size=5)),
    query=st.lists(
        st.tuples(
            st.sampled_from(["k", "exclude_seen", "explain", "genre", "exclude_item", "K", "other"]),
            st.one_of(
                st.sampled_from(["10", "1", "0", "1000", "1001", "true", "false", "True", "1"]), st.text(max_size=4)
            ),
        ),
        max_size=3,
    ),
)
def test_quick_reads_answer_exactly_what_fastapi_answers(quick_and_plain, user, query):
    """The quick path for GET /users/{id}/recommendations (serving/app.py `_QuickPaths`) answers byte for
    byte what FastAPI's route answers, for well-formed requests and every malformed one (which it leaves
    to FastAPI), and the metrics count it under the route."""
    quick, plain = quick_and_plain
    url = f"/users/{quote(user, safe='')}/recommendations"
    params = "&".join(f"{quote(name)}={quote(value)}" for name, value in query)
    fast, slow = quick.get(f"{url}?{params}"), plain.get(f"{url}?{params}")
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    assert fast.headers["content-type"] == slow.headers["content-type"]


@pytest.fixture(scope="module")
def quick_and_plain_writers(ml100k, tmp_path_factory) -> tuple[TestClient, TestClient]:
    """Two apps, each over its own service and in-memory store, on one explicit model: with the quick
    paths and without. Fed the same writes in the same order, their states stay equal."""
    model = create_model("mf", n_epochs=2, n_factors=8).fit(ml100k)
    path = _artifact(model, ml100k, tmp_path_factory.mktemp("writers") / "mf")
    return tuple(  # type: ignore[return-value]
        TestClient(create_app(RecommenderService.from_artifact(path, "sqlite://"), write_token=TOKEN, quick_paths=q))
        for q in (True, False)
    )


# each strategy leans towards values the route accepts, so that about half the writes are accepted
_ITEMS = st.one_of(
    st.integers(1, 1682),
    st.sampled_from([1683, 0, -1, 10**20]),
    st.integers(),
    st.text(max_size=3),
    st.booleans(),
    st.floats(),
)
_RATINGS = st.one_of(st.none(), st.sampled_from([1, 5, 3.5, 0, 6, 1000, True]), st.floats(1, 5), st.floats())
_VALID_ITEMS = st.lists(
    st.fixed_dictionaries(
        {"item": st.integers(1, 1682)}, optional={"rating": st.one_of(st.none(), st.integers(1, 5), st.floats(1, 5))}
    ),
    min_size=1,
    max_size=3,
)
_BODIES = st.one_of(
    st.fixed_dictionaries({"items": _VALID_ITEMS}).map(lambda body: json.dumps(body).encode()),
    st.fixed_dictionaries(
        {"items": st.lists(st.fixed_dictionaries({"item": _ITEMS}, optional={"rating": _RATINGS}), max_size=3)},
        optional={"extra": st.integers()},
    ).map(lambda body: json.dumps(body).encode()),  # NaN and Infinity come out as JSON5-style tokens
    st.binary(max_size=16),
    st.sampled_from([b"", b"null", b"[]", b'{"items": "50"}', b'{"items":[{"item":"50"}]}', b'{"items":[{}]}']),
)


@settings(max_examples=300, deadline=None)
@given(
    user=st.one_of(
        st.integers(1, 943).map(str), st.sampled_from(["944", "0", "-1", "007", "x", "١"]), st.text(max_size=4)
    ),
    body=_BODIES,
    content_type=st.sampled_from(["application/json"] * 5 + ["text/plain", None, "application/json; charset=utf-8"]),
    authorization=st.sampled_from(
        [f"Bearer {TOKEN}"] * 5 + ["Bearer wrong-token-0123456789", None, f"bearer {TOKEN}", f"Bearer  {TOKEN}"]
    ),
    key=st.one_of(
        st.none(), st.uuids().map(str), st.sampled_from(["k-1", "k-2", '"quoted-key"', "", "a key", "x" * 256])
    ),
)
def test_quick_writes_answer_exactly_what_fastapi_answers(
    quick_and_plain_writers, user, body, content_type, authorization, key
):
    """The quick path for POST /users/{id}/interactions answers byte for byte what FastAPI's route answers:
    accepted writes (same sequence numbers: both stores took the same writes), refused ones (bad token,
    wrong content type, malformed JSON, ids or ratings the request model refuses, unknown users and
    items), writes with an Idempotency-Key (replayed, refused as reused for another request, or
    malformed), and it leaves the store in the same state."""
    quick, plain = quick_and_plain_writers
    headers = {
        k: v
        for k, v in {"Content-Type": content_type, "Authorization": authorization, "Idempotency-Key": key}.items()
        if v is not None and (v or k == "Idempotency-Key")
    }
    url = f"/users/{quote(user, safe='')}/interactions"
    for _ in range(1 if key is None else 2):  # with a key, the retry too
        fast, slow = quick.post(url, content=body, headers=headers), plain.post(url, content=body, headers=headers)
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
        assert fast.headers["content-type"] == slow.headers["content-type"]
        assert fast.status_code != 500
        replayed = fast.status_code == 200 and fast.json()["replayed"]
        event(f"status {fast.status_code}" + (" (replayed)" if replayed else ""))


def test_quick_writes_are_measured_and_read_back(ials_dir):
    quick, _ = _one_service(ials_dir)
    item = quick.get("/users/13/recommendations?k=5").json()["items"][0]["item"]
    answer = quick.post("/users/13/interactions", json={"items": [{"item": item}]})
    assert answer.status_code == 200 and answer.json()["seq"] == 1
    assert item not in [r["item"] for r in quick.get("/users/13/recommendations?k=5").json()["items"]]
    counts = quick.get("/metrics/json").json()["requests"]
    assert counts["/users/{user_id}/interactions 200"] == 1


def applying_own_writes_fails(service: RecommenderService, monkeypatch) -> None:
    """From now on (until `monkeypatch.undo()`), the service's writes commit and then cannot read the store
    to apply their event (the database went away between the two): catching up fails whenever there is a
    committed event to apply."""
    from recforge.serving.store import StoreUnavailableError

    engine, catch_up = service.engine, service.engine.catch_up

    def applying_fails(upto=None, own=None):
        if (upto if upto is not None else engine.store.latest_seq()) > engine.applied:
            raise StoreUnavailableError("the event store cannot be read: OperationalError")
        return catch_up(upto, own)

    monkeypatch.setattr(engine, "catch_up", applying_fails)


@pytest.mark.parametrize("quick", [True, False], ids=["quick path", "FastAPI route"])
def test_a_write_committed_while_the_store_cannot_be_read_to_apply_it_answers_202(ials_dir, monkeypatch, quick):
    """The commit succeeded, then reading the store to apply it failed (the database went away in between,
    with another worker's events to read first): a 503 would invite a retry and a second copy of the write,
    so the answer is 202 with `applied` false; the event is in the store and is applied once it can be read."""
    service = RecommenderService.from_artifact(ials_dir, "sqlite://")
    client = serve(service, quick_paths=quick)
    item = client.get("/users/13/recommendations?k=5").json()["items"][0]["item"]
    applying_own_writes_fails(service, monkeypatch)
    answer = client.post("/users/13/interactions", json={"items": [{"item": item}]})
    assert answer.status_code == 202, answer.text
    assert answer.json()["applied"] is False and answer.json()["seq"] == 1
    assert "not yet" in answer.json()["updated_by"]
    assert [event.seq for event in service.engine.store.events_after(0)] == [1]  # committed
    assert service.engine.applied == 0
    monkeypatch.undo()
    assert item not in [r["item"] for r in client.get("/users/13/recommendations?k=5").json()["items"]]  # applied
    again = client.post("/users/13/interactions", json={"items": [{"item": 50}]})
    assert again.status_code == 200 and again.json()["applied"] is True and again.json()["seq"] == 2


def test_quick_reads_are_measured_and_follow_writes(ials_dir):
    quick, _ = _one_service(ials_dir)
    before = quick.get("/users/13/recommendations?k=5").json()
    item = before["items"][0]["item"]
    assert quick.post("/users/13/interactions", json={"items": [{"item": item}]}).status_code == 200
    after = quick.get("/users/13/recommendations?k=5").json()
    assert after["served_by"] == "model (updated)+ann" and item not in [r["item"] for r in after["items"]]
    counts = quick.get("/metrics/json").json()["requests"]
    assert counts["/users/{user_id}/recommendations 200"] == 2


def test_an_answer_sent_from_a_callback_finishes_even_when_send_has_to_wait():
    """The quick write path sends its answer from the store's callback, outside any task: a `send` that
    does not suspend is done on return; one that waits (back-pressure) is carried on by a task, in order,
    and an error from it surfaces from that task."""
    import asyncio

    from recforge.serving.app import _QuickPaths, _send_from_callback

    async def main() -> None:
        sent: list[str] = []

        async def plain(message: dict) -> None:
            sent.append(message["type"])

        assert _send_from_callback(_QuickPaths._send(plain, 200, b"{}")) is None
        assert sent == ["http.response.start", "http.response.body"]

        sent.clear()
        gate = asyncio.get_running_loop().create_future()

        async def paused(message: dict) -> None:
            if message["type"] == "http.response.body":
                await gate
            sent.append(message["type"])

        task = _send_from_callback(_QuickPaths._send(paused, 200, b"{}"))
        assert task is not None and sent == ["http.response.start"]
        await asyncio.sleep(0)
        assert sent == ["http.response.start"]
        gate.set_result(None)
        await task
        assert sent == ["http.response.start", "http.response.body"]

        broken = asyncio.get_running_loop().create_future()

        async def failing(message: dict) -> None:
            await broken
            raise ConnectionResetError("the client left")

        task = _send_from_callback(_QuickPaths._send(failing, 200, b"{}"))
        broken.set_result(None)
        with pytest.raises(ConnectionResetError):
            await task

    asyncio.run(main())


def test_a_new_user_id_is_created_by_its_first_write_and_served_as_its_history_would_be(client):
    written = [{"item": 50, "rating": 5}, {"item": 172}]
    assert client.get("/users/5000/recommendations").status_code == 404  # nothing written for them yet
    response = client.post("/users/5000/interactions", json={"items": written})
    assert response.status_code == 200
    assert response.json() == {
        "seq": response.json()["seq"],
        "user": "5000",
        "added": 2,
        "updated_by": "new user: fold-in of their interactions",
        "applied": True,
        "replayed": False,
    }
    more = [{"item": 181}]
    client.post("/users/5000/interactions", json={"items": more})
    stored = client.get("/users/5000/recommendations", params={"k": 8}).json()
    stateless = client.post("/recommendations", json={"items": written + more, "k": 8}).json()
    assert stored["served_by"] == "model (new user)+ann" and stateless["served_by"] == "history+ann"
    assert [r["item"] for r in stored["items"]] == [r["item"] for r in stateless["items"]]
    assert not {50, 172, 181} & {r["item"] for r in stored["items"]}
    assert client.get("/users/5001/recommendations").status_code == 404  # others stay unknown
    assert client.get("/health").json()["new_users"] == 1


def test_a_new_user_of_a_history_model_is_scored_by_its_history_and_predicted_by_a_rating_model(
    ml100k, tmp_path, mf_client
):
    ease = serve(_artifact(create_model("ease").fit(ml100k), ml100k, tmp_path / "ease"))
    assert ease.post("/users/7000/interactions", json={"items": [{"item": 50}]}).json()["updated_by"] == (
        "new user: history"
    )
    stored = ease.get("/users/7000/recommendations", params={"k": 5}).json()
    stateless = ease.post("/recommendations", json={"items": [{"item": 50}], "k": 5}).json()
    assert stored["served_by"] == "history (new user)"
    assert [r["item"] for r in stored["items"]] == [r["item"] for r in stateless["items"]]
    liked = [{"item": 1, "rating": 5}, {"item": 2, "rating": 5}, {"item": 3, "rating": 5}]
    disliked = [{"item": 1, "rating": 1}, {"item": 2, "rating": 1}, {"item": 3, "rating": 1}]
    mf_client.post("/users/7001/interactions", json={"items": liked})
    mf_client.post("/users/7002/interactions", json={"items": disliked})
    pairs = [{"user": 7001, "item": 4}, {"user": 7002, "item": 4}, {"user": 1, "item": 4}]
    fan, critic, _ = (p["rating"] for p in mf_client.post("/predict", json={"pairs": pairs}).json()["predictions"])
    assert fan > critic + 0.5
    assert mf_client.post("/predict", json={"pairs": [{"user": 7003, "item": 4}]}).status_code == 404


def test_a_user_not_yet_written_gets_the_predictions_a_write_would_give_and_nothing_is_stored(mf_client, client):
    """`POST /predict/new-user`: "what would I give this?" from the items rated now, stateless (before, a
    new user had to be written to the store to get a predicted rating)."""
    liked = [{"item": 1, "rating": 5}, {"item": 2, "rating": 5}, {"item": 3, "rating": 5}]
    mf_client.post("/users/7010/interactions", json={"items": liked})
    written = mf_client.post("/predict", json={"pairs": [{"user": 7010, "item": 4}, {"user": 7010, "item": 50}]})
    answer = mf_client.post("/predict/new-user", json={"items": liked, "predict": [4, 50]}).json()
    assert answer["served_by"] == "history" and answer["note"] == ""
    assert [p["item"] for p in answer["predictions"]] == [4, 50]
    expected = [p["rating"] for p in written.json()["predictions"]]
    np.testing.assert_allclose([p["rating"] for p in answer["predictions"]], expected, rtol=1e-5)
    nothing = mf_client.post("/predict/new-user", json={"predict": [50]}).json()
    assert nothing["served_by"] == "cold start" and nothing["note"] == "no history given"
    assert 1 <= nothing["predictions"][0]["rating"] <= 5
    before = mf_client.get("/health").json()["new_users"]
    mf_client.post("/predict/new-user", json={"items": [{"item": 9, "rating": 2}], "predict": [4]})
    assert mf_client.get("/health").json()["new_users"] == before  # stateless
    assert mf_client.post("/predict/new-user", json={"predict": [99999]}).status_code == 404
    assert (
        mf_client.post("/predict/new-user", json={"items": [{"item": 1, "rating": 9}], "predict": [4]}).status_code
        == 422
    )
    assert mf_client.post("/predict/new-user", json={"predict": []}).status_code == 422
    assert client.post("/predict/new-user", json={"predict": [4]}).status_code == 409  # ials ranks, does not rate


def test_a_new_users_writes_are_durable_and_read_through_another_worker(ials_dir, tmp_path):
    store = f"sqlite:///{tmp_path / 'events.db'}"
    first, second = serve(ials_dir, store), serve(ials_dir, store)
    first.post("/users/8000/interactions", json={"items": [{"item": 50}, {"item": 181}]})
    through_first = first.get("/users/8000/recommendations", params={"k": 5}).json()
    through_second = second.get("/users/8000/recommendations", params={"k": 5}).json()
    assert through_second == through_first  # the other worker applied the event before answering
    restarted = serve(ials_dir, store)  # a new process replays the log
    assert restarted.get("/users/8000/recommendations", params={"k": 5}).json() == through_first


def test_new_users_are_capped_until_a_retrain_learns_them(ials_dir, monkeypatch):
    import recforge.serving.service as service_module

    monkeypatch.setattr(service_module, "MAX_NEW_USERS", 2)
    client = serve(ials_dir)
    for user in (6000, 6001):
        assert client.post(f"/users/{user}/interactions", json={"items": [{"item": 50}]}).status_code == 200
    refused = client.post("/users/6002/interactions", json={"items": [{"item": 50}]})
    assert refused.status_code == 409 and "retrain" in refused.json()["detail"]
    assert client.get("/users/6002/recommendations").status_code == 404  # nothing was stored for them
    assert client.post("/users/6001/interactions", json={"items": [{"item": 181}]}).status_code == 200  # existing
    assert client.post("/users/1/interactions", json={"items": [{"item": 181}]}).status_code == 200  # trained


def test_explained_recommendations_name_the_users_items_behind_each(ml100k, tmp_path, client):
    """`explain=true`: each item carries `because` — the user's items whose removal lowers its score most,
    with that loss (the model's own `explain`) — for trained users, users after writes, and new users;
    without it answers are as before, and a model that cannot explain says so instead of failing."""
    model = create_model("ease").fit(ml100k)
    ease = serve(_artifact(model, ml100k, tmp_path / "ease"))
    plain = ease.get("/users/1/recommendations", params={"k": 4}).json()
    assert all("because" not in row for row in plain["items"])
    body = ease.get("/users/1/recommendations", params={"k": 4, "explain": True}).json()
    assert [row["item"] for row in body["items"]] == [row["item"] for row in plain["items"]]
    expected = model.explain(1, [row["item"] for row in body["items"]])
    for row in body["items"]:
        reasons = expected[expected["item"] == row["item"]]
        assert [r["item"] for r in row["because"]] == reasons["because"].tolist() and len(row["because"]) == 3
        np.testing.assert_allclose([r["weight"] for r in row["because"]], reasons["weight"], rtol=1e-6)
        assert all(r["title"] and r["title"] != str(r["item"]) for r in row["because"])  # catalogue titles
    # a factor model behind its HNSW index, after a write: the new item is among what explains
    first = client.get("/users/1/recommendations", params={"k": 1}).json()["items"][0]["item"]
    assert client.post("/users/1/interactions", json={"items": [{"item": first}]}).status_code == 200
    after = client.get("/users/1/recommendations", params={"k": 5, "explain": True}).json()
    assert after["served_by"] == "model (updated)+ann"
    users_items = set(ml100k.items.lookup(ml100k.item_index[ml100k.user_index == ml100k.users.index([1])[0]]))
    named = {r["item"] for row in after["items"] for r in row["because"]}
    assert named and named <= users_items | {first}
    # a new user: only the items they gave explain their list
    given = [50, 172, 181]
    new = client.post("/recommendations", json={"items": [{"item": i} for i in given], "k": 5, "explain": True}).json()
    assert all(row["because"] and {r["item"] for r in row["because"]} <= set(given) for row in new["items"])
    # an explicit MF: a known user's stored ratings are what its fold-in (and so the explanation) reads
    explicit = create_model("mf", n_epochs=5).fit(ml100k)
    rated = serve(_artifact(explicit, ml100k, tmp_path / "mf"))
    mf = rated.get("/users/1/recommendations", params={"k": 3, "explain": True}).json()
    assert all(len(row["because"]) == 3 and {r["item"] for r in row["because"]} <= users_items for row in mf["items"])
    # ... and after a rated write, from the training history plus that rating (the update keeps it beside
    # the vector it scores from; it was explained from the written item unrated, which adds nothing to MF)
    loved = mf["items"][0]["item"]
    assert rated.post("/users/1/interactions", json={"items": [{"item": loved, "rating": 5}]}).json()
    written = rated.get("/users/1/recommendations", params={"k": 3, "explain": True}).json()
    assert written["served_by"] == "model (updated)" and all(len(row["because"]) == 3 for row in written["items"])
    trained = explicit.training_history(explicit.users_.position(1))
    index = explicit.items_.position(loved)
    after_write = History.from_items(
        [[*trained.row_items(0).tolist(), index]], explicit.n_items, [[*trained.row_ratings(0), 5.0]]
    )
    expected = explicit.explain(None, [row["item"] for row in written["items"]], history=after_write)
    for row in written["items"]:
        reasons = expected[expected["item"] == row["item"]]
        assert [r["item"] for r in row["because"]] == reasons["because"].tolist()
        np.testing.assert_allclose([r["weight"] for r in row["because"]], reasons["weight"], rtol=1e-5)
    knn = serve(_artifact(create_model("user_knn", feedback="implicit").fit(ml100k), ml100k, tmp_path / "uknn"))
    refused = knn.get("/users/1/recommendations", params={"k": 3, "explain": True})
    assert refused.status_code == 200 and "no explanations: user_knn" in refused.json()["note"]
    assert all(row["because"] == [] for row in refused.json()["items"])
    # a model whose scores do not depend on the user's items (popularity) says so rather than listing nothing
    popular = serve(_artifact(create_model("most_popular").fit(ml100k), ml100k, tmp_path / "pop"))
    for answer in (
        popular.get("/users/1/recommendations", params={"k": 3, "explain": True}).json(),
        popular.post("/recommendations", json={"items": [{"item": 50}], "k": 3, "explain": True}).json(),
    ):
        assert "none of the user's items raises the score" in answer["note"]
        assert all(row["because"] == [] for row in answer["items"])
    assert "explanations" not in popular.get("/users/1/recommendations", params={"k": 3}).json()["note"]


def test_lists_restricted_to_genres_and_kept_from_items_are_the_models_exact_ones(client, ml100k):
    """Category pages and stock: `genre` keeps items of any genre asked for (case ignored), `exclude_item`
    leaves items out; the list is the model's exact ranking of what remains (not the ANN graph's), for a
    trained user, after a write, and for a new user; a genre the catalogue lacks is 422 naming its genres."""
    model = client.app.state.service.model
    genres = item_metadata(ml100k)["genres"]
    horror = ml100k.items.ids[[("Horror" in g) or ("Film-Noir" in g) for g in genres]]
    body = client.get(
        "/users/1/recommendations", params={"k": 8, "genre": ["horror", "Film-Noir"], "exclude_item": ["200", "185"]}
    ).json()
    exact = model.recommend([1], k=8, candidates=horror, exclude_items=[200, 185])
    assert [row["item"] for row in body["items"]] == list(exact.items[0]) and body["served_by"] == "model"
    assert all({"Horror", "Film-Noir"} & set(row["genres"]) for row in body["items"])
    first = body["items"][0]["item"]
    assert client.post("/users/1/interactions", json={"items": [{"item": first}]}).status_code == 200
    after = client.get("/users/1/recommendations", params={"k": 8, "genre": "Horror"}).json()
    assert after["served_by"] == "model (updated)" and first not in [row["item"] for row in after["items"]]
    assert all("Horror" in row["genres"] for row in after["items"])
    # u.item's "unknown" genre holds two movies: a short list says why instead of passing for a full one
    few = client.get("/users/1/recommendations", params={"k": 8, "genre": "unknown"}).json()
    assert len(few["items"]) <= 2 and f"only {len(few['items'])} item(s) to list" in few["note"]
    assert "only" not in after["note"]
    new = client.post(
        "/recommendations", json={"items": [{"item": 50}], "k": 5, "genres": ["Sci-Fi"], "exclude_items": [181]}
    ).json()
    assert all("Sci-Fi" in row["genres"] for row in new["items"]) and not {50, 181} & {r["item"] for r in new["items"]}
    wrong = client.get("/users/1/recommendations", params={"genre": "Horor"})
    assert wrong.status_code == 422 and "unknown genre 'Horor' (did you mean 'Horror'?)" in wrong.json()["detail"]
    missing = client.get("/users/1/recommendations", params={"exclude_item": "99999"})
    assert missing.status_code == 404 and missing.json()["detail"] == "unknown item id 99999 (exclude_items.0)"


def test_genres_lists_the_catalogues_genres_with_their_counts(client, ml100k):
    body = client.get("/genres").json()["genres"]
    assert body[0] == {"genre": "Drama", "items": 725} and body[1] == {"genre": "Comedy", "items": 505}  # u.item
    pairs = sum(len(g) for g in item_metadata(ml100k)["genres"])
    assert sum(entry["items"] for entry in body) == pairs and len(body) == 19  # 18 genres and "unknown"
    counts = [entry["items"] for entry in body]
    assert counts == sorted(counts, reverse=True)


def test_a_write_token_from_a_file_is_checked_and_its_errors_name_the_file(tmp_path, monkeypatch):
    from recforge.errors import ConfigError
    from recforge.serving.app import token_from_environment as _token

    monkeypatch.delenv("RECFORGE_TOKEN", raising=False)
    monkeypatch.setenv("RECFORGE_TOKEN_FILE", str(tmp_path / "token"))
    with pytest.raises(ConfigError, match=r"token file .*token \(RECFORGE_TOKEN_FILE\) cannot be read"):
        _token("RECFORGE_TOKEN")
    (tmp_path / "token").write_text("short\n")
    with pytest.raises(ConfigError, match=r"token file .*token: a token needs at least 16 characters"):
        _token("RECFORGE_TOKEN")
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    assert _token("RECFORGE_TOKEN") == TOKEN
    monkeypatch.setenv("RECFORGE_TOKEN", "too-short")  # the variable wins over the file
    with pytest.raises(ConfigError, match=r"^RECFORGE_TOKEN: a token needs"):
        _token("RECFORGE_TOKEN")


def test_a_model_trained_without_ratings_refuses_a_rated_write_and_says_why(ml100k, tmp_path):
    """Its data has no rating column to keep the rating in (retrain would lose it): the write is 422 and
    nothing is stored; the same item without a rating is taken, and a read may carry ratings (unused)."""
    from recforge.data import Interactions

    unrated = Interactions.from_frame(ml100k.to_frame(), timestamp="timestamp", name="ml-100k unrated")
    model = create_model("ials", n_factors=16, n_iterations=3).fit(unrated)
    client = serve(_artifact(model, ml100k, tmp_path / "unrated"))  # the catalogue: same items, with titles
    assert client.get("/health").json()["rating_scale"] is None  # the page adds items without stars
    refused = client.post("/users/1/interactions", json={"items": [{"item": 50}, {"item": 172, "rating": 4}]})
    assert (
        refused.status_code == 422
        and "items.1.rating: ials was trained on interactions without ratings" in (refused.json()["detail"])
    )
    assert client.app.state.service.engine.store.latest_seq() == 0
    assert client.post("/users/1/interactions", json={"items": [{"item": 172}]}).status_code == 200
    read = client.post("/recommendations", json={"items": [{"item": 50, "rating": 5}], "k": 3})
    assert read.status_code == 200 and read.json()["served_by"].startswith("history")
