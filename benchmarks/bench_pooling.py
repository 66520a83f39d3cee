"""Pooling throughput: inference and training step, as frames/s and as a fraction of
the fp32 matmul rate measured in the same run.

    .venv/bin/python -m benchmarks.bench_pooling [--batch 256 --frames 30 --clusters 256 --dim 1024]

A layer's products alone at its shapes (``products_time``) are timed too: the
assignment's and S_x's, whose inner dimension is the video's T frames, and for the
diagonal GMM the squared frames' against the precisions (Eq. 2's x^T Sigma_k^-1 x,
another (B*T, D) x (D, K)). A layer's time
over theirs says what the rest of it (softmax, centring, norms) costs; their own rate
against the square reference says what the library's kernels give at these shapes.

FLOPs counted per forward: 2 * B * T * K * D a product, two products (the assignment's
matmul, the aggregation's bmm) or three (the diagonal GMM); a training step counts 3x
that (forward + backward).

Each layer's inference is timed three ways: float32 as the library runs it (a few videos
at a time, the tail's passes in cache: "fused"), float32 over the whole batch at once
("eager", ``embeddings.aggregation.CHUNK_BYTES`` set past the batch), and bfloat16 (the layer
and the frames in bf16, as ``CowatchEmbedder.for_inference`` runs it), the last as a
fraction of the bf16 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import embeddings.aggregation as aggregation
from embeddings import ASSIGNMENTS, build_pooling
from embeddings.runtime import configure_cpu_allocator, native_bfloat16


def _time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up: first calls fault memory in and pick kernels
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate(
    device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """FLOP/s of a square GEMM in ``dtype``: the machine's practical peak for this comparison."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = _time(lambda: a @ b, repeats, device)
    return 2 * n**3 / t


def product_count(assignment: str) -> int:
    """A cluster layer's (B*T, D) x (D, K)-sized products: the assignment's and S_x's, and
    for a per-cluster diagonal covariance the squared frames' against the precisions
    (a shared covariance's x^T Sigma^-1 x cancels in Eq. 2; a spherical one's is a sum)."""
    return 3 if assignment == "diagonal" else 2


def products_time(
    x: torch.Tensor, clusters: int, repeats: int, device: torch.device, count: int = 2
) -> float:
    """Seconds of a cluster layer's ``count`` products alone at its shapes, in x's type:
    the assignment's (B*T, D) x (D, K) (twice for three), and S_x's per-video
    (K, T) x (T, D) into a warm output. What the library's own kernels give at these
    shapes (S_x's inner dimension is T), so the layer's time can be read as its products
    plus everything else."""
    b, t, d = x.shape
    w = torch.randn(clusters, d, device=device, dtype=x.dtype)
    bias = torch.zeros(clusters, device=device, dtype=x.dtype)
    pt = torch.softmax(torch.randn(b, clusters, t, device=device), dim=1).to(x.dtype)
    out = torch.empty(b, clusters, d, device=device, dtype=x.dtype)

    def run() -> None:
        for _ in range(count - 1):
            F.linear(x, w, bias)
        torch.bmm(pt, x, out=out)

    return _time(run, repeats, device)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step timings")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="time bfloat16 too: auto = where the device multiplies it natively (elsewhere "
        "torch emulates it at a few hundred MFLOP/s and one layer takes seconds)",
    )
    ap.add_argument(
        "--allocator",
        choices=["tuned", "default"],
        default="tuned",
        help="tuned: call configure_cpu_allocator() explicitly; default: no call, i.e. what a "
        "plain `import embeddings` gives (the setting applies on import; run with "
        "RECSYS_KEEP_MALLOC=1 for glibc as is)",
    )
    args = ap.parse_args()
    if args.allocator == "tuned":
        configure_cpu_allocator()
    dev = torch.device(args.device)
    b, t, k, d = args.batch, args.frames, args.clusters, args.dim
    torch.manual_seed(0)
    x = torch.randn(b, t, d, device=dev)

    peak = matmul_rate(dev)
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and native_bfloat16(dev))
    nan = float("nan")
    peak16 = matmul_rate(dev, dtype=torch.bfloat16) if bf16 else nan
    print(
        f"device {dev}, threads {torch.get_num_threads()}, allocator {args.allocator}, B={b} T={t} K={k} D={d}"
    )
    print(
        f"matmul reference: fp32 {peak / 1e9:.1f} GFLOP/s, "
        + (
            f"bf16 {peak16 / 1e9:.1f} GFLOP/s ({peak16 / peak:.2f}x)"
            if bf16
            else "bf16 not timed (no native bf16 here; --bf16 on times it emulated)"
        )
    )
    x16 = x.to(torch.bfloat16)
    rows = []
    layers = [("avg", "-"), ("netvlad", "decoupled")] + [("dsgmm", a) for a in ASSIGNMENTS]
    for name, assignment in layers:
        opts = {"assignment": assignment} if assignment != "-" else {}
        layer = build_pooling(name, d, k, **opts).to(dev)
        count = product_count(assignment)
        flops = 2.0 * b * t * k * d * count
        with torch.no_grad():
            # the products timed beside each layer: this machine's speed drifts by
            # tens of percent from one minute to the next
            t_products = products_time(x, k, args.repeats, dev, count)
            t_products16 = products_time(x16, k, args.repeats, dev, count) if bf16 else nan
            t_inf = _time(lambda layer=layer: layer(x), args.repeats, dev)
            fused_bytes = aggregation.CHUNK_BYTES
            aggregation.CHUNK_BYTES = 1 << 62  # the whole batch at once
            t_eager = _time(lambda layer=layer: layer(x), args.repeats, dev)
            aggregation.CHUNK_BYTES = fused_bytes
            t_bf16 = nan
            if bf16:
                low = copy.deepcopy(layer).to(torch.bfloat16)
                t_bf16 = _time(lambda low=low: low(x16), args.repeats, dev)
        clusters = name != "avg"
        row = {
            "pooling": name,
            "assignment": assignment,
            "infer_ms": 1e3 * t_inf,
            "infer_frames_per_s": b * t / t_inf,
            "infer_frac_of_matmul": (flops / t_inf) / peak if clusters else None,
            "eager_infer_ms": 1e3 * t_eager,
            "fused_speedup": t_eager / t_inf,
            "bf16_infer_ms": 1e3 * t_bf16,
            "bf16_frames_per_s": b * t / t_bf16,
            "bf16_frac_of_bf16_matmul": (flops / t_bf16) / peak16 if clusters else None,
            "bf16_speedup": t_inf / t_bf16,
            "products_ms": 1e3 * t_products,
            "products": count,
            "products_frac_of_matmul": flops / t_products / peak,
            "bf16_products_ms": 1e3 * t_products16,
            "bf16_products_speedup": t_products / t_products16,
            # the layer against its own products at these shapes (1.0: nothing else costs)
            "infer_over_products": t_inf / t_products if clusters else None,
            "bf16_infer_over_products": t_bf16 / t_products16 if clusters else None,
        }
        if not args.no_train:
            opt = (
                torch.optim.SGD(layer.parameters(), lr=1e-3)
                if any(True for _ in layer.parameters())
                else None
            )

            def step(layer=layer, opt=opt) -> None:
                out = layer(x)
                loss = out.square().mean()
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

            t_train = _time(step, max(3, args.repeats // 2 + 1), dev)
            row["train_ms"] = 1e3 * t_train
            row["train_frames_per_s"] = b * t / t_train
            row["train_frac_of_matmul"] = (3 * flops / t_train) / peak if name != "avg" else None
        rows.append(row)
        frac = row["infer_frac_of_matmul"]
        train = (
            f"  train {row['train_ms']:8.1f} ms {row['train_frames_per_s']:10.0f} frames/s"
            + (f" ({row['train_frac_of_matmul']:.0%})" if row.get("train_frac_of_matmul") else "")
            if "train_ms" in row
            else ""
        )
        print(
            f"{name:8s} {assignment:17s} infer {row['infer_ms']:8.1f} ms {row['infer_frames_per_s']:10.0f} frames/s"
            + (
                f" ({frac:.0%} of matmul, {row['infer_over_products']:.2f}x its products)"
                if frac
                else ""
            )
            + f", eager {row['eager_infer_ms']:.1f} ms ({row['fused_speedup']:.2f}x)"
            + (
                f", bf16 {row['bf16_infer_ms']:.1f} ms ({row['bf16_speedup']:.2f}x"
                + (f", {row['bf16_frac_of_bf16_matmul']:.0%} of bf16 matmul)" if clusters else ")")
                if bf16
                else ""
            )
            + train
        )
        if clusters:
            print(
                f"{'':26s} its {count} products alone: {row['products_ms']:.1f} ms "
                f"({row['products_frac_of_matmul']:.0%} of matmul)"
                + (
                    f", bf16 {row['bf16_products_ms']:.1f} ms ({row['bf16_products_speedup']:.2f}x)"
                    if bf16
                    else ""
                )
            )
    by = {(r["pooling"], r["assignment"]): r for r in rows}
    ratio = by[("dsgmm", "decoupled")]["infer_ms"] / by[("netvlad", "decoupled")]["infer_ms"]
    print(f"DSGMM / NetVLAD inference time: {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "matmul_gflops": peak / 1e9,
                    "bf16_matmul_gflops": peak16 / 1e9,
                    "rows": rows,
                    "dsgmm_over_netvlad": ratio,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
