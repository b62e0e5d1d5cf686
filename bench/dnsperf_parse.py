"""dnsperf 2.10's output, parsed in bounded memory (pure: no processes, no files opened here).

``-v`` prints one line per query, ``> RCODE qname qtype latency_seconds`` (``> T qname qtype``
for one that timed out), then a "Statistics:" block. dnsperf 2.10 has no ``-O
latency-histogram`` (``dnsperf -H`` lists only num-queries-per-conn, suppress and doh-*), so
the latencies come from those lines, folded into a histogram of fixed size as they are read:
a run of millions of queries costs the same memory as one of a thousand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# Histogram: logarithmic buckets, each RESOLUTION wider than the one below, from MIN_S to
# MAX_S (dnsperf's -t bounds a latency well below that); outside, clamped to the end buckets.
RESOLUTION = 0.005  # a percentile read from the histogram is within 0.5 % of the exact one
MIN_S = 1e-6
MAX_S = 100.0
_LOG_STEP = math.log1p(RESOLUTION)
BUCKETS = math.ceil(math.log(MAX_S / MIN_S) / _LOG_STEP) + 1
MAX_LINE = 1024  # a longer line is not dnsperf's: skipped, never split or stored


class LatencyHistogram:
    """Latencies in at most BUCKETS counters; nearest-rank percentiles within RESOLUTION."""

    __slots__ = ("count", "counts", "max_s")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.max_s = 0.0

    @staticmethod
    def bucket(seconds: float) -> int:
        if seconds <= MIN_S:
            return 0
        return min(BUCKETS - 1, math.ceil(math.log(seconds / MIN_S) / _LOG_STEP))

    @staticmethod
    def upper(bucket: int) -> float:
        """The upper bound of a bucket, in seconds: what a percentile in it reads as."""
        return MIN_S * math.exp(bucket * _LOG_STEP)

    def add(self, seconds: float) -> None:
        if not math.isfinite(seconds) or seconds < 0:
            return
        b = self.bucket(seconds)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.count += 1
        self.max_s = max(self.max_s, seconds)

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile ``q`` (0-100] in ms; None when empty. Never above the
        largest latency seen (the top bucket's bound may be)."""
        if not self.count:
            return None
        rank = max(1, min(self.count, math.ceil(q / 100.0 * self.count)))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(self.upper(b), self.max_s) * 1000.0
        return self.max_s * 1000.0  # not reached: the counts add up to count


_STAT = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "run_time": re.compile(r"Run time \(s\):\s+([\d.]+)"),
    "avg_latency_s": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}
_RCODES = re.compile(r"Response codes:\s+(.*)")
_RCODE_ITEM = re.compile(r"([A-Z]+) (\d+)")


@dataclass(slots=True)
class Output:
    """What one dnsperf run printed."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    run_time: float = 0.0
    avg_latency_s: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    timed_out_lines: int = 0  # "> T ..." lines
    bad_lines: int = 0  # "> ..." lines that could not be read


def parse(lines: Iterable[str]) -> Output:
    """Read dnsperf's stdout line by line; the statistics block may come in any order."""
    out = Output()
    for line in lines:
        if len(line) > MAX_LINE:
            out.bad_lines += 1
            continue
        if line.startswith("> "):
            parts = line.split()
            if len(parts) >= 2 and parts[1] == "T":
                out.timed_out_lines += 1
                continue
            try:
                seconds = float(parts[-1]) if len(parts) >= 5 else math.nan
            except ValueError:
                seconds = math.nan
            if math.isfinite(seconds) and seconds >= 0:
                out.latency.add(seconds)
            else:
                out.bad_lines += 1
            continue
        for key, rx in _STAT.items():
            m = rx.search(line)
            if m:
                setattr(out, key, type(getattr(out, key))(float(m.group(1))))
        m = _RCODES.search(line)
        if m:
            out.rcodes.update({c: int(n) for c, n in _RCODE_ITEM.findall(m.group(1))})
    return out
