"""Per-worker counters and histograms in plain Python, cheap enough for the hot path.

prometheus-client costs 1.5-2.7 us per call in multiprocess mode (research/tech-notes.md §5);
a ``Counter`` key increment costs about 0.1 us. Workers keep cumulative totals here and ship
``snapshot()`` to whoever exports them; nothing here talks to prometheus-client.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

# CoreDNS plugin.TimeBuckets: 0.25 ms doubling to 8.192 s.
TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**i for i in range(16))
# CoreDNS vars.go size buckets.
SIZE_BUCKETS: tuple[float, ...] = (
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)  # fmt: skip

Key = tuple[str, ...]


class Histogram:
    """Cumulative-later bucket counts; ``counts[i]`` is the number of values <= bounds[i]
    that were not <= bounds[i-1]; the last slot is +Inf."""

    __slots__ = ("bounds", "counts", "n", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1


class WorkerStats:
    """Counters keyed by (metric, *label values) and histograms keyed the same way."""

    __slots__ = ("counters", "gauges", "histograms")

    def __init__(self) -> None:
        self.counters: Counter[Key] = Counter()
        self.gauges: dict[Key, float] = {}
        self.histograms: dict[Key, Histogram] = {}

    def inc(self, *key: str, n: int = 1) -> None:
        self.counters[key] += n

    def observe(self, key: Key, value: float, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = Histogram(bounds)
        h.observe(value)

    def snapshot(self) -> dict[str, object]:
        """A JSON-able cumulative copy of everything."""
        return {
            "counters": [[list(k), v] for k, v in self.counters.items()],
            "gauges": [[list(k), v] for k, v in self.gauges.items()],
            "histograms": [
                [list(k), list(h.bounds), list(h.counts), h.total, h.n]
                for k, h in self.histograms.items()
            ],
        }
