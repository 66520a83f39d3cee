"""The service's request and response bodies, as the OpenAPI schema states them.

Request bodies are strict: JSON types exactly as the schema states them (no "1.0" for
1.0, no epoch number for a date-time) and unknown keys refused. Where a constraint
depends on the artifact or the settings (a frame's length, the candidate limit), a
function builds the body type when the app is created.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
)

from serving.frame_encoding import VALUE_LIMIT, frames_b64_pattern, max_b64_length

#: An id the service looks up (it may come from the offline data set): 1-256 characters,
#: no control characters (NUL and friends cannot be stored).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
ID_MAX_LENGTH = 256
ID = Annotated[str, Field(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
#: The alphabet of every id the service creates (ingested videos, users of events, event
#: ids): 1-128 of letters, digits and ``_ - . : @ + =``, not starting with ``.``. Such an
#: id reads back through every route: no ``/`` to split a path, no ``..`` to normalise.
#: ``ID`` as a path parameter (every ``/v1/users/{user_id}/...``, ``/v1/videos/{video_id}/...``)
PATH_ID = Annotated[str, Path(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)]
NEW_ID_PATTERN = r"^[A-Za-z0-9_\-:@+=][A-Za-z0-9_.\-:@+=]{0,127}$"
NEW_ID = Annotated[str, Field(min_length=1, max_length=128, pattern=NEW_ID_PATTERN)]


REQUEST_MODEL = ConfigDict(strict=True, extra="forbid")


class ScoreRequest(BaseModel):
    model_config = REQUEST_MODEL
    user_id: ID
    video_ids: list[ID] = Field(min_length=1)


def request_body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``openapi_extra`` documenting ``model`` as a route's required JSON body
    (for a route that reads its body itself)."""
    schema = model.model_json_schema()
    if "$defs" in schema:  # inlined below: references to components would dangle
        raise ValueError(f"{model.__name__} nests models; document it as a parameter")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


@cache
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


def _not_all_zeros(values: list[float]) -> list[float]:
    if not any(values):
        raise ValueError("all zeros: a vector without a direction")
    return values


def vector_body_type(dim: int | None) -> Any:
    """The request body of ``POST /v1/videos`` for an artifact that takes a vector per
    video (``recsys.embedders.GivenEmbedder``): the video's ``embedding`` of ``dim``
    values, finite, bounded and not all zeros (each stated in the schema)."""
    value = Annotated[float, Field(gt=-FRAME_VALUE_LIMIT, lt=FRAME_VALUE_LIMIT)]
    vector = Annotated[
        list[value],  # type: ignore[valid-type]
        Field(
            min_length=dim or 1,
            max_length=dim,
            description=f"the video's vector from the same model as the catalogue's"
            f"{f' ({dim} values)' if dim else ''}; not all zeros",
            json_schema_extra={"not": {"items": {"const": 0}}},
        ),
        AfterValidator(_not_all_zeros),
    ]

    class VectorIngest(BaseModel):
        """A new video given as one vector (the artifact serves the data's own vectors)."""

        model_config = REQUEST_MODEL
        video_id: NEW_ID
        embedding: vector

    return VectorIngest


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
        video_id: NEW_ID
        frames: list[row] = Field(min_length=1, max_length=max_frames)  # type: ignore[valid-type]

    class Float32FramesIngest(BaseModel):
        """Frames as base64 of float32 bytes (lossless, 3x smaller than JSON)."""

        model_config = strict
        video_id: NEW_ID
        frames_b64: str = b64_field("float32")
        dtype: Literal["float32"] = "float32"

    class Uint8FramesIngest(BaseModel):
        """Frames as base64 of YouTube-8M-quantised uint8 bytes (dequantised on arrival)."""

        model_config = strict
        video_id: NEW_ID
        frames_b64: str = b64_field("uint8")
        dtype: Literal["uint8"]

    def shape(body: Any) -> str | None:
        # Pick the one shape the body means, so errors speak about that shape only.
        # Tags in parentheses are dropped from error locations (see the 422 handler).
        if not isinstance(body, dict):
            return "(json)"
        if ("frames" in body) == ("frames_b64" in body):
            # "embedding" alone: validated as frames, so the error names both fields
            return "(json)" if "embedding" in body else None
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
    user_id: NEW_ID
    video_id: ID
    watch_seconds: float = Field(ge=0, allow_inf_nan=False)
    #: an RFC 3339 string with a time zone (not parsed from numbers: the schema says string)
    at: Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339_string)]


class ImpressionEvent(BaseModel):
    """One row of the ``impressions.parquet`` contract, as it happens."""

    model_config = REQUEST_MODEL
    user_id: NEW_ID
    video_id: ID
    shown_at: Annotated[AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339_string)]
    watch_seconds: float = Field(ge=0, allow_inf_nan=False)
    #: a retry with the same id is acknowledged and not applied twice
    event_id: NEW_ID | None = None


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


class TakedownResponse(BaseModel):
    video_id: str
    #: False when it was taken down before (the call is idempotent)
    taken_down_now: bool


class ErasureResponse(BaseModel):
    user_id: str
    erased: Literal[True]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a one-line message and, when one input is to blame, its name."""

    detail: str
    field: str | None = None


# --------------------------------------------------------------------------- explorer


class UsersResponse(BaseModel):
    prefix: str
    users: list[str]


class HistoryItem(BaseModel):
    video_id: str


class HistoryResponse(BaseModel):
    user_id: str
    history: list[HistoryItem]


class MapPoint(BaseModel):
    video_id: str
    x: float
    y: float
    cold_start: bool


class MapResponse(BaseModel):
    #: "tsne" (neighbour-preserving; uploads placed among their nearest drawn videos) or "pca"
    projection: str
    explained_variance_ratio: list[float]
    #: how well the map keeps each video's 10 nearest neighbours near (t-SNE vs PCA), 0-1
    trustworthiness: dict[str, float] | None = None
    catalogue_size: int
    points: list[MapPoint]


class PositionsRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    video_ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=1000
    )


class ExplorerInfo(BaseModel):
    report: bool
    videos: int
    artifact_version: str
