"""A TCP client that never reads its replies, against ``fastdns serve`` (docs/answering.md,
"Transport"): the worker's resident memory stays bounded, the connection is closed, other clients
are served.

Before the fix the worker buffered every reply: 20,000 queries for a 51 KB cached answer took
its RSS from 49 MB to 1,027 MB until the client closed.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import dns.message
import dns.rcode
import pytest
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

BIG = "big.abuse.test"
QUERIES = 20_000
TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h)
RSS_SLACK = 64 << 20  # generous: the bound itself is a few hundred KB per connection


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def frame(name: str, rdtype: str, qid: int) -> bytes:
    wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
    return struct.pack("!H", len(wire)) + wire


def closed(s: socket.socket) -> bool:
    """The server closed or reset ``s``; read from TCP_INFO, so its replies stay unread."""
    state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return state != TCP_ESTABLISHED


@pytest.fixture(name="fdp")
def _fdp(upstream_factory: Any, fastdns_factory: Any) -> FastDNSProcess:
    up: FakeUpstream = upstream_factory()
    up.add_zone("abuse.test")
    up.add(BIG, "TXT", *(f"{i:04d}" + "x" * 250 for i in range(200)))
    up.add("small.abuse.test", "A", "192.0.2.9")
    fdp: FastDNSProcess = fastdns_factory(
        {"fastdns": {"native": {"enabled": False}, "tcp_idle_timeout": 2.0}}, upstreams=[up]
    )
    return fdp


def test_a_client_that_never_reads_keeps_the_worker_small(fdp: FastDNSProcess) -> None:
    (worker,) = fdp.state["workers"]
    assert len(fdp.query(BIG, "TXT", tcp=True, timeout=3).answer[0]) == 200  # cached now
    before = peak = rss(worker)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((fdp.address, fdp.tcp_port))
        s.setblocking(False)
        data = b"".join(frame(BIG, "TXT", i % 65536) for i in range(QUERIES))
        sent, deadline = 0, time.monotonic() + 3.0
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += s.send(data[sent : sent + 4096])
                time.sleep(0.002)  # paced, as a client's queries come (not one huge read)
            except BlockingIOError:
                time.sleep(0.01)  # fastdns stopped reading: it holds back
            except ConnectionError:
                break  # closed already: it read nothing back for tcp_idle_timeout
            peak = max(peak, rss(worker))
        assert fdp.query("small.abuse.test", tcp=True).rcode() == dns.rcode.NOERROR
        peak = max(peak, rss(worker))
        assert peak - before < RSS_SLACK, f"worker RSS {before >> 20} -> {peak >> 20} MB"
        # Not read for tcp_idle_timeout: closed (reset: its unread replies are dropped).
        closing = time.monotonic() + 6.0
        while not closed(s):
            assert time.monotonic() < closing, "the stalled connection is still open"
            time.sleep(0.05)
    finally:
        s.close()
    assert fdp.query("small.abuse.test", tcp=True).rcode() == dns.rcode.NOERROR
