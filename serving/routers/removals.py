"""Removals: a video taken down (a claim, a policy) and a user's data erased (their
request). Both are durable before the answer, reach every replica like any other write,
and are idempotent."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from serving.deps import WRITE, Holder, current_state
from serving.errors import error_responses, json_response
from serving.schemas import PATH_ID, ErasureResponse, TakedownResponse

router = APIRouter(tags=["removals"])


@router.delete(
    "/v1/videos/{video_id}",
    responses={200: {"model": TakedownResponse}, **error_responses(401, 404, 422, 503)},
    dependencies=WRITE,
)
def take_down(video_id: PATH_ID, holder: Holder) -> Response:
    """Take a video down: from now on it is in no recommendation, similar list, score,
    history or map on any replica, the offline index's copy included; its id cannot be
    ingested again. The next pipeline run should leave it out of the data set."""
    with holder.reload_lock:
        now = current_state(holder).take_down(video_id)
    return json_response({"video_id": video_id, "taken_down_now": now})


@router.delete(
    "/v1/users/{user_id}",
    responses={200: {"model": ErasureResponse}, **error_responses(401, 422, 503)},
    dependencies=WRITE,
)
def erase(user_id: PATH_ID, holder: Holder) -> Response:
    """Erase a user: their stored watches and impressions are deleted and every replica
    forgets their history and effects, offline ones included. Events after this start
    a new user."""
    with holder.reload_lock:
        current_state(holder).erase(user_id)
    return json_response({"user_id": user_id, "erased": True})
