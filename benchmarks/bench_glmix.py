"""GLMix fit time and peak memory on synthetic rows.

    .venv/bin/python -m benchmarks.bench_glmix [--users 100000 --rows 5000000 --dim 64]

Prints the wall time of the whole converged fit (all coordinate-descent passes),
time per pass, peak resident memory, and a float64 matmul rate measured in the same
run as the reference.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from recsys.glmix.model import GLMixConfig, fit_glmix


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
