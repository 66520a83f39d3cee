"""A tiny end-to-end classification run, compare, and the experiment runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.classify.classify import hash_split, sample_with_replacement

TINY = ["--clusters", "4", "--epochs", "2", "--lr", "3e-3", "--decay-examples", "1000", "--quiet"]


@pytest.fixture(scope="module")
def two_runs(small_world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from typer.testing import CliRunner

    from pipelines.cli import app

    base = tmp_path_factory.mktemp("cls")
    runs = []
    for p in ("dsgmm", "avg"):
        out = base / p
        extra = ["--no-bfloat16-check"] if p == "avg" else []  # the flag turns it off
        res = CliRunner().invoke(
            app,
            [
                "classify",
                "--data",
                str(small_world_dir),
                "--pooling",
                p,
                "--out",
                str(out),
                *TINY,
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
        runs.append(out)
    return runs[0], runs[1]


def test_classify_outputs(two_runs: tuple[Path, Path]) -> None:
    run = two_runs[0]
    r = json.loads((run / "report.json").read_text())
    assert {"pooling", "gap", "hit_at_1", "val_loss", "test_videos", "config"} <= set(r)
    assert 0 <= r["gap"] <= 1 and 0 <= r["hit_at_1"] <= 1 and r["test_videos"] > 0
    # The kept epoch has the best validation GAP (ties: the lower validation loss).
    h = r["history"]
    assert r["best_epoch"] == min(
        range(1, len(h) + 1), key=lambda e: (-h[e - 1]["val_gap"], h[e - 1]["val_loss"])
    )
    assert r["val_gap"] == pytest.approx(h[r["best_epoch"] - 1]["val_gap"])
    preds = pq.read_table(run / "predictions.parquet")
    assert preds.num_rows == r["test_videos"]
    assert np.mean(preds.column("hit_at_1").to_pylist()) == pytest.approx(r["hit_at_1"])
    state = torch.load(run / "model.pt", weights_only=True)
    assert any(k.startswith("pooling.") for k in state)
    assert (run / "training_curve.png").stat().st_size > 1000


def test_classify_reports_bfloat16_inference_against_float32(
    two_runs: tuple[Path, Path],
) -> None:
    """Where the CPU multiplies bf16, the test split is scored again with bf16 inference
    on the same frame samples: its GAP, Hit@1 and the paired difference from float32."""
    from embeddings.runtime import native_bfloat16

    r = json.loads((two_runs[0] / "report.json").read_text())
    off = json.loads((two_runs[1] / "report.json").read_text())
    assert "bfloat16_inference" not in off and not off["config"]["train"]["bfloat16_check"]
    if not native_bfloat16(torch.device("cpu")):
        assert "bfloat16_inference" not in r
        return
    b = r["bfloat16_inference"]
    assert 0 <= b["gap"] <= 1 and 0 <= b["hit_at_1"] <= 1
    assert b["gap_difference"] == pytest.approx(b["gap"] - r["gap"], abs=1e-9)
    lo, hi = b["gap_difference_bootstrap_95"]
    assert lo <= hi and b["verdict"] in {"better", "worse", "no significant difference"}
    # bf16 products move probabilities a little, not to other answers
    assert 0 < b["max_probability_change"] < 0.1
    assert b["seconds"]["float32"] > 0 and b["seconds"]["bfloat16"] > 0


def test_classify_reports_baselines_beside_the_model(two_runs: tuple[Path, Path]) -> None:
    r = json.loads((two_runs[0] / "report.json").read_text())
    assert set(r["baselines"]) == {"avg_frames", "bow_tfidf"}
    for b in r["baselines"].values():
        assert 0 <= b["gap"] <= 1 and 0 <= b["hit_at_1"] <= 1 and "C" in b["choice"]
    v = r["vs_best_baseline"]
    assert v["best_baseline"] == max(r["baselines"], key=lambda n: r["baselines"][n]["gap"])
    best_gap = r["baselines"][v["best_baseline"]]["gap"]
    assert v["gap_difference"] == pytest.approx(r["gap"] - best_gap, abs=1e-9)
    lo, hi = v["gap_difference_bootstrap_95"]
    assert lo <= hi
    assert v["verdict"] == (
        "better" if lo > 0 else "worse" if hi < 0 else "no significant difference"
    )


def test_compare_cli(run_cli, two_runs: tuple[Path, Path]) -> None:
    code, out, err = run_cli("compare", two_runs[0], two_runs[1], "--resamples", "50")
    assert code == 0, err
    assert "McNemar p =" in out and "95% CI" in out
    code, out, _ = run_cli("compare", two_runs[0], two_runs[0], "--resamples", "20")
    assert "A - B = +0.0000" in out
    code, _, err = run_cli("compare", two_runs[0], two_runs[0].parent / "nope")
    assert code == 2 and "no predictions.parquet" in err


def test_bad_pooling_and_missing_labels(run_cli, tmp_path: Path, small_world_dir: Path) -> None:
    code, _, err = run_cli(
        "classify", "--data", small_world_dir, "--pooling", "bogus", "--out", tmp_path / "x"
    )
    assert code == 2 and "unknown pooling" in err
    t = pq.read_table(small_world_dir / "videos.parquet").drop_columns(["labels"])
    (tmp_path / "nolab").mkdir()
    pq.write_table(t, tmp_path / "nolab" / "videos.parquet")
    code, _, err = run_cli(
        "classify", "--data", tmp_path / "nolab", "--pooling", "avg", "--out", tmp_path / "y"
    )
    assert code == 2 and "no labels column" in err


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("labels", [2, -1], "labels: video 'VID' has a negative label"),
        (
            "split",
            "holdout",
            "split: video 'VID' has split 'holdout' (one of train, validation, test, or null)",
        ),
    ],
)
def test_a_label_or_split_validate_refuses_stops_classify_by_name(
    run_cli, tmp_path: Path, small_world_dir: Path, column: str, value: object, needle: str
) -> None:
    # A negative label used to be one-hot encoded from the end; a split outside the
    # three ended in a KeyError traceback.
    t = pq.read_table(small_world_dir / "videos.parquet")
    vid = t.column("video_id")[3].as_py()
    i = t.schema.get_field_index(column)
    values = t.column(i).to_pylist()
    values[3] = value
    d = tmp_path / "bad"
    d.mkdir()
    pq.write_table(
        t.set_column(i, column, pa.array(values, t.schema.field(i).type)), d / "videos.parquet"
    )
    code, _, err = run_cli("classify", "--data", d, "--pooling", "avg", "--out", tmp_path / "o")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == f"error: videos.parquet: {needle.replace('VID', vid)}"
    assert not (tmp_path / "o").exists()


def test_helpers() -> None:
    splits = [hash_split(f"v{i}") for i in range(2000)]
    assert splits == [hash_split(f"v{i}") for i in range(2000)]  # deterministic
    frac = splits.count("train") / 2000
    assert 0.75 < frac < 0.85 and splits.count("test") > 100
    frames = np.arange(6, dtype=np.float32).reshape(6, 1)
    rng = np.random.default_rng(0)
    x = np.stack(
        [sample_with_replacement(frames[:1], 30, rng), sample_with_replacement(frames[1:], 30, rng)]
    )
    assert x.shape == (2, 30, 1)
    assert set(x[0, :, 0].tolist()) == {0.0}  # a one-frame video repeats its frame
    assert set(x[1, :, 0].tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_experiment_runner(
    small_world_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.classify import experiment
    from pipelines.classify.classify import ClassifyConfig

    tiny = experiment.Budget(
        2, (1, 2), (-3, 0), ClassifyConfig(epochs=1, lr=3e-3, decay_examples=1000)
    )
    monkeypatch.setitem(experiment.BUDGETS, "tiny", tiny)
    rep = experiment.run_paper_experiment(small_world_dir, tmp_path, "tiny", progress=False)
    assert {
        "t2_avg",
        "t2_dsgmm",
        "t4_netvlad_in0_fn1",
        "t5_dsgmm_diagonal",
        "f2_dsgmm_k1",
        "f3_dsgmm_g0",
    } <= set(rep["results"])
    md = (tmp_path / "report.md").read_text()
    assert "## Table 2" in md and "McNemar" in md and "## Table 5" in md
    assert (tmp_path / "figure2_clusters.png").exists() and (
        tmp_path / "figure3_gamma.png"
    ).exists()
    # Identical configurations are trained once.
    assert rep["results"]["t4_dsgmm_in1_fn0"].get("same_as") == "t2_dsgmm"


def test_baseline_gap_bootstrap_is_paired() -> None:
    from pipelines.classify.baselines import paired_gap_bootstrap
    from recsys.classification import gap_at_k

    rng = np.random.default_rng(0)
    y = (rng.random((60, 5)) < 0.3).astype(int)
    good = y + rng.normal(0, 0.3, y.shape)
    bad = rng.random(y.shape)
    d, lo, hi = paired_gap_bootstrap(good, bad, y, resamples=200)
    assert d == pytest.approx(gap_at_k(good, y) - gap_at_k(bad, y))
    assert 0 < lo <= d <= hi
    assert paired_gap_bootstrap(good, good, y, resamples=50) == (0.0, 0.0, 0.0)


def test_video_level_splits_leave_bag_of_words_out_and_say_why() -> None:
    from pipelines.classify.baselines import SplitFrames, classification_baselines, inapplicable

    rng = np.random.default_rng(0)

    def split(n: int) -> SplitFrames:
        labels = np.zeros((n, 3))
        labels[np.arange(n), rng.integers(0, 3, n)] = 1
        frames = (labels @ rng.normal(size=(3, 8)) + rng.normal(0, 0.3, (n, 8))).astype(np.float32)
        return SplitFrames([f"v{i}" for i in range(n)], frames, np.arange(n + 1), labels)

    one = {"train": split(120), "validation": split(40), "test": split(40)}
    why = inapplicable(one)
    assert set(why) == {"bow_tfidf"} and "one frame" in why["bow_tfidf"]
    said: list[str] = []
    got = classification_baselines(one, log=said.append)
    assert set(got) == {"avg_frames"} and 0.0 < got["avg_frames"]["gap"] <= 1.0
    assert any("bow_tfidf: not applicable" in s for s in said)
    two = dict(
        one,
        train=SplitFrames(
            one["train"].video_ids,
            np.repeat(one["train"].frames, 2, 0),
            np.arange(0, 242, 2),
            one["train"].labels,
        ),
    )
    assert inapplicable(two) == {}
