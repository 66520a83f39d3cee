"""Cold-start ingestion: a new video's frames, embedded and scoreable at once."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import Response

from recsys.dataset import dequantize
from recsys.errors import UserInputError
from serving.deps import WRITE, AppMetrics, Holder, State, current_state
from serving.errors import error_responses, json_response
from serving.frame_encoding import FrameDecodeError, decode_frames_b64
from serving.metrics import Metrics
from serving.schemas import IngestResponse, ingest_body_type, vector_body_type
from serving.settings import Settings
from serving.state import StateHolder


def decode_frames(req: Any, dim: int) -> np.ndarray:
    """The validated body's frames as a (T, dim) float32 array; a given vector as one
    frame, (1, dim) float64 (scaled to unit length before it is stored as float32)."""
    vector = getattr(req, "embedding", None)
    if vector is not None:
        if len(vector) != dim:
            raise UserInputError(f"embedding: {len(vector)} values, the artifact expects {dim}")
        return np.asarray([vector], dtype=np.float64)
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


def ingest(req: Any, holder: StateHolder, metrics: Metrics, feature_dim: int) -> Response:
    """Embed a new (cold-start) video and make it scoreable at once. Durable before 201;
    re-sending the same frames (or vector) is a 200, different ones under the same id a 409."""
    frames = decode_frames(req, feature_dim)
    with holder.reload_lock:
        result = current_state(holder).ingest(req.video_id, frames)
    metrics.inc("ingested_videos" if result.created else "ingest_repeats")
    body = {"video_id": result.video_id, "created": result.created, "num_frames": result.num_frames}
    return json_response(body, 201 if result.created else 200)


def router(settings: Settings, feature_dim: int | None, vectors: bool = False) -> APIRouter:
    """``POST /v1/videos``; the body's schema states the artifact's frame length, or, for
    an artifact of the data's own vectors (``vectors``), takes one vector a video."""
    r = APIRouter(tags=["ingestion"])

    def ingest_route(req: Any, state: State, holder: Holder, metrics: AppMetrics) -> Response:
        return ingest(req, holder, metrics, state.feature_dim)

    ingest_route.__annotations__["req"] = (
        vector_body_type(feature_dim)
        if vectors
        else ingest_body_type(feature_dim, settings.max_frames)
    )
    ingest_route.__name__, ingest_route.__doc__ = "ingest", ingest.__doc__
    r.post(
        "/v1/videos",
        status_code=201,
        responses={
            201: {"model": IngestResponse},
            200: {"model": IngestResponse},
            **error_responses(400, 401, 409, 413, 422, 503),
        },
        dependencies=WRITE,
    )(ingest_route)
    return r
