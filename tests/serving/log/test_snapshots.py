"""Snapshots: a replica started from the newest snapshot plus the log after it holds the
state bit for bit that replaying the whole log gives (uploads, takedowns, erasures,
histories, online user and video effects), and scores the same; a damaged or foreign
snapshot is ignored with a log line; an erasure leaves no snapshot that holds the user."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.log.snapshot import MAGIC
from serving.settings import Settings
from serving.state import ServingState
from serving.stores import SqliteStore, open_store
from tests.serving.conftest import AUTH
from tests.serving.helpers import a_user_with_history, catalogue, frames


def _impressions(ids: list[str], users: list[str], prefix: str, n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "impressions": [
            {
                "user_id": users[int(rng.integers(len(users)))],
                "video_id": ids[int(rng.integers(12))],
                "shown_at": "2030-01-01T00:00:00Z",
                "watch_seconds": float(rng.choice([0.0, 60.0])),
                "event_id": f"{prefix}-{i}",
            }
            for i in range(n)
        ]
    }


_AT = "2030-01-02T00:00:00Z"


def _post(c: TestClient, path: str, body: dict) -> None:
    r = c.post(path, json=body, headers=AUTH)
    assert r.status_code in (200, 201), r.text


def _history(
    settings: Settings, video_artifact: Path, snapshot_midway: bool, with_watch: bool = True
) -> tuple[list[str], dict[str, Any], tuple[int, ...], list[bytes]]:
    """A log with every kind of row, written through one live replica; with
    ``snapshot_midway`` a snapshot is written after its first half (the second half is
    then the tail). Returns the users, and the live replica's picture, counters and
    scores at the end."""
    ids, _ = catalogue(video_artifact)
    old = a_user_with_history(video_artifact)
    users = [old, "snap-u1", "snap-u2", "gone-u3"]
    with TestClient(create_app(settings)) as c:
        dim = c.app.state.holder.current.feature_dim  # type: ignore[attr-defined]
        _post(c, "/v1/videos", {"video_id": "up-1", "frames": frames(dim, 5, 1)})
        _post(c, "/v1/videos", {"video_id": "up-2", "frames": frames(dim, 3, 2)})
        _post(c, "/v1/events/impressions", _impressions(["up-1", *ids], users, "a", 60, 0))
        if with_watch:  # a watch between impressions: replays take watches first
            _post(
                c,
                "/v1/events/watch",
                {"user_id": "snap-u1", "video_id": "up-2", "watch_seconds": 90, "at": _AT},
            )
        assert c.delete(f"/v1/videos/{ids[0]}", headers=AUTH).status_code == 200
        assert c.delete("/v1/users/gone-u3", headers=AUTH).status_code in (200, 204)
        if snapshot_midway:
            assert c.app.state.holder.current.write_snapshot()  # type: ignore[attr-defined]
        _post(c, "/v1/events/impressions", _impressions(["up-2", *ids[1:]], users, "b", 50, 1))
        assert c.delete("/v1/videos/up-2", headers=AUTH).status_code == 200
        _post(c, "/v1/videos", {"video_id": "up-3", "frames": frames(dim, 4, 3)})
        _post(c, "/v1/events/impressions", _impressions(["up-3", *ids[1:]], users, "c", 30, 2))
        live = c.app.state.holder.current  # type: ignore[attr-defined]
        live.sync()
        return users, _picture(live), _counters(live), _scores(live, users)


def _picture(s: ServingState) -> dict[str, Any]:
    """Everything the state derived from the log, in comparable form (arrays as bytes),
    once every effect is refitted to its window."""
    assert s.wait_refitted(60)
    videos = s.online.videos
    n = len(s.catalogue)
    return {
        "ids": list(s.catalogue.ids),
        "rows": dict(s.catalogue.rows),
        "removed_rows": set(s.catalogue.removed_rows),
        "emb": s.catalogue.emb[:n].tobytes(),
        "index_size": s.catalogue.index.size if hasattr(s.catalogue.index, "size") else None,
        "histories": {u: r.tolist() for u, r in s.histories.rows().items()},
        "offline": {u: r.tolist() for u, r in s.histories._offline.items()},
        "effects": {u: e.tobytes() for u, e in s.online.effects.items()},
        "windows": {
            u: (w.keys.tobytes(), w.y.tobytes(), w.offset.tobytes())
            for u, w in s.online.windows.items()
        },
        "forgotten": set(s.online.forgotten),
        "stats": {
            v: (g.tobytes(), h.tobytes()) for v, (g, h) in (videos.stats.items() if videos else [])
        },
        "shares": {
            u: (m.videos, m.g.tobytes(), m.h.tobytes())
            for u, m in (videos.shares.items() if videos else [])
        },
        "hashes": dict(s.payload_hashes),
        "removed": set(s.removed_videos),
        "erased": set(s.erased_users),
        "horizon": dict(s._log.horizon),
        "applied": {t: dict(a) for t, a in s._log.applied.items()},
    }


def _counters(s: ServingState) -> tuple[int, ...]:
    """What this replica applied (events of users erased since included): not derived
    from the log alone, so a full replay counts fewer; a snapshot keeps them."""
    return (s.ingested, s.watch_events, s.impression_events, s.skipped_rows)


def _scores(s: ServingState, users: list[str]) -> list[bytes]:
    assert s.wait_refitted(60)
    rows = [r for r in range(len(s.catalogue)) if r not in s.catalogue.removed_rows]
    cand = s.catalogue.vectors(rows)
    out = []
    for u in [*users, "never-seen"]:
        mx, avg = s.similarity(u, cand)
        out.append(s.watch_probability(u, cand, mx, avg, rows).tobytes())
    return out


def test_a_snapshot_plus_the_tail_equals_replaying_the_whole_log(
    video_artifact: Path, settings: Settings
) -> None:
    """The live replica that wrote the log, one started from its snapshot plus the tail,
    and one that replayed the whole log hold the same bits and score alike (uploads, a
    watch between impressions, takedowns of a catalogue video and of an upload, an
    erasure with the user's later events)."""
    users, live, live_counters, live_scores = _history(settings, video_artifact, True)
    store = SqliteStore(settings.state_db)
    try:
        replayed = ServingState(video_artifact, store, settings.watch_threshold_s, None, False)
        restored = ServingState(video_artifact, store, settings.watch_threshold_s)
        assert replayed.started_from == "log" and restored.started_from == "snapshot"
        for name, state in (("replayed", replayed), ("restored", restored)):
            got = _picture(state)
            for key in live:
                assert got[key] == live[key], f"{name}: {key}"
            assert _scores(state, users) == live_scores, name
        assert _counters(restored) == live_counters
        assert live["removed"] >= {"up-2"} and live["erased"] == {"gone-u3"}
        assert live["windows"]["gone-u3"] and live["effects"]["gone-u3"]  # events after it
    finally:
        store.close()


def test_another_solvers_effects_are_refitted_at_restore(
    video_artifact: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Effects fitted by another version of the online solver differ in the last bits:
    restored as they are, the state would differ from this version's replay. A
    snapshot naming another solver (or none: the first) has every window refitted."""
    from serving.derived import SOLVER
    from serving.log.snapshot import encode

    _, live, *_ = _history(settings, video_artifact, snapshot_midway=False)
    store = SqliteStore(settings.state_db)
    try:
        state = ServingState(video_artifact, store, settings.watch_threshold_s, None, False)
        assert state.wait_refitted(30)  # nothing pending: only the solver decides
        for solver, refitted in ((SOLVER, False), (SOLVER - 1, True), (None, True)):
            picture = state.capture_snapshot()
            picture.effects = {u: e + 1e-3 for u, e in picture.effects.items()}  # "other bits"
            picture.meta = {k: v for k, v in picture.meta.items() if k != "solver"}
            if solver is not None:
                picture.meta["solver"] = solver
            body = encode(picture, state.glmix.random_dim, state.glmix.video_dim)
            assert store.save_snapshot(
                state.version, body, int(picture.meta["horizon"]["removals"]), []
            )
            with caplog.at_level(logging.WARNING, logger="serving.derived"):
                caplog.clear()
                restored = ServingState(video_artifact, store, settings.watch_threshold_s)
            assert restored.started_from == "snapshot"
            assert ("refitting" in caplog.text) is refitted
            got = _picture(restored)["effects"]
            assert (got == live["effects"]) is refitted, solver
    finally:
        store.close()


def _imp(user: str, video: str, seconds: float, event: str) -> Any:
    from serving.stores import Impression

    return Impression(user, video, "2030-02-01T00:00:00Z", seconds, event)


def test_a_snapshot_and_a_replay_keep_learning_alike(
    video_artifact: Path, settings: Settings
) -> None:
    users, *_ = _history(settings, video_artifact, snapshot_midway=True)
    a_store, b_store = SqliteStore(settings.state_db), SqliteStore(settings.state_db)
    try:
        replayed = ServingState(video_artifact, a_store, settings.watch_threshold_s, None, False)
        restored = ServingState(video_artifact, b_store, settings.watch_threshold_s)
        ids = replayed.catalogue.ids
        replayed.record_impressions(
            [_imp(users[1], ids[5], 60.0, "z1"), _imp("z-new", ids[6], 0.0, "z2")]
        )
        restored.sync()
        assert _picture(restored)["effects"] == _picture(replayed)["effects"]
        assert _scores(restored, users) == _scores(replayed, users)
    finally:
        a_store.close()
        b_store.close()


def test_a_damaged_or_foreign_snapshot_is_ignored_and_the_log_replayed(
    artifact: Path, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    ids, _ = catalogue(artifact)
    with TestClient(create_app(settings)) as c:
        _post(c, "/v1/events/impressions", _impressions(ids, ["d-1", "d-2"], "d", 20, 3))
        state = c.app.state.holder.current  # type: ignore[attr-defined]
        assert state.write_snapshot()
        version = state.version
    store = SqliteStore(settings.state_db)
    try:
        want = _picture(ServingState(artifact, store, settings.watch_threshold_s, None, False))
        good = store.latest_snapshot(version)
        assert good is not None and good.startswith(MAGIC)
        damaged = bytearray(good)
        damaged[len(good) // 2] ^= 0xFF
        for body, why in ((bytes(damaged), "checksum"), (b"junk", "not a snapshot")):
            assert store.save_snapshot(version, body, 0, [])
            with caplog.at_level(logging.WARNING, logger="serving.derived"):
                caplog.clear()
                s = ServingState(artifact, store, settings.watch_threshold_s)
            assert s.started_from == "log" and why in caplog.text
            assert _picture(s) == want
        assert store.save_snapshot("another-artifact", good, 0, [])
        assert store.latest_snapshot(version) == b"junk"  # the other version's is apart
    finally:
        store.close()


def test_a_snapshot_taken_during_a_refit_pass_refits_its_users_at_restore(
    artifact: Path, settings: Settings
) -> None:
    """Users a refit pass has taken but not installed yet are neither queued nor fitted:
    a snapshot taken then names them as pending, so a restore equals a replay."""
    import threading
    import time

    ids, _ = catalogue(artifact)
    with TestClient(create_app(settings)) as c:
        state = c.app.state.holder.current  # type: ignore[attr-defined]
        release, solve = threading.Event(), state.online.solve

        def held(jobs: Any, *a: Any, **k: Any) -> Any:
            if threading.current_thread().name == "online-refit":
                release.wait(30)
            return solve(jobs, *a, **k)

        state.online.solve = held
        _post(c, "/v1/events/impressions", _impressions(ids, ["f-1", "f-2"], "f", 20, 6))
        deadline = time.monotonic() + 10
        while not state._inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert set(state._inflight) == {"f-1", "f-2"} and not state.online.pending
        assert state.write_snapshot()
        release.set()
        assert state.wait_refitted(30)
    store = SqliteStore(settings.state_db)
    try:
        want = _picture(ServingState(artifact, store, settings.watch_threshold_s, None, False))
        restored = ServingState(artifact, store, settings.watch_threshold_s)
        assert restored.started_from == "snapshot"
        assert _picture(restored) == want and "f-1" in want["effects"]
    finally:
        store.close()


def test_a_periodic_snapshot_waits_for_the_queued_refits(
    artifact: Path, settings: Settings
) -> None:
    """The snapshot writer first lets the refits queued so far finish, so the snapshot
    holds their effects and a restore has nothing to redo."""
    import threading
    import time

    from serving.log.snapshot import decode

    ids, _ = catalogue(artifact)
    often = settings.model_copy(update={"snapshot_interval_s": 0.2})
    with TestClient(create_app(often)) as c:
        state = c.app.state.holder.current  # type: ignore[attr-defined]
        solve = state.online.solve

        def slow(jobs: Any, *a: Any, **k: Any) -> Any:
            if threading.current_thread().name == "online-refit":
                time.sleep(1.0)  # several snapshot intervals
            return solve(jobs, *a, **k)

        state.online.solve = slow
        _post(c, "/v1/events/impressions", _impressions(ids, ["w-1", "w-2"], "w", 20, 7))
        deadline = time.monotonic() + 20
        while (body := state.store.latest_snapshot(state.version)) is None:
            assert time.monotonic() < deadline, "no snapshot written"
            time.sleep(0.05)
    header = decode(body, state.version).header
    assert header["pending"] == [] and {"w-1", "w-2"} <= set(header["effect_users"])


def test_an_erasure_deletes_snapshots_and_an_older_picture_is_refused(
    artifact: Path, settings: Settings
) -> None:
    """A snapshot taken before an erasure but saved after it would bring the user back on
    the next start: the store refuses it; the erasure itself deletes every snapshot."""
    ids, _ = catalogue(artifact)
    with TestClient(create_app(settings)) as c:
        _post(c, "/v1/events/impressions", _impressions(ids, ["e-1", "e-2"], "e", 20, 4))
        state = c.app.state.holder.current  # type: ignore[attr-defined]
        assert state.write_snapshot()
        assert state.store.latest_snapshot(state.version) is not None
        captured = state.capture_snapshot()  # holds e-1
        assert c.delete("/v1/users/e-1", headers=AUTH).status_code in (200, 204)
        assert state.store.latest_snapshot(state.version) is None
        from serving.log.snapshot import encode

        body = encode(captured, state.glmix.random_dim, state.glmix.video_dim)
        horizon = int(captured.meta["horizon"]["removals"])
        assert not state.store.save_snapshot(state.version, body, horizon, [])
        assert state.write_snapshot()  # a picture after the erasure is taken
        restored = ServingState(artifact, state.store, settings.watch_threshold_s)
        assert restored.started_from == "snapshot"
        assert "e-1" in restored.erased_users and restored.histories.get("e-1") is None
        assert "e-1" not in restored.online.effects


def test_an_operator_can_write_a_snapshot_now(artifact: Path, settings: Settings) -> None:
    ids, _ = catalogue(artifact)
    with TestClient(create_app(settings)) as c:
        _post(c, "/v1/events/impressions", _impressions(ids, ["o-1"], "o", 10, 5))
        assert c.post("/v1/admin/snapshot").status_code == 401  # a write: needs the key
        got = c.post("/v1/admin/snapshot", headers=AUTH)
        assert got.status_code == 200 and got.json()["written"] is True
        assert "recsys_snapshots_written_total 1" in c.get("/metrics", headers=AUTH).text
    store = SqliteStore(settings.state_db)
    try:
        restarted = ServingState(artifact, store, settings.watch_threshold_s)
        assert restarted.wait_refitted(30)  # pending users are refitted behind readiness
        assert restarted.started_from == "snapshot" and "o-1" in restarted.online.effects
    finally:
        store.close()


@pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.xdist_group("postgres"))]
)
def test_a_replay_in_short_runs_holds_the_same_bits(
    kind: str,
    video_artifact: Path,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A replay stages impressions in runs of ``RUN_ROWS`` and reads the log in cuts of
    about ``READ_ROWS`` impressions (bounded memory, on both stores): where the runs and
    reads are cut changes nothing."""
    import serving.derived

    if kind == "postgresql":
        settings = settings.model_copy(update={"state_url": request.getfixturevalue("pg_url")})
    _history(settings, video_artifact, snapshot_midway=False)
    store = open_store(settings.store_url())
    try:
        whole = _picture(ServingState(video_artifact, store, settings.watch_threshold_s))
        monkeypatch.setattr(serving.derived, "RUN_ROWS", 7)
        cut = _picture(ServingState(video_artifact, store, settings.watch_threshold_s))
        assert cut == whole
        # Read from the store 5 impressions at a time (with the watches, uploads and
        # removals between them): the same bits again, and the reads were cut.
        reads: list[bool] = []
        real = store.changes

        def counted(since, limit=None):
            got = real(since, limit)
            reads.append(got.more)
            return got

        monkeypatch.setattr(serving.derived, "READ_ROWS", 5)
        monkeypatch.setattr(store, "changes", counted)
        small = ServingState(video_artifact, store, settings.watch_threshold_s)
        assert _picture(small) == whole
        assert reads.count(True) >= 3 and reads[-1] is False
    finally:
        store.close()


def test_a_replica_skips_reading_back_its_own_batches_not_anyone_elses(
    video_artifact: Path, settings: Settings
) -> None:
    """After its own impression batch a replica moves its horizon past it (the next poll
    does not read it back) only while every impression below the batch is one it
    applied: batches of another writer in between are still read. (A replica applies its
    own rows as it writes them and the others' as it reads them, so the one that had read
    everything before each of its writes, here a, equals a replay bit for bit.)"""
    stores = [SqliteStore(settings.state_db) for _ in range(3)]
    try:
        a, b = (ServingState(video_artifact, s, settings.watch_threshold_s) for s in stores[:2])
        ids = a.catalogue.ids
        a.record_impressions([_imp("ua", ids[1], 60.0, "a1"), _imp("ub", ids[2], 0.0, "a2")])
        assert a._log.horizon["impressions"] > 0 and not a._log.applied["impressions"]
        assert len(a.store.changes(dict(a._log.horizon)).impressions) == 0  # nothing to re-read
        b.record_impressions([_imp("ua", ids[3], 60.0, "b1")])  # b has not read a's batch
        assert b._log.applied["impressions"]  # so it keeps its own row remembered
        a.record_impressions([_imp("ub", ids[4], 60.0, "a3")])  # after b's: a must not skip it
        assert a.sync() == 1 and b.sync() == 3
        replay = ServingState(video_artifact, stores[2], settings.watch_threshold_s, None, False)
        a.wait_refitted()
        replay.wait_refitted()
        assert _picture(a)["windows"] == _picture(replay)["windows"]
        assert _picture(a)["histories"] == _picture(replay)["histories"]
    finally:
        for s in stores:
            s.close()
