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
    port = int(fdp.state["metrics_port"])
    # /ready needs the rules installed, which comes after the self-check answered.
    wait_until(lambda: http_get(HOST, port, "/ready")[0], lambda c: c == 200, 15,
               what="/ready 200")  # fmt: skip
    # Two more worker snapshots: the self-check's answer is in the last one if it counted.
    first = _worker_reports(_scrape(fdp))
    s = wait_until(lambda: _scrape(fdp), lambda s: _worker_reports(s) >= first + 2, 10,
                   what="two worker reports after /ready")  # fmt: skip
    assert total(s, "fastdns_dns_requests_total") == 0
    assert total(s, "fastdns_dns_responses_total", rcode="REFUSED") == 0
    assert total(s, "fastdns_dns_responses_total") == 0
    assert _served(fdp) == 0

    assert str(fdp.query(STATIC_NAME, timeout=3.0).answer[0][0]) == STATIC_IP
    s = wait_until(lambda: _scrape(fdp), lambda s: total(s, "fastdns_dns_requests_total") >= 1,
                   10, what="the client query in /metrics")  # fmt: skip
    wait_until(lambda: _served(fdp), lambda n: n >= 1, 10, what="served in the state file")
    assert total(s, "fastdns_dns_requests_total") == 1
    assert total(s, "fastdns_dns_responses_total") == 1
    assert total(s, "fastdns_dns_responses_total", rcode="NOERROR", plugin="static") == 1
    assert _served(fdp) == 1
