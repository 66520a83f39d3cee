"""Events: watches and impressions as they happen (durable before the 201)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

from serving.deps import WRITE, AppMetrics, AppSettings, Holder, State, current_state
from serving.errors import error_responses, json_response
from serving.schemas import ImpressionBatch, ImpressionsResponse, WatchEvent, WatchResponse
from serving.stores import Impression

router = APIRouter(tags=["ingestion"])
_LAST = datetime.max.replace(tzinfo=UTC)


@router.post(
    "/v1/events/watch",
    status_code=201,
    responses={201: {"model": WatchResponse}, **error_responses(400, 401, 404, 413, 422, 503)},
    dependencies=WRITE,
)
def watch(
    req: WatchEvent, state: State, holder: Holder, metrics: AppMetrics, settings: AppSettings
) -> Response:
    """Append a watch to the user's history (durable); valid watches count for similarity at once."""
    refuse_future([req.at], "at", settings.max_event_future_s)
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
    req: ImpressionBatch,
    state: State,
    holder: Holder,
    metrics: AppMetrics,
    settings: AppSettings,
) -> Response:
    """Append impressions (durable before the 201). Valid watches extend histories and
    each user's GLMix effect is refitted at once (online GLMix), so the next scores and
    recommendations reflect them. Unknown videos reject the whole batch (404), and so does
    an impression dated ahead of the server's clock (422)."""
    refuse_future(
        [i.shown_at for i in req.impressions],
        "impressions.{}.shown_at",
        settings.max_event_future_s,
    )
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


def refuse_future(times: list[datetime], field: str, ahead_s: float) -> None:
    """422 naming the first of ``times`` later than the server's clock plus ``ahead_s``
    (``field``: its name, "{}" filled with its index): nothing of the request is kept."""
    now = datetime.now(UTC)
    if ahead_s >= (_LAST - now).total_seconds():
        return  # an allowance past the calendar's end (year 9999) allows every time
    latest = now + timedelta(seconds=ahead_s)
    for i, at in enumerate(times):
        if _later(at, latest):
            raise HTTPException(
                422,
                f"{field.format(i)}: {at.isoformat()} is more than {ahead_s:g} s after the "
                f"server's clock ({now.isoformat(timespec='seconds')}); send the time the "
                "event happened (RECSYS_MAX_EVENT_FUTURE_S sets the allowance)",
            )


def _later(at: datetime, latest: datetime) -> bool:
    try:
        return at > latest
    except OverflowError:  # in UTC past the year 9999 (a late time, a negative offset)
        return True
