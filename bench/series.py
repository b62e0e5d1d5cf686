"""Pure arithmetic of the soak (bench/soak.py): RSS samples, their slope, and the verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the load started
    rss_mb: tuple[float, ...]  # each worker's VmRSS, in the state file's order


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per minute; None with fewer than two
    distinct times."""
    n = len(points)
    if n < 2:
        return None
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mt) * (y - my) for t, y in points)
    return cov / var * 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    warmup_mb: float | None  # the largest worker's RSS at the end of the warm-up
    final_mb: float | None  # the largest worker's RSS at the last sample
    growth_mb: float | None  # the largest growth of one worker from warm-up to the end
    slope_mb_per_min: float | None  # of the largest worker's RSS, after warm-up
    reason: str


def verdict(samples: Sequence[Sample], warmup_s: float, max_growth_mb: float) -> Verdict:
    """Did any worker's RSS grow more than ``max_growth_mb`` after ``warmup_s``?

    Each worker is compared with itself: its RSS at the first sample at or after the warm-up
    against its largest RSS from then on (a peak that came back down still counts)."""
    after = [s for s in samples if s.t >= warmup_s]
    if len(after) < 2:
        return Verdict(False, None, None, None, None, "fewer than 2 samples after the warm-up")
    first = after[0].rss_mb
    if any(len(s.rss_mb) != len(first) for s in after):
        return Verdict(False, None, None, None, None, "the set of workers changed")
    if not first:
        return Verdict(False, None, None, None, None, "no worker RSS was read")
    growth = max(max(s.rss_mb[i] for s in after) - first[i] for i in range(len(first)))
    slope = slope_per_min([(s.t, max(s.rss_mb)) for s in after])
    ok = growth <= max_growth_mb
    reason = (
        f"growth {growth:.1f} MB <= bound {max_growth_mb:.1f} MB"
        if ok
        else f"growth {growth:.1f} MB > bound {max_growth_mb:.1f} MB"
    )
    return Verdict(ok, max(first), max(after[-1].rss_mb), growth, slope, reason)
