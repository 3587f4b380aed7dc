"""The service's metrics in the Prometheus text exposition format (version 0.0.4).

A few counters, gauges and histograms, thread-safe, rendered by :meth:`Metrics.render`;
no client library needed for what ``GET /metrics`` serves.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
BATCH_CANDIDATE_BUCKETS = (64, 256, 512, 1024, 2048, 4096, 8192, 16384)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, *([extra] if extra else [])]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self.sum = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, x)] += 1
        self.sum += x


class Metrics:
    """Counters and histograms by label set, gauges read when rendered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._help: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._buckets: dict[str, Sequence[float]] = {}
        self._gauges: dict[str, Callable[[], dict[Labels, float]]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        self._help[name] = ("histogram", help_text)
        self._buckets[name] = buckets
        self._histograms.setdefault(name, {})

    def gauge(self, name: str, help_text: str, read: Callable[[], dict[Labels, float]]) -> None:
        """A gauge whose samples ``read()`` gives at each render (label set -> value)."""
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def inc(self, name: str, labels: Labels = (), by: float = 1.0) -> None:
        with self._lock:
            series = self._counters[name]
            series[labels] = series.get(labels, 0.0) + by

    def observe(self, name: str, value: float, labels: Labels = ()) -> None:
        with self._lock:
            series = self._histograms[name]
            h = series.get(labels)
            if h is None:
                h = series[labels] = _Histogram(self._buckets[name])
            h.observe(value)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_text) in self._help.items():
                lines.append(f"# HELP {name} {help_text}")
                lines.append(f"# TYPE {name} {kind}")
                if kind == "counter":
                    for labels, v in self._counters[name].items():
                        lines.append(f"{name}{_labels(labels)} {_number(v)}")
                elif kind == "histogram":
                    for labels, h in self._histograms[name].items():
                        running = 0
                        for bound, c in zip(h.buckets, h.counts, strict=False):
                            running += c
                            le = ("le", _number(bound))
                            lines.append(f"{name}_bucket{_labels(labels, le)} {running}")
                        total = running + h.counts[-1]
                        lines.append(f"{name}_bucket{_labels(labels, ('le', '+Inf'))} {total}")
                        lines.append(f"{name}_sum{_labels(labels)} {_number(h.sum)}")
                        lines.append(f"{name}_count{_labels(labels)} {total}")
                else:
                    for labels, v in self._gauges[name]().items():
                        lines.append(f"{name}{_labels(labels)} {_number(v)}")
        return "\n".join(lines) + "\n"
