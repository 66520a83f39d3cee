"""The HTTP service: scoring, recommendations, similar videos, cold-start ingestion.

Hot paths validate requests with pydantic (Rust core) but return pre-serialised
JSON ``Response`` objects, skipping FastAPI's response-model round trip, which
dominated latency in measurements. The response schemas are still documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import faiss
import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.dataset import dequantize
from recsys.errors import UserInputError
from serving.deps import State
from serving.explorer import add_explorer
from serving.frame_encoding import (
    VALUE_LIMIT,
    FrameDecodeError,
    decode_frames_b64,
    frames_b64_pattern,
    max_b64_length,
)
from serving.metrics import Metrics
from serving.settings import Settings
from serving.state import ConflictError, NotFoundError, ServingState, StateHolder
from serving.store import Impression, StateStore, StoreUnavailable, open_store

log = logging.getLogger(__name__)

ID = Annotated[str, Field(min_length=1, max_length=256)]


#: Request bodies: JSON types exactly as the schema states them (no "1.0" for 1.0, no epoch
#: number for a date-time), and unknown keys refused rather than silently ignored.
REQUEST_MODEL = ConfigDict(strict=True, extra="forbid")


class ScoreRequest(BaseModel):
    model_config = REQUEST_MODEL
    user_id: ID
    video_ids: list[ID] = Field(min_length=1)


def score_request_type(max_candidates: int) -> type[ScoreRequest]:
    """``ScoreRequest`` whose schema states the configured candidate limit."""
    return create_model(  # type: ignore[no-any-return]
        "ScoreRequest",
        __base__=ScoreRequest,
        video_ids=(list[ID], Field(min_length=1, max_length=max_candidates)),
    )


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


#: |value| < 2^20 for frame values (JSON or base64): far above any real feature scale
#: (YouTube-8M's dequantised features lie in [-2, 2]) and far below where the pooling's
#: squared distances overflow float32.
FRAME_VALUE_LIMIT = VALUE_LIMIT


def ingest_body_type(dim: int | None, max_frames: int) -> Any:
    """The request body of ``POST /v1/videos`` for feature dimension ``dim``.

    Three mutually exclusive shapes, each stating its full constraints in the schema (rows
    of exactly ``dim`` values; canonical base64 of whole finite frames), so that every
    request that follows the schema is accepted. ``dim=None`` (artifact unreadable at
    start-up) leaves the row length open; the service then fails to start anyway.
    """
    value = Annotated[float, Field(gt=-FRAME_VALUE_LIMIT, lt=FRAME_VALUE_LIMIT)]
    row = Annotated[list[value], Field(min_length=dim, max_length=dim)]  # type: ignore[valid-type]
    strict = REQUEST_MODEL

    def b64_field(dtype: str) -> Any:
        if dim is None:
            return Field(min_length=1)
        return Field(
            min_length=1,
            max_length=max_b64_length(max_frames, dim, dtype),
            description=f"canonical base64 of row-major little-endian {dtype} bytes, "
            f"a whole number of {dim}-value frames"
            + (", all finite" if dtype == "float32" else ""),
            json_schema_extra={"pattern": frames_b64_pattern(dim, dtype)},
        )

    class FramesIngest(BaseModel):
        """Frames as a JSON matrix: one row of ``feature_dim`` numbers per frame."""

        model_config = strict
        video_id: ID
        frames: list[row] = Field(min_length=1, max_length=max_frames)  # type: ignore[valid-type]

    class Float32FramesIngest(BaseModel):
        """Frames as base64 of float32 bytes (lossless, 3x smaller than JSON)."""

        model_config = strict
        video_id: ID
        frames_b64: str = b64_field("float32")
        dtype: Literal["float32"] = "float32"

    class Uint8FramesIngest(BaseModel):
        """Frames as base64 of YouTube-8M-quantised uint8 bytes (dequantised on arrival)."""

        model_config = strict
        video_id: ID
        frames_b64: str = b64_field("uint8")
        dtype: Literal["uint8"]

    def shape(body: Any) -> str | None:
        # Pick the one shape the body means, so errors speak about that shape only.
        # Tags in parentheses are dropped from error locations (see the 422 handler).
        if not isinstance(body, dict):
            return "(json)"
        if ("frames" in body) == ("frames_b64" in body):
            return None
        if "frames" in body:
            return "(json)"
        return "(uint8)" if body.get("dtype") == "uint8" else "(float32)"

    return Annotated[
        Annotated[FramesIngest, Tag("(json)")]
        | Annotated[Float32FramesIngest, Tag("(float32)")]
        | Annotated[Uint8FramesIngest, Tag("(uint8)")],
        Discriminator(
            shape,
            custom_error_type="frames_or_frames_b64",
            custom_error_message="give exactly one of frames or frames_b64",
        ),
    ]


class IngestResponse(BaseModel):
    video_id: str
    created: bool
    num_frames: int


def _rfc3339_string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("expected an RFC 3339 date-time string")
    return value


class WatchEvent(BaseModel):
    model_config = REQUEST_MODEL
    user_id: ID
    video_id: ID
    watch_seconds: float = Field(ge=0, allow_inf_nan=False)
    #: an RFC 3339 string with a time zone (not parsed from numbers: the schema says string)
    at: Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339_string)]


class ImpressionEvent(BaseModel):
    """One row of the ``impressions.parquet`` contract, as it happens."""

    model_config = REQUEST_MODEL
    user_id: ID
    video_id: ID
    shown_at: Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339_string)]
    watch_seconds: float = Field(ge=0, allow_inf_nan=False)
    #: a retry with the same id is acknowledged and not applied twice
    event_id: ID | None = None


class ImpressionBatch(BaseModel):
    model_config = REQUEST_MODEL
    impressions: list[ImpressionEvent] = Field(min_length=1, max_length=1000)


class ImpressionsResponse(BaseModel):
    accepted: int
    duplicates: int
    valid_watches: int
    users_updated: int


class Recommendation(BaseModel):
    video_id: str
    watch_probability: float
    max_similarity: float | None = None
    avg_similarity: float | None = None


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
    503: "Not ready (artifact loading, or the state store unreachable: see Retry-After)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting the given error statuses."""
    return {c: {"model": ErrorBody, "description": _ERROR_TEXT[c]} for c in codes}


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


def _artifact_feature_dim(artifact: FilePath) -> int | None:
    """The frame dimension the artifact's embedder expects, or None when unreadable."""
    try:
        return int(json.loads((artifact / "embedder.json").read_text())["feature_dim"])
    except (OSError, ValueError, TypeError, KeyError):
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # The ingest schema states the frame length; a reload may not change it.
    schema_dim = _artifact_feature_dim(settings.artifacts)
    metrics = Metrics()
    holder = StateHolder()

    def load_state(store: StateStore) -> ServingState:
        state = ServingState(settings.artifacts, store, settings.watch_threshold_s)
        if schema_dim is not None and state.feature_dim != schema_dim:
            raise UserInputError(
                f"{settings.artifacts}: feature_dim changed from {schema_dim} to "
                f"{state.feature_dim}; restart the service to serve the new artifact"
            )
        return state

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One OpenMP thread per FAISS search: requests run concurrently already, and an
        # OpenMP team per single query stalls when cores are busy (HNSW p50 0.14 ms with
        # one thread vs ~8 ms with two under load, measured here).
        faiss.omp_set_num_threads(1)
        stop = threading.Event()
        app.state.store_ok = True

        def follow() -> None:
            # Other replicas' writes (and, after an outage, the store coming back).
            while not stop.wait(settings.sync_interval_s):
                state = holder.current
                if state is None:
                    continue
                try:
                    n = state.sync()
                    app.state.store_ok = True
                    if n:
                        metrics.inc("replicated_rows", n)
                except StoreUnavailable as exc:
                    if app.state.store_ok:
                        log.warning("%s", exc)
                    app.state.store_ok = False
                except Exception:  # keep following; the next poll retries
                    log.exception("state store: sync failed")

        def open_and_load() -> tuple[StateStore, ServingState]:
            store = open_store(settings.store_url())
            try:
                return store, load_state(store)
            except BaseException:
                store.close()
                raise

        def load_when_reachable() -> None:
            while not stop.is_set():
                try:
                    app.state.store, holder.current = open_and_load()
                    app.state.store_ok = True
                    log.warning("state store reachable again: loaded")
                    return
                except StoreUnavailable:
                    stop.wait(1.0)

        try:
            app.state.store, holder.current = await run_in_threadpool(open_and_load)
        except StoreUnavailable as exc:
            # Start anyway, not ready, and load as soon as the store answers.
            log.warning("%s; retrying every second", exc)
            app.state.store, app.state.store_ok = None, False
            threading.Thread(target=load_when_reachable, daemon=True).start()
        follower = threading.Thread(target=follow, name="state-follower", daemon=True)
        follower.start()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_now()))
        try:
            yield
        finally:
            stop.set()
            follower.join(timeout=5)
            holder.current = None
            if app.state.store is not None:
                app.state.store.close()

    async def reload_now() -> dict[str, Any]:
        def build() -> ServingState:
            # Writes wait on the reload lock, so none lands between building and swapping.
            with holder.reload_lock:
                if app.state.store is None:
                    raise StoreUnavailable("state store unavailable: not loaded yet")
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
    add_explorer(app, settings, _errors, _json)
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

    @app.exception_handler(StoreUnavailable)
    async def store_down(_: Request, exc: StoreUnavailable) -> JSONResponse:
        app.state.store_ok = False
        response = _error(503, str(exc))
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(NotFoundError)
    async def not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        def where(loc: Any) -> str:
            # Drop the request part and union shape tags like "(json)": name the field.
            parts = [
                str(p)
                for p in loc
                if p not in ("body", "query", "path")
                and not (isinstance(p, str) and p.startswith("("))
            ]
            return ".".join(parts)

        errors = exc.errors()
        problems = [
            f"{where(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errors[:10]
        ]
        field = where(errors[0].get("loc", ())) or None if errors else None
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
        if not app.state.store_ok:
            response = _json({"status": "state store unavailable"}, 503)
            response.headers["Retry-After"] = "1"
            return response
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
                "impression_events_stored": s.impression_events,
                "online_users": len(s.online.effects),
                "state_rows_skipped": s.skipped_rows,
            }

        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    def score(req: ScoreRequest, state: State) -> Response:
        """Max/avg similarity to the user's watch history (Eq. 16-17) and GLMix watch probability (Eq. 18)
        per candidate. Unknown videos are reported per item; unknown users get the fixed effect."""
        return _json(state.score(req.user_id, req.video_ids))

    # The candidate limit is a setting: the schema states it (no silent cap).
    score.__annotations__["req"] = score_request_type(settings.max_candidates)
    app.post(
        "/v1/score",
        tags=["scoring"],
        responses={200: {"model": ScoreResponse}, **_errors(400, 413, 422, 503)},
    )(score)

    def ingest(req: Any, state: State) -> Response:
        """Embed a new (cold-start) video and make it scoreable at once. Durable before 201;
        re-sending the same frames is a 200, different frames under the same id a 409."""
        frames = _decode_frames(req, state.feature_dim)
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

    # The body type depends on the artifact's feature dimension, known only now.
    ingest.__annotations__["req"] = ingest_body_type(schema_dim, settings.max_frames)
    app.post(
        "/v1/videos",
        tags=["ingestion"],
        status_code=201,
        responses={
            201: {"model": IngestResponse},
            200: {"model": IngestResponse},
            **_errors(400, 401, 409, 413, 422, 503),
        },
        dependencies=[Depends(require_api_key)],
    )(ingest)

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

    @app.post(
        "/v1/events/impressions",
        tags=["ingestion"],
        status_code=201,
        responses={201: {"model": ImpressionsResponse}, **_errors(400, 401, 404, 413, 422, 503)},
        dependencies=[Depends(require_api_key)],
    )
    def impressions(req: ImpressionBatch, state: State) -> Response:
        """Append impressions (durable before the 201). Valid watches extend histories and
        each user's GLMix effect is refitted at once (online GLMix), so the next scores and
        recommendations reflect them. Unknown videos reject the whole batch (404)."""
        batch = [
            Impression(i.user_id, i.video_id, i.shown_at.isoformat(), i.watch_seconds, i.event_id)
            for i in req.impressions
        ]
        with holder.reload_lock:
            result = current_state().record_impressions(batch)
        metrics.inc("impression_events", result.accepted)
        return _json(
            {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "valid_watches": result.valid_watches,
                "users_updated": result.users_updated,
            },
            201,
        )

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


def _decode_frames(req: Any, dim: int) -> np.ndarray:
    """The validated body's frames as a (T, dim) float32 array."""
    frames = getattr(req, "frames", None)
    if frames is not None:
        # Row lengths and value bounds were checked against the schema already, unless the
        # artifact was unreadable when the app was created; check again, cheaply.
        bad = next((i for i, f in enumerate(frames) if len(f) != dim), None)
        if bad is not None:
            raise UserInputError(
                f"frames: frame {bad} has dimension {len(frames[bad])}, the model expects {dim}"
            )
        return np.asarray(frames, dtype=np.float32)
    try:
        arr = decode_frames_b64(req.frames_b64, dim, req.dtype)
    except FrameDecodeError as exc:
        raise UserInputError(str(exc)) from None
    return dequantize(arr) if req.dtype == "uint8" else arr


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (settings from RECSYS_* variables)."""
    return create_app(Settings())
