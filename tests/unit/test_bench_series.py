"""The soak's verdict on worker RSS samples (bench/series.py): pure arithmetic."""

from __future__ import annotations

import pytest

from bench.series import Sample, slope_per_min, verdict


def test_slope_of_a_line_in_mb_per_minute() -> None:
    assert slope_per_min([(0.0, 50.0), (30.0, 51.0), (60.0, 52.0)]) == pytest.approx(2.0)
    assert slope_per_min([(0.0, 50.0), (60.0, 50.0)]) == pytest.approx(0.0)


def test_slope_needs_two_distinct_times() -> None:
    assert slope_per_min([]) is None
    assert slope_per_min([(5.0, 1.0)]) is None
    assert slope_per_min([(5.0, 1.0), (5.0, 2.0)]) is None


def _series(values: list[tuple[float, float]]) -> list[Sample]:
    return [Sample(float(t), (a, b)) for t, (a, b) in zip(range(0, 1000, 10), values, strict=False)]


def test_flat_after_warmup_passes_even_if_warmup_grew() -> None:
    s = _series([(30, 30), (45, 44), (60, 59), (60.5, 59), (60.2, 59.5), (60.9, 59.1)])
    v = verdict(s, warmup_s=20, max_growth_mb=5)
    assert v.ok, v.reason
    assert v.warmup_mb == 60
    assert v.growth_mb == pytest.approx(0.9)


def test_growth_of_one_worker_past_the_bound_fails() -> None:
    s = _series([(50, 50), (50, 50), (50, 50), (50, 58), (50, 66), (50, 74)])
    v = verdict(s, warmup_s=20, max_growth_mb=10)
    assert not v.ok
    assert v.growth_mb == pytest.approx(24)
    assert v.slope_mb_per_min is not None and v.slope_mb_per_min > 0
    assert "> bound" in v.reason


def test_a_peak_that_came_back_down_still_counts() -> None:
    s = _series([(50, 50), (50, 50), (50, 50), (90, 50), (50, 50)])
    assert not verdict(s, warmup_s=20, max_growth_mb=10).ok


def test_too_few_samples_or_changed_workers_fail() -> None:
    assert not verdict(_series([(50, 50), (50, 50)]), warmup_s=15, max_growth_mb=10).ok
    changed = [Sample(20, (50.0, 50.0)), Sample(30, (50.0,))]
    assert "changed" in verdict(changed, warmup_s=0, max_growth_mb=10).reason
    assert not verdict([Sample(20, ()), Sample(30, ())], warmup_s=0, max_growth_mb=10).ok
