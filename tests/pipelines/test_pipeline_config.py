"""PipelineConfig nests each stage's own configuration; the stages agree on a valid watch."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.pipeline import PipelineConfig


def test_defaults_are_the_documented_recipe() -> None:
    cfg = PipelineConfig()
    e = cfg.embedding
    assert (e.embedder.pooling, e.embedder.num_clusters, e.embedder.gamma) == ("dsgmm", 32, 0.125)
    assert e.embedder.feature_dim == 0  # taken from the data set
    assert cfg.glmix.tune and cfg.glmix.history_features
    assert cfg.evaluation.online is not None and cfg.evaluation.baselines


def test_with_seed_and_with_watch_threshold_reach_every_stage() -> None:
    cfg = PipelineConfig().with_seed(7).with_watch_threshold(30.0)
    e = cfg.embedding
    assert (e.train.seed, e.triplets.seed, cfg.evaluation.seed) == (7, 7, 7)
    assert cfg.watch_threshold_s == 30.0
    assert (e.triplets.watch_threshold_s, cfg.evaluation.watch_threshold_s) == (30.0, 30.0)


def test_stages_with_different_watch_thresholds_are_refused() -> None:
    cfg = PipelineConfig()
    with pytest.raises(ValueError, match="one watch threshold"):
        replace(cfg, glmix=replace(cfg.glmix, watch_threshold_s=5.0))


def test_the_cli_builds_the_same_config(run_cli, tmp_path) -> None:
    """A bad option is refused with one line before anything runs."""
    code, _, err = run_cli(
        "pipeline", "--data", tmp_path, "--out", tmp_path / "o", "--pooling", "nope"
    )
    assert code == 2 and "unknown pooling 'nope'" in err
    code, _, err = run_cli("pipeline", "--data", tmp_path, "--out", tmp_path / "o", "--gamma", "-1")
    assert code == 2 and "gamma must be finite and >= 0" in err


@pytest.mark.parametrize(
    ("job", "option", "value", "needle"),
    [
        ("pipeline", "--seed", "-5", "Invalid value for '--seed'"),
        ("synth", "--seed", "-1", "Invalid value for '--seed'"),
        ("pipeline", "--watch-threshold", "nan", "must be a finite number >= 0, got nan"),
        ("pipeline", "--max-frames", "0", "Invalid value for '--max-frames'"),
        ("pipeline", "--hidden-dim", "0", "Invalid value for '--hidden-dim'"),
        ("fit-glmix", "--watch-threshold", "-1", "must be a finite number >= 0, got -1.0"),
        ("validate", "--watch-threshold", "inf", "must be a finite number >= 0, got inf"),
    ],
)
def test_a_negative_seed_or_a_watch_threshold_that_is_not_a_time_is_a_usage_error(
    run_cli, tmp_path, job: str, option: str, value: str, needle: str
) -> None:
    # A negative seed ended in numpy's ValueError traceback; a negative or NaN threshold
    # made every impression a watch, or none, and then "no co-watch triplets".
    args = {
        "pipeline": ["--data", tmp_path, "--out", tmp_path / "o"],
        "synth": ["--out", tmp_path / "o"],
        "fit-glmix": ["--data", tmp_path, "--artifacts", tmp_path / "o"],
        "validate": [tmp_path],
    }[job]
    code, _, err = run_cli(job, *args, option, value)
    assert code == 2 and "Traceback" not in err, err
    assert needle in " ".join(err.replace("│", " ").split())
    assert not (tmp_path / "o").exists()


def test_the_training_options_reach_the_embedding_job(
    run_cli, small_world_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-frames and --hidden-dim land in the config the job is handed whole."""
    import pipelines.pipeline as pp

    seen: list[PipelineConfig] = []
    monkeypatch.setattr(pp, "run_pipeline", lambda data, out, cfg, *rest: seen.append(cfg))
    args = ("--max-frames", "40", "--hidden-dim", "96")
    code, _, err = run_cli("pipeline", "--data", small_world_dir, "--out", tmp_path / "o", *args)
    assert code == 0, err
    (cfg,) = seen
    assert (cfg.embedding.train.max_frames, cfg.embedding.embedder.hidden_dim) == (40, 96)
