"""``recsys pipeline``: mining, training, embedding, indexing, GLMix and evaluation in one job.

OUT/artifact/  the artifact that ``recsys serve --artifacts OUT/artifact`` loads
OUT/report.json, report.md, roc.png, test_scores.parquet  the offline evaluation

``PipelineConfig`` nests each stage's own configuration and hands it over whole.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pipelines.choice.rung_memo import reusing_rungs
from pipelines.engine import LOCAL, Engine
from pipelines.evaluation.evaluate import Evaluation, evaluate_artifact
from pipelines.evaluation.inputs import EvalConfig
from pipelines.evaluation.report import write_report
from pipelines.glmix.fit_glmix import GLMixJobConfig, fit_glmix_into_artifact
from pipelines.phases import phase, timing
from pipelines.training.train_embeddings import EmbeddingJobConfig, run_train_embeddings
from recsys import artifact as art


@dataclass(frozen=True)
class PipelineConfig:
    embedding: EmbeddingJobConfig = field(default_factory=EmbeddingJobConfig)
    #: GLMix's random_l2 chosen by validation log-loss (measured: the default 10
    #: over-shrinks here), with the history similarities as global features
    glmix: GLMixJobConfig = field(default_factory=lambda: GLMixJobConfig(tune=True))
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # One definition of a valid watch across the stages, or the report compares
        # models trained and scored on different labels.
        thresholds = {
            self.embedding.triplets.watch_threshold_s,
            self.glmix.watch_threshold_s,
            self.evaluation.watch_threshold_s,
        }
        if len(thresholds) > 1:
            raise ValueError(
                "the triplets, GLMix and the evaluation must use one watch threshold, "
                f"got {sorted(thresholds)}"
            )

    @property
    def watch_threshold_s(self) -> float:
        return self.glmix.watch_threshold_s

    def with_watch_threshold(self, seconds: float) -> PipelineConfig:
        """The same configuration with every stage's valid-watch threshold set."""
        e = self.embedding
        return replace(
            self,
            embedding=replace(e, triplets=replace(e.triplets, watch_threshold_s=seconds)),
            glmix=replace(self.glmix, watch_threshold_s=seconds),
            evaluation=replace(self.evaluation, watch_threshold_s=seconds),
        )

    def with_seed(self, seed: int) -> PipelineConfig:
        """The same configuration with every stage's seed set (training, the triplet
        sample, the evaluation's bootstrap and baselines)."""
        e = self.embedding
        return replace(
            self,
            embedding=replace(
                e, train=replace(e.train, seed=seed), triplets=replace(e.triplets, seed=seed)
            ),
            evaluation=replace(self.evaluation, seed=seed),
        )


def run_pipeline(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    cfg: PipelineConfig | None = None,
    test_start: datetime | None = None,
    overwrite: bool = False,
    progress: bool = True,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Run every stage; write OUT/artifact and the report once; return the report (empty
    on a non-zero torchrun rank)."""
    cfg = cfg or PipelineConfig()
    engine = engine or LOCAL
    o = Path(out)
    # The ladder's rungs are fitted for the starting point and again as the report's
    # baselines: their frame passes are made once (``pipelines.choice.rung_memo``).
    with reusing_rungs(o) as memo, timing() as clock:
        evaluation, timings, emb, glm = _stages(
            data, o, cfg, test_start, overwrite, progress, engine
        )
    if evaluation is None:  # a non-zero rank under torchrun
        return {}
    artifact = o / "artifact"
    report = evaluation.report
    report["timings"] = timings
    # seconds per phase, nested ("evaluation / baselines"), in the order they ran
    report["phases"] = clock.rows()
    # rung fits (and k-means words) the report's ladder took from the starting point's
    report["ladder_reused"] = {"hits": memo.hits, "misses": memo.misses}
    report["engine"] = engine.describe()
    report["embedding_metrics"] = emb.metrics
    report["glmix"] = glm
    if (artifact / art.LOSS_CURVE).exists():
        report["loss_curve"] = f"artifact/{art.LOSS_CURVE}"
    write_report(o, evaluation)
    return report


def _stages(
    data: str | os.PathLike[str],
    o: Path,
    cfg: PipelineConfig,
    test_start: datetime | None,
    overwrite: bool,
    progress: bool,
    engine: Engine,
) -> tuple[Evaluation | None, dict[str, float], Any, dict[str, Any]]:
    """Train the embeddings, fit GLMix and evaluate: (evaluation, seconds per stage, the
    training's result, GLMix's summary); no evaluation on a non-zero torchrun rank."""
    artifact = o / "artifact"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with phase("embeddings"):
        emb = run_train_embeddings(
            data, artifact, cfg.embedding, test_start, overwrite, progress, engine
        )
    timings["embeddings_s"] = time.perf_counter() - t0
    if emb.artifact is None:
        return None, timings, emb, {}
    t1 = time.perf_counter()
    if progress:
        print("fitting GLMix (with and without video features) ...", flush=True)
    with phase("glmix"):
        glm = fit_glmix_into_artifact(data, artifact, replace(cfg.glmix, progress=progress), engine)
    timings["glmix_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if progress:
        print("evaluating ...", flush=True)
    with phase("evaluation"):
        evaluation = evaluate_artifact(
            data, artifact, replace(cfg.evaluation, progress=progress), engine
        )
    timings["evaluation_s"] = time.perf_counter() - t2
    return evaluation, timings, emb, glm
