"""``recsys serve``: the HTTP API on an artifact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from pipelines.commands.options import fail


def serve(
    artifacts: Annotated[
        Path, typer.Option(help="Artifact directory (OUT/artifact of recsys pipeline).")
    ],
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes. Only 1: each worker would hold its own copy of the ingested "
            "state; run one process per replica instead."
        ),
    ] = 1,
    max_in_flight: Annotated[
        int | None,
        typer.Option(
            help="Requests served at once (default: RECSYS_MAX_IN_FLIGHT, else 64); beyond "
            "it a request waits up to RECSYS_QUEUE_TIMEOUT_S (2 s) for a slot, then gets 503 "
            "with Retry-After. Health checks are not counted."
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option(help="Log every request (uvicorn's access log) to stderr.")
    ] = False,
    state_url: Annotated[
        str | None,
        typer.Option(
            help="State store: sqlite:///path or postgresql://user@host:port/db (replicas "
            "share it). Default: RECSYS_STATE_URL, else a SQLite file next to the artifact."
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (FastAPI + uvicorn); settings from RECSYS_* environment variables (RECSYS_API_KEY, ...)."""
    from serving.cli import serve_artifact

    if workers != 1:
        fail(
            f"--workers {workers}: one worker per process only (a request could miss a write "
            "another worker just made); start more processes over one --state-url "
            "postgresql://... behind a load balancer"
        )
    if state_url is not None:
        if not state_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            fail("--state-url must start with sqlite:/// or postgresql://")
        os.environ["RECSYS_STATE_URL"] = state_url
    from pydantic import ValidationError

    from serving.settings import Settings

    try:
        Settings()
    except ValidationError as exc:  # one line per bad RECSYS_* variable, no traceback
        problems = [
            f"RECSYS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        ]
        fail("; ".join(problems))
    serve_artifact(
        artifacts,
        host,
        port,
        workers,
        max_in_flight,
        print_examples=True,
        access_log=access_log,
    )
