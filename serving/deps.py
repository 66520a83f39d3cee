"""FastAPI dependencies shared by the service's routers.

All are ``async``: none blocks, and FastAPI runs a plain ``def`` dependency in its
thread pool, a thread hand-off per dependency per request (measured: the scoring route's
server CPU a request fell from 2.2 to 1.4 ms once it and its dependency ran on the loop)."""

from __future__ import annotations

import hmac
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from serving.metrics import Metrics
from serving.settings import Settings
from serving.state import ServingState, StateHolder


async def get_state(request: Request) -> ServingState:
    """The state current when the request started; a reload does not change it mid-request."""
    return current_state(request.app.state.holder)


async def get_holder(request: Request) -> StateHolder:
    holder: StateHolder = request.app.state.holder
    return holder


async def get_settings(request: Request) -> Settings:
    return _settings(request)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def current_state(holder: StateHolder) -> ServingState:
    """The state now (a write takes it under the reload lock, after any reload)."""
    state = holder.current
    if state is None:
        raise HTTPException(503, "not ready")
    return state


async def require_api_key(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """Writes need ``X-API-Key`` when ``RECSYS_API_KEY`` is set (compared in constant time)."""
    expected = _settings(request).api_key
    if expected is None:
        return
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header")


async def require_read_key(
    request: Request, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """User lists and histories are private: ``X-API-Key`` must be the read key or the
    write key, unless ``RECSYS_PUBLIC_USER_DATA`` opens them."""
    settings = _settings(request)
    if settings.public_user_data:
        return
    keys = [k for k in (settings.read_key, settings.api_key) if k]
    if not keys:
        raise HTTPException(
            403,
            "user data is private: set RECSYS_READ_KEY and send it as X-API-Key, "
            "or RECSYS_PUBLIC_USER_DATA=true",
        )
    given = (x_api_key or "").encode()
    if not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise HTTPException(401, "missing or wrong X-API-Key header (user data needs a key)")


Model = TypeVar("Model", bound=BaseModel)


def is_json_media(content_type: str) -> bool:
    """A Content-Type FastAPI would parse as JSON: application/json or application/*+json."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def json_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body parsed and validated in one pass by pydantic's Rust core
    (FastAPI decodes with the standard library, then validates the objects). Answers as
    FastAPI's own body parameters do: 422 naming the field, for a body that is not JSON
    by its Content-Type, or not valid JSON, too; 400 for one that is not UTF-8."""
    json_type = is_json_media(request.headers.get("content-type", ""))
    body = await request.body()
    if not json_type or not body:
        what = (
            "Field required" if json_type else "send a JSON object (Content-Type: application/json)"
        )
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": what}])
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors: list[dict[str, Any]] = [
            dict(err) for err in e.errors(include_url=False, include_input=False)
        ]
    if errors and errors[0]["type"] == "json_invalid":
        try:
            body.decode()
        except UnicodeDecodeError:
            raise HTTPException(400, "the body is not UTF-8 text") from None
        why = errors[0]["msg"].removeprefix("Invalid JSON: ")
        errors = [{"type": "json_invalid", "loc": (), "msg": f"not valid JSON: {why}"}]
    raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in errors])


State = Annotated[ServingState, Depends(get_state)]
Holder = Annotated[StateHolder, Depends(get_holder)]
AppSettings = Annotated[Settings, Depends(get_settings)]
AppMetrics = Annotated[Metrics, Depends(get_metrics)]
#: the dependency list of every write route
WRITE = [Depends(require_api_key)]
#: the dependency list of routes that show user data
USER_DATA = [Depends(require_read_key)]
