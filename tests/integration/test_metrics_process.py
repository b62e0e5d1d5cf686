"""The metrics process on its own: ``metrics_main`` in a child process, fed fake stats
datagrams through the real sender (``ipc.StatusSender``), scraped over loopback HTTP."""

from __future__ import annotations

import gzip
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from support.metrics import Samples, http_get, parse, scrape, value, wait_until
from support.server import child_env

from fastdns.errors import ExitCode
from fastdns.ipc import StatusSender, split_messages
from fastdns.metrics.stats import WorkerStats, supervisor_message, worker_message

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SERVER = "dns://127.0.0.1:5300"
CHILD = """
import json, sys
from fastdns.config.load import build_config
from fastdns.metrics.main import metrics_main
raise SystemExit(metrics_main(build_config(json.loads(sys.argv[1])), sys.argv[2],
                              int(sys.argv[3])))
"""


class MetricsChild:
    """``metrics_main`` in a subprocess; ``port`` is what it reported on its control pipe."""

    def __init__(self, tmp_path: Path, listen: str = f"{HOST}:0", **fastdns: Any) -> None:
        self.stats_path = str(tmp_path / "stats.sock")
        doc = {
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "hosts_file": "/nonexistent",
                "fallback": [],
                "metrics": {"listen": listen},
                **fastdns,
            }
        }
        read_fd, write_fd = os.pipe()
        self.stderr = tmp_path / "metrics.stderr"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(doc), self.stats_path, str(write_fd)],
                pass_fds=(write_fd,),
                env=child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        os.close(write_fd)
        self.report = self._read_report(read_fd)
        os.close(read_fd)
        self.sender = StatusSender(self.stats_path)
        self.sent = 0

    def _read_report(self, fd: int, timeout: float = 15.0) -> dict[str, Any]:
        deadline, buffer = time.monotonic() + timeout, b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 4096)
            messages, buffer = split_messages(buffer, data)
            if messages:
                return messages[0]
            if not data:
                break
        return {}

    @property
    def port(self) -> int:
        return int(self.report["metrics_port"])

    def send(self, msg: dict[str, Any]) -> None:
        self.sender.send(msg)
        self.sent += 1

    def scrape_all(self) -> Samples:
        """Scrape once every datagram sent so far was received (datagrams are unordered
        with respect to HTTP: wait for the count)."""

        def received(s: Samples) -> bool:
            kinds = ("worker", "supervisor", "rules", "invalid")
            got = sum(value(s, "fastdns_stats_messages_total", kind=k) for k in kinds)
            return got >= self.sent

        return wait_until(lambda: scrape(HOST, self.port), received, what="all datagrams")

    def close(self) -> None:
        self.sender.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(name="child")
def _child(tmp_path: Path) -> Iterator[MetricsChild]:
    child = MetricsChild(tmp_path)
    assert "metrics_port" in child.report, child.stderr.read_text()
    yield child
    child.close()


def worker_stats(n: int, *, tcp: int = 0) -> WorkerStats:
    st = WorkerStats()
    st.counters["requests", "udp", "A"] += n
    if tcp:
        st.counters["requests", "tcp", "AAAA"] += tcp
    st.counters["responses", "NOERROR", "static"] += n + tcp
    for _ in range(n):
        st.observe(("duration", "A"), 0.0003)
    st.gauges[("inflight",)] = 2
    return st


def test_scrape_sums_workers_and_reports_health(child: MetricsChild) -> None:
    child.send(worker_message(0, 1000, 1, worker_stats(5), SERVER))
    child.send(worker_message(1, 1001, 1, worker_stats(7, tcp=2), SERVER))
    child.send(supervisor_message(1, 2, 2, 2, [(1, "crash", 1)], False, True))
    s = child.scrape_all()
    base = {"server": SERVER, "family": "1"}
    assert value(s, "fastdns_dns_requests_total", proto="udp", type="A", **base) == 12
    assert value(s, "fastdns_dns_requests_total", proto="tcp", type="AAAA", **base) == 2
    assert (
        value(s, "fastdns_dns_responses_total", server=SERVER, rcode="NOERROR", plugin="static")
        == 14
    )
    assert (
        value(
            s, "fastdns_dns_request_duration_seconds_bucket", server=SERVER, type="A", le="0.0005"
        )
        == 12
    )
    assert value(s, "fastdns_inflight_requests", server=SERVER) == 4
    assert value(s, "fastdns_worker_restarts_total", slot="1", reason="crash") == 1
    assert value(s, "fastdns_ready") == 1
    assert http_get(HOST, child.port, "/health")[0] == 200
    assert http_get(HOST, child.port, "/ready")[0] == 200

    # A restarted worker in slot 1 starts from zero; nothing goes backwards.
    child.send(worker_message(1, 2001, 1, worker_stats(1), SERVER))
    s = child.scrape_all()
    assert value(s, "fastdns_dns_requests_total", proto="udp", type="A", **base) == 13

    child.send(supervisor_message(1, 2, 2, 2, [(1, "crash", 1)], True, False))
    _, _, body = wait_until(
        lambda: http_get(HOST, child.port, "/ready"), lambda r: r[0] == 503, what="/ready 503"
    )
    assert body == b"draining\n"
    assert http_get(HOST, child.port, "/health")[0] == 200


def test_not_ready_and_not_healthy_before_the_supervisor_reports(child: MetricsChild) -> None:
    status, _, body = http_get(HOST, child.port, "/ready")
    assert (status, body) == (503, b"no status from the supervisor yet\n")
    assert http_get(HOST, child.port, "/health")[0] == 503
    assert http_get(HOST, child.port, "/nothing-here")[0] == 404


def test_openmetrics_and_gzip_on_request(child: MetricsChild) -> None:
    child.send(worker_message(0, 1000, 1, worker_stats(3), SERVER))
    child.scrape_all()
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    status, headers, body = http_get(
        HOST, child.port, "/metrics", headers={"Accept": accept, "Accept-Encoding": "gzip"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = gzip.decompress(body).decode()
    families = {f.name: f for f in parse_openmetrics(text)}
    (sample,) = [
        s for s in families["fastdns_dns_requests"].samples if s.name.endswith("_total") and s.value
    ]  # the others: at 0 from the start
    assert sample.value == 3
    assert families["fastdns_build"].type == "info"

    status, headers, body = http_get(HOST, child.port, "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in headers
    assert value(parse(body.decode()), "fastdns_build_info", **dict(_build_labels(body))) == 1


def _build_labels(body: bytes) -> dict[str, str]:
    (labels,) = [dict(ls) for (name, ls) in parse(body.decode()) if name == "fastdns_build_info"]
    return labels


def test_sigterm_stops_it_and_removes_the_socket(child: MetricsChild) -> None:
    assert os.path.exists(child.stats_path)
    child.proc.send_signal(signal.SIGTERM)
    assert child.proc.wait(10) == ExitCode.OK
    assert not os.path.exists(child.stats_path)


def test_a_port_in_use_is_a_boot_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen(1)
        child = MetricsChild(tmp_path, listen=f"{HOST}:{taken.getsockname()[1]}")
        try:
            assert child.proc.wait(10) == ExitCode.BOOT_ERROR
            assert "cannot listen for metrics" in child.report["boot_error"]
            assert "Address already in use" in child.report["boot_error"]
        finally:
            child.close()
