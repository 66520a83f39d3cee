"""``recsys glmix fit`` and ``recsys glmix score``: GLMix on any table.

The fit runs in stages, as GDMix and Photon-ML report them: the fixed effect alone, then
with each random-effect coordinate added in order. Each stage is a full coordinate-descent
fit (``recsys.glmix.table``); a penalty the configuration leaves out is chosen for the
stage that adds it, by validation log-loss over ``L2_GRID`` (with ``--validation``; else
``DEFAULT_L2``), and kept for the later stages. Each stage's validation AUC with DeLong's
interval, rows, entities and seconds are printed and written to ``MODEL_DIR/report.json``.

MODEL_DIR holds ``model.json`` (the configuration with its penalties, the fixed effect,
the feature transform) and one ``effects_<k>.parquet`` per coordinate (entity, coef):
JSON and Parquet, nothing executable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.io import open_parquet, parquet_stream
from pipelines.glmix.table_data import Rows, read_rows, rows_of, table_batches
from recsys.auc import delong_ci
from recsys.durable import fsync_dir
from recsys.errors import UserInputError
from recsys.glmix.coordinate_descent import LocalBackend
from recsys.glmix.table import (
    L2_GRID,
    BackendFactory,
    Effects,
    Standardizer,
    TableGLMix,
    TableGLMixConfig,
    fit_table_glmix,
)

MODEL_FILE = "model.json"
REPORT_FILE = "report.json"
FORMAT = "recsys-table-glmix/1"


def _fit(cfg: TableGLMixConfig, rows: Rows, backend: BackendFactory) -> TableGLMix:
    assert rows.y is not None
    return fit_table_glmix(cfg, rows.x, rows.y, rows.keys, rows.z, backend)


def _log_loss(model: TableGLMix, rows: Rows) -> float:
    p = np.clip(model.predict_proba(rows.x, rows.keys, rows.z), 1e-12, 1 - 1e-12)
    y = rows.y
    assert y is not None
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _choose(
    cfg: TableGLMixConfig,
    stage: int,
    train: Rows,
    val: Rows | None,
    say: Callable[[str], None],
    backend: BackendFactory,
) -> tuple[TableGLMixConfig, dict[str, float]]:
    """The stage's configuration with the penalty it adds chosen (or defaulted)."""
    if stage == 0:
        if cfg.l2 is not None:
            return cfg, {}
        what = "the fixed effect's l2"
        candidates = [replace(cfg, l2=v) for v in L2_GRID]
    else:
        r = cfg.random[stage - 1]
        if r.l2 is not None and r.intercept_l2 is not None:
            return cfg, {}
        omitted = [k for k in ("l2", "intercept_l2") if getattr(r, k) is None]
        what = f"{r.name}'s {' and '.join(omitted)}"

        def with_l2(v: float) -> TableGLMixConfig:
            new = replace(
                r,
                l2=r.l2 if r.l2 is not None else v,
                intercept_l2=r.intercept_l2 if r.intercept_l2 is not None else v,
            )
            return replace(cfg, random=(*cfg.random[: stage - 1], new, *cfg.random[stage:]))

        candidates = [with_l2(v) for v in L2_GRID]
    if val is None:
        return candidates[L2_GRID.index(1.0)], {}
    losses = {}
    for v, c in zip(L2_GRID, candidates, strict=True):
        losses[str(v)] = _log_loss(_fit(c.prefix(stage).resolved(), train, backend), val)
    best = min(losses, key=lambda k: losses[k])
    say(f"  {what} chosen on validation: {best} (log-loss {losses[best]:.5f})")
    return candidates[list(losses).index(best)], losses


def fit_job(
    train: str | os.PathLike[str],
    config: TableGLMixConfig,
    out: str | os.PathLike[str],
    validation: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    backend: BackendFactory = LocalBackend,
) -> dict[str, Any]:
    """Fit stage by stage, write MODEL_DIR; return the report. ``backend``: where the
    rows live (this process, or ``pipelines.spark.table_glmix.spark_backend``)."""
    o = Path(out)
    if o.exists() and not overwrite:
        raise UserInputError(f"{o}: already exists (pass --overwrite to replace it)")

    def say(line: str) -> None:
        if progress:
            print(line, flush=True)

    rows = read_rows(train, config)
    val = read_rows(validation, config, widths=rows.widths) if validation else None
    say(f"{len(rows)} training rows" + (f", {len(val)} validation rows" if val else ""))
    cfg, stages, model = config, [], None
    for stage in range(len(config.random) + 1):
        name = "fixed effect" if stage == 0 else f"+ {config.random[stage - 1].name}"
        say(f"stage {stage}: {name} ...")
        cfg, losses = _choose(cfg, stage, rows, val, say, backend)
        t0 = time.perf_counter()
        model = _fit(cfg.prefix(stage).resolved(), rows, backend)
        seconds = time.perf_counter() - t0
        stages.append(_stage_report(name, model, rows, val, seconds, losses))
        say("  " + _stage_line(stages[-1]))
    assert model is not None
    report = {
        "train": str(Path(train).resolve()),
        "validation": str(Path(validation).resolve()) if validation else None,
        "rows": len(rows),
        "config": model.config.to_json(),
        "stages": stages,
    }
    save_model(model, o, rows.widths, report, overwrite)
    return report


def _stage_report(
    name: str,
    model: TableGLMix,
    rows: Rows,
    val: Rows | None,
    seconds: float,
    losses: dict[str, float],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stage": name,
        "seconds": seconds,
        "passes": len(model.history),
        "entities": {k: len(e.ids) for k, e in model.effects.items()},
        "train_log_likelihood_per_row": model.history[-1]["log_likelihood_per_row"],
    }
    if losses:
        out["l2_validation_log_loss"] = losses
    if val is not None and val.y is not None:
        auc, lo, hi = delong_ci(val.y, model.logit(val.x, val.keys, val.z))
        out["validation_auc"] = auc
        out["validation_auc_delong_95"] = [lo, hi]
        out["validation_log_loss"] = _log_loss(model, val)
    return out


def _stage_line(s: dict[str, Any]) -> str:
    ent = ", ".join(f"{k} {v:,} entities" for k, v in s["entities"].items())
    auc = ""
    if "validation_auc" in s:
        lo, hi = s["validation_auc_delong_95"]
        auc = f"validation AUC {s['validation_auc']:.4f} [{lo:.4f}, {hi:.4f}]; "
    return f"{auc}{s['passes']} passes, {s['seconds']:.1f} s" + (f"; {ent}" if ent else "")


# --------------------------------------------------------------------------- files


def save_model(
    model: TableGLMix, out: Path, widths: dict[str, int], report: dict[str, Any], overwrite: bool
) -> None:
    """MODEL_DIR, written beside and renamed into place (never half a model)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        doc = {
            "format": FORMAT,
            "config": model.config.to_json(),
            "widths": widths,
            "fixed": model.fixed.tolist(),
            "fixed_center": model.fixed_standardizer.center.tolist(),
            "fixed_scale": model.fixed_standardizer.scale.tolist(),
            "effects": {},
            "history": model.history,
        }
        for i, (name, e) in enumerate(model.effects.items()):
            file = f"effects_{i}.parquet"
            table = pa.table(
                {"entity": pa.array(e.ids, pa.string()), "coef": pa.array(list(e.coef))}
            )
            pq.write_table(table, tmp / file)
            doc["effects"][name] = {
                "file": file,
                "center": e.standardizer.center.tolist(),
                "scale": e.standardizer.scale.tolist(),
            }
        (tmp / MODEL_FILE).write_text(json.dumps(doc, indent=2))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        fsync_dir(tmp)
        if out.exists():
            if not overwrite:
                raise UserInputError(f"{out}: already exists (pass --overwrite to replace it)")
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(path: str | os.PathLike[str]) -> tuple[TableGLMix, dict[str, int]]:
    d = Path(path)
    try:
        doc = json.loads((d / MODEL_FILE).read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        cfg = TableGLMixConfig.from_json(doc["config"])
        effects = {}
        for name, e in doc["effects"].items():
            t = pq.read_table(d / e["file"])
            coef = (
                np.stack(t.column("coef").to_numpy(zero_copy_only=False))
                if t.num_rows
                else (np.zeros((0, len(e["center"]) + 1)))
            )
            std = Standardizer(np.array(e["center"]), np.array(e["scale"]))
            effects[name] = Effects(t.column("entity").to_pylist(), coef, std)
        fixed_std = Standardizer(np.array(doc["fixed_center"]), np.array(doc["fixed_scale"]))
        model = TableGLMix(cfg, np.array(doc["fixed"]), fixed_std, effects, doc.get("history", []))
        return model, {k: int(v) for k, v in doc["widths"].items()}
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
        raise UserInputError(f"{d}: not a table GLMix model ({exc})") from None


def score_job(
    model_dir: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str]
) -> int:
    """Write ``out``: the data's rows in order with a ``score`` column (the watch
    probability), a record batch at a time; returns the row count."""
    model, widths = load_model(model_dir)
    cfg = model.config
    schema = open_parquet(data).schema_arrow
    if "score" in schema.names:
        raise UserInputError(f"{Path(data).name}: score: the data has a score column already")
    n = 0
    with parquet_stream(out) as write:
        for batch in table_batches(data, schema.names):
            rows = rows_of(batch, cfg, with_label=False, widths=widths)
            score = pa.array(model.predict_proba(rows.x, rows.keys, rows.z), pa.float64())
            write(pa.Table.from_batches([batch]).append_column("score", score))
            n += batch.num_rows
        if not n:  # no rows: the columns, and a score column, all empty
            write(schema.empty_table().append_column("score", pa.array([], pa.float64())))
    return n
