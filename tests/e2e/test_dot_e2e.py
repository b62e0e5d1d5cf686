"""DNS over TLS through the real ``fastdns serve`` (docs/tls.md): its metrics as Prometheus
sees them after 1,000 pipelined queries over one pooled connection, and the refusal to start
without a name to verify (tests/integration/test_dot.py has the behaviour in detail)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import dns.message
import pytest
import yaml
from support.clients import make_query
from support.dot import UnboundDoT, make_certs
from support.metrics import scrape, series, total, value, wait_until
from support.server import FastDNSProcess, write_resolv_conf
from support.upstream import next_address

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"


def test_one_handshake_for_1000_queries_in_the_metrics(tmp_path: Path) -> None:
    address = next_address()
    certs = make_certs(tmp_path / "certs", "dns.test", address)
    unbound = UnboundDoT(address, certs, tmp_path / "unbound")
    try:
        fdp = FastDNSProcess(
            {
                "fastdns": {
                    "resolv_conf": str(write_resolv_conf(tmp_path / "resolv.conf", address)),
                    "metrics": {"listen": f"{HOST}:0"},
                    "cache": {"enabled": False},
                    "forward": {
                        "tls": {"enabled": True, "tls_name": "dns.test", "ca_file": str(certs.ca)}
                    },
                }
            },
            tmp_path,
        )
        with fdp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.connect((fdp.address, fdp.udp_port))
            for start in range(0, 1000, 100):  # 100 in flight at a time
                for i in range(start, start + 100):
                    s.send(make_query(f"m{i}.bulk.dot.test", "A", qid=i).to_wire())
                for _ in range(100):
                    r = dns.message.from_wire(s.recv(65535))
                    assert [rd.to_text() for rrset in r.answer for rd in rrset] == ["192.0.2.7"]
            port = int(fdp.state["metrics_port"])
            samples = wait_until(
                lambda: scrape(HOST, port),
                lambda m: total(m, "fastdns_dns_requests_total") >= 1000,
                15.0,
                what="1000 requests in /metrics",
            )
            to = f"{address}:853"
            assert value(samples, "fastdns_forward_tls_handshakes_total", to=to) == 1
            assert value(samples, "fastdns_forward_tls_reused_queries_total", to=to) == 999
            assert total(samples, "fastdns_forward_tls_handshake_failures_total") == 0
            failures = series(samples, "fastdns_forward_tls_handshake_failures_total")
            assert {dict(ls)["to"] for ls in failures} == {to}  # exported at 0, TLS ones only
            assert {dict(ls)["reason"] for ls in failures} == {
                "verify",
                "timeout",
                "refused",
                "error",
            }
            assert total(samples, "fastdns_forward_tls_connections") == 1
            assert total(samples, "fastdns_forward_fast_lane_total") == 0
    finally:
        unbound.close()


def test_enabled_without_a_name_does_not_start(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text(yaml.safe_dump({"fastdns": {"forward": {"tls": {"enabled": True}}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "fastdns", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "fastdns.forward.tls.tls_name: required" in proc.stderr
