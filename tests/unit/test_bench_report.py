"""The bench's printed table: ratio columns and the lost-queries check (bench/report.py)."""

from __future__ import annotations

from bench.report import HEADER, lost_check, row, table
from bench.runner import Measurement


def _m(target: str, cpu: float, lost: int = 0, workload: str = "cold") -> Measurement:
    m = Measurement(workload, target)
    m.qps, m.answered, m.sent, m.lost = 10_000.0, 1000, 1000 + lost, lost
    m.server_cpu_us_per_q, m.server_sys_us_per_q = cpu, cpu / 4
    m.rss_worker_mb = 42.0
    return m


def test_ratio_columns_divide_cpu_per_query_by_each_peer_in_the_same_workload() -> None:
    fd = _m("fastdns-1w", 30.0)
    rows = [fd, _m("dnsmasq", 20.0), _m("unbound", 60.0), _m("dnsdist", 10.0)]
    rows.append(_m("dnsmasq", 999.0, workload="hot"))  # another workload: not a peer of fd
    line = table(rows).splitlines()[2]
    assert line.split()[:2] == ["cold", "fastdns-1w"]
    cpu, sys_, r_dnsmasq, r_unbound, r_dnsdist = line.split()[5:10]
    assert (cpu, sys_) == ("30.0", "7.5")
    assert (r_dnsmasq, r_unbound, r_dnsdist) == ("1.50", "0.50", "3.00")
    assert "42.0" in line  # RSS MB


def test_ratio_columns_are_dashes_without_peers() -> None:
    line = row(_m("fastdns-1w", 30.0))
    assert line.split()[7:10] == ["-", "-", "-"]
    assert len(HEADER.split()) == 22  # "p50 ms", "CPU us/q" etc. are two words each


def test_lost_check_passes_only_when_no_fastdns_row_lost_a_query() -> None:
    ok, text = lost_check([_m("fastdns-1w", 30.0), _m("dnsmasq", 20.0, lost=5)])
    assert ok and "0 in all 1 fastdns rows" in text
    ok, text = lost_check([_m("fastdns-1w-compiled", 30.0, lost=3), _m("fastdns-2w", 20.0)])
    assert not ok
    assert "cold/fastdns-1w-compiled 3 of 1,003" in text
