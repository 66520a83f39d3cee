"""Two ``recsys classify`` runs compared on their shared test videos (``recsys compare``):
McNemar's test on Hit@1 and a bootstrap interval of the GAP@20 difference."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.classification import gap_from_topk, mcnemar_test
from recsys.errors import UserInputError


def compare_runs(
    run_a: str | os.PathLike[str],
    run_b: str | os.PathLike[str],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """McNemar on Hit@1 and a bootstrap 95% interval of GAP(A) - GAP(B) over test videos."""
    tables = []
    for r in (run_a, run_b):
        p = Path(r) / "predictions.parquet"
        if not p.exists():
            raise UserInputError(f"{r}: no predictions.parquet (not a classify run?)")
        tables.append(pq.read_table(p))
    a, b = tables
    ids_a, ids_b = a.column("video_id").to_pylist(), b.column("video_id").to_pylist()
    if ids_a != ids_b:
        common = sorted(set(ids_a) & set(ids_b))
        if not common:
            raise UserInputError("the two runs share no test videos")
        ia = {v: i for i, v in enumerate(ids_a)}
        ib = {v: i for i, v in enumerate(ids_b)}
        a = a.take(pa.array([ia[v] for v in common]))
        b = b.take(pa.array([ib[v] for v in common]))

    def arrays(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        k = t.schema.field("top_scores").type.list_size
        sc = t.column("top_scores").combine_chunks().flatten().to_numpy().reshape(-1, k)
        hits = (
            t.column("top_hits")
            .combine_chunks()
            .flatten()
            .to_numpy(zero_copy_only=False)
            .reshape(-1, k)
        )
        return (
            t.column("hit_at_1").to_numpy(zero_copy_only=False),
            sc,
            hits,
            t.column("num_positives").to_numpy(),
        )

    ha, sa, ta, na = arrays(a)
    hb, sb, tb, nb = arrays(b)
    table, p_value = mcnemar_test(ha, hb)
    gap_a, gap_b = gap_from_topk(sa, ta, na), gap_from_topk(sb, tb, nb)
    rng = np.random.default_rng(seed)
    diffs = []
    n = len(ha)
    for _ in range(resamples):
        i = rng.integers(0, n, n)
        diffs.append(gap_from_topk(sa[i], ta[i], na[i]) - gap_from_topk(sb[i], tb[i], nb[i]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {
        "videos": n,
        "hit_at_1": [float(ha.mean()), float(hb.mean())],
        "contingency": table.tolist(),
        "mcnemar_p": p_value,
        "gap": [gap_a, gap_b],
        "gap_diff": gap_a - gap_b,
        "gap_diff_ci95": [float(lo), float(hi)],
    }
