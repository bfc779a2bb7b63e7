"""Request counts and latencies, exposed in Prometheus' text format."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Any

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and a latency histogram per route template."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.latency_sum: dict[str, float] = defaultdict(float)

    def observe(self, scope: dict[str, Any] | Any, status: int, seconds: float) -> None:
        """Count one finished request."""
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        with self.lock:
            self.requests[(scope.get("method", ""), template, status)] += 1
            self.latency[template][bisect.bisect_left(BUCKETS, seconds)] += 1
            self.latency_sum[template] += seconds

    def render(self, gauges: dict[str, dict[str, float]]) -> str:
        """Prometheus exposition text; ``gauges`` maps metric name -> {label value: value}."""
        lines = ["# TYPE lookalike_requests_total counter"]
        with self.lock:
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f'lookalike_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {count}'
                )
            lines.append("# TYPE lookalike_request_seconds histogram")
            for route, counts in sorted(self.latency.items()):
                total = 0
                for bound, count in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(
                        f'lookalike_request_seconds_bucket{{route="{route}",le="{le}"}} {total}'
                    )
                lines.append(
                    f'lookalike_request_seconds_sum{{route="{route}"}} '
                    f"{self.latency_sum[route]:.6f}"
                )
                lines.append(f'lookalike_request_seconds_count{{route="{route}"}} {total}')
        for name, values in gauges.items():
            lines.append(f"# TYPE {name} gauge")
            lines.extend(
                f'{name}{{collection="{label}"}} {value}' for label, value in values.items()
            )
        return "\n".join(lines) + "\n"
