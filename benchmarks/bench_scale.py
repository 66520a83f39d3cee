"""Peak memory and time of every offline job on YouTube-8M-shaped catalogues.

    .venv/bin/python -m benchmarks.bench_scale --out /tmp/scale [--sizes 1000 3000 10000]
        [--cap 6G] [--jobs synth train-embeddings fit-glmix evaluate pipeline]

Worlds: ``recsys synth`` with D = 1024 uint8 frames (YouTube-8M's quantisation), 120 to
300 frames a video (median 210), one user per two videos, 28 days. Each job runs as
its own process, the way a user runs it, with the default flags. For each it prints:

* wall time, and the time of each phase (the job's own progress lines, timestamped, with
  the peak memory so far: which phase grows);
* peak anonymous memory of the job's process tree (``Pss_Anon``, polled every 0.25 s:
  what the job allocates, shared pages counted once, without the page cache of
  memory-mapped files, which the kernel reclaims under pressure);
* with ``--cap`` (root and cgroup v1): the peak the cgroup charged, process memory and
  page cache together, as a container would, and whether the job fit under the cap.

A summary table and ``bench_scale.json`` go to ``--out``; ``peak / videos`` slopes
between the sizes say what 1M and 10M videos would need.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CAPPED = Path(__file__).resolve().parents[2] / "shared" / "tools" / "run-capped"
JOBS = ("synth", "train-embeddings", "fit-glmix", "evaluate")
#: ``pipeline`` is the three jobs in one command, as a user runs them (the 25-minute goal)
OPTIONAL_JOBS = ("pipeline",)


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(k) for k in kids)
    return out


def _anon_kb(pids: list[int]) -> int:
    """Anonymous memory of the processes, shared pages split among their sharers
    (``Pss_Anon``): a forked loader worker shares its parent's pages, which ``RssAnon``
    would count twice."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def run_job(cmd: list[str], cap: str | None, tree: bool = True) -> dict[str, Any]:
    """Run ``cmd``; wall time, phases, peak anonymous memory (MiB) of its process tree
    (``tree``) or of its own process alone, cgroup peak."""
    full = [str(CAPPED), cap, *cmd] if cap else cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon_kb(_tree(proc.pid) if tree else [proc.pid]))
            time.sleep(0.25)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    phases: list[tuple[float, int, str]] = []  # (seconds, peak anon MiB so far, line)
    tail: list[str] = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        for line in raw.replace("\r", "\n").splitlines():
            line = line.strip()
            if not line or "it/s" in line or "s/it" in line or "%|" in line:
                continue
            phases.append((time.perf_counter() - t0, peak[0] // 1024, line[:100]))
            tail = [*tail, line][-5:]
    rc = proc.wait()
    done.set()
    poller.join()
    wall = time.perf_counter() - t0
    charged = None
    for line in tail:
        m = re.search(r"peak charged (\d+) MiB", line)
        if m:
            charged = int(m.group(1))
    return {
        "command": " ".join(cmd),
        "exit": rc,
        "seconds": wall,
        "peak_anon_mib": peak[0] // 1024,
        "peak_charged_mib": charged,
        "phases": [{"at_s": round(t, 1), "peak_anon_mib": m, "line": s} for t, m, s in phases],
        "tail": tail,
    }


def _synth_cmd(recsys: str, world: Path, n: int) -> list[str]:
    return [
        recsys, "synth", "--out", str(world), "--videos", str(n), "--users", str(n // 2),
        "--feature-dim", "1024", "--median-frames", "210", "--min-frames", "120",
        "--max-frames", "300", "--frame-dtype", "uint8",
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS + OPTIONAL_JOBS)
    ap.add_argument("--cap", default=None, help="e.g. 6G (needs root and cgroup v1)")
    args = ap.parse_args()
    recsys = str(Path(sys.executable).with_name("recsys"))
    if args.cap and not (os.geteuid() == 0 and CAPPED.exists()):
        sys.exit(f"--cap needs root and {CAPPED}")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for n in args.sizes:
        world, art = args.out / f"w{n}", args.out / f"a{n}"
        cmds = {
            "synth": _synth_cmd(recsys, world, n),
            "train-embeddings": [
                recsys, "train-embeddings", "--data", str(world), "--out", str(art), "--overwrite"
            ],
            "fit-glmix": [recsys, "fit-glmix", "--data", str(world), "--artifacts", str(art)],
            "evaluate": [
                recsys, "evaluate", "--data", str(world), "--artifacts", str(art),
                "--out", str(args.out / f"e{n}"),
            ],
            "pipeline": [
                recsys, "pipeline", "--data", str(world), "--out", str(args.out / f"p{n}"),
                "--overwrite",
            ],
        }  # fmt: skip
        for job in args.jobs:
            if job == "synth" and (world / "videos.parquet").exists():
                continue
            r = run_job(cmds[job], args.cap)
            results.setdefault(job, {})[str(n)] = r
            print(
                f"{n:>6} videos  {job:<17} exit {r['exit']:>3}  {r['seconds']:7.1f} s  "
                f"peak anon {r['peak_anon_mib']:>6} MiB  charged {r['peak_charged_mib']} MiB",
                flush=True,
            )
            if r["exit"] != 0:
                print("\n".join(r["tail"]), flush=True)
    _summary(results, args.sizes)
    (args.out / "bench_scale.json").write_text(json.dumps(results, indent=2))


def _summary(results: dict[str, dict[str, Any]], sizes: list[int]) -> None:
    print("\n| job | " + " | ".join(f"{n:,} videos" for n in sizes) + " | MiB per 1k videos |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for job, by_size in results.items():
        cells, points = [], []
        for n in sizes:
            r = by_size.get(str(n))
            if r is None:
                cells.append("")
                continue
            cells.append(f"{r['seconds']:.0f} s, {r['peak_anon_mib']} MiB")
            points.append((n, r["peak_anon_mib"]))
        slope = ""
        if len(points) >= 2:
            (n0, m0), (n1, m1) = points[0], points[-1]
            slope = f"{1000 * (m1 - m0) / (n1 - n0):+.1f}"
        print(f"| {job} | " + " | ".join(cells) + f" | {slope} |")


if __name__ == "__main__":
    main()
