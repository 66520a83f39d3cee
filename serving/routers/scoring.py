"""Scoring: candidates for a user, recommendations, similar videos."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from serving import queries
from serving.deps import State, current_state, is_json_media, json_body
from serving.errors import DUMP_OPTIONS, error_responses, json_response
from serving.fast_routes import FastRoutes, Message, path_param
from serving.schemas import (
    ID_MAX_LENGTH,
    ID_PATTERN,
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

#: k of recommendations and similar videos when the query gives none
DEFAULT_K = 10
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
        state: State, user_id: PATH_ID, k: int = Query(DEFAULT_K, ge=1, le=settings.max_k)
    ) -> Response:
        # Most run on the loop (about 1,200 candidates: a few ms); a large one (no
        # history: the newest 20,000 videos; a large k) goes to the thread pool, so
        # it never holds every other request up behind it.
        if queries.recommend_candidates(state, user_id, k, seeds) > INLINE_CANDIDATES:
            return await run_in_threadpool(recommendations, state, user_id, k, seeds)
        return recommendations(state, user_id, k, seeds)

    async def similar_route(
        state: State, video_id: PATH_ID, k: int = Query(DEFAULT_K, ge=1, le=settings.max_k)
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


class _FastRead:
    """What the fast read routes share (``serving.fast_routes``): the state, or a decline
    while there is none, and the answer serialised as the routes' ``json_response``."""

    path: str

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.holder = app.state.holder
        self.max_k = settings.max_k
        self.seeds = settings.recommend_seed_videos

    def __call__(self, scope: Message, headers: dict[bytes, bytes], body: bytes) -> bytes | None:
        state = self.holder.current
        if state is None:
            return None
        try:
            answer = self.answer(state, scope, headers, body)
        except Exception:  # the route answers it (a 404, a 422, or the error as always)
            return None
        return None if answer is None else orjson.dumps(answer, option=DUMP_OPTIONS)

    def answer(
        self, state: ServingState, scope: Message, headers: dict[bytes, bytes], body: bytes
    ) -> dict[str, Any] | None:
        raise NotImplementedError

    def k(self, scope: Message) -> int | None:
        """The query's ``k`` (``DEFAULT_K`` without one) when it is the only parameter and plainly
        within the route's bounds; else None (the route validates it)."""
        query = scope.get("query_string", b"")
        if not query:
            return DEFAULT_K
        m = _K_QUERY.fullmatch(query)
        k = int(m.group(1)) if m else None
        return k if k is not None and k <= self.max_k else None

    def path_id(self, scope: Message) -> str | None:
        """The path's id when the route's ``PATH_ID`` takes it as it is."""
        value = path_param(self, scope["path"])
        return value if len(value) <= ID_MAX_LENGTH and _PATH_ID.fullmatch(value) else None


#: a query of one plain ``k`` (anything else goes to the route, which validates it)
_K_QUERY = re.compile(rb"k=([1-9][0-9]{0,5})")
#: ``schemas.PATH_ID``'s pattern
_PATH_ID = re.compile(ID_PATTERN)


class FastScore(_FastRead):
    """``POST /v1/score``: the route's validation (its request type) and scoring, in one
    pass from the body the middleware has read (about a third of a score's server CPU
    is the framework's)."""

    path = "/v1/score"

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        super().__init__(app, settings)
        self.request_type = score_request_type(settings.max_candidates)

    def answer(
        self, state: ServingState, scope: Message, headers: dict[bytes, bytes], body: bytes
    ) -> dict[str, Any] | None:
        media = headers.get(b"content-type", b"")
        if media != b"application/json" and not is_json_media(media.decode("latin-1")):
            return None
        req = self.request_type.model_validate_json(body)
        return queries.score(state, req.user_id, req.video_ids)


class _FastGet(_FastRead):
    """A GET route of one path id and the query's ``k``."""

    def answer(
        self, state: ServingState, scope: Message, headers: dict[bytes, bytes], body: bytes
    ) -> dict[str, Any] | None:
        key, k = self.path_id(scope), self.k(scope)
        return None if key is None or k is None else self.get(state, key, k)

    def get(self, state: ServingState, key: str, k: int) -> dict[str, Any] | None:
        raise NotImplementedError


class FastSimilar(_FastGet):
    """``GET /v1/videos/{video_id}/similar``."""

    path = "/v1/videos/{video_id}/similar"

    def get(self, state: ServingState, key: str, k: int) -> dict[str, Any] | None:
        return {"video_id": key, "similar": queries.similar(state, key, k)}


class FastRecommendations(_FastGet):
    """``GET /v1/users/{user_id}/recommendations``, the ones the route runs on the event
    loop (a large one goes to the route, which hands it to the thread pool)."""

    path = "/v1/users/{user_id}/recommendations"

    def get(self, state: ServingState, key: str, k: int) -> dict[str, Any] | None:
        if queries.recommend_candidates(state, key, k, self.seeds) > INLINE_CANDIDATES:
            return None
        return {"user_id": key, "recommendations": queries.recommend(state, key, k, self.seeds)}


def add_fast_routes(routes: FastRoutes, app: FastAPI, settings: Settings) -> None:
    """The scoring routes' fast twins (``serving.fast_routes``), answered from the
    middleware when they can."""
    routes.add("POST", FastScore(app, settings))
    routes.add("GET", FastSimilar(app, settings))
    routes.add("GET", FastRecommendations(app, settings))


def _describe(route: Any, logic: Any, name: str) -> None:
    """The route's name and description in the OpenAPI schema are its logic's."""
    route.__name__ = name
    route.__doc__ = logic.__doc__
