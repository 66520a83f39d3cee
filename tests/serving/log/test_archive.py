"""The bounded log: impressions a snapshot covers move to Parquet files and out of the
store, and nothing acknowledged is lost: a replay without a snapshot, a replica that was
behind, an erasure and the offline jobs all still see (or no longer see) the right rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from pipelines.data.impressions import impressions_connection
from pipelines.data.io import impression_batches
from recsys.errors import UserInputError
from recsys.validation import validate_impressions
from serving.app import create_app
from serving.log.archive import LogArchive, archive_log
from serving.settings import Settings
from serving.state import ServingState
from serving.stores import SqliteStore
from tests.serving.conftest import AUTH
from tests.serving.log.test_snapshots import _history, _imp, _picture, _scores


def _archived(archive: LogArchive) -> list[dict]:
    return [r for _, _, p in archive.parts() for r in pq.read_table(p).to_pylist()]


def _state(s: ServingState) -> dict:
    return {k: v for k, v in _picture(s).items() if k not in ("horizon", "applied")}


def _stored(store: SqliteStore) -> int:
    with store._locked() as db:
        return int(db.execute("SELECT count(*) FROM impressions").fetchone()[0])


def test_a_replay_reads_the_archive_and_holds_the_same_state(
    video_artifact: Path, settings: Settings
) -> None:
    users, live, _, live_scores = _history(settings, video_artifact, snapshot_midway=False)
    store, archive = SqliteStore(settings.state_db), LogArchive(settings.archive_path())
    thr = settings.watch_threshold_s
    try:
        before = _stored(store)
        writer = ServingState(video_artifact, store, thr, archive=archive)
        assert writer.archive_old(keep=10) == 0  # no snapshot written here yet: nothing
        assert writer.write_snapshot()
        moved = writer.archive_old(keep=10)
        assert moved == before - 10 and _stored(store) == 10
        assert len(_archived(archive)) == moved
        assert writer.archive_old(keep=10) == 0  # idempotent
        replayed = ServingState(video_artifact, store, thr, None, False, archive=archive)
        got = _picture(replayed)
        for key in live:
            assert got[key] == live[key], key
        assert _scores(replayed, users) == live_scores
        with pytest.raises(UserInputError, match="RECSYS_ARCHIVE_DIR"):
            ServingState(video_artifact, store, thr, None, False)
    finally:
        store.close()


def test_a_replay_reads_the_archive_in_cuts_with_the_same_state(
    video_artifact: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replay reads the archive about ``READ_ROWS`` impressions at a time (bounded
    memory however large the archive), and the uploads, watches, takedowns and erasures
    still in the store between them are applied at their places: the same bits."""
    import serving.derived
    import serving.log.archive

    users, live, _, live_scores = _history(settings, video_artifact, snapshot_midway=False)
    store, archive = SqliteStore(settings.state_db), LogArchive(settings.archive_path())
    thr = settings.watch_threshold_s
    monkeypatch.setattr(serving.log.archive, "CHUNK_ROWS", 3)  # row groups of 3
    try:
        writer = ServingState(video_artifact, store, thr, archive=archive)
        assert writer.write_snapshot() and writer.archive_old(keep=0) > 0
        whole = _picture(ServingState(video_artifact, store, thr, None, False, archive=archive))
        cuts: list[bool] = []
        real = archive.read

        def counted(since, below, limit=None):  # type: ignore[no-untyped-def]
            rows, cut = real(since, below, limit)
            cuts.append(cut < below)
            return rows, cut

        monkeypatch.setattr(serving.derived, "READ_ROWS", 5)
        monkeypatch.setattr(archive, "read", counted)
        small = ServingState(video_artifact, store, thr, None, False, archive=archive)
        assert _picture(small) == whole
        for key in live:
            assert whole[key] == live[key], key
        assert _scores(small, users) == live_scores
        assert cuts.count(True) >= 3 and cuts[-1] is False
    finally:
        store.close()


def test_a_replica_behind_the_watermark_catches_up_from_the_archive(
    video_artifact: Path, settings: Settings
) -> None:
    users, *_ = _history(settings, video_artifact, snapshot_midway=False)
    archive = LogArchive(settings.archive_path())
    a, b = SqliteStore(settings.state_db), SqliteStore(settings.state_db)
    thr = settings.watch_threshold_s
    try:
        writer = ServingState(video_artifact, a, thr, archive=archive)
        behind = ServingState(video_artifact, b, thr, archive=archive)
        ids = writer.catalogue.ids
        writer.record_impressions(
            [_imp(users[1], ids[5], 60.0, "late-1"), _imp("late-user", ids[6], 0.0, "late-2")]
        )
        writer.sync()  # its own rows count as read once a sync passed them
        assert writer.write_snapshot() and writer.archive_old(keep=0) > 0
        assert _stored(a) == 0
        behind.sync()  # its next rows are only in the archive now
        assert _picture(behind) == _picture(writer)
    finally:
        a.close()
        b.close()


def test_an_erasure_removes_the_user_from_the_archive(
    video_artifact: Path, settings: Settings
) -> None:
    users, *_ = _history(settings, video_artifact, snapshot_midway=False)
    store, archive = SqliteStore(settings.state_db), LogArchive(settings.archive_path())
    thr = settings.watch_threshold_s
    try:
        live = ServingState(video_artifact, store, thr, archive=archive)
        assert live.write_snapshot() and live.archive_old(keep=0) > 0
        gone = users[1]
        assert any(r["user_id"] == gone for r in _archived(archive))
        live.erase(gone)
        rows = _archived(archive)
        assert rows and not any(r["user_id"] == gone for r in rows)
        replayed = ServingState(video_artifact, store, thr, None, False, archive=archive)
        # The same state (where each stands in the log may differ: the live one read the
        # user's watch before it was erased, the replay never saw it).
        assert _state(replayed) == _state(live)
    finally:
        store.close()


def test_a_run_that_died_before_the_store_moved_is_redone_once(
    video_artifact: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(settings, video_artifact, snapshot_midway=False)
    store, archive = SqliteStore(settings.state_db), LogArchive(settings.archive_path())
    try:
        total = _stored(store)
        live = ServingState(video_artifact, store, settings.watch_threshold_s, archive=archive)
        assert live.write_snapshot()

        def crash(*_: object) -> bool:
            raise OSError("killed between the file and the store")

        monkeypatch.setattr(store, "drop_archived", crash)
        with pytest.raises(OSError):
            archive_log(store, archive, live.snapshot_covers, 5)
        assert len(archive.parts()) == 1 and _stored(store) == total  # nothing lost
        monkeypatch.undo()
        assert archive_log(store, archive, live.snapshot_covers, 5) == total - 5
        assert len(archive.parts()) == 1 and len(_archived(archive)) == total - 5
    finally:
        store.close()


def test_the_offline_jobs_read_the_archive_as_impressions(
    video_artifact: Path, settings: Settings, tmp_path: Path
) -> None:
    _history(settings, video_artifact, snapshot_midway=False)
    store, archive = SqliteStore(settings.state_db), LogArchive(settings.archive_path())
    try:
        live = ServingState(video_artifact, store, settings.watch_threshold_s, archive=archive)
        assert live.write_snapshot()
        moved = live.archive_old(keep=0)
    finally:
        store.close()
    data = tmp_path / "data"
    data.mkdir()
    (data / "impressions.parquet").symlink_to(archive.dir, target_is_directory=True)
    con = impressions_connection(data)
    assert con.execute("SELECT count(*) FROM impressions").fetchone()[0] == moved
    rows = con.execute("SELECT max(file_row_number) FROM impressions_rows").fetchone()[0]
    assert rows == moved - 1
    summary, problems = validate_impressions(*impression_batches(archive.dir), None)
    assert problems == [] and summary.num_impressions == moved


def test_the_admin_snapshot_archives_with_the_setting(
    video_artifact: Path, settings: Settings
) -> None:
    _history(settings, video_artifact, snapshot_midway=False)
    keep = settings.model_copy(update={"archive_keep_impressions": 7})
    with TestClient(create_app(keep)) as c:
        body = c.post("/v1/admin/snapshot", headers=AUTH).json()
        assert body["written"] and body["archived"] > 0
        metrics = c.get("/metrics", headers=AUTH).text
        assert "impressions_archived" in metrics
    store = SqliteStore(settings.state_db)
    try:
        assert _stored(store) == 7
    finally:
        store.close()
