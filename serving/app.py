"""The HTTP service: scoring, recommendations, similar videos, cold-start ingestion.

Hot paths validate requests with pydantic (Rust core) but return pre-serialised
JSON ``Response`` objects, skipping FastAPI's response-model round trip, which
dominated latency in measurements. The response schemas are still documented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import faiss
import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import AwareDatetime, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.dataset import dequantize
from recsys.errors import UserInputError
from serving.metrics import Metrics
from serving.settings import Settings
from serving.state import ConflictError, NotFoundError, ServingState, StateHolder
from serving.store import DurableStore

ID = Annotated[str, Field(min_length=1, max_length=256)]


class ScoreRequest(BaseModel):
    user_id: ID
    video_ids: list[ID] = Field(min_length=1, max_length=1000)  # RECSYS_MAX_CANDIDATES caps lower


class CandidateScore(BaseModel):
    video_id: str
    max_similarity: float | None = None
    avg_similarity: float | None = None
    watch_probability: float | None = None
    error: str | None = None


class ScoreResponse(BaseModel):
    user_id: str
    known_user: bool
    history_size: int
    scores: list[CandidateScore]


class VideoIngest(BaseModel):
    """Frames as a JSON matrix, or as base64 of row-major float32/uint8 bytes with ``num_frames``."""

    video_id: ID
    frames: list[list[float]] | None = Field(default=None, max_length=100_000)
    frames_b64: str | None = None
    dtype: Literal["float32", "uint8"] = "float32"
    num_frames: int | None = Field(default=None, ge=1)


class IngestResponse(BaseModel):
    video_id: str
    created: bool
    num_frames: int


class WatchEvent(BaseModel):
    user_id: ID
    video_id: ID
    watch_seconds: float = Field(ge=0, allow_inf_nan=False)
    at: AwareDatetime


class Recommendation(BaseModel):
    video_id: str
    watch_probability: float
    max_similarity: float | None = None


class SimilarVideo(BaseModel):
    video_id: str
    similarity: float


class RecommendationsResponse(BaseModel):
    user_id: str
    recommendations: list[Recommendation]


class SimilarResponse(BaseModel):
    video_id: str
    similar: list[SimilarVideo]


class WatchResponse(BaseModel):
    status: Literal["recorded"]
    valid_watch: bool


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a one-line message and, when one input is to blame, its name."""

    detail: str
    field: str | None = None


_ERROR_TEXT = {
    400: "Bad input (the message names the field)",
    401: "Missing or wrong X-API-Key",
    404: "Unknown user or video",
    409: "Conflicts with an existing video",
    413: "Request body too large",
    422: "Request does not match the schema",
    503: "Not ready (artifact loading)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the given error statuses."""
    return {c: {"model": ErrorBody, "description": _ERROR_TEXT[c]} for c in codes}


def get_state(request: Request) -> ServingState:
    """The state current when the request started; a reload does not change it mid-request."""
    state = request.app.state.holder.current
    if state is None:
        raise HTTPException(503, "not ready")
    return state


State = Annotated[ServingState, Depends(get_state)]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(
        content=json.dumps(obj, allow_nan=False), status_code=status, media_type="application/json"
    )


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.]*): ")


def _error(status: int, detail: str, field: str | None = None) -> JSONResponse:
    if field is None:  # messages of the form "frames: ..." name their field
        m = _FIELD_PREFIX.match(detail)
        field = m.group(1) if m else None
    return JSONResponse({"detail": detail, "field": field}, status_code=status)


class LimitsAndMetricsMiddleware:
    """Pure ASGI: 413 for bodies over the limit (declared or streamed), latency per route."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], max_body: int, metrics: Metrics
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_holder = [500]

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = False
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body
            except ValueError:
                too_big = True
        if too_big:
            await self._reject(send, send_wrapper)
        else:
            received = [0]

            async def limited_receive() -> MutableMapping[str, Any]:
                message: MutableMapping[str, Any] = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > self.max_body:
                        raise _BodyTooLarge
                return message

            try:
                await self.app(scope, limited_receive, send_wrapper)
            except _BodyTooLarge:
                await self._reject(send, send_wrapper)
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.observe(
            scope.get("method", "?"), path, status_holder[0], time.perf_counter() - start
        )

    async def _reject(self, send: Any, send_wrapper: Any) -> None:
        body = json.dumps(
            {"detail": f"request body larger than {self.max_body} bytes", "field": None}
        ).encode()
        await send_wrapper(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


def _offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs with its script and style served by this service."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger-ui", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    holder = StateHolder()

    def load_state(store: DurableStore) -> ServingState:
        return ServingState(settings.artifacts, store, settings.watch_threshold_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One OpenMP thread per FAISS search: requests run concurrently already, and an
        # OpenMP team per single query stalls when cores are busy (HNSW p50 0.14 ms with
        # one thread vs ~8 ms with two under load, measured here).
        faiss.omp_set_num_threads(1)
        store = DurableStore(settings.state_db_path())
        app.state.store = store
        holder.current = await run_in_threadpool(load_state, store)
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_now()))
        try:
            yield
        finally:
            holder.current = None
            store.close()

    async def reload_now() -> dict[str, Any]:
        def build() -> ServingState:
            # Writes wait on the reload lock, so none lands between building and swapping.
            with holder.reload_lock:
                new = load_state(app.state.store)
                holder.current = new
                holder.reloads += 1
                return new

        new = await run_in_threadpool(build)
        metrics.inc("artifact_reloads")
        return {"status": "reloaded", "artifact_version": new.version, "videos": new.num_videos}

    app = FastAPI(
        title="cowatch-recsys",
        version="0.1.0",
        description="Scores candidate videos for a user (similarity to the watch history and GLMix watch "
        "probability), recommends, finds similar videos and ingests cold-start videos.",
        lifespan=lifespan,
        # The default /docs and /redoc pages load their scripts from a CDN: blank without
        # internet. /docs is served below from assets shipped by swagger-ui-bundle.
        docs_url=None,
        redoc_url=None,
    )
    _offline_docs(app)
    app.state.settings = settings
    app.state.holder = holder
    app.state.metrics = metrics
    app.add_middleware(
        LimitsAndMetricsMiddleware, max_body=settings.max_body_bytes, metrics=metrics
    )  # type: ignore[arg-type]

    def current_state() -> ServingState:
        state = holder.current
        if state is None:
            raise HTTPException(503, "not ready")
        return state

    def require_api_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        if settings.api_key is None:
            return
        if x_api_key is None or not hmac.compare_digest(
            x_api_key.encode(), settings.api_key.encode()
        ):
            raise HTTPException(401, "missing or wrong X-API-Key header")

    @app.exception_handler(UserInputError)
    async def user_error(_: Request, exc: UserInputError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(ConflictError)
    async def conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors()[:10]:
            loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            problems.append(f"{loc or 'body'}: {e.get('msg', 'invalid')}")
        first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        field = ".".join(str(p) for p in first if p not in ("body", "query", "path")) or None
        return _error(422, "; ".join(problems) or "invalid request", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.get("/healthz", tags=["ops"])
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["ops"])
    def readyz() -> Response:
        state = holder.current
        if state is None:
            return _json({"status": "loading"}, 503)
        return _json(
            {"status": "ready", "artifact_version": state.version, "videos": state.num_videos}
        )

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        def gauges() -> dict[str, float]:
            s = holder.current
            if s is None:
                return {"ready": 0}
            return {
                "ready": 1,
                "index_size": s.num_videos,
                "ingested_videos": s.ingested,
                "watch_events": s.watch_events,
                "state_rows_skipped": s.skipped_rows,
            }

        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post(
        "/v1/score",
        tags=["scoring"],
        responses={200: {"model": ScoreResponse}, **_errors(400, 413, 422, 503)},
    )
    def score(req: ScoreRequest, state: State) -> Response:
        """Max/avg similarity to the user's watch history (Eq. 16-17) and GLMix watch probability (Eq. 18)
        per candidate. Unknown videos are reported per item; unknown users get the fixed effect."""
        if len(req.video_ids) > settings.max_candidates:
            raise HTTPException(422, f"at most {settings.max_candidates} candidates per request")
        return _json(state.score(req.user_id, req.video_ids))

    @app.post(
        "/v1/videos",
        tags=["ingestion"],
        status_code=201,
        responses={
            201: {"model": IngestResponse},
            200: {"model": IngestResponse},
            **_errors(400, 401, 409, 413, 422, 503),
        },
        dependencies=[Depends(require_api_key)],
    )
    def ingest(req: VideoIngest, state: State) -> Response:
        """Embed a new (cold-start) video and make it scoreable at once. Durable before 201;
        re-sending the same frames is a 200, different frames under the same id a 409."""
        frames = _decode_frames(req, state.feature_dim, settings.max_frames)
        with holder.reload_lock:
            current = current_state()
            result = current.ingest(req.video_id, frames)
        metrics.inc("ingested_videos" if result.created else "ingest_repeats")
        body = {
            "video_id": result.video_id,
            "created": result.created,
            "num_frames": result.num_frames,
        }
        return _json(body, 201 if result.created else 200)

    @app.post(
        "/v1/events/watch",
        tags=["ingestion"],
        status_code=201,
        responses={201: {"model": WatchResponse}, **_errors(400, 401, 404, 413, 422, 503)},
        dependencies=[Depends(require_api_key)],
    )
    def watch(req: WatchEvent, state: State) -> Response:
        """Append a watch to the user's history (durable); valid watches count for similarity at once."""
        with holder.reload_lock:
            valid = current_state().record_watch(
                req.user_id, req.video_id, req.watch_seconds, req.at.isoformat()
            )
        metrics.inc("watch_events")
        return _json({"status": "recorded", "valid_watch": valid}, 201)

    @app.get(
        "/v1/users/{user_id}/recommendations",
        tags=["scoring"],
        responses={200: {"model": RecommendationsResponse}, **_errors(404, 422, 503)},
    )
    def recommendations(
        state: State,
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        # A default, not Annotated: the bound comes from the settings at app creation.
        k: int = Query(10, ge=1, le=settings.max_k),
    ) -> Response:
        """Neighbours of the user's history from the index, minus watched videos, ranked by GLMix."""
        return _json(
            {
                "user_id": user_id,
                "recommendations": state.recommend(user_id, k, settings.recommend_seed_videos),
            }
        )

    @app.get(
        "/v1/videos/{video_id}/similar",
        tags=["scoring"],
        responses={200: {"model": SimilarResponse}, **_errors(404, 422, 503)},
    )
    def similar(
        state: State,
        video_id: Annotated[str, Path(min_length=1, max_length=256)],
        # A default, not Annotated: the bound comes from the settings at app creation.
        k: int = Query(10, ge=1, le=settings.max_k),
    ) -> Response:
        """Nearest videos by cosine similarity of the co-watch embeddings."""
        return _json({"video_id": video_id, "similar": state.similar(video_id, k)})

    @app.post(
        "/v1/admin/reload",
        tags=["ops"],
        responses=_errors(400, 401, 422, 503),
        dependencies=[Depends(require_api_key)],
    )
    async def reload() -> Response:
        """Load the artifact again (e.g. a new version put in place) and swap it in atomically."""
        return _json(await reload_now())

    return app


def _decode_frames(req: VideoIngest, dim: int, max_frames: int) -> np.ndarray:
    if (req.frames is None) == (req.frames_b64 is None):
        raise UserInputError("give exactly one of frames or frames_b64")
    if req.frames is not None:
        if len(req.frames) == 0:
            raise UserInputError("frames: a video needs at least one frame")
        if len(req.frames) > max_frames:
            raise UserInputError(f"frames: at most {max_frames} frames per video")
        bad = next((i for i, f in enumerate(req.frames) if len(f) != dim), None)
        if bad is not None:
            raise UserInputError(
                f"frames: frame {bad} has dimension {len(req.frames[bad])}, the model expects {dim}"
            )
        arr = np.asarray(req.frames, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise UserInputError("frames: values must be finite (no NaN or inf)")
        if np.abs(arr).max(initial=0) > 3.0e38:
            raise UserInputError("frames: values out of float32 range")
        return arr.astype(np.float32)
    assert req.frames_b64 is not None
    if req.num_frames is None:
        raise UserInputError("frames_b64 needs num_frames")
    if req.num_frames > max_frames:
        raise UserInputError(f"num_frames: at most {max_frames} frames per video")
    try:
        raw = base64.b64decode(req.frames_b64, validate=True)
    except (binascii.Error, ValueError):
        raise UserInputError("frames_b64: not valid base64") from None
    itemsize = 4 if req.dtype == "float32" else 1
    expected = req.num_frames * dim * itemsize
    if len(raw) != expected:
        raise UserInputError(
            f"frames_b64: {len(raw)} bytes, expected num_frames x {dim} x {itemsize} = {expected}"
        )
    if req.dtype == "uint8":
        return dequantize(np.frombuffer(raw, np.uint8).reshape(req.num_frames, dim))
    arr = np.frombuffer(raw, "<f4").reshape(req.num_frames, dim)
    if not np.isfinite(arr).all():
        raise UserInputError("frames_b64: values must be finite (no NaN or inf)")
    return arr.astype(np.float32)


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (settings from RECSYS_* variables)."""
    return create_app(Settings())
