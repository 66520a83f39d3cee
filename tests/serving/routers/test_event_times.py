"""Events dated ahead of the server's clock: refused whole (422, naming the event), with
nothing of the request kept; the allowance is a setting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.app import create_app
from serving.settings import Settings
from tests.serving.conftest import AUTH
from tests.serving.helpers import catalogue

DEFAULT_S = Settings.model_fields["max_event_future_s"].default


@pytest.fixture
def strict(artifact: Path, tmp_path: Path) -> Iterator[TestClient]:
    """A service with the default allowance (the suite's environment allows any date)."""
    settings = Settings(
        artifacts=artifact,
        state_db=tmp_path / "state.sqlite3",
        api_key="s3cret",
        max_event_future_s=DEFAULT_S,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_the_default_allows_a_day_of_clock_skew() -> None:
    assert DEFAULT_S == 86_400.0
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValidationError, match="max_event_future_s"):
            Settings(max_event_future_s=bad)


def test_a_watch_from_the_future_is_refused_and_not_kept(strict: TestClient, artifact) -> None:
    ids, _ = catalogue(artifact)
    now = datetime.now(UTC)
    ev = {"user_id": "clocky", "video_id": ids[1], "watch_seconds": 30}
    late = _iso(now + timedelta(days=3650))
    r = strict.post("/v1/events/watch", json={**ev, "at": late}, headers=AUTH)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "at" and late[:10] in body["detail"]
    assert "RECSYS_MAX_EVENT_FUTURE_S" in body["detail"]
    score = {"user_id": "clocky", "video_ids": [ids[1]]}
    assert strict.post("/v1/score", json=score).json()["history_size"] == 0
    # Within the allowance (a client clock a little ahead, or now) it is taken.
    for at in (now + timedelta(hours=2), now - timedelta(days=1)):
        r = strict.post("/v1/events/watch", json={**ev, "at": _iso(at)}, headers=AUTH)
        assert r.status_code == 201, r.text
    assert strict.post("/v1/score", json=score).json()["history_size"] == 1  # one video


def test_an_impression_batch_with_one_future_row_keeps_none(strict: TestClient, artifact) -> None:
    ids, _ = catalogue(artifact)
    now = datetime.now(UTC)
    batch = [
        {
            "user_id": "batchy",
            "video_id": v,
            "shown_at": _iso(now - timedelta(minutes=10 - i)),
            "watch_seconds": 60.0,
            "event_id": f"b{i}",
        }
        for i, v in enumerate(ids[:5])
    ]
    # a time zone whose UTC instant lies past the year 9999: refused, not a 500
    for i, shown in ((3, "2126-01-01T00:00:00Z"), (4, "9999-12-31T23:59:00-05:00")):
        bad = [dict(row) for row in batch]
        bad[i]["shown_at"] = shown
        r = strict.post("/v1/events/impressions", json={"impressions": bad}, headers=AUTH)
        assert r.status_code == 422, r.text
        assert r.json()["field"] == f"impressions.{i}.shown_at"
    score = {"user_id": "batchy", "video_ids": ids[:5]}
    assert strict.post("/v1/score", json=score).json()["known_user"] is False
    # The same batch with honest times is taken whole; its event ids were never used.
    r = strict.post("/v1/events/impressions", json={"impressions": batch}, headers=AUTH)
    assert r.status_code == 201 and r.json()["accepted"] == 5 and r.json()["duplicates"] == 0
