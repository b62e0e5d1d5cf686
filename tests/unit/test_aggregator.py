"""StatsAggregator: exact sums over workers, monotonic counters across worker restarts,
bounded labels, gauge freshness, /health and /ready decisions. No sockets, a fake clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from support.metrics import Samples, counters_not_below, parse, series, total, value

from fastdns.config.load import build_config
from fastdns.config.schema import Config, RulesConfig
from fastdns.metrics.aggregator import GAUGE_STALE, SUPERVISOR_STALE, TOMBSTONE_TTL, StatsAggregator
from fastdns.metrics.definitions import TIME_BUCKETS
from fastdns.metrics.stats import WorkerStats, rules_message, supervisor_message, worker_message

SERVER = "dns://127.0.0.1:5300"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(**rules: Any) -> Config:
    doc = {
        "fastdns": {
            "resolv_conf": "/nonexistent",
            "hosts_file": "/nonexistent",
            "fallback": [],
            "rules": rules,
        }
    }
    return build_config(doc)


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="agg")
def _agg(clock: Clock) -> StatsAggregator:
    return StatsAggregator(make_config(), clock=clock)


def stats(requests: int = 0, *, duration: float = 0.001, qtype: str = "A") -> WorkerStats:
    st = WorkerStats()
    for _ in range(requests):
        st.counters["requests", "udp", qtype] += 1
        st.counters["responses", "NOERROR", "forward"] += 1
        st.observe(("duration", qtype), duration)
    return st


def feed(agg: StatsAggregator, msg: dict[str, Any]) -> None:
    agg.feed(json.dumps(msg).encode())


def report(agg: StatsAggregator, slot: int, pid: int, st: WorkerStats, gen: int = 1) -> None:
    feed(agg, worker_message(slot, pid, gen, st, SERVER))


def scrape(agg: StatsAggregator) -> Samples:
    from fastdns.metrics.http import make_registry

    return parse(generate_latest(make_registry(agg)).decode())


def requests(samples: Samples) -> float:
    return total(samples, "fastdns_dns_requests_total")


def test_sums_workers_exactly(agg: StatsAggregator) -> None:
    report(agg, 0, 100, stats(3))
    report(agg, 1, 101, stats(4, duration=0.003))
    s = scrape(agg)
    labels = {"server": SERVER, "proto": "udp", "family": "1", "type": "A"}
    assert value(s, "fastdns_dns_requests_total", **labels) == 7
    assert (
        value(s, "fastdns_dns_responses_total", server=SERVER, rcode="NOERROR", plugin="forward")
        == 7
    )
    hist = {"server": SERVER, "type": "A"}
    assert value(s, "fastdns_dns_request_duration_seconds_count", **hist) == 7
    assert value(s, "fastdns_dns_request_duration_seconds_sum", **hist) == pytest.approx(0.015)
    # Buckets are cumulative: 0.001 s lands in le=0.001, 0.003 s in le=0.004.
    assert value(s, "fastdns_dns_request_duration_seconds_bucket", le="0.001", **hist) == 3
    assert value(s, "fastdns_dns_request_duration_seconds_bucket", le="0.002", **hist) == 3
    assert value(s, "fastdns_dns_request_duration_seconds_bucket", le="0.004", **hist) == 7
    assert value(s, "fastdns_dns_request_duration_seconds_bucket", le="+Inf", **hist) == 7


def test_a_later_snapshot_replaces_the_earlier_one_of_the_same_worker(
    agg: StatsAggregator,
) -> None:
    report(agg, 0, 100, stats(3))
    report(agg, 0, 100, stats(5))  # cumulative: 5 in total, not 8
    assert requests(scrape(agg)) == 5


def test_a_restarted_worker_folds_the_old_totals_in(agg: StatsAggregator) -> None:
    report(agg, 0, 100, stats(10))
    report(agg, 1, 101, stats(1))
    before = scrape(agg)
    report(agg, 0, 200, stats(2))  # slot 0 restarted: the new pid starts from zero
    after = scrape(agg)
    assert requests(after) == 13
    assert counters_not_below(before, after) == []
    report(agg, 0, 200, stats(6))
    s = scrape(agg)
    assert requests(s) == 17
    assert series(s, "fastdns_worker_requests_total") == {
        frozenset({("slot", "0")}): 16,
        frozenset({("slot", "1")}): 1,
    }


def test_late_reports_of_a_retired_worker_add_only_their_increase(agg: StatsAggregator) -> None:
    """A reload starts the new worker in the same slot while the old one still drains."""
    report(agg, 0, 100, stats(10))
    report(agg, 0, 200, stats(1))
    report(agg, 0, 100, stats(12))  # the draining worker answered 2 more
    assert requests(scrape(agg)) == 13
    report(agg, 0, 100, stats(12))  # repeated final flush: nothing new
    s = scrape(agg)
    assert requests(s) == 13
    assert value(s, "fastdns_worker_requests_total", slot="0") == 13


def test_pid_reuse_counts_as_a_new_process(agg: StatsAggregator) -> None:
    report(agg, 0, 100, stats(10))
    report(agg, 0, 100, stats(2))  # same (slot, pid) but fewer: a new process got the pid
    assert requests(scrape(agg)) == 12


def test_counters_never_go_backwards_over_a_restart_sequence(agg: StatsAggregator) -> None:
    previous = scrape(agg)
    pid = 100
    for step in range(1, 30):
        if step % 7 == 0:
            pid += 1  # a restart
        slot = step % 3
        report(agg, slot, pid + slot * 1000, stats(step % 5 + step // 7))
        current = scrape(agg)
        assert counters_not_below(previous, current) == [], step
        previous = current


def test_silent_workers_are_retired_and_forgotten(agg: StatsAggregator, clock: Clock) -> None:
    report(agg, 0, 100, stats(4))
    clock.now += TOMBSTONE_TTL + 1
    report(agg, 1, 101, stats(1))  # any report expires the silent ones
    assert (0, 100) not in agg.live and (0, 100) in agg.tombstones
    assert requests(scrape(agg)) == 5
    clock.now += TOMBSTONE_TTL + 1
    report(agg, 1, 101, stats(1))
    assert (0, 100) not in agg.tombstones
    assert requests(scrape(agg)) == 5


def test_gauges_sum_fresh_workers_and_upstream_up_takes_the_max(
    agg: StatsAggregator, clock: Clock
) -> None:
    a, b = stats(), stats()
    a.gauges.update(
        {
            ("inflight",): 3,
            ("upstream_up", "127.0.0.1:53"): 0,
            ("upstream_source", "resolv_conf"): 1,
        }
    )
    b.gauges.update(
        {
            ("inflight",): 4,
            ("upstream_up", "127.0.0.1:53"): 1,
            ("upstream_source", "resolv_conf"): 1,
        }
    )
    report(agg, 0, 100, a)
    report(agg, 1, 101, b)
    s = scrape(agg)
    assert value(s, "fastdns_inflight_requests", server=SERVER) == 7
    assert value(s, "fastdns_forward_upstream_up", to="127.0.0.1:53") == 1
    assert value(s, "fastdns_forward_upstream_source", source="resolv_conf") == 2
    clock.now += GAUGE_STALE + 1
    report(agg, 0, 100, a)  # worker 1 went silent: its gauges no longer count
    s = scrape(agg)
    assert value(s, "fastdns_inflight_requests", server=SERVER) == 3
    assert value(s, "fastdns_forward_upstream_up", to="127.0.0.1:53") == 0


def test_label_values_are_bounded(agg: StatsAggregator) -> None:
    st = WorkerStats()
    st.counters["requests", "udp", "CAA"] += 1  # not a CoreDNS monitor type
    st.counters["requests", "udp", "HINFO"] += 2
    st.counters["responses", "NOERROR", "server"] += 1  # the server itself: plugin ""
    st.counters["responses", "WEIRD", "elsewhere"] += 1
    st.counters["native_fallback", "something new"] += 1
    for i in range(40):  # more upstreams than the cap
        st.counters["forward_tcp_retries", f"127.0.0.{i + 1}:53"] += 1
    report(agg, 0, 100, st)
    s = scrape(agg)
    # (every known label set is exported at 0 as well: fastdns.metrics.zeros.initial_label_sets)
    types = {dict(ls)["type"]: v for ls, v in series(s, "fastdns_dns_requests_total").items() if v}
    assert types == {"other": 3}
    plugins = {
        (dict(ls)["rcode"], dict(ls)["plugin"]): v
        for ls, v in series(s, "fastdns_dns_responses_total").items()
        if v
    }
    assert plugins == {("NOERROR", ""): 1, ("other", "other"): 1}
    assert value(s, "fastdns_native_fallbacks_total", reason="other") == 1
    retries = series(s, "fastdns_forward_tcp_retries_total")
    assert len(retries) == 33 and sum(retries.values()) == 40
    assert value(s, "fastdns_forward_tcp_retries_total", to="other") == 8


def test_garbage_datagrams_are_counted_and_ignored(agg: StatsAggregator) -> None:
    for junk in (
        b"",
        b"not json",
        b"[]",
        b'{"kind": "worker"}',
        b'{"kind": "alien"}',
        json.dumps(
            {"kind": "worker", "slot": 0, "pid": 1, "snapshot": {"counters": [[["x"], "NaN"]]}}
        ).encode(),
    ):
        agg.feed(junk)
    report(agg, 0, 100, stats(1))
    s = scrape(agg)
    assert value(s, "fastdns_stats_messages_total", kind="invalid") == 6
    assert value(s, "fastdns_stats_messages_total", kind="worker") == 1
    assert requests(s) == 1


def test_histograms_with_other_buckets_are_not_exported(agg: StatsAggregator) -> None:
    st = WorkerStats()
    st.observe(("duration", "A"), 0.5, bounds=(0.1, 1.0))
    report(agg, 0, 100, st)
    assert total(scrape(agg), "fastdns_dns_request_duration_seconds_count") == 0


def test_supervisor_status_becomes_process_metrics(agg: StatsAggregator) -> None:
    feed(agg, supervisor_message(1, 2, 2, 1, [(0, "crash", 2), (1, "timeout", 1)], False, True))
    s = scrape(agg)
    assert value(s, "fastdns_workers_expected") == 2
    assert value(s, "fastdns_workers_running") == 2
    assert value(s, "fastdns_workers_ready") == 1
    assert value(s, "fastdns_worker_restarts_total", slot="0", reason="crash") == 2
    assert value(s, "fastdns_worker_restarts_total", slot="1", reason="timeout") == 1
    assert value(s, "fastdns_ready") == 0  # one worker is not ready yet


def test_health_needs_a_fresh_supervisor(agg: StatsAggregator, clock: Clock) -> None:
    assert agg.health()[0] is False
    feed(agg, supervisor_message(1, 1, 1, 1, [], False, True))
    assert agg.health() == (True, "OK")
    clock.now += SUPERVISOR_STALE + 0.5
    ok, why = agg.health()
    assert not ok and "silent" in why
    assert agg.readiness()[0] is False


def test_ready_needs_every_worker_and_no_drain(agg: StatsAggregator) -> None:
    feed(agg, supervisor_message(1, 2, 2, 1, [], False, True))
    assert agg.readiness() == (False, "1 of 2 workers ready")
    feed(agg, supervisor_message(1, 2, 2, 2, [], False, True))
    assert agg.readiness() == (True, "OK")
    feed(agg, supervisor_message(1, 2, 2, 2, [], True, False))
    assert agg.readiness() == (False, "draining")
    assert agg.health()[0] is True  # still alive while draining


def test_ready_waits_for_the_rules_when_enabled(clock: Clock) -> None:
    config = make_config(enabled=True)
    assert isinstance(config.rules, RulesConfig) and config.rules.enabled
    agg = StatsAggregator(config, clock=clock)
    feed(agg, supervisor_message(1, 1, 1, 1, [], False, True))
    assert agg.readiness() == (False, "rules: not installed yet")
    feed(agg, rules_message(True, False, "iptables: permission denied"))
    assert agg.readiness() == (False, "rules: iptables: permission denied")
    feed(agg, rules_message(True, True, "", {"ok": 3, "changed": 1}, 1700000000.0))
    assert agg.readiness() == (True, "OK")
    s = scrape(agg)
    assert value(s, "fastdns_rules_installed") == 1
    assert value(s, "fastdns_rules_reconcile_total", result="ok") == 3
    assert value(s, "fastdns_rules_reconcile_total", result="changed") == 1
    assert value(s, "fastdns_rules_last_reconcile_timestamp_seconds") == 1700000000.0
    feed(agg, rules_message(True, True, "", {"ok": 1}, 1700000010.0))  # a restarted process
    assert value(scrape(agg), "fastdns_rules_reconcile_total", result="ok") == 4


def test_build_info_names_the_versions(agg: StatsAggregator) -> None:
    ((labels, one),) = series(scrape(agg), "fastdns_build_info").items()
    info = dict(labels)
    assert one == 1 and set(info) == {"version", "python", "pycares", "cares"}
    assert info["cares"].count(".") == 2 and info["pycares"].startswith("5.")


def test_openmetrics_exposition_parses(agg: StatsAggregator) -> None:
    from fastdns.metrics.http import make_registry

    report(agg, 0, 100, stats(2))
    text = generate_openmetrics(make_registry(agg)).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["fastdns_dns_requests"].type == "counter"
    assert families["fastdns_dns_request_duration_seconds"].type == "histogram"
    assert families["fastdns_build"].type == "info"


def test_time_buckets_are_coredns(agg: StatsAggregator) -> None:
    assert TIME_BUCKETS[0] == 0.00025 and TIME_BUCKETS[-1] == 8.192 and len(TIME_BUCKETS) == 16
