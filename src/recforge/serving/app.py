"""The HTTP service: `create_app(service)` or `recforge serve --model DIR`.

Endpoints (JSON): GET /health, GET /ready (503 while the event store is down, unless stale reads are allowed),
GET /users/{id}/recommendations?k=&exclude_seen=&explain=&genre=&exclude_item=,
POST /recommendations, POST /users/{id}/interactions, POST /items (new items from features), GET /items/{id}/similar?k=,
POST /predict, GET /items?query=&limit=, GET /genres, GET /metrics (Prometheus text; /metrics/json the same as
JSON); GET / serves the web page. Errors: unknown ids -> 404, impossible requests (a model that cannot
predict) -> 409, bad parameters or bodies -> 422 naming the field, bodies over `max_body_bytes` -> 413.
Handlers are plain `def` functions, so FastAPI runs them in its thread pool and numpy/torch work of
concurrent requests overlaps (they release the GIL). The exception is a known user's recommendations
when the service can answer them in well under a millisecond (an ANN index, or a small catalogue): those
run on the event loop, because the thread hop cost more than the work (see docs/serving.md).
"""

import asyncio
import contextlib
import hmac
import json
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import StringConstraints, TypeAdapter
from starlette.concurrency import run_in_threadpool

from recforge._version import __version__
from recforge.errors import CapabilityError, ConfigError, NonFiniteScoresError, UnknownIdError
from recforge.serving.batching import ReadBatcher
from recforge.serving.engine import interface
from recforge.serving.schemas import (
    ERRORS,
    INTEGER_PATTERN,
    MAX_ID_LENGTH,
    MAX_INTEGER_ID,
    MAX_K,
    Error,
    GenresAnswer,
    Health,
    InteractionsAnswer,
    ItemsAnswer,
    NewUserPredictAnswer,
    PredictAnswer,
    PromoteRequest,
    Ready,
    Recommended,
    SearchAnswer,
    SimilarAnswer,
    UserAnswer,
    WriteAnswer,
    request_models,
)
from recforge.serving.service import REQUEST_KEY, STORE_WAIT, RecommenderService
from recforge.serving.store import CONNECTIONS, DuplicateItemError, StoreUnavailableError

Count = Annotated[int, Query(ge=1, le=MAX_K)]
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


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

    def prometheus(self, gauges: dict[str, tuple[str, float]]) -> bytes:
        """The counters, the latency histogram (seconds, cumulative buckets) and `gauges` (name ->
        (help, value)) in the Prometheus text exposition format, encoded by prometheus-client."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        with self._lock:
            counts, buckets, total_ms = dict(self.counts), list(self.buckets), self.total_ms

        class Snapshot:
            def collect(self) -> Any:
                requests = CounterMetricFamily(
                    "recforge_requests", "HTTP responses by route template and status", labels=["route", "status"]
                )
                for key, value in sorted(counts.items()):
                    route, _, status = key.rpartition(" ")
                    requests.add_metric([route, status], value)
                yield requests
                cumulative = np.cumsum(buckets).tolist()
                edges = [str(edge / 1000) for edge in LATENCY_BUCKETS_MS] + ["+Inf"]
                yield HistogramMetricFamily(
                    "recforge_request_duration_seconds",
                    "time from a request's first byte to its response",
                    buckets=list(zip(edges, cumulative, strict=True)),
                    sum_value=total_ms / 1000,
                )
                for name, (text, value) in gauges.items():
                    yield GaugeMetricFamily(name, text, value=value)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(Snapshot())
        return generate_latest(registry)

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

    def __init__(
        self, app: Any, metrics: Metrics, max_body_bytes: int, stale_for: Callable[[float], float | None]
    ) -> None:
        """`stale_for(began)`: seconds the state was unconfirmed if a read since `began` (monotonic) was
        answered from it while the store could not be read (such answers carry `X-Recforge-Stale`)."""
        self.app, self.metrics, self.max_body_bytes, self.stale_for = app, metrics, max_body_bytes, stale_for
        self._too_large = f"request body over {max_body_bytes} bytes"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, began = time.perf_counter(), time.monotonic()
        status = 500

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                stale = self.stale_for(began)
                if stale is not None:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (STALE_HEADER, f"{stale:.1f}".encode())],
                    }
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
            route = getattr(scope.get("route"), "path_format", "unmatched")  # "{user_id}", not "{user_id:path}"
            self.metrics.record(route, status, (time.perf_counter() - started) * 1e3)


class _QuickPaths:
    """The two hottest requests answered without FastAPI's routing and parameter solving, which cost about
    as much as the work itself on an ANN-served model:
    - `GET /users/{id}/recommendations` in its plainest form (a well-formed id; no query, or `k=<digits>`
      and/or `exclude_seen=true|false`): 225 -> 178 µs per read in-process on the 100k-item benchmark model;
    - `POST /users/{id}/interactions` with a valid bearer token, `Content-Type: application/json`, a
      declared length and a body the route's own request model accepts (parsed and validated as FastAPI
      does: `json.loads`, then the model in Python mode).
    Anything else, and every other route, goes through FastAPI unchanged, which validates and renders the
    errors; a write's body is handed on as it was received. Once a write has passed validation its outcome
    is answered here (the service's errors with the statuses of the app's exception handlers), never sent
    on, so it runs once. Answers are rendered by the routes' response models, so both paths answer byte for
    byte alike (tests/serving/test_api.py checks reads and writes). Reads are off when they need a token
    (the check lives in FastAPI's dependencies); writes are off without a write token."""

    READ_ROUTE = "/users/{user_id}/recommendations"
    WRITE_ROUTE = "/users/{user_id}/interactions"
    MAX_QUICK_BODY = 64 * 1024

    def __init__(
        self,
        app: Any,
        service: RecommenderService,
        router: Any,
        integer_users: bool,
        reads: bool,
        write_token: str | None,
        interactions_request: Any,
    ) -> None:
        # built with the middleware stack, at the first request: every route exists by then
        self.app, self.service, self.reads = app, service, reads
        self.read_route = _route(router, self.READ_ROUTE, "GET")
        self.write_route = _route(router, self.WRITE_ROUTE, "POST")
        self.user = re.compile(INTEGER_PATTERN) if integer_users else None
        self.answer = TypeAdapter(UserAnswer)
        self.write_answer = TypeAdapter(InteractionsAnswer)
        self.request = TypeAdapter(interactions_request)
        self.authorization = f"Bearer {write_token}".encode() if write_token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.authorization is not None:
            await self._write(scope, receive, send)
            return
        answer = self._answer(scope) if self.reads and scope["type"] == "http" and scope["method"] == "GET" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.read_route  # for the metrics
        await self._send(send, 200, answer)

    @staticmethod
    async def _send(send: Any, status: int, body: bytes) -> None:
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _user_in(self, path: str, prefix: str, suffix: str) -> str | None:
        if not (path.startswith(prefix) and path.endswith(suffix)):
            return None
        user = path[len(prefix) : -len(suffix)]
        if not user or len(user) > MAX_ID_LENGTH or "/" in user:
            return None
        if self.user is not None and not self.user.match(user):
            return None
        return user

    def _answer(self, scope: dict) -> bytes | None:
        user = self._user_in(scope["path"], "/users/", "/recommendations")
        if user is None:
            return None
        k, exclude_seen = 10, True
        query: bytes = scope["query_string"]
        seen_names = set()
        for pair in query.split(b"&") if query else ():
            name, _, value = pair.partition(b"=")
            if name in seen_names:
                return None
            seen_names.add(name)
            if name == b"k" and value.isdigit() and len(value) <= 4 and 1 <= int(value) <= MAX_K:
                k = int(value)
            elif name == b"exclude_seen" and value in (b"true", b"false"):
                exclude_seen = value == b"true"
            else:
                return None
        if not self.service.answers_quickly():
            return None
        try:
            answer = self.service.recommend_user(user, k, exclude_seen)
        except Exception:  # FastAPI answers it again and renders the error
            return None
        return self.answer.dump_json(self.answer.validate_python({"user": user, **answer}), exclude_none=True)

    async def _write(self, scope: dict, receive: Any, send: Any) -> None:
        user = self._user_in(scope["path"], "/users/", "/interactions")
        headers = dict(scope["headers"]) if user is not None and not scope["query_string"] else {}
        length = headers.get(b"content-length", b"")
        key = headers[b"idempotency-key"].decode("latin-1") if b"idempotency-key" in headers else None
        if not (
            (key is None or REQUEST_KEY.fullmatch(key))  # (FastAPI renders the error)
            and headers.get(b"content-type") == b"application/json"
            and length.isdigit()
            and int(length) <= self.MAX_QUICK_BODY
            and len(headers) == len(scope["headers"])  # no repeated header to second-guess
            and hmac.compare_digest(headers.get(b"authorization", b""), self.authorization)  # type: ignore[arg-type]
            and self.service.writes_quickly()
        ):
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body: nothing to answer
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            request = self.request.validate_python(json.loads(body))
        except Exception:  # FastAPI parses it again, from the same bytes, and renders the error
            handed = False

            async def replay() -> dict:
                nonlocal handed
                if not handed:
                    handed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        scope["route"] = self.write_route  # for the metrics
        pairs = [(r.item, r.rating) for r in request.items]

        def answer(done: dict[str, Any]) -> asyncio.Task | None:
            # on the loop, as soon as it notices the commit: the answer goes out now, not after the
            # coroutine has waited one more turn of the loop behind every request that is ready
            body = self.write_answer.dump_json(
                self.write_answer.validate_python({"user": user, "added": len(request.items), **done})
            )
            return _send_from_callback(self._send(send, write_status(done), body))

        try:
            still_sending = await self.service.add_interactions_async(user, pairs, then=answer, key=key)
        except Exception as exc:
            status = next((code for kind, code in ERROR_STATUSES if isinstance(exc, kind)), None)
            if status is None:
                raise  # as on FastAPI's path: the server-error middleware answers it
            await _error_answer(status)(None, exc)(scope, receive, send)  # the app's exception handlers' answer
            return
        if still_sending is not None:
            await still_sending


def write_status(done: dict[str, Any]) -> int:
    """A committed write's status: 202 when this worker could not apply it yet (`applied` false), else 200."""
    return 200 if done.get("applied", True) else 202


def _send_from_callback(sending: Coroutine[Any, Any, None]) -> asyncio.Task | None:
    """Run an ASGI `send` coroutine from a plain callback (no task): for a small answer on a connection
    that is not applying back-pressure it finishes without suspending, and the answer is on the wire
    when this returns (None). If it does suspend, a task carries it on from there and is returned: it
    awaits what the coroutine waits for and resumes it, as a task would have; an error from `send`
    surfaces from the task."""
    try:
        waiting = sending.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_carry_on(sending, waiting))


async def _carry_on(sending: Coroutine[Any, Any, None], waiting: Any) -> None:
    """What a task does for a coroutine: wait until the future it yielded is done, resume it, repeat."""
    loop = asyncio.get_running_loop()
    while True:
        if waiting is None:  # a bare yield asks for one turn of the loop
            await asyncio.sleep(0)
        else:  # its own await of that future sees the outcome when resumed
            resumed = loop.create_future()
            waiting.add_done_callback(lambda _, resumed=resumed: resumed.done() or resumed.set_result(None))
            await resumed
        try:
            waiting = sending.send(None)
        except StopIteration:
            return


def _route(router: Any, path: str, method: str) -> Any:
    return next(
        r for r in router.routes if getattr(r, "path_format", None) == path and method in getattr(r, "methods", ())
    )


def _integer_ids(vocabulary: Any, kind: str) -> bool:
    """Whether the vocabulary's ids are integers the API can carry (at most 15 digits); refuse to serve
    longer ones rather than answer for ids no client could send."""
    ids = vocabulary.ids
    if ids.dtype.kind not in "iu":
        return False
    if len(ids) and max(int(ids.max()), -int(ids.min())) > MAX_INTEGER_ID:
        raise ConfigError(
            f"{kind} ids longer than 15 digits cannot travel as JSON numbers; load them as strings "
            "(e.g. dtype={'user_id': str}) and retrain"
        )
    return True


def create_app(
    service: RecommenderService,
    max_body_bytes: int = 1 << 20,
    *,
    write_token: str | None = None,
    read_token: str | None = None,
    quick_paths: bool = True,
) -> FastAPI:
    """The app over `service`. Writes (and `POST /admin/models`) need `Authorization: Bearer
    <write_token>`; without a write token configured they are refused (403). Reads are open, or need
    `read_token` (or the write token) when one is given. Tokens are compared in constant time.
    `quick_paths=False` sends every request through FastAPI (`_QuickPaths` answers the same bytes)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = service.engine.follow()  # idle workers stay current and swap promptly
        yield
        stop.set()

    app = FastAPI(title="recforge", version=__version__, lifespan=lifespan)
    metrics = Metrics()
    reads = ReadBatcher(service.recommend_users)
    app.state.service, app.state.metrics, app.state.reads = service, metrics, reads
    integer_users = _integer_ids(service.model.users_, "user")
    # ids keep the model vocabulary's type: the schema (and so clients and fuzzers) know integer ids
    # (a promoted model must keep this interface: `recforge.serving.engine.check_same_interface`)
    model = service.model
    integer_items = _integer_ids(model.items_, "item")
    shape = interface(model)
    models = request_models(
        integer_users, integer_items, shape["rating_scale"], shape["user_features"], shape["item_features"]
    )
    if quick_paths:
        app.add_middleware(
            _QuickPaths,
            service=service,
            router=app.router,
            integer_users=integer_users,
            reads=not read_token,
            write_token=write_token,
            interactions_request=models.InteractionsRequest,
        )
    app.add_middleware(  # outermost: measures all, marks every stale answer
        _LimitAndMeasure, metrics=metrics, max_body_bytes=max_body_bytes, stale_for=service.stale_for
    )
    _handle_errors(app)
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <token>")

    # async: a constant-time compare needs no thread, and a sync dependency costs a thread-pool round trip
    # that, with the event loop busy serving reads, waited behind them and doubled a write's latency
    async def can_write(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        _check_token(credentials, [write_token] if write_token else [], "writes")

    async def can_read(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
        if read_token:
            _check_token(credentials, [t for t in (read_token, write_token) if t], "reads")

    # reads declare (and check) the bearer scheme only when a read token is configured
    read, write = ([Depends(can_read)] if read_token else []), [Depends(can_write)]
    UserId = Annotated[str, Path(max_length=MAX_ID_LENGTH, pattern=INTEGER_PATTERN if integer_users else None)]
    IdempotencyKey = Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=f"^{REQUEST_KEY.pattern}$",
            description="the client's key for this write (a UUID, say): a retry with the same key and request "
            "is answered from the write committed first (`replayed`), never committed twice",
        ),
    ]
    ItemId = Annotated[str, Path(max_length=MAX_ID_LENGTH, pattern=INTEGER_PATTERN if integer_items else None)]
    NewUserRequest, InteractionsRequest = models.NewUserRequest, models.InteractionsRequest
    NewItemsRequest, PredictRequest = models.NewItemsRequest, models.PredictRequest
    NewUserPredictRequest = models.NewUserPredictRequest

    @app.get("/health", response_model=Health)
    def health() -> dict[str, Any]:
        """Liveness and state: 200 while the process serves, with `status` "degraded" and the reason in
        `store` while the event store cannot be read (`/ready` answers 503 then)."""
        engine = service.engine
        model = engine.snapshot.model
        problem = service.store_problem()
        return {
            "status": "ok" if problem is None else "degraded",
            "store": "ok" if problem is None else f"unavailable: {problem}",
            "model": model.name,
            "recforge": __version__,
            "n_users": model.n_users,
            "n_items": model.n_items,
            "new_users": len(engine.snapshot.newcomers),
            "capabilities": sorted(model.capabilities),
            "rating_scale": None if model.rating_scale_ is None else list(model.rating_scale_),
            "ann": engine.snapshot.indexed is not None,
            "events_applied": engine.applied,
            "events_applied_total": engine.applied_total,
            "artifact": engine.snapshot.artifact,
            "swaps": engine.swaps,
            "swap_error": engine.swap_error,
            "worker": os.getpid(),
        }

    @app.get(
        "/ready",
        response_model=Ready,
        response_model_exclude_none=True,
        responses={503: {"model": Error, "description": "not ready"}},
    )
    def ready() -> Any:
        """Readiness for a load balancer: 200 when the model is loaded and the event store answers, else 503
        with the reason (a liveness probe should use `/health`, which stays 200). With stale reads allowed,
        200 while reads are answered from a state unconfirmed for at most that long (`stale_seconds`)."""
        problem = service.store_problem()
        if problem is None:
            return {"ready": True, "events_applied": service.engine.applied}
        unconfirmed = service.engine.unconfirmed_for()
        if service.stale_reads and unconfirmed <= service.stale_reads:
            return {"ready": True, "events_applied": service.engine.applied, "stale_seconds": round(unconfirmed, 1)}
        return JSONResponse({"detail": problem}, status_code=503)

    @app.get(
        "/users/{user_id:path}/recommendations",  # ids may hold "/" (sent as %2F)
        response_model=UserAnswer,
        response_model_exclude_none=True,
        responses=ERRORS,
        dependencies=read,
    )
    async def user_recommendations(
        user_id: UserId,
        k: Count = 10,
        exclude_seen: bool = True,
        explain: bool = False,
        genre: Annotated[list[Annotated[str, StringConstraints(max_length=200)]] | None, Query()] = None,
        exclude_item: Annotated[
            list[Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]] | None, Query()
        ] = None,
    ) -> dict:
        if explain or genre or exclude_item:  # explanations and exact restricted lists take a thread
            answer = await run_in_threadpool(
                service.recommend_user, user_id, k, exclude_seen, explain, genre, exclude_item
            )
            return {"user": user_id, **answer}
        # sub-millisecond answers run on the event loop: a thread-pool hop (and the GIL hand-offs it
        # brings) cost more than the work and dominated tail latency under load; heavier ones go to threads
        if service.answers_quickly():
            return {"user": user_id, **service.recommend_user(user_id, k, exclude_seen)}
        # concurrent reads are scored together (`recforge.serving.batching`): one pass over the catalogue
        return {"user": user_id, **await reads.submit((user_id, k, exclude_seen))}

    @app.post(
        "/recommendations",
        response_model=Recommended,
        response_model_exclude_none=True,
        responses=ERRORS,
        dependencies=read,
    )
    def new_user_recommendations(body: NewUserRequest) -> dict:
        features = body.features
        if features is not None and not isinstance(features, dict):  # typed when the model has a user tower
            features = features.model_dump(exclude_none=True)
        return service.recommend_new(
            [(r.item, r.rating) for r in body.items], body.k, features, body.explain, body.genres, body.exclude_items
        )

    @app.post(
        "/users/{user_id:path}/interactions", response_model=InteractionsAnswer, responses=ERRORS, dependencies=write
    )
    async def add_interactions(
        user_id: UserId, body: InteractionsRequest, response: Response, idempotency_key: IdempotencyKey = None
    ) -> dict:
        pairs = [(r.item, r.rating) for r in body.items]
        # as with reads: a write whose validation and update cost well under a millisecond (a factor
        # fold-in) runs on the event loop, its commit in the store's commit thread; the whole write sent
        # to the thread pool waited behind every read the busy loop had queued (p50 ~90 ms instead of
        # ~18 ms at 10% writes); other models, and a PostgreSQL store, go to a thread
        if service.writes_quickly():
            done = await service.add_interactions_async(user_id, pairs, key=idempotency_key)
        else:
            done = await run_in_threadpool(service.add_interactions, user_id, pairs, idempotency_key)
        response.status_code = write_status(done)
        return {"user": user_id, "added": len(body.items), **done}

    @app.post("/items", response_model=ItemsAnswer, responses=ERRORS, dependencies=write)
    def add_items(body: NewItemsRequest, response: Response, idempotency_key: IdempotencyKey = None) -> dict:
        done = service.add_items([item.model_dump(exclude_unset=True) for item in body.items], idempotency_key)
        response.status_code = write_status(done)
        return {"added": [item.item for item in body.items], **done}

    @app.post("/admin/models", response_model=WriteAnswer, responses=ERRORS, dependencies=write)
    def promote(body: PromoteRequest, response: Response, idempotency_key: IdempotencyKey = None) -> dict:
        """Promote a model artifact (e.g. one `recforge retrain` wrote): every worker loads it in the
        background, replays the events newer than its cut-off and swaps without dropping a request."""
        done = service.promote(body.path, idempotency_key)
        response.status_code = write_status(done)
        return done

    @app.get("/items/{item_id:path}/similar", response_model=SimilarAnswer, responses=ERRORS, dependencies=read)
    def similar_items(item_id: ItemId, k: Count = 10) -> dict:
        return {"item": item_id, **service.similar(item_id, k)}

    @app.post("/predict", response_model=PredictAnswer, responses=ERRORS, dependencies=read)
    def predict(body: PredictRequest) -> dict:
        values = service.predict([(p.user, p.item) for p in body.pairs])
        return {
            "predictions": [
                {"user": p.user, "item": p.item, "rating": v} for p, v in zip(body.pairs, values, strict=True)
            ]
        }

    @app.post("/predict/new-user", response_model=NewUserPredictAnswer, responses=ERRORS, dependencies=read)
    def predict_new_user(body: NewUserPredictRequest) -> dict:
        """Predicted ratings for a user the model does not know, from the items they rated and/or their
        features; nothing is stored (a write creates the user: `POST /users/{id}/interactions`)."""
        features = body.features
        if features is not None and not isinstance(features, dict):  # typed when the model has a user tower
            features = features.model_dump(exclude_none=True)
        return service.predict_new([(r.item, r.rating) for r in body.items], list(body.predict), features)

    @app.get("/items", response_model=SearchAnswer, responses=ERRORS, dependencies=read)
    def search_items(
        query: Annotated[str, Query(min_length=1, max_length=200)],
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
    ) -> dict:
        return {"query": query, **service.search_items(query, limit)}

    @app.get("/genres", response_model=GenresAnswer, responses=ERRORS, dependencies=read)
    def genres() -> dict:
        """The catalogue's genres with their item counts, most items first: what `genre=` accepts."""
        return {"genres": service.genres()}

    @app.get("/metrics", response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}})
    def get_metrics() -> PlainTextResponse:
        """Prometheus text format: request counts by route and status, the latency histogram, and the
        engine's event and swap gauges. Each worker process answers for itself."""
        engine = service.engine
        gauges = {
            "recforge_events_applied": ("the last event sequence number this worker applied", engine.applied),
            "recforge_events_applied_total": ("events this worker applied since it started", engine.applied_total),
            "recforge_model_swaps": ("model swaps this worker made", engine.swaps),
            "recforge_store_unconfirmed_seconds": (
                "seconds since this worker last knew its state held every acknowledged write (grows while the "
                "event store cannot be read)",
                engine.unconfirmed_for(),
            ),
            "recforge_stale_answers_total": (
                "reads answered from an unconfirmed state during a store outage (--stale-reads)",
                service.stale_answers,
            ),
            "recforge_writes_replayed_total": (
                "writes answered from an earlier commit of their Idempotency-Key (client retries)",
                service.replayed_writes,
            ),
            "recforge_read_batches": ("batches of exact-search reads this worker scored", reads.batches),
            "recforge_read_batch_largest": ("the most reads scored in one batch", reads.largest_batch),
        }
        return PlainTextResponse(metrics.prometheus(gauges), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/metrics/json")
    def get_metrics_json() -> dict:
        """The same counters as JSON (per route and status, a latency histogram in milliseconds)."""
        return metrics.snapshot()

    page = resources.files("recforge.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index_page() -> str:
        return page

    return app


def _check_token(credentials: HTTPAuthorizationCredentials | None, accepted: list[str], what: str) -> None:
    if not accepted:
        raise HTTPException(403, f"{what} are disabled: the server has no token configured (RECFORGE_TOKEN)")
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, f"{what} need 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, token.encode()) for token in accepted):
        raise HTTPException(403, "the token is not valid")


def _handle_errors(app: FastAPI) -> None:
    """Map recforge's errors to statuses, and render every 422 safely (an input holding NaN or bytes
    must not break the error answer itself)."""

    for kind, status in ERROR_STATUSES:
        app.add_exception_handler(kind, _error_answer(status))

    @app.exception_handler(RequestValidationError)
    def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [_safe(_explained(error)) for error in exc.errors()]}, status_code=422)


# on an answer read from a worker's state while the event store could not be read: seconds since that state was
# last known to hold every acknowledged write (RECFORGE_STALE_READS allows such answers)
STALE_HEADER = b"x-recforge-stale"

# recforge's errors and their statuses, for FastAPI's exception handlers and the quick write path
# (most specific first: DuplicateItemError is a ConfigError)
ERROR_STATUSES: tuple[tuple[type[Exception], int], ...] = (
    (UnknownIdError, 404),
    (CapabilityError, 409),
    (DuplicateItemError, 409),
    (ConfigError, 422),
    (StoreUnavailableError, 503),
    (NonFiniteScoresError, 503),  # the model, not the request, is at fault: no 500, and a status that alerts
)


def _error_answer(status: int) -> Any:
    return lambda request, exc: JSONResponse({"detail": str(exc)}, status_code=status)


def _explained(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error in words a client can act on where pydantic's are a regular expression: a text id
    given to a model whose ids are integers ("alice" as a user of a MovieLens model)."""
    if error.get("type") == "string_pattern_mismatch" and (error.get("ctx") or {}).get("pattern") == INTEGER_PATTERN:
        kind = "user" if "user" in str(error.get("loc", ("",))[-1]) else "item"
        return {**error, "msg": f"this model's {kind} ids are integers (up to 15 digits, optionally negative)"}
    return error


def _safe(value: Any) -> Any:
    """A JSON-safe copy: non-finite floats and unknown objects become their repr."""
    if isinstance(value, dict):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)[:200]


def app_from_environment() -> FastAPI:
    """App factory for `recforge serve`: each worker process loads the artifact named by RECFORGE_MODEL and
    applies the event store at RECFORGE_STORE (default: a SQLite file beside the artifact; a PostgreSQL server
    that does not answer yet is waited for RECFORGE_STORE_WAIT seconds, default 60, and each worker opens up to
    RECFORGE_STORE_CONNECTIONS connections to it, default 16; reads are answered for RECFORGE_STALE_READS
    seconds of an outage, default 0, marked stale); the write token
    comes from RECFORGE_TOKEN or the file RECFORGE_TOKEN_FILE, the read token from RECFORGE_READ_TOKEN."""
    import gc
    import os

    service = RecommenderService.from_artifact(
        os.environ["RECFORGE_MODEL"],
        os.environ.get("RECFORGE_STORE") or None,
        store_wait=number_from_environment("RECFORGE_STORE_WAIT", STORE_WAIT, float),  # a database (re)starting
        store_connections=number_from_environment("RECFORGE_STORE_CONNECTIONS", CONNECTIONS, int, least=1),
        stale_reads=number_from_environment("RECFORGE_STALE_READS", 0.0, float),  # while the store is down
    )
    app = create_app(
        service,
        write_token=token_from_environment("RECFORGE_TOKEN"),
        read_token=token_from_environment("RECFORGE_READ_TOKEN"),
    )
    # the model and catalogue live as long as the process: move them out of the collector's view, so
    # full collections do not re-scan ~10^5 catalogue objects in the middle of requests (tail latency)
    gc.collect()
    gc.freeze()
    return app


def number_from_environment(variable: str, default: float, kind: type, least: float = 0) -> Any:
    """A number (`kind`: int or float) of at least `least` from the environment variable, or `default`;
    anything else is a ConfigError naming the variable (a worker failing with a bare ValueError said nothing)."""
    import os

    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < least:
        what = "a whole number" if kind is int else "a number of seconds"
        raise ConfigError(f"{variable} must be {what}, at least {least}, not {text[:40]!r}")
    return value


def token_from_environment(variable: str) -> str | None:
    """A token from the environment variable, or from the file its `_FILE` twin names (stripped)."""
    import os
    from pathlib import Path as FilePath

    value = os.environ.get(variable, "").strip()
    file = os.environ.get(f"{variable}_FILE", "").strip()
    source = variable
    if not value and file:
        try:
            value = FilePath(file).read_text().strip()
        except OSError as error:
            raise ConfigError(f"token file {file} ({variable}_FILE) cannot be read: {error.strerror}") from error
        source = f"token file {file}"
    if value and len(value) < 16:
        raise ConfigError(f"{source}: a token needs at least 16 characters")
    return value or None
