"""The explorer: a page served by the service to look at users, recommendations and the
embedding space, and the JSON routes it reads (also usable on their own).

No build step and no external network: the page is one HTML file with a script and a
stylesheet served from ``serving/static/explorer``; the map is drawn as SVG by that
script. The evaluation report (``report.md`` next to the artifact) is rendered to HTML
with markdown-it (already installed with typer's rich).
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from serving.deps import State
from serving.settings import Settings

STATIC = Path(__file__).parent / "static" / "explorer"
#: catalogue videos drawn on the map (evenly sampled; uploads are always drawn)
MAP_POINTS = 4000


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
    projection: str
    explained_variance_ratio: list[float]
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


def report_dir(artifacts: Path) -> Path | None:
    """Where ``recsys pipeline`` put the report for this artifact (OUT/ beside OUT/artifact)."""
    for d in (artifacts, artifacts.parent):
        if (d / "report.md").is_file():
            return d
    return None


def add_explorer(app: FastAPI, settings: Settings, errors: Any, json_response: Any) -> None:
    app.mount("/static/explorer", StaticFiles(directory=str(STATIC)), name="explorer-static")

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<title>cowatch-recsys</title></head><body><h1>cowatch-recsys</h1><ul>"
            "<li><a href='/explorer'>Explorer: users, recommendations, the embedding map</a></li>"
            "<li><a href='/docs'>API documentation</a></li>"
            "<li><a href='/readyz'>Readiness</a></li><li><a href='/metrics'>Metrics</a></li>"
            "</ul></body></html>"
        )

    @app.get("/explorer", include_in_schema=False)
    def explorer() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get(
        "/v1/explorer/info",
        tags=["explorer"],
        response_model=ExplorerInfo,
        responses=errors(503),
    )
    def info(state: State) -> dict[str, Any]:
        return {
            "report": report_dir(settings.artifacts) is not None,
            "videos": state.num_videos,
            "artifact_version": state.version,
        }

    @app.get(
        "/v1/users", tags=["explorer"], response_model=UsersResponse, responses=errors(422, 503)
    )
    def users(
        state: State,
        prefix: Annotated[str, Query(max_length=256, description="Start of the user id.")] = "",
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        """Known users whose id starts with ``prefix`` (for the explorer's user picker)."""
        return json_response({"prefix": prefix, "users": state.search_users(prefix, limit)})

    @app.get(
        "/v1/users/{user_id}/history",
        tags=["explorer"],
        response_model=HistoryResponse,
        responses=errors(422, 503),
    )
    def history(
        state: State, user_id: Annotated[str, PathParam(min_length=1, max_length=256)]
    ) -> Response:
        """The user's valid watches (training period plus events), first watched first."""
        return json_response(
            {"user_id": user_id, "history": [{"video_id": v} for v in state.history_ids(user_id)]}
        )

    @app.get("/v1/map", tags=["explorer"], response_model=MapResponse, responses=errors(503))
    def embedding_map(state: State) -> Response:
        """A 2-D PCA map of the embedding space: an even sample of the catalogue and every
        cold-start upload (``cold_start``)."""
        return json_response(
            {
                "projection": state.projection.get("method", "pca"),
                "explained_variance_ratio": state.projection.get("explained_variance_ratio", []),
                "catalogue_size": state.catalogue_size,
                "points": state.map_points(MAP_POINTS),
            }
        )

    @app.post(
        "/v1/map/positions",
        tags=["explorer"],
        response_model=MapResponse,
        responses=errors(400, 413, 422, 503),
    )
    def positions(req: PositionsRequest, state: State) -> Response:
        """Map coordinates of given videos (e.g. a user's history and recommendations);
        unknown ids are left out."""
        return json_response(
            {
                "projection": state.projection.get("method", "pca"),
                "explained_variance_ratio": state.projection.get("explained_variance_ratio", []),
                "catalogue_size": state.catalogue_size,
                "points": state.positions(req.video_ids),
            }
        )

    @app.get("/explorer/report", include_in_schema=False)
    def report() -> HTMLResponse:
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

    @app.get("/explorer/report/files/{name:path}", include_in_schema=False)
    def report_file(name: str) -> FileResponse:
        d = report_dir(settings.artifacts)
        if d is None or not name.endswith(".png"):
            raise HTTPException(404, "no such report file")
        path = (d / name).resolve()
        if d.resolve() not in path.parents or not path.is_file():
            raise HTTPException(404, f"no such report file: {html.escape(name)}")
        return FileResponse(path)
