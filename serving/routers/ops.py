"""Operations: liveness, readiness, Prometheus metrics, reloading the artifact and writing
a snapshot of the state."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse, Response

from serving.deps import WRITE, AppMetrics, Holder, State
from serving.errors import error_responses, json_response
from serving.lifespan import archive_after_snapshot, reload_now
from serving.state import ServingState, StateHolder

router = APIRouter(tags=["ops"])


# Liveness and readiness run on the event loop: they answer even while every worker
# thread is busy, and cost no thread hand-off.
@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request, holder: Holder) -> Response:
    state = holder.current
    if state is None:
        return json_response({"status": "loading"}, 503)
    if not request.app.state.store_ok:
        response = json_response({"status": "state store unavailable"}, 503)
        response.headers["Retry-After"] = "1"
        return response
    return json_response(
        {"status": "ready", "artifact_version": state.version, "videos": state.num_videos}
    )


def gauges(holder: StateHolder) -> dict[str, float]:
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
        "online_refit_backlog_users": s.refit_backlog,
        "online_refits": s.refits,
        "state_rows_skipped": s.skipped_rows,
        "state_load_seconds": s.load_seconds,
        "state_started_from_snapshot": int(s.started_from == "snapshot"),
        "state_rows_since_snapshot": s.unsnapshotted,
        **_neighbour_gauges(s),
    }


def _neighbour_gauges(s: ServingState) -> dict[str, float]:
    cache = s.catalogue.neighbour_cache
    if cache is None:
        return {}
    return {
        "neighbour_cache_hits": cache.hits,
        "neighbour_cache_misses": cache.misses,
        "neighbour_cache_bytes": cache.nbytes,
    }


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(holder: Holder, metrics: AppMetrics) -> PlainTextResponse:
    return PlainTextResponse(
        metrics.render(lambda: gauges(holder)), media_type="text/plain; version=0.0.4"
    )


@router.post("/v1/admin/reload", responses=error_responses(400, 401, 422, 503), dependencies=WRITE)
async def reload(request: Request) -> Response:
    """Load the artifact again (e.g. a new version put in place) and swap it in atomically."""
    return json_response(await reload_now(request.app, request.app.state.load_state))


@router.post(
    "/v1/admin/snapshot", responses=error_responses(400, 401, 422, 503), dependencies=WRITE
)
async def snapshot(request: Request, state: State, metrics: AppMetrics) -> Response:
    """Write a snapshot of the state derived from the log now (before a planned restart,
    say), as the background writer does every ``RECSYS_SNAPSHOT_INTERVAL_S``; ``written``
    is false when an erasure it had not applied came first (the next one will have it).
    With ``RECSYS_ARCHIVE_KEEP_IMPRESSIONS`` set, the impressions it covers but that many
    newest then move to the archive (``archived``)."""
    t0 = time.perf_counter()
    written = await run_in_threadpool(state.write_snapshot)
    archived = 0
    if written:
        metrics.inc("snapshots_written")
        archived = await run_in_threadpool(archive_after_snapshot, request.app, state)
    return json_response(
        {"written": written, "archived": archived, "seconds": round(time.perf_counter() - t0, 3)}
    )
