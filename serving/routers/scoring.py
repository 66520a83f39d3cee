"""Scoring: candidates for a user, recommendations, similar videos."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from serving import queries
from serving.deps import State, current_state, is_json_media, json_body
from serving.errors import DUMP_OPTIONS, error_responses, json_response
from serving.schemas import (
    PATH_ID,
    RecommendationsResponse,
    ScoreRequest,
    ScoreResponse,
    SimilarResponse,
    request_body_schema,
    score_request_type,
)
from serving.settings import Settings
from serving.state import ServingState

#: a recommendation scoring at most this many candidates runs on the event loop
INLINE_CANDIDATES = 4096


def score(req: ScoreRequest, state: ServingState) -> Response:
    """Max/avg similarity to the user's watch history (Eq. 16-17) and GLMix watch probability (Eq. 18)
    per candidate. Unknown videos are reported per item; unknown users get the fixed effect."""
    return json_response(queries.score(state, req.user_id, req.video_ids))


def recommendations(state: ServingState, user_id: str, k: int, seeds: int) -> Response:
    """Neighbours of the user's history from the index, minus watched videos, ranked by GLMix."""
    return json_response(
        {"user_id": user_id, "recommendations": queries.recommend(state, user_id, k, seeds)}
    )


def similar(state: ServingState, video_id: str, k: int) -> Response:
    """Nearest videos by cosine similarity of the co-watch embeddings."""
    return json_response({"video_id": video_id, "similar": queries.similar(state, video_id, k)})


def router(settings: Settings) -> APIRouter:
    """The scoring routes; their schemas state the configured limits (no silent cap)."""
    r = APIRouter(tags=["scoring"])
    seeds = settings.recommend_seed_videos

    # The reads run on the event loop, not in the thread pool: each is a few vectorised
    # passes under a millisecond (bounded by max_candidates and max_k) that take no
    # lock a write holds for long, and a thread hand-off cost more than the work
    # (score: 460 -> 700 req/s at 8 clients, server CPU a request 2.2 -> 1.4 ms).
    # The body is parsed and validated in one pass by pydantic's Rust core (FastAPI
    # would decode it with the standard library's json, then validate the objects, then
    # solve a dependency): about a third of the route's framework cost. The schema is
    # still the documented request body.
    request_type = score_request_type(settings.max_candidates)

    async def score_route(request: Request) -> Response:
        req = await json_body(request, request_type)
        return score(req, current_state(request.app.state.holder))

    _describe(score_route, score, "score")
    r.post(
        "/v1/score",
        responses={200: {"model": ScoreResponse}, **error_responses(400, 413, 422, 503)},
        openapi_extra=request_body_schema(request_type),
    )(score_route)

    # Defaults, not Annotated: the bounds come from the settings at app creation.
    async def recommendations_route(
        state: State, user_id: PATH_ID, k: int = Query(10, ge=1, le=settings.max_k)
    ) -> Response:
        # Most run on the loop (about 1,200 candidates: a few ms); a large one (no
        # history: the newest 20,000 videos; a large k) goes to the thread pool, so
        # it never holds every other request up behind it.
        if queries.recommend_candidates(state, user_id, k, seeds) > INLINE_CANDIDATES:
            return await run_in_threadpool(recommendations, state, user_id, k, seeds)
        return recommendations(state, user_id, k, seeds)

    async def similar_route(
        state: State, video_id: PATH_ID, k: int = Query(10, ge=1, le=settings.max_k)
    ) -> Response:
        return similar(state, video_id, k)

    _describe(recommendations_route, recommendations, "recommendations")
    r.get(
        "/v1/users/{user_id}/recommendations",
        responses={200: {"model": RecommendationsResponse}, **error_responses(404, 422, 503)},
    )(recommendations_route)
    _describe(similar_route, similar, "similar")
    r.get(
        "/v1/videos/{video_id}/similar",
        responses={200: {"model": SimilarResponse}, **error_responses(404, 422, 503)},
    )(similar_route)
    return r


class FastScore:
    """``POST /v1/score`` answered from the middleware (``serving.middleware.FastRoute``):
    the same validation, scoring and bytes as the route, without the framework's routing,
    exception layers and endpoint wrapper, about a third of a score's server CPU on this
    route. Anything but a 200 (not ready, a body the route refuses, an error while
    scoring: it only reads) is left to the route, which answers it as always."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.holder = app.state.holder
        self.request_type = score_request_type(settings.max_candidates)
        self.path = "/v1/score"

    def __call__(self, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
        state = self.holder.current
        if state is None or not is_json_media(headers.get(b"content-type", b"").decode("latin-1")):
            return None
        try:
            req = self.request_type.model_validate_json(body)
            return orjson.dumps(
                queries.score(state, req.user_id, req.video_ids), option=DUMP_OPTIONS
            )
        except Exception:  # the route answers it (a 422, a 503, or the error as always)
            return None


def _describe(route: Any, logic: Any, name: str) -> None:
    """The route's name and description in the OpenAPI schema are its logic's."""
    route.__name__ = name
    route.__doc__ = logic.__doc__
