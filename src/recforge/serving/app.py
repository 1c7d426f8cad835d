"""The HTTP service: `create_app(service)` or `recforge serve --model DIR`.

Endpoints (JSON): GET /health, GET /users/{id}/recommendations?k=&exclude_seen=, POST /recommendations,
POST /users/{id}/interactions, POST /items (new items from features),
GET /items/{id}/similar?k=, POST /predict, GET /items?query=&limit=,
GET /metrics; GET / serves the web page. Errors: unknown ids -> 404, impossible requests (a model that
cannot predict) -> 409, bad parameters or bodies -> 422 naming the field, bodies over `max_body_bytes`
-> 413. Handlers are plain `def` functions, so FastAPI runs them in its thread pool and numpy/torch work
of concurrent requests overlaps (they release the GIL). The exception is a known user's recommendations
when the service can answer them in well under a millisecond (an ANN index, or a small catalogue): those
run on the event loop, because the thread hop cost more than the work (see docs/serving.md).
"""

from __future__ import annotations

import threading
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from recforge._version import __version__
from recforge.errors import CapabilityError, ConfigError, UnknownIdError
from recforge.serving.service import MAX_K, RecommenderService

LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class RatedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str | int
    rating: float | None = Field(None, description="omit for an interaction without a rating")


class NewUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[RatedItem] = Field(default_factory=list, max_length=10_000)
    features: dict[str, str | int | float | None] | None = Field(
        None, max_length=100, description="user features (e.g. age, gender) for models with a user-feature tower"
    )
    k: int = Field(10, ge=1, le=MAX_K)


class InteractionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[RatedItem] = Field(min_length=1, max_length=10_000)


class NewItem(BaseModel):
    model_config = ConfigDict(extra="allow")  # the model's item-feature columns (genres, year, type, ...)
    item: str | int
    title: str | None = None


class NewItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItem] = Field(min_length=1, max_length=1_000)


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str | int
    item: str | int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(min_length=1, max_length=10_000)


class Metrics:
    """Request counts per route and status, and a cumulative latency histogram (milliseconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self.total_ms = 0.0
        self.n = 0

    def record(self, route: str, status: int, milliseconds: float) -> None:
        slot = next((i for i, edge in enumerate(LATENCY_BUCKETS_MS) if milliseconds <= edge), len(LATENCY_BUCKETS_MS))
        with self._lock:
            key = f"{route} {status}"
            self.counts[key] = self.counts.get(key, 0) + 1
            self.buckets[slot] += 1
            self.total_ms += milliseconds
            self.n += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            edges = [str(edge) for edge in LATENCY_BUCKETS_MS] + ["+inf"]
            return {
                "requests": dict(self.counts),
                "latency_ms_histogram": dict(zip(edges, self.buckets, strict=True)),
                "latency_ms_mean": self.total_ms / self.n if self.n else 0.0,
                "n": self.n,
            }


class _LimitAndMeasure:
    """Plain ASGI middleware: rejects bodies over the limit (413) and records each response's route,
    status and latency. A declared Content-Length over the limit is refused before the body is read; a
    chunked body is counted as it arrives and refused once it passes the limit, so neither reaches the
    JSON parser. (Starlette's BaseHTTPMiddleware adds a task and a stream per request.)"""

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int) -> None:
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self._too_large = f"request body over {max_body_bytes} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        received = 0

        async def receive_within_limit() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # FastAPI re-raises HTTPException from body reading
                    raise HTTPException(413, self._too_large)
            return message

        length = dict(scope["headers"]).get(b"content-length")
        try:
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                response = JSONResponse({"detail": self._too_large}, status_code=413)
                await response(scope, receive, send_and_note)
            else:
                await self.app(scope, receive_within_limit, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.record(route, status, (time.perf_counter() - started) * 1e3)


def create_app(service: RecommenderService, max_body_bytes: int = 1 << 20) -> FastAPI:
    app = FastAPI(title="recforge", version=__version__)
    metrics = Metrics()
    app.state.service, app.state.metrics = service, metrics

    app.add_middleware(_LimitAndMeasure, metrics=metrics, max_body_bytes=max_body_bytes)

    @app.exception_handler(UnknownIdError)
    def _unknown(request: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(CapabilityError)
    def _incapable(request: Request, exc: CapabilityError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(ConfigError)
    def _invalid(request: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, Any]:
        model = service.model
        return {
            "status": "ok",
            "model": model.name,
            "recforge": __version__,
            "n_users": model.n_users,
            "n_items": model.n_items,
            "capabilities": sorted(model.capabilities),
            "ann": service.index is not None,
        }

    @app.get("/users/{user_id}/recommendations")
    async def user_recommendations(user_id: str, k: int = Query(10, ge=1, le=MAX_K), exclude_seen: bool = True) -> dict:
        # sub-millisecond answers run on the event loop: a thread-pool hop (and the GIL hand-offs it
        # brings) cost more than the work and dominated tail latency under load; heavier ones go to threads
        if service.answers_quickly():
            return {"user": user_id, **service.recommend_user(user_id, k, exclude_seen)}
        answer = await run_in_threadpool(service.recommend_user, user_id, k, exclude_seen)
        return {"user": user_id, **answer}

    @app.post("/recommendations")
    def new_user_recommendations(body: NewUserRequest) -> dict:
        return service.recommend_new([(r.item, r.rating) for r in body.items], body.k, body.features)

    @app.post("/users/{user_id}/interactions")
    def add_interactions(user_id: str, body: InteractionsRequest) -> dict:
        how = service.add_interactions(user_id, [(r.item, r.rating) for r in body.items])
        return {"user": user_id, "added": len(body.items), "updated_by": how}

    @app.post("/items")
    def add_items(body: NewItemsRequest) -> dict:
        how = service.add_items([item.model_dump() for item in body.items])
        return {"added": [item.item for item in body.items], "embedded_by": how}

    @app.get("/items/{item_id}/similar")
    def similar_items(item_id: str, k: int = Query(10, ge=1, le=MAX_K)) -> dict:
        return {"item": item_id, **service.similar(item_id, k)}

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict:
        values = service.predict([(p.user, p.item) for p in body.pairs])
        return {
            "predictions": [
                {"user": p.user, "item": p.item, "rating": v} for p, v in zip(body.pairs, values, strict=True)
            ]
        }

    @app.get("/items")
    def search_items(
        query: str = Query(..., min_length=1, max_length=200), limit: int = Query(20, ge=1, le=200)
    ) -> dict:
        return {"query": query, "items": service.search_items(query, limit)}

    @app.get("/metrics")
    def get_metrics() -> dict:
        return metrics.snapshot()

    page = resources.files("recforge.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    return app


def app_from_environment() -> FastAPI:
    """App factory for `recforge serve`: each worker process loads the artifact named by RECFORGE_MODEL."""
    import gc
    import os

    app = create_app(RecommenderService.from_artifact(os.environ["RECFORGE_MODEL"]))
    # the model and catalogue live as long as the process: move them out of the collector's view, so
    # full collections do not re-scan ~10^5 catalogue objects in the middle of requests (tail latency)
    gc.collect()
    gc.freeze()
    return app
