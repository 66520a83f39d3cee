"""Service configuration (environment variables prefixed ``RECSYS_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: the state store URLs ``serving.stores.open_store`` takes
STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    #: artifact directory produced by ``recsys pipeline`` (OUT/artifact)
    artifacts: Path = Path("artifact")
    #: SQLite file holding ingested videos and events; default: next to the artifact
    state_db: Path | None = None
    #: the state store as a URL: sqlite:///path or postgresql://user@host:port/db (shared
    #: by replicas); wins over state_db
    state_url: str | None = None
    #: seconds between polls of the store for other replicas' writes
    sync_interval_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.2
    #: seconds between snapshots of the state derived from the log (0 = none): a replica
    #: starts from the newest plus the log after it (``serving.log.snapshot``)
    snapshot_interval_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 300.0
    #: a snapshot is written only when at least this many rows were applied since the last
    snapshot_min_rows: Annotated[int, Field(ge=1)] = 1
    #: how long an impression batch waits for its users' effects to be refitted before the
    #: 201 (milliseconds; negative: until they are). Refits run behind ingestion either
    #: way, and a read of a user whose refit is still queued refits them first, so the
    #: next score on this replica reflects the batch whatever this is; 0 (the default)
    #: acknowledges once durable and staged; a wait gives ingestion back-pressure.
    refit_wait_ms: Annotated[float, Field(allow_inf_nan=False)] = 0.0
    #: where impressions moved out of the store live (``serving.log.archive``; replicas share
    #: it); default: next to the SQLite state file
    archive_dir: Path | None = None
    #: after each snapshot it writes, a replica moves the impressions the snapshot covers
    #: to the archive, all but this many newest (unset: never archive)
    archive_keep_impressions: Annotated[int, Field(ge=0)] | None = None
    #: required in the X-API-Key header of write endpoints when set
    api_key: str | None = None
    #: user lists and watch histories (and /metrics) need X-API-Key equal to this key or
    #: to api_key; with neither set they are refused, unless public_user_data
    read_key: str | None = None
    public_user_data: bool = False
    #: Host header values served (comma-separated; "" = any); others get 400
    allowed_hosts: str = ""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 * 1024 * 1024
    #: requests served at once (health, readiness and metrics not counted); beyond it a
    #: request waits up to queue_timeout_s for a slot, then gets 503 with Retry-After
    max_in_flight: Annotated[int, Field(ge=1)] = 64
    queue_timeout_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 2.0
    #: a request body that stalls this long gets 408
    body_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0
    #: a connection that sends no complete request head this long after connecting (or
    #: after its last response) is closed: idle and byte-at-a-time clients hold nothing
    head_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 5.0
    max_candidates: Annotated[int, Field(ge=1)] = 1000
    max_frames: Annotated[int, Field(ge=1)] = 2000
    max_k: Annotated[int, Field(ge=1)] = 500
    watch_threshold_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 10.0
    #: an event dated more than this many seconds after the server's clock is refused
    #: (422): a client with a wrong clock would otherwise put it in the log, where it
    #: moves the offline jobs' default test start (the last impression) years ahead
    max_event_future_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 86_400.0
    #: at most this many history videos seed the neighbour search for recommendations
    recommend_seed_videos: Annotated[int, Field(ge=1)] = 20
    #: memory for remembered neighbour lists of an approximate index (HNSW/IVF): a
    #: related-videos table filled on demand (serving/neighbours.py); 0: search every time
    neighbour_cache_mb: Annotated[int, Field(ge=0)] = 64

    @field_validator("state_url")
    @classmethod
    def _store_scheme(cls, url: str | None) -> str | None:
        # Checked here, so that a wrong URL stops ``recsys serve`` with one line before
        # the server starts, not in its start-up with a traceback.
        if url is not None and not url.startswith(STORE_SCHEMES):
            scheme = url.split(":")[0]
            raise ValueError(f"must start with sqlite:/// or postgresql://, not {scheme!r}")
        return url

    def refit_wait_seconds(self) -> float | None:
        return None if self.refit_wait_ms < 0 else self.refit_wait_ms / 1e3

    def archive_path(self) -> Path:
        if self.archive_dir is not None:
            return self.archive_dir
        return self.state_db_path().with_suffix(".archive")

    def host_list(self) -> list[str]:
        return [h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip()]

    def store_url(self) -> str:
        return self.state_url or f"sqlite:///{self.state_db_path()}"

    def state_db_path(self) -> Path:
        if self.state_db is not None:
            return self.state_db
        a = self.artifacts.resolve()
        return a.parent / f"{a.name}.serving-state.sqlite3"
