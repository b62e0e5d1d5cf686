"""Metrics of the real ``fastdns serve``: exact counts for a known mix of queries across two
workers, monotonic counters across a killed worker, /ready during a drain, and a real
Prometheus server scraping it (all on loopback inside the test namespace)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import pytest
from support.clients import raw_udp
from support.load import QueryLoad
from support.metrics import (
    Samples,
    counters_not_below,
    http_get,
    scrape,
    series,
    total,
    value,
    wait_until,
)
from support.server import FastDNSProcess
from support.upstream import FakeUpstream, next_address

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
STATIC_NAME, STATIC_IP = "svc.test", "10.0.0.1"


def config(**fastdns: Any) -> dict[str, Any]:
    return {
        "hostResolver": {"hosts": {STATIC_NAME: STATIC_IP}},
        "fastdns": {
            "workers": 2,
            "graceful_timeout": 5.0,
            "upstream_timeout": 0.5,
            "deadline": 2.0,
            "metrics": {"listen": f"{HOST}:0"},
            # Exact counts: every forwarded query must reach the fake upstream once.
            "native": {"enabled": False},
            "cache": {"enabled": False},
            **fastdns,
        },
    }


@pytest.fixture(name="up")
def _up(upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = upstream_factory()
    up.add_zone("test")
    for i in range(4):
        up.add(f"fwd{i}.test", "A", f"192.0.2.{i + 1}")
    up.big("big.test", 60)  # more than 512 bytes: truncated over UDP
    up.behave("big.test", truncate=True)
    for name in ("fail0.test", "fail1.test"):
        up.add(name, "A", "192.0.2.99")
        up.behave(name, rcode="SERVFAIL")
    up.add("slow.test", "A", "192.0.2.50")
    up.behave("slow.test", delay=2.0)
    return up


def metrics_port(fdp: FastDNSProcess) -> int:
    return int(fdp.state["metrics_port"])


def scrape_when(fdp: FastDNSProcess, requests: float, timeout: float = 15.0) -> Samples:
    """Scrape once the workers' reports (1 s apart) add up to ``requests`` queries."""
    return wait_until(
        lambda: scrape(HOST, metrics_port(fdp)),
        lambda s: total(s, "fastdns_dns_requests_total") >= requests,
        timeout,
        interval=0.1,
        what=f"{requests} requests in /metrics",
    )


def ask(fdp: FastDNSProcess, name: str, rdtype: str = "A", **kwargs: Any) -> Any:
    return fdp.query(name, rdtype, timeout=3.0, **kwargs)


def send_mix(fdp: FastDNSProcess) -> int:
    """The known mix; returns how many queries got an answer."""
    for _ in range(5):
        assert str(ask(fdp, STATIC_NAME).answer[0][0]) == STATIC_IP
    for _ in range(2):
        assert str(ask(fdp, STATIC_NAME, tcp=True).answer[0][0]) == STATIC_IP
    for i in range(4):
        assert str(ask(fdp, f"fwd{i}.test").answer[0][0]) == f"192.0.2.{i + 1}"
    for name in ("fail0.test", "fail1.test"):
        assert ask(fdp, name).rcode() == 2  # SERVFAIL: the only upstream failed
    assert ask(fdp, "big.test", edns=4096).rcode() == 0  # TC from the upstream: TCP retry
    ask(fdp, "nothing.test", "TXT")  # NXDOMAIN, forwarded
    assert raw_udp(fdp.address, fdp.udp_port, b"\x12", timeout=0.2) is None  # dropped
    return 5 + 2 + 4 + 2 + 1 + 1


def test_exact_counts_monotonic_restart_and_ready_during_drain(
    fastdns_factory: Any, up: FakeUpstream
) -> None:
    fdp = fastdns_factory(config(), upstreams=[up])
    port = metrics_port(fdp)
    server = f"dns://{HOST}:{fdp.udp_port}"
    to = f"{up.address}:53"
    assert (
        wait_until(lambda: http_get(HOST, port, "/ready")[0], lambda c: c == 200, what="/ready 200")
        == 200
    )
    n = send_mix(fdp)
    s = scrape_when(fdp, n)
    base = {"server": server, "family": "1"}

    assert value(s, "fastdns_dns_requests_total", proto="udp", type="A", **base) == 12
    assert value(s, "fastdns_dns_requests_total", proto="tcp", type="A", **base) == 2
    assert value(s, "fastdns_dns_requests_total", proto="udp", type="TXT", **base) == 1
    assert total(s, "fastdns_dns_requests_total") == n
    assert total(s, "fastdns_worker_requests_total") == n
    responses = {
        (dict(ls)["rcode"], dict(ls)["plugin"]): v
        for ls, v in series(s, "fastdns_dns_responses_total").items()
        if v
    }
    assert responses == {
        ("NOERROR", "static"): 7,
        ("NOERROR", "forward"): 5,
        ("NXDOMAIN", "forward"): 1,
        ("SERVFAIL", ""): 2,
    }
    assert value(s, "fastdns_forward_upstreams_exhausted_total") == 2
    assert value(s, "fastdns_forward_failover_total", to=to, rcode="SERVFAIL") == 2
    assert value(s, "fastdns_forward_tcp_retries_total", to=to) == 1
    attempts = {
        dict(ls)["rcode"]: v
        for ls, v in series(s, "fastdns_proxy_request_duration_seconds_count").items()
        if v
    }
    assert attempts == {"NOERROR": 5, "NXDOMAIN": 1, "SERVFAIL": 2}
    assert (
        value(s, "fastdns_dns_dropped_total", server=server, proto="udp", reason="malformed") == 1
    )
    assert value(s, "fastdns_dns_request_duration_seconds_count", server=server, type="A") == 14
    assert value(s, "fastdns_dns_request_size_bytes_count", server=server, proto="tcp") == 2
    assert value(s, "fastdns_dns_response_size_bytes_count", server=server, proto="udp") == 13
    assert value(s, "fastdns_forward_upstream_up", to=to) == 1
    assert value(s, "fastdns_forward_upstream_source", source="resolv_conf") == 2
    assert value(s, "fastdns_workers_expected") == 2
    assert value(s, "fastdns_workers_ready") == 2
    assert value(s, "fastdns_ready") == 1
    assert up.count("fwd0.test", "A") == 1 and up.count("big.test", "A") == 2  # UDP then TCP

    # Kill a worker: the supervisor replaces it; its counts stay, nothing goes backwards.
    victim = fdp.state["workers"][0]
    os.kill(victim, signal.SIGKILL)
    after = wait_until(
        lambda: scrape(HOST, port),
        lambda x: (
            total(x, "fastdns_worker_restarts_total") == 1
            and value(x, "fastdns_workers_ready") == 2
        ),
        15,
        interval=0.1,
        what="a replaced worker",
    )
    assert total(after, "fastdns_worker_restarts_total", reason="signal") == 1
    assert counters_not_below(s, after) == []
    assert total(after, "fastdns_dns_requests_total") == n
    for _ in range(3):
        ask(fdp, STATIC_NAME)
    later = scrape_when(fdp, n + 3)
    assert total(later, "fastdns_dns_requests_total") == n + 3
    assert counters_not_below(after, later) == []

    # Drain: a slow query keeps the workers busy; /ready says 503 while /health stays 200.
    slow = threading.Thread(target=lambda: _quietly(ask, fdp, "slow.test"), daemon=True)
    slow.start()
    assert up.wait_for(1, "slow.test", "A", timeout=5)
    fdp.send_signal(signal.SIGTERM)
    _, _, body = wait_until(
        lambda: http_get(HOST, port, "/ready"),
        lambda r: r[0] == 503,
        5,
        interval=0.02,
        what="/ready 503",
    )
    assert body == b"draining\n"
    assert http_get(HOST, port, "/health")[0] == 200
    slow.join(5)
    assert fdp.wait_exit(15) == 0


def test_native_answers_and_fallbacks_are_counted(fastdns_factory: Any, up: FakeUpstream) -> None:
    """The native (c-ares) path: what it answers is plugin="native"; what it hands to raw
    forwarding is counted by reason and then answered by plugin="forward"."""
    fdp = fastdns_factory(config(native={"enabled": True, "forward_first": False}), upstreams=[up])
    for i in range(3):
        assert str(ask(fdp, f"fwd{i}.test").answer[0][0]) == f"192.0.2.{i + 1}"
    assert ask(fdp, "test", "SOA").rcode() == 0  # not a native type: raw
    assert ask(fdp, "fwd3.test", do=True).rcode() == 0  # DO: c-ares cannot carry it
    s = scrape_when(fdp, 5)
    plugins = {
        dict(ls)["plugin"]: v for ls, v in series(s, "fastdns_dns_responses_total").items() if v
    }
    assert plugins == {"native": 3, "forward": 2}
    assert value(s, "fastdns_native_fallbacks_total", reason="unsupported_type") == 1
    assert value(s, "fastdns_native_fallbacks_total", reason="dnssec") == 1
    assert value(s, "fastdns_native_request_duration_seconds_count", type="A", rcode="NOERROR") == 3
    assert value(s, "fastdns_dns_do_requests_total", server=f"dns://{HOST}:{fdp.udp_port}") == 1


def test_forward_first_answers_are_counted_by_outcome(
    fastdns_factory: Any, up: FakeUpstream
) -> None:
    """The defaults (native.forward_first): an A/AAAA question whose name has a dot is
    forwarded raw first; its reply settles it (plugin="forward"), c-ares is never asked, and
    the outcome is counted."""
    fdp = fastdns_factory(config(native={"enabled": True}), upstreams=[up])
    for i in range(3):
        assert str(ask(fdp, f"fwd{i}.test").answer[0][0]) == f"192.0.2.{i + 1}"
    assert ask(fdp, "nothere.test").rcode() == dns.rcode.NXDOMAIN
    s = scrape_when(fdp, 4)
    assert total(s, "fastdns_dns_responses_total", plugin="forward") == 4
    assert total(s, "fastdns_dns_responses_total", plugin="native") == 0
    assert value(s, "fastdns_native_forward_first_total", outcome="answered") == 3
    assert value(s, "fastdns_native_forward_first_total", outcome="negative") == 1
    assert not series(s, "fastdns_native_request_duration_seconds_count")


def _quietly(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (dns.exception.DNSException, OSError):
        pass


# ---------------------------------------------------------------------------------------------
# A real Prometheus server


# Prometheus gets a loopback address of its own (next_address) on its usual port: nothing else
# binds there, so no port has to be guessed free and then raced for.
PROMETHEUS_PORT = 9090
PROMETHEUS_READY_TIMEOUT = 30.0


class Prometheus:
    """``prometheus`` on a fresh 127.x.y.z with a generated config and storage in ``workdir``;
    the constructor returns once it reports ready (``/-/ready``)."""

    def __init__(self, workdir: Path, target: str) -> None:
        workdir.mkdir()
        self.host, self.port = next_address(), PROMETHEUS_PORT
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "fastdns",
                    "static_configs": [{"targets": [target]}],
                    "scrape_interval": "500ms",
                    "scrape_timeout": "400ms",
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={self.host}:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=workdir,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = PROMETHEUS_READY_TIMEOUT) -> None:
        """Until ``/-/ready`` says 200. Before that the query API answers 503 with a plain-text
        body (the TSDB is still opening), which is not a result to decode."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
            try:
                if http_get(self.host, self.port, "/-/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass  # not listening yet
            assert time.monotonic() < deadline, (
                f"prometheus not ready within {timeout:g}s:\n"
                + self.log.read_text(errors="replace")[-2000:]
            )
            time.sleep(0.1)

    def query(self, expr: str) -> list[dict[str, Any]]:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, _, body = http_get(self.host, self.port, path, timeout=5)
        assert status == 200, (expr, status, body[:300])
        doc = json.loads(body)
        assert doc.get("status") == "success", (expr, status, body[:300])
        return list(doc["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        try:
            result = self.query(expr)
        except (OSError, AssertionError):
            return None
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(name="prometheus_factory")
def _prometheus_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Prometheus] = []

    def make(target: str) -> Prometheus:
        made.append(Prometheus(tmp_path / f"prometheus-{len(made)}", target))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_a_real_prometheus_scrapes_fastdns(
    fastdns_factory: Any, up: FakeUpstream, prometheus_factory: Any
) -> None:
    fdp = fastdns_factory(config(), upstreams=[up])
    prom = prometheus_factory(f"{HOST}:{metrics_port(fdp)}")
    assert (
        wait_until(
            lambda: prom.scalar('up{job="fastdns"}'),
            lambda v: v == 1,
            20,
            interval=0.2,
            what="up == 1",
        )
        == 1
    )
    sent = 0
    deadline = time.monotonic() + 20
    # Keep a trickle of queries going until Prometheus has two samples that differ.
    while True:
        for _ in range(5):
            ask(fdp, STATIC_NAME)
        sent += 5
        rate = prom.scalar('sum(rate(fastdns_dns_requests_total{job="fastdns"}[5s]))')
        if rate is not None and rate > 0:
            break
        assert time.monotonic() < deadline, "no fastdns rate in Prometheus"
        time.sleep(0.2)
    stored = wait_until(
        lambda: prom.scalar('sum(fastdns_dns_requests_total{job="fastdns"})'),
        lambda v: v == sent,
        10,
        interval=0.2,
        what=f"{sent} requests stored",
    )
    assert stored == sent
    assert prom.scalar('sum(fastdns_dns_responses_total{plugin="static"})') == sent
    assert prom.scalar("fastdns_workers_ready") == 2
    assert prom.scalar("count(fastdns_build_info)") == 1
    # Scrapes during a query load: every scrape answers, no query is lost.
    with QueryLoad(fdp.address, fdp.udp_port, STATIC_NAME, interval=0.002) as load:
        for _ in range(20):
            assert http_get(HOST, metrics_port(fdp), "/metrics")[0] == 200
    assert load.ok > 0 and load.failed == 0 and load.wrong == 0, load.answers
    # Every query of the Grafana dashboard is valid PromQL for this Prometheus.
    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "fastdns.json").read_text()
    )
    for panel in dashboard["panels"]:
        for target in panel.get("targets", ()):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*")
            prom.query(expr)
