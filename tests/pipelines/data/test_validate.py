"""`recsys validate` accepts the synthetic world and names every kind of violation."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.dataset import frames_to_arrow


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _write_videos(d: Path, table: pa.Table) -> None:
    pq.write_table(table, d / "videos.parquet")


def _good_videos(n: int = 4, d: int = 3) -> pa.Table:
    rng = np.random.default_rng(0)
    lengths = np.array([2] * n)
    flat = rng.normal(size=(int(lengths.sum()), d)).astype(np.float32)
    return pa.table(
        {"video_id": [f"v{i}" for i in range(n)], "frames": frames_to_arrow(flat, lengths)}
    )


def _impressions(rows: list[tuple[str, str, float]]) -> pa.Table:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "video_id": pa.array([r[1] for r in rows], pa.string()),
            "shown_at": pa.array([t] * len(rows), pa.timestamp("us", tz="UTC")),
            "watch_seconds": pa.array([r[2] for r in rows], pa.float64()),
        }
    )


@pytest.fixture
def good_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ds"
    d.mkdir()
    _write_videos(d, _good_videos())
    pq.write_table(_impressions([("u1", "v0", 12.0), ("u1", "v1", 0.0)]), d / "impressions.parquet")
    return d


def test_accepts_synthetic_world(run_cli, small_world_dir: Path) -> None:
    code, out, err = run_cli("validate", small_world_dir)
    assert code == 0, err
    assert "valid" in out and "D = 8" in out and "frames per video" in out


def test_accepts_minimal_good_dir(run_cli, good_dir: Path) -> None:
    code, out, _ = run_cli("validate", good_dir)
    assert code == 0
    assert "1 valid watches" in out


def _assert_rejected(run_cli, d: Path, *needles: str) -> str:
    code, _, err = run_cli("validate", d)
    assert code == 2
    assert "Traceback" not in err
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    return err


def test_missing_column(run_cli, good_dir: Path) -> None:
    _write_videos(good_dir, _good_videos().drop_columns(["frames"]))
    _assert_rejected(run_cli, good_dir, "frames: missing column")


def test_mistyped_column(run_cli, good_dir: Path) -> None:
    t = _good_videos()
    t = t.set_column(0, "video_id", pa.array([1, 2, 3, 4]))
    _write_videos(good_dir, t)
    _assert_rejected(run_cli, good_dir, "video_id: expected string")
    imp = _impressions([("u1", "v0", 1.0)])
    imp = imp.set_column(3, "watch_seconds", pa.array(["x"]))
    pq.write_table(imp, good_dir / "impressions.parquet")
    _assert_rejected(run_cli, good_dir, "watch_seconds: expected float64")


def test_ragged_d_names_the_video(run_cli, good_dir: Path) -> None:
    inner = pa.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0]], pa.list_(pa.float32()))
    frames = pa.ListArray.from_arrays(pa.array([0, 2, 3], pa.int32()), inner)
    _write_videos(good_dir, pa.table({"video_id": ["v0", "v1"], "frames": frames}))
    pq.write_table(_impressions([("u", "v0", 1.0)]), good_dir / "impressions.parquet")
    _assert_rejected(run_cli, good_dir, "frames: video 'v1'", "ragged D")


def test_zero_frames(run_cli, good_dir: Path) -> None:
    inner = pa.array([[1.0, 2.0]], pa.list_(pa.float32()))
    frames = pa.ListArray.from_arrays(pa.array([0, 1, 1], pa.int32()), inner)
    _write_videos(good_dir, pa.table({"video_id": ["v0", "v1"], "frames": frames}))
    pq.write_table(_impressions([("u", "v0", 1.0)]), good_dir / "impressions.parquet")
    _assert_rejected(run_cli, good_dir, "video 'v1' has no frames (T = 0)")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frames(run_cli, good_dir: Path, bad: float) -> None:
    flat = np.ones((4, 3), np.float32)
    flat[3, 1] = bad
    frames = frames_to_arrow(flat, np.array([2, 2]))
    _write_videos(good_dir, pa.table({"video_id": ["v0", "v1"], "frames": frames}))
    pq.write_table(_impressions([("u", "v0", 1.0)]), good_dir / "impressions.parquet")
    err = _assert_rejected(run_cli, good_dir, "video 'v1' contains NaN or inf")
    assert "'v0'" not in err


def test_duplicate_and_empty_ids(run_cli, good_dir: Path) -> None:
    t = _good_videos().set_column(0, "video_id", pa.array(["a", "a", "", "b"]))
    _write_videos(good_dir, t)
    pq.write_table(_impressions([("u", "a", 1.0)]), good_dir / "impressions.parquet")
    _assert_rejected(run_cli, good_dir, "duplicate id 'a'", "empty or null id at row 2")


def test_unknown_video_and_negative_watch_time(run_cli, good_dir: Path) -> None:
    pq.write_table(
        _impressions([("u1", "nope", 12.0), ("u2", "v0", -3.0), ("u3", "v1", float("nan"))]),
        good_dir / "impressions.parquet",
    )
    err = _assert_rejected(
        run_cli, good_dir, "unknown video 'nope'", "watch_seconds: -3.0", "user 'u2'", "nan"
    )
    # Every violation is reported, one line each.
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 3


def test_non_utc_timestamps(run_cli, good_dir: Path) -> None:
    imp = _impressions([("u", "v0", 1.0)])
    imp = imp.set_column(2, "shown_at", imp.column("shown_at").cast(pa.timestamp("us")))
    pq.write_table(imp, good_dir / "impressions.parquet")
    _assert_rejected(run_cli, good_dir, "shown_at: timestamp must be in UTC", "is ambiguous")
    # Another zone: the line names the conversion that keeps the instants, and it works.
    paris = imp.column("shown_at").cast(pa.timestamp("us", tz="Europe/Paris"))
    pq.write_table(imp.set_column(2, "shown_at", paris), good_dir / "impressions.parquet")
    err = _assert_rejected(run_cli, good_dir, "found tz='Europe/Paris' (the instants are kept")
    assert "pyarrow.compute.cast(col, pyarrow.timestamp('us', tz='UTC'))" in err
    utc = pa.compute.cast(paris, pa.timestamp("us", tz="UTC"))
    pq.write_table(imp.set_column(2, "shown_at", utc), good_dir / "impressions.parquet")
    code, _, err = run_cli("validate", good_dir)
    assert code == 0, err


def test_pandas_category_ids_are_refused_with_the_fix_to_make(run_cli, good_dir: Path) -> None:
    df = pq.read_table(good_dir / "impressions.parquet").to_pandas()
    df["user_id"] = df["user_id"].astype("category")
    df.to_parquet(good_dir / "impressions.parquet", index=False)
    _assert_rejected(
        run_cli, good_dir, "user_id: expected string, found dictionary<", "df[col].astype(str)"
    )
    df["user_id"] = df["user_id"].astype(str)
    df.to_parquet(good_dir / "impressions.parquet", index=False)
    code, _, err = run_cli("validate", good_dir)
    assert code == 0, err


def test_malformed_file_and_missing_dir(run_cli, good_dir: Path, tmp_path: Path) -> None:
    (good_dir / "impressions.parquet").write_bytes(b"not parquet at all")
    _assert_rejected(run_cli, good_dir, "impressions.parquet: not a readable Parquet file")
    _assert_rejected(run_cli, tmp_path / "missing", "not a directory")


def test_threshold_option_counts_valid_watches(run_cli, good_dir: Path) -> None:
    code, out, _ = run_cli("validate", good_dir, "--watch-threshold", "12.5")
    assert code == 0 and "0 valid watches" in out
    code, out, _ = run_cli("validate", good_dir, "--watch-threshold", "12")
    assert code == 0 and "1 valid watches" in out


def test_synth_cli_and_help(run_cli, tmp_path: Path) -> None:
    code, out, _ = run_cli(
        "synth", "--out", tmp_path / "w", "--videos", "30", "--users", "10", "--days", "3"
    )
    assert code == 0 and "30 videos" in out
    assert (tmp_path / "w" / "truth.parquet").exists()
    code, _, err = run_cli("synth", "--out", tmp_path / "w2", "--videos", "0")
    assert code == 2 and "num_videos must be >= 1" in err
    for sub in ("synth", "validate", "convert-yt8m", "demo"):
        code, out, _ = run_cli(sub, "--help")
        assert code == 0 and "Usage" in out


def test_videos_only_data_set_is_valid_except_for_recommendation(
    run_cli, good_dir: Path, tmp_path: Path
) -> None:
    (good_dir / "impressions.parquet").unlink()
    code, out, err = run_cli("validate", good_dir)
    assert code == 0, err
    assert "valid" in out and "classification and embedding only" in out
    code, _, err = run_cli("validate", good_dir, "--purpose", "recommendation")
    assert code == 2 and "impressions.parquet: missing (recommendation needs" in err
    code, _, err = run_cli("validate", good_dir, "--purpose", "classification")
    assert code == 2 and "no labelled videos" in err
    code, _, err = run_cli("validate", good_dir, "--purpose", "nonsense")
    assert code == 2 and "purpose must be one of" in err
    # A job that needs impressions says so when it starts.
    code, _, err = run_cli("mine-triplets", "--data", good_dir, "--out", tmp_path / "t.parquet")
    assert code == 2 and "this job needs impressions" in err and "Traceback" not in err


def test_an_empty_log_is_valid_except_for_recommendation_and_a_bad_row_stops_a_job(
    run_cli, good_dir: Path, tmp_path: Path
) -> None:
    log = good_dir / "impressions.parquet"
    pq.write_table(_impressions([]), log)
    code, _, err = run_cli("validate", good_dir)
    assert code == 0, err
    code, _, err = run_cli("validate", good_dir, "--purpose", "recommendation")
    assert code == 2 and "impressions.parquet: no impressions (recommendation needs" in err
    # A row `validate` refuses stops a job reading the log too, with the same words.
    pq.write_table(_impressions([("u1", "v0", 12.0), ("", "v1", 3.0)]), log)
    assert "user_id: empty or null id at row 1" in _assert_rejected(run_cli, good_dir)
    code, _, err = run_cli("mine-triplets", "--data", good_dir, "--out", tmp_path / "t.parquet")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == "error: impressions.parquet: user_id: empty or null id at row 1"
    assert not (tmp_path / "t.parquet").exists()


def test_integer_ids_are_refused_with_the_cast_to_make(run_cli, good_dir: Path) -> None:
    imp = _impressions([("u1", "v0", 12.0)])
    imp = imp.set_column(0, "user_id", pa.array([17], pa.int64()))
    pq.write_table(imp, good_dir / "impressions.parquet")
    err = _assert_rejected(run_cli, good_dir, "user_id: expected string, found int64")
    assert "cast the column to string" in err
    # Cast as the message says, the same file passes.
    imp = imp.set_column(0, "user_id", imp.column("user_id").cast(pa.string()))
    pq.write_table(imp, good_dir / "impressions.parquet")
    assert run_cli("validate", good_dir)[0] == 0


def test_integer_video_ids_are_refused_in_either_file(run_cli, good_dir: Path) -> None:
    videos = _good_videos()
    ints = pa.array(range(videos.num_rows), pa.int32())
    _write_videos(good_dir, videos.set_column(0, "video_id", ints))
    err = _assert_rejected(
        run_cli, good_dir, "videos.parquet: video_id: expected string, found int32"
    )
    assert "cast the column to string" in err
    _write_videos(good_dir, videos)
    imp = _impressions([("u1", "v0", 12.0)])
    pq.write_table(
        imp.set_column(1, "video_id", pa.array([0], pa.int64())), good_dir / "impressions.parquet"
    )
    _assert_rejected(
        run_cli, good_dir, "impressions.parquet: video_id: expected string, found int64"
    )


def test_impressions_after_the_clock_are_flagged(run_cli, good_dir: Path) -> None:
    """A log running past this machine's clock is valid, with a warning: its latest time
    sets the default test start."""
    code, out, _ = run_cli("validate", good_dir)
    assert code == 0 and "warning" not in out
    t = _impressions([("u1", "v0", 12.0), ("u2", "v1", 0.0)])
    late = pa.array([datetime(2026, 1, 1), datetime(2126, 1, 1)], pa.timestamp("us", tz="UTC"))
    t = t.set_column(t.schema.get_field_index("shown_at"), "shown_at", late)
    pq.write_table(t, good_dir / "impressions.parquet")
    code, out, _ = run_cli("validate", good_dir)
    assert code == 0
    assert "warning: the latest impression is after this machine's clock" in out
    assert "--test-start" in out
