"""Service configuration (environment variables prefixed ``RECSYS_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", extra="ignore")

    #: artifact directory produced by ``recsys pipeline`` (OUT/artifact)
    artifacts: Path = Path("artifact")
    #: SQLite file holding ingested videos and watch events; default: next to the artifact
    state_db: Path | None = None
    #: required in the X-API-Key header of write endpoints when set
    api_key: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    max_candidates: int = 1000
    max_frames: int = 2000
    max_k: int = 500
    watch_threshold_s: float = 10.0
    #: at most this many history videos seed the neighbour search for recommendations
    recommend_seed_videos: int = 20

    def state_db_path(self) -> Path:
        if self.state_db is not None:
            return self.state_db
        a = self.artifacts.resolve()
        return a.parent / f"{a.name}.serving-state.sqlite3"
