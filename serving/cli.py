"""Starting the service with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import uvicorn

from recsys.artifact import read_manifest
from serving.connections import protocol_with_deadline, raise_open_file_limit
from serving.settings import Settings


def example_requests(base: str, api_key: str | None) -> str:
    # Never print the secret itself: the shell fills it in from the environment.
    key = ' -H "X-API-Key: $RECSYS_API_KEY"' if api_key else ""
    return "\n".join(
        [
            "Example requests:",
            f"  curl -s {base}/readyz",
            f"  curl -s -X POST {base}/v1/score -H 'Content-Type: application/json' "
            '-d \'{"user_id": "u000001", "video_ids": ["v000001", "v000002", "nope"]}\'',
            f"  curl -s '{base}/v1/users/u000001/recommendations?k=5'",
            f"  curl -s '{base}/v1/videos/v000001/similar?k=5'",
            f"  curl -s -X POST {base}/v1/events/watch -H 'Content-Type: application/json'{key} "
            '-d \'{"user_id": "u000001", "video_id": "v000002", "watch_seconds": 42, "at": "2026-02-02T12:00:00Z"}\'',
            f"  curl -s -X POST {base}/v1/videos -H 'Content-Type: application/json'{key} "
            '-d \'{"video_id": "new-1", "frames": [[...D floats...], ...]}\'',
            f"  curl -s {base}/metrics | head;  API docs: {base}/docs",
        ]
    )


def serve_artifact(
    artifacts: Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_in_flight: int | None = None,
    print_examples: bool = False,
    access_log: bool = False,
) -> None:
    """Run uvicorn on the artifact (checked first, so a bad path fails fast with a clear message)."""
    read_manifest(artifacts, verify=True)
    if max_in_flight is not None:
        os.environ["RECSYS_MAX_IN_FLIGHT"] = str(max_in_flight)
    settings = Settings()  # the environment's, as the app will read them
    raise_open_file_limit()
    print(f"listening on http://{host}:{port} (artifact {artifacts})", flush=True)
    os.environ["RECSYS_ARTIFACTS"] = str(Path(artifacts).resolve())
    if print_examples:
        print(
            example_requests(f"http://{host}:{port}", os.environ.get("RECSYS_API_KEY")), flush=True
        )
    uvicorn.run(
        "serving.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Requests in flight are limited by the app (serving.middleware), not sockets.
        limit_concurrency=None,
        http=protocol_with_deadline(settings.head_timeout_s),
        timeout_keep_alive=max(1, int(settings.head_timeout_s)),
        log_level="info" if access_log else "warning",
        access_log=access_log,
    )
