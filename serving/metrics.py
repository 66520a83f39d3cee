"""A minimal Prometheus registry: request counts and latency histograms per route."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(
            lambda: [0] * len(BUCKETS)
        )
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.counters: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            key = (method, route)
            b = self.latency_buckets[key]
            for i, edge in enumerate(BUCKETS):
                if seconds <= edge:
                    b[i] += 1
            self.latency_sum[key] += seconds
            self.latency_count[key] += 1

    def inc(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def render(self, gauges: Callable[[], dict[str, float]]) -> str:
        lines = [
            "# HELP recsys_http_requests_total HTTP requests by method, route and status.",
            "# TYPE recsys_http_requests_total counter",
        ]
        with self._lock:
            for (m, r, s), n in sorted(self.requests.items()):
                lines.append(
                    f'recsys_http_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}'
                )
            lines += [
                "# HELP recsys_http_request_duration_seconds Request latency by method and route.",
                "# TYPE recsys_http_request_duration_seconds histogram",
            ]
            for (m, r), b in sorted(self.latency_buckets.items()):
                for edge, n in zip(BUCKETS, b, strict=True):
                    lines.append(
                        f'recsys_http_request_duration_seconds_bucket{{method="{m}",route="{r}",le="{edge}"}} {n}'
                    )
                count = self.latency_count[(m, r)]
                lines.append(
                    f'recsys_http_request_duration_seconds_bucket{{method="{m}",route="{r}",le="+Inf"}} {count}'
                )
                lines.append(
                    f'recsys_http_request_duration_seconds_sum{{method="{m}",route="{r}"}} {self.latency_sum[(m, r)]:.6f}'
                )
                lines.append(
                    f'recsys_http_request_duration_seconds_count{{method="{m}",route="{r}"}} {count}'
                )
            for name, n in sorted(self.counters.items()):
                lines += [f"# TYPE recsys_{name}_total counter", f"recsys_{name}_total {n}"]
        for name, value in sorted(gauges().items()):
            lines += [f"# TYPE recsys_{name} gauge", f"recsys_{name} {value}"]
        return "\n".join(lines) + "\n"
