"""The explorer: a page served by the service to look at users, recommendations and the
embedding space, and the JSON routes it reads (also usable on their own).

No build step and no external network: the page is one HTML file with a script and a
stylesheet served from ``serving/static/explorer``; the map is drawn as SVG by that
script. The evaluation report (``report.md`` next to the artifact) is rendered to HTML
with markdown-it (already installed with typer's rich).
"""

from __future__ import annotations

import bisect
import html
import re
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from recsys.projection import map_sample, project
from serving.deps import USER_DATA, AppSettings, State
from serving.errors import error_responses, json_response
from serving.schemas import (
    PATH_ID,
    ExplorerInfo,
    HistoryResponse,
    MapResponse,
    PositionsRequest,
    UsersResponse,
)
from serving.state import ServingState

STATIC = Path(__file__).parent.parent / "static" / "explorer"
#: catalogue videos drawn on the map (evenly sampled; uploads are always drawn)
MAP_POINTS = 4000


def report_dir(artifacts: Path) -> Path | None:
    """Where ``recsys pipeline`` put the report for this artifact (OUT/ beside OUT/artifact)."""
    for d in (artifacts, artifacts.parent):
        if (d / "report.md").is_file():
            return d
    return None


# --------------------------------------------------------------------------- queries


def search_users(state: ServingState, prefix: str, limit: int) -> list[str]:
    """Known users (offline fit, histories, online effects) whose id starts with ``prefix``."""
    offline = state.offline_users
    found: list[str] = []
    for u in offline[bisect.bisect_left(offline, prefix) :]:
        if not u.startswith(prefix) or len(found) >= limit:
            break
        if u not in state.erased_users:
            found.append(u)
    # users first seen by this service (few): checked one by one
    extra = {u for u in state.users_seen_online() if u.startswith(prefix)}
    return sorted(set(found) | extra)[:limit]


def points(state: ServingState, rows: np.ndarray) -> list[dict[str, Any]]:
    """Map coordinates of catalogue rows; ``cold_start`` marks ingested videos."""
    cat = state.catalogue
    rows = np.asarray(cat.live_rows(rows), dtype=np.int64)  # taken-down videos hidden
    if len(rows) == 0:
        return []
    xy = project(cat.vectors(rows), state.projection)
    return [
        {
            "video_id": cat.ids[r],
            "x": round(float(x), 5),
            "y": round(float(y), 5),
            "cold_start": r >= cat.size_at_load,
        }
        for r, (x, y) in zip(rows.tolist(), xy.tolist(), strict=True)
    ]


def positions(state: ServingState, video_ids: list[str]) -> list[dict[str, Any]]:
    """Map coordinates of the given videos (unknown ids are left out)."""
    rows = [state.catalogue.rows[v] for v in video_ids if v in state.catalogue]
    return points(state, np.asarray(rows, dtype=np.int64))


def map_points(state: ServingState, limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` catalogue videos, evenly sampled, plus every ingested one."""
    size = state.catalogue_size
    sample = map_sample(size, limit)
    fresh = np.arange(size, state.num_videos, dtype=np.int64)[-limit:]
    return points(state, np.concatenate([sample, fresh]))


def _map(state: ServingState, pts: list[dict[str, Any]]) -> Response:
    return json_response(
        {
            "projection": state.projection.get("method", "pca"),
            "explained_variance_ratio": state.projection.get("explained_variance_ratio", []),
            "trustworthiness": state.projection.get("trustworthiness"),
            "catalogue_size": state.catalogue_size,
            "points": pts,
        }
    )


# --------------------------------------------------------------------------- routes

router = APIRouter()


def mount_static(app: FastAPI) -> None:
    """The page's script and stylesheet (an app-level mount: routers cannot mount)."""
    app.mount("/static/explorer", StaticFiles(directory=str(STATIC)), name="explorer-static")


@router.get("/", include_in_schema=False)
def index() -> HTMLResponse:
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>cowatch-recsys</title></head><body><h1>cowatch-recsys</h1><ul>"
        "<li><a href='/explorer'>Explorer: users, recommendations, the embedding map</a></li>"
        "<li><a href='/docs'>API documentation</a></li>"
        "<li><a href='/readyz'>Readiness</a></li><li><a href='/metrics'>Metrics</a></li>"
        "</ul></body></html>"
    )


@router.get("/explorer", include_in_schema=False)
def explorer() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


@router.get(
    "/v1/explorer/info",
    tags=["explorer"],
    response_model=ExplorerInfo,
    responses=error_responses(503),
)
def info(state: State, settings: AppSettings) -> dict[str, Any]:
    return {
        "report": report_dir(settings.artifacts) is not None,
        "videos": state.num_videos,
        "artifact_version": state.version,
    }


@router.get(
    "/v1/users",
    tags=["explorer"],
    response_model=UsersResponse,
    responses=error_responses(401, 403, 422, 503),
    dependencies=USER_DATA,
)
def users(
    state: State,
    prefix: Annotated[str, Query(max_length=256, description="Start of the user id.")] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    """Known users whose id starts with ``prefix`` (for the explorer's user picker)."""
    return json_response({"prefix": prefix, "users": search_users(state, prefix, limit)})


@router.get(
    "/v1/users/{user_id}/history",
    tags=["explorer"],
    response_model=HistoryResponse,
    responses=error_responses(401, 403, 422, 503),
    dependencies=USER_DATA,
)
def history(state: State, user_id: PATH_ID) -> Response:
    """The user's valid watches (training period plus events), first watched first."""
    return json_response(
        {"user_id": user_id, "history": [{"video_id": v} for v in state.history_ids(user_id)]}
    )


@router.get(
    "/v1/map", tags=["explorer"], response_model=MapResponse, responses=error_responses(503)
)
def embedding_map(state: State) -> Response:
    """A 2-D map of the embedding space (t-SNE fitted at pipeline time, or PCA): an even sample of the catalogue and every
    cold-start upload (``cold_start``)."""
    return _map(state, map_points(state, MAP_POINTS))


@router.post(
    "/v1/map/positions",
    name="positions",
    tags=["explorer"],
    response_model=MapResponse,
    responses=error_responses(400, 413, 422, 503),
)
def map_positions(req: PositionsRequest, state: State) -> Response:
    """Map coordinates of given videos (e.g. a user's history and recommendations);
    unknown ids are left out."""
    return _map(state, positions(state, req.video_ids))


@router.get("/explorer/report", include_in_schema=False)
def report(settings: AppSettings) -> HTMLResponse:
    d = report_dir(settings.artifacts)
    if d is None:
        raise HTTPException(404, "no report.md beside this artifact")
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    body = md.render((d / "report.md").read_text())
    # Images are served from the report's directory by name (see report_file).
    body = re.sub(r'src="(?!https?:)([^"]+)"', r'src="/explorer/report/files/\1"', body)
    return HTMLResponse(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<title>Evaluation report</title><link rel='stylesheet' href='/static/explorer/explorer.css'>"
        f"</head><body><main class='report'><p><a href='/explorer'>Back to the explorer</a></p>{body}"
        "</main></body></html>"
    )


@router.get("/explorer/report/files/{name:path}", include_in_schema=False)
def report_file(name: str, settings: AppSettings) -> FileResponse:
    d = report_dir(settings.artifacts)
    if d is None or not name.endswith(".png"):
        raise HTTPException(404, "no such report file")
    if "\x00" in name:  # the OS refuses such a path; it names no file
        raise HTTPException(404, "no such report file")
    path = (d / name).resolve()
    if d.resolve() not in path.parents or not path.is_file():
        raise HTTPException(404, f"no such report file: {html.escape(name)}")
    return FileResponse(path)
