"""The bench's pure parsers: dnsperf 2.10 output (bench/dnsperf_parse.py) and /proc status."""

from __future__ import annotations

import math
import random

import pytest

from bench import dnsperf_parse
from bench.dnsperf_parse import RESOLUTION, LatencyHistogram
from bench.procstat import parse_vmrss_kb

# Shaped like dnsperf 2.10's stdout with -v (per-query lines, then the statistics block).
SAMPLE = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 40000 -d hot.queries -c 8 -q 100 -v
[Status] Sending queries (to 127.0.0.1:40000)
> NOERROR n1.bench.example A 0.000250
> NOERROR n2.bench.example A 0.001000
> NXDOMAIN nx3.bench.example A 0.002000
> T n4.bench.example A
> SERVFAIL n5.bench.example A 0.004000
[Status] Testing complete (end of file)

Statistics:

  Queries sent:         5
  Queries completed:    4 (80.00%)
  Queries lost:         1 (20.00%)

  Response codes:       NOERROR 2 (50.00%), NXDOMAIN 1 (25.00%), SERVFAIL 1 (25.00%)
  Average packet size:  request 34, response 50
  Run time (s):         2.001234
  Queries per second:   1.998767

  Average Latency (s):  0.001812 (min 0.000250, max 0.004000)
  Latency StdDev (s):   0.001450
"""


def test_parse_statistics_block_and_rcodes() -> None:
    out = dnsperf_parse.parse(SAMPLE.splitlines(keepends=True))
    assert (out.sent, out.completed, out.lost) == (5, 4, 1)
    assert out.qps == pytest.approx(1.998767)
    assert out.run_time == pytest.approx(2.001234)
    assert out.avg_latency_s == pytest.approx(0.001812)
    assert out.rcodes == {"NOERROR": 2, "NXDOMAIN": 1, "SERVFAIL": 1}
    assert out.timed_out_lines == 1
    assert out.bad_lines == 0


def test_parse_latencies_from_verbose_lines() -> None:
    out = dnsperf_parse.parse(SAMPLE.splitlines())
    h = out.latency
    assert h.count == 4  # the timed-out query has no latency
    assert h.max_s == pytest.approx(0.004)
    assert h.percentile_ms(50) == pytest.approx(1.0, rel=RESOLUTION)
    assert h.percentile_ms(100) == pytest.approx(4.0)  # never above the largest seen
    assert h.percentile_ms(1) == pytest.approx(0.25, rel=RESOLUTION)


def test_parse_skips_garbage_and_overlong_lines() -> None:
    lines = [
        "> NOERROR n1.bench.example A notanumber\n",
        "> NOERROR short\n",
        "> NOERROR n1.bench.example A -1\n",
        "> NOERROR n1.bench.example A inf\n",
        "> NOERROR n1.bench.example A " + "9" * 5000 + "\n",
        "  Queries sent: " + "1" * 2000 + "\n",
        "> NOERROR n1.bench.example A 0.5\n",
    ]
    out = dnsperf_parse.parse(lines)
    assert out.latency.count == 1
    assert out.bad_lines == 6
    assert out.sent == 0


def test_parse_empty_output() -> None:
    out = dnsperf_parse.parse([])
    assert out.latency.percentile_ms(99) is None
    assert (out.sent, out.completed, out.rcodes) == (0, 0, {})


def _nearest_rank(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))]


@pytest.mark.parametrize("q", [1, 50, 90, 99, 99.9, 100])
def test_histogram_percentile_within_resolution_of_exact(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.0005), 1.2) for _ in range(20_000)]
    values += [1.5, 1.9]  # a slow tail, as queries near dnsperf's -t
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    exact = _nearest_rank(values, q) * 1000.0
    got = h.percentile_ms(q)
    assert got is not None
    assert exact <= got <= exact * (1 + RESOLUTION) + 1e-12


def test_histogram_is_bounded_and_clamps_extremes() -> None:
    h = LatencyHistogram()
    for v in (0.0, 1e-9, 1e-7, 500.0, 1e9):
        h.add(v)
    h.add(float("nan"))
    h.add(-1.0)
    assert h.count == 5
    assert set(h.counts) <= {0, dnsperf_parse.BUCKETS - 1}
    for i in range(100_000):
        h.add(1e-6 * (1.0001**i))
    assert len(h.counts) <= dnsperf_parse.BUCKETS


def test_vmrss_from_proc_status() -> None:
    status = "Name:\tpython\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n"
    assert parse_vmrss_kb(status) == 12345
    assert parse_vmrss_kb("Name:\tkthreadd\nThreads:\t1\n") is None  # kernel thread
    assert parse_vmrss_kb("VmRSS:\tlots kB\n") is None
