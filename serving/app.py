"""The HTTP service, assembled: settings, lifespan, middleware, error handlers, routers.

Where things are: request and response bodies in ``schemas.py``, the error shape and
handlers in ``errors.py``, the body limit and metrics in ``middleware.py``, start-up,
the store follower and reloads in ``lifespan.py``, the routes per resource in
``routers/``, the state in ``state.py`` (and ``histories.py``, ``catalogue.py``), what
reads it in ``queries.py``, the stores in ``stores/``, connection deadlines in
``connections.py``.

Hot paths validate requests with pydantic (Rust core) but return pre-serialised JSON
``Response`` objects, skipping FastAPI's response-model round trip, which dominated
latency in measurements. The response schemas are still documented.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from recsys.artifact import embedder_feature_dim
from recsys.embedders import is_given
from recsys.errors import UserInputError
from serving.errors import add_exception_handlers
from serving.fast_routes import FastRoutes
from serving.lifespan import make_lifespan
from serving.log.archive import LogArchive
from serving.metrics import Metrics
from serving.middleware import FAST_ROUTE_KEY, LimitsAndMetricsMiddleware
from serving.routers import events, explorer, ingestion, ops, removals, scoring
from serving.settings import Settings
from serving.state import ServingState, StateHolder
from serving.stores import StateStore


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


class _Service(FastAPI):
    """FastAPI with the service's middleware (limits, metrics, fast routes) outermost,
    before the framework's error, telemetry and body-limit layers, and a fast route's
    request handed to it directly: a fast route's answer pays for no framework layer
    at all (8 of a 300 us score, measured in process). What a fast route declines, and
    every other request, goes through all of them as before; an exception in a route is
    still answered by the framework's 500 handler, inside the middleware, which counts
    it. (A fast route's request is not traced by FastAPI's OpenTelemetry hook.)"""

    def __init__(self, front: LimitsAndMetricsMiddleware, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.front = front

    def build_middleware_stack(self) -> Any:
        self.front.app = super().build_middleware_stack()
        return self.front

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        front = self.front
        if scope["type"] == "http" and self.middleware_stack is not None:
            fast = front.fast_routes.find(scope["method"], scope["path"])
            scope[FAST_ROUTE_KEY] = fast  # the middleware looks it up once, here
            if fast is not None:
                scope["app"] = self
                await front(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _not_built(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the application's middleware stack is not built yet")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # The ingest schema states the frame length; a reload may not change it.
    schema_dim = embedder_feature_dim(settings.artifacts)
    takes_vectors = is_given(settings.artifacts)  # uploads send a vector, not frames

    def load_state(store: StateStore) -> ServingState:
        state = ServingState(
            settings.artifacts,
            store,
            settings.watch_threshold_s,
            archive=LogArchive(settings.archive_path()),
            neighbour_cache_bytes=settings.neighbour_cache_mb << 20,
        )
        state.refit_wait_s = settings.refit_wait_seconds()
        if (schema_dim is not None and state.feature_dim != schema_dim) or (
            state.takes_vectors != takes_vectors
        ):
            raise UserInputError(
                f"{settings.artifacts}: the upload's shape changed (feature_dim {schema_dim} "
                f"to {state.feature_dim}, or frames and vectors); restart the service to "
                "serve the new artifact"
            )
        return state

    metrics = Metrics()
    # Filled once the routes exist; on the app's state so a test or an operator's
    # debugging session can see or clear them (every route answers without them).
    fast_routes = FastRoutes()
    front = LimitsAndMetricsMiddleware(
        _not_built,  # the framework's stack, once built (at the first request)
        max_body=settings.max_body_bytes,
        metrics=metrics,
        api_key=settings.api_key,
        max_in_flight=settings.max_in_flight,
        queue_timeout_s=settings.queue_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        allowed_hosts=settings.host_list(),
        fast_routes=fast_routes,
    )
    app = _Service(
        front,
        title="cowatch-recsys",
        version="0.1.0",
        description="Scores candidate videos for a user (similarity to the watch history and GLMix watch "
        "probability), recommends, finds similar videos and ingests cold-start videos.",
        lifespan=make_lifespan(load_state),
        # The default /docs and /redoc pages load their scripts from a CDN: blank without
        # internet. /docs is served below from assets shipped by swagger-ui-bundle.
        docs_url=None,
        redoc_url=None,
    )
    _offline_docs(app)
    explorer.mount_static(app)
    app.state.settings = settings
    app.state.holder = StateHolder()
    app.state.metrics = metrics
    app.state.load_state = load_state
    app.state.fast_routes = fast_routes
    add_exception_handlers(app)
    # The hottest routes first: a request is matched against the routes in this order
    # (about 5 us a route skipped).
    app.include_router(scoring.router(settings))
    app.include_router(ops.router)
    app.include_router(explorer.router)
    app.include_router(ingestion.router(settings, schema_dim, takes_vectors))
    app.include_router(events.router)
    app.include_router(removals.router)
    # The hottest reads answered from the middleware when they can (serving.fast_routes).
    scoring.add_fast_routes(fast_routes, app, settings)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory serving.app:app_from_env`` (settings from RECSYS_* variables)."""
    return create_app(Settings())
