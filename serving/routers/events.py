"""Events: watches and impressions as they happen (durable before the 201)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.deps import WRITE, AppMetrics, Holder, State, current_state
from serving.errors import error_responses, json_response
from serving.schemas import ImpressionBatch, ImpressionsResponse, WatchEvent, WatchResponse
from serving.stores import Impression

router = APIRouter(tags=["ingestion"])


@router.post(
    "/v1/events/watch",
    status_code=201,
    responses={201: {"model": WatchResponse}, **error_responses(400, 401, 404, 413, 422, 503)},
    dependencies=WRITE,
)
def watch(req: WatchEvent, state: State, holder: Holder, metrics: AppMetrics) -> Response:
    """Append a watch to the user's history (durable); valid watches count for similarity at once."""
    with holder.reload_lock:
        valid = current_state(holder).record_watch(
            req.user_id, req.video_id, req.watch_seconds, req.at.isoformat()
        )
    metrics.inc("watch_events")
    return json_response({"status": "recorded", "valid_watch": valid}, 201)


@router.post(
    "/v1/events/impressions",
    status_code=201,
    responses={
        201: {"model": ImpressionsResponse},
        **error_responses(400, 401, 404, 413, 422, 503),
    },
    dependencies=WRITE,
)
def impressions(
    req: ImpressionBatch, state: State, holder: Holder, metrics: AppMetrics
) -> Response:
    """Append impressions (durable before the 201). Valid watches extend histories and
    each user's GLMix effect is refitted at once (online GLMix), so the next scores and
    recommendations reflect them. Unknown videos reject the whole batch (404)."""
    batch = [
        Impression(i.user_id, i.video_id, i.shown_at.isoformat(), i.watch_seconds, i.event_id)
        for i in req.impressions
    ]
    with holder.reload_lock:
        result = current_state(holder).record_impressions(batch)
    metrics.inc("impression_events", result.accepted)
    return json_response(
        {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "valid_watches": result.valid_watches,
            "users_updated": result.users_updated,
        },
        201,
    )
