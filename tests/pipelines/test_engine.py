"""One Spark convention: jobs call their engine's steps, the command line makes the
engine, and a backend is an ``Engine`` subclass overriding steps."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import typer

from pipelines.commands.options import engine_from
from pipelines.engine import LOCAL, Engine


def test_the_command_line_makes_the_engine_without_starting_spark() -> None:
    assert engine_from("local", "local[*]") is LOCAL
    spark = engine_from("spark", "local[1]")
    from pipelines.spark.engine import SparkEngine

    assert isinstance(spark, SparkEngine) and spark.master == "local[1]"
    assert spark.session is None  # no JVM until a step needs one
    assert spark.describe().startswith("spark (")
    with pytest.raises(typer.Exit) as e:
        engine_from("dask", "x")
    assert e.value.exit_code == 2


def test_the_local_engine_runs_the_plan_it_is_handed() -> None:
    ran: list[str] = []
    got = LOCAL.embed_dataset(Path("a"), Path("d"), Path("o"), 8, here=lambda: ran.append("x") or 3)
    assert got == 3 and ran == ["x"]


class _Recording(Engine):
    """A backend that runs everything here but records which steps the job asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def glmix_models(self, *args: Any, here: Any, **kwargs: Any) -> Any:
        self.asked.append("glmix_models")
        return here()

    def evaluation(self, *args: Any, here: Any, **kwargs: Any) -> Any:
        self.asked.append("evaluation")
        return here()


def test_jobs_go_through_the_engine_they_are_given(
    pipeline_out: Path, small_world_dir: Path, tmp_path: Path
) -> None:
    from pipelines.evaluation.evaluate import evaluate_artifact
    from pipelines.evaluation.inputs import EvalConfig
    from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact

    art = tmp_path / "art"
    shutil.copytree(pipeline_out / "artifact", art)
    engine = _Recording()
    info = fit_glmix_into_artifact(small_world_dir, art, GLMixJobConfig(), engine)
    assert info["engine"] == "local"
    evaluate_artifact(small_world_dir, art, EvalConfig(baselines=(), online=None), engine)
    assert engine.asked == ["glmix_models", "evaluation"]
