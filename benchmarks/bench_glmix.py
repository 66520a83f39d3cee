"""GLMix fit time and peak memory on synthetic rows; with ``--replay``, the online replay.

    .venv/bin/python -m benchmarks.bench_glmix [--users 100000 --rows 5000000 --dim 64]
    .venv/bin/python -m benchmarks.bench_glmix --replay [--users 2000 --videos 5000
        --rows 20000 --dim 32]

The fit: prints the wall time of the whole converged fit (all coordinate-descent
passes), time per pass, peak resident memory, and a float64 matmul rate measured in the
same run as the reference.

``--replay``: fits a GLMix with per-video effects and two global features on training
rows, then replays ``--rows`` test rows (heavy-tailed activity per user and per video,
tied times) through ``recsys.online.replay.progressive_validation`` (rounds: one batched
refit a round) and ``replay_row_by_row`` (one refit a row, the plain statement). Prints
each one's impressions per second, the ratio, and the largest difference between their
scores (the two must agree to rounding).

``--grid``: rows by reference (``VideoRows``: a table of ``--videos`` vectors, an index
per row), as the pipeline's fits take them. Times the fixed effect's sums over the
materialised rows against the design's per-video sums (``video_design_sums``), and the
``random_l2`` grid fitted one candidate at a time on every core against side by side
(``recsys.parallel.map_independent``); prints both ratios and the largest loss difference.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from recsys.glmix.design import VideoDesign, VideoRows
from recsys.glmix.logistic import logistic_sums
from recsys.glmix.model import GLMixConfig, fit_glmix
from recsys.glmix.tuning import RANDOM_L2_GRID, validation_losses
from recsys.online.replay import progressive_validation, replay_row_by_row
from recsys.parallel import cores


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--replay", action="store_true", help="time the online replay instead")
    ap.add_argument("--grid", action="store_true", help="time the sums and the penalty grid")
    ap.add_argument("--users", type=int, help="default 100,000 (--replay: 2,000)")
    ap.add_argument("--rows", type=int, help="default 5,000,000 (--replay: 20,000 test rows)")
    ap.add_argument("--dim", type=int, help="default 64 (--replay: 32)")
    ap.add_argument("--videos", type=int, help="--replay: videos (5,000; --grid: 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    defaults = (100_000, 5_000_000, 64, 0)
    if args.replay:
        defaults = (2_000, 20_000, 32, 5_000)
    elif args.grid:
        defaults = (5_000, 370_000, 64, 10_000)
    for name, value in zip(("users", "rows", "dim", "videos"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.replay or args.grid:
        (replay if args.replay else grid)(args)
        return
    rng = np.random.default_rng(args.seed)
    # Heavy-tailed activity: most users have a few rows, some have thousands.
    activity = rng.lognormal(0.0, 1.0, args.users)
    user_of_row = rng.choice(args.users, size=args.rows, p=activity / activity.sum())
    users = np.array([f"u{i:07d}" for i in range(args.users)])[user_of_row]
    video = rng.normal(size=(args.rows, args.dim)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    w_fixed = rng.normal(0, 1.0, args.dim)
    w_user = rng.normal(0, 0.5, (args.users, args.dim))
    eta = -1.0 + video @ w_fixed + rng.normal(0, 0.7, args.users)[user_of_row]
    eta += np.einsum("ij,ij->i", w_user[user_of_row], video)
    y = (rng.random(args.rows) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    del eta

    a = torch.randn(1024, 1024, dtype=torch.float64)
    t = time.perf_counter()
    for _ in range(5):
        a @ a
    gflops = 5 * 2 * 1024**3 / (time.perf_counter() - t) / 1e9

    passes: list[float] = []
    t0 = time.perf_counter()
    last = [t0]

    def on_pass(p: int, ll: float) -> None:
        now = time.perf_counter()
        passes.append(now - last[0])
        last[0] = now
        print(f"  pass {p}: log-likelihood/row {ll:.5f} ({passes[-1]:.1f} s)", flush=True)

    model = fit_glmix(users, video, y, GLMixConfig(), on_pass=on_pass)
    total = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(
        f"users {args.users}, rows {args.rows}, dim {args.dim}, threads {torch.get_num_threads()}"
    )
    print(f"float64 matmul reference: {gflops:.1f} GFLOP/s")
    print(f"GLMix fit: {total:.1f} s over {len(passes)} passes; peak RSS {peak_gb:.2f} GB")
    print(f"users with a random effect: {int((np.abs(model.user_coef).sum(1) > 0).sum())}")


def _rows(rng: np.random.Generator, n: int, args: argparse.Namespace, table: np.ndarray):
    """(users, video ids, video vectors, labels, global features) of n rows."""
    activity = rng.lognormal(0.0, 1.0, args.users)
    appeal = rng.lognormal(0.0, 1.0, args.videos)
    u = rng.choice(args.users, size=n, p=activity / activity.sum())
    v = rng.choice(args.videos, size=n, p=appeal / appeal.sum())
    x = table[v]
    g = rng.normal(size=(n, 2))
    eta = -0.8 + x[:, 0] + 0.5 * g[:, 0] + 0.3 * np.sin(u) + 0.2 * np.cos(v)
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    users = np.array([f"u{i}" for i in u], dtype=object)
    videos = np.array([f"v{i}" for i in v], dtype=object)
    return users, videos, x, y, g


def replay(args: argparse.Namespace) -> None:
    """The rounds against row by row (``--replay``)."""
    rng = np.random.default_rng(args.seed)
    table = rng.normal(size=(args.videos, args.dim))
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    users, videos, x, y, g = _rows(rng, 5 * args.rows, args, table)
    cfg = GLMixConfig(random_l2=1.0, video_effects=True, video_intercept_l2=1.0)
    model = fit_glmix(users, x, y, cfg, g, videos=videos)
    users, videos, x, y, g = _rows(rng, args.rows, args, table)
    times = rng.integers(0, args.rows // 4, args.rows)  # ties, rows out of time order
    t0 = time.perf_counter()
    rounds = progressive_validation(users, x, y, times, model, None, g, videos, g)
    t_rounds = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = replay_row_by_row(users, x, y, times, model, g, videos)
    t_single = time.perf_counter() - t0
    n = args.rows
    print(f"{n} impressions, {len(set(users))} users, {len(set(videos))} videos")
    print(f"rounds:     {t_rounds:6.2f} s  {n / t_rounds:9.0f} impressions/s")
    print(f"row by row: {t_single:6.2f} s  {n / t_single:9.0f} impressions/s")
    print(f"rounds / row by row speed: {t_single / t_rounds:.1f}x")
    print(f"largest score difference: {np.abs(rounds - single).max():.2e}")


def _timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


def grid(args: argparse.Namespace) -> None:
    """The per-video sums and the grid side by side (``--grid``)."""
    rng = np.random.default_rng(args.seed)
    table = rng.normal(size=(args.videos, args.dim)).astype(np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    users, videos, _, y, g = _rows(rng, args.rows, args, table)
    x = VideoRows(table, np.array([int(v[1:]) for v in videos]))  # each row's video
    design = VideoDesign(x, g.astype(np.float32), use_video=True)
    dense = design[np.arange(args.rows)]  # the rows materialised: the general path
    off, w = rng.normal(0, 0.3, args.rows), np.ones(args.rows)
    beta = rng.normal(0, 0.1, dense.shape[1])
    t_dense, a = _timed(lambda: logistic_sums(dense, y, off, w, beta), 5)
    t_video, b = _timed(lambda: logistic_sums(design, y, off, w, beta), 5)
    rel = np.abs(a[2] - b[2]).max() / np.abs(a[2]).max()
    print(f"{args.rows} rows, {args.videos} videos, {args.users} users, dim {args.dim}")
    print(
        f"fixed-effect sums: materialised rows {t_dense * 1e3:.1f} ms, per video "
        f"{t_video * 1e3:.1f} ms ({t_dense / t_video:.1f}x); curvature differs by {rel:.1e}"
    )
    val = np.zeros(args.rows, dtype=bool)
    val[-args.rows // 10 :] = True
    cands = {lam: GLMixConfig(random_l2=lam) for lam in RANDOM_L2_GRID}

    def in_turn() -> dict[float, float]:
        return {
            k: validation_losses({k: c}, users, x, y, val, global_feats=g)[k]
            for k, c in cands.items()
        }

    t_turn, one = _timed(in_turn)
    t_side, both = _timed(lambda: validation_losses(cands, users, x, y, val, global_feats=g))
    diff = max(abs(one[k] - both[k]) for k in cands)
    print(
        f"random_l2 grid, {len(cands)} fits on {cores()} cores: one at a time {t_turn:.1f} s, "
        f"side by side {t_side:.1f} s ({t_turn / t_side:.2f}x); losses differ by {diff:.1e}; "
        f"chosen {min(one, key=one.__getitem__)} and {min(both, key=both.__getitem__)}"
    )


if __name__ == "__main__":
    main()
