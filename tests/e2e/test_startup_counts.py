"""What the real ``fastdns serve`` counts before any client asked anything: nothing served
(the rules process's start-up self-check is not client traffic), and every bounded series
already exported at 0 (a rate panel shows 0, not "no data")."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from support.metrics import Samples, http_get, scrape, total, value, wait_until
from support.server import FastDNSProcess

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
STATIC_NAME, STATIC_IP = "svc.test", "10.0.0.1"


def config(**fastdns: Any) -> dict[str, Any]:
    return {
        "hostResolver": {"hosts": {STATIC_NAME: STATIC_IP}},
        "fastdns": {"workers": 1, "metrics": {"listen": f"{HOST}:0"}, **fastdns},
    }


def _scrape(fdp: FastDNSProcess) -> Samples:
    return scrape(HOST, int(fdp.state["metrics_port"]))


def _worker_reports(s: Samples) -> float:
    return value(s, "fastdns_stats_messages_total", kind="worker")


def _served(fdp: FastDNSProcess) -> int:
    state = fdp.read_state() or {}
    return sum(state.get("served") or [])


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="needs iptables")
def test_the_startup_self_check_is_not_counted_as_a_client_query(fastdns_factory: Any) -> None:
    """The rules process asks fastdns one question before it installs the rules (is it
    serving?); that question shows up neither as a served query nor as a REFUSED reply."""
    rules = {"enabled": True, "virtual_ip": "10.53.0.3", "hooks": ["OUTPUT"]}
    fdp = fastdns_factory(config(rules=rules))
    try:
        _check_self_check_uncounted(fdp)
    finally:
        assert fdp.stop() == 0  # SIGTERM: the rules process removes its rules (shared netns)


def _check_self_check_uncounted(fdp: FastDNSProcess) -> None:
    port = int(fdp.state["metrics_port"])
    # /ready needs the rules installed, which comes after the self-check answered.
    wait_until(lambda: http_get(HOST, port, "/ready")[0], lambda c: c == 200, 15, what="/ready 200")
    # Two more worker snapshots: the self-check's answer is in the last one if it counted.
    first = _worker_reports(_scrape(fdp))
    s = wait_until(
        lambda: _scrape(fdp),
        lambda s: _worker_reports(s) >= first + 2,
        10,
        what="two worker reports after /ready",
    )
    assert total(s, "fastdns_dns_requests_total") == 0
    assert total(s, "fastdns_dns_responses_total", rcode="REFUSED") == 0
    assert total(s, "fastdns_dns_responses_total") == 0
    assert _served(fdp) == 0

    assert str(fdp.query(STATIC_NAME, timeout=3.0).answer[0][0]) == STATIC_IP
    s = wait_until(
        lambda: _scrape(fdp),
        lambda s: total(s, "fastdns_dns_requests_total") >= 1,
        10,
        what="the client query in /metrics",
    )
    wait_until(lambda: _served(fdp), lambda n: n >= 1, 10, what="served in the state file")
    assert total(s, "fastdns_dns_requests_total") == 1
    assert total(s, "fastdns_dns_responses_total") == 1
    assert total(s, "fastdns_dns_responses_total", rcode="NOERROR", plugin="static") == 1
    assert _served(fdp) == 1


# ------------------------------------------------------------------------------ zero series

FALLBACK_REASONS = (
    "unsupported_type",
    "dnssec",
    "disabled",
    "overload",
    "error",
    "timeout",
    "nodata",
    "nxdomain",
    "servfail",
    "refused",
)


def _first_report(fdp: FastDNSProcess) -> Samples:
    """A scrape once the worker has reported (its upstreams are known from then on)."""
    return wait_until(
        lambda: _scrape(fdp), lambda s: _worker_reports(s) >= 1, 10, what="a worker report"
    )


def _has(s: Samples, name: str, **labels: str) -> bool:
    return (name, frozenset(labels.items())) in s


def test_fallback_and_failover_series_are_exported_at_zero_from_the_start(
    fastdns_factory: Any, upstream: Any
) -> None:
    fdp = fastdns_factory(config(), upstreams=[upstream])
    s = _first_report(fdp)
    server = f"dns://{HOST}:{fdp.udp_port}"
    to = f"{upstream.address}:53"
    for reason in FALLBACK_REASONS:
        assert _has(s, "fastdns_native_fallbacks_total", reason=reason), reason
        assert value(s, "fastdns_native_fallbacks_total", reason=reason) == 0
    for outcome in ("answered", "negative", "search", "failed"):
        assert _has(s, "fastdns_native_forward_first_total", outcome=outcome), outcome
    for outcome in ("answered", "timeout", "error", "failover", "truncated"):
        assert _has(s, "fastdns_forward_fast_lane_total", outcome=outcome), outcome
    assert _has(s, "fastdns_forward_upstreams_exhausted_total")
    assert _has(s, "fastdns_dns_responses_total", server=server, rcode="NOERROR", plugin="fallback")
    for rcode in ("SERVFAIL", "REFUSED"):
        assert _has(s, "fastdns_forward_failover_total", to=to, rcode=rcode), rcode
    assert _has(s, "fastdns_forward_tcp_retries_total", to=to)
    assert _has(
        s,
        "fastdns_proxy_request_duration_seconds_count",
        proxy_name="forward",
        to=to,
        rcode="timeout",
    )
    assert _has(s, "fastdns_cache_hits_total", server=server, type="success")
    assert total(s, "fastdns_dns_requests_total") == 0


def _bounded_label_sets(metric: Any, context: dict[str, str], to: str) -> list[dict[str, str]]:
    """Every label set of ``metric`` when all its labels come from fixed sets (the
    definition's ``values``, constants of its sources, the per-instance server/family, the
    configured upstream); [] otherwise or above the documented cap."""
    from fastdns.metrics.sources import SOURCES
    from fastdns.metrics.zeros import INITIAL_SERIES_CAP

    consts: dict[str, set[str]] = {}
    for sources in SOURCES.values():
        for src in sources:
            if src.metric == metric.name:
                for label, v in src.const:
                    consts.setdefault(label, set()).add(v)
    choices: list[list[str]] = []
    combos = 1
    for label in metric.labels:
        if label in context:
            choices.append([context[label]])
        elif label == "to":
            choices.append([to])
        elif label in metric.values:
            choices.append(sorted(metric.values[label]))
            combos *= len(metric.values[label])
        elif label in consts:
            choices.append(sorted(consts[label]))
        else:
            return []
    if combos > INITIAL_SERIES_CAP:
        return []
    import itertools

    return [dict(zip(metric.labels, c, strict=True)) for c in itertools.product(*choices)]


def test_every_bounded_counter_and_histogram_series_exists_at_start(
    fastdns_factory: Any, upstream: Any
) -> None:
    from fastdns.metrics.definitions import METRICS

    fdp = fastdns_factory(config(), upstreams=[upstream])
    s = _first_report(fdp)
    context = {"server": f"dns://{HOST}:{fdp.udp_port}", "family": "1"}
    missing, checked = [], 0
    for metric in METRICS:
        if metric.kind not in ("counter", "histogram") or metric.name.startswith("fastdns_rules"):
            continue  # rules series exist only with fastdns.rules.enabled
        if metric.name.startswith("fastdns_forward_tls_"):
            continue  # only for upstreams asked over TLS (tests/e2e/test_dot_e2e.py)
        name = metric.name + ("_count" if metric.kind == "histogram" else "")
        for labels in _bounded_label_sets(metric, context, f"{upstream.address}:53"):
            checked += 1
            if not _has(s, name, **labels):
                missing.append(f"{name}{labels}")
    assert checked > 100
    assert missing == []
