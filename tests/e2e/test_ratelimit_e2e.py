"""Response rate limiting with two worker processes, and what it does to amplification
(docs/exposure.md: a 39-byte TXT query with EDNS 4096 drew 1,156 bytes, 29.6x, 10,000 times over).

A flood of TXT queries from one loopback /24 (loopback is exempt by default; these configs
exempt nothing) on many source ports, so the kernel spreads it over both workers
(SO_REUSEPORT), as it spreads a spoofed flood: what comes back is bounded by the configured
aggregate, in bytes (fastdns.ratelimit counts 512-byte reply units), not just in answers.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import dns.flags
import dns.message
import dns.query
import pytest
from support.clients import make_query
from support.fixtures import FastDNSFactory
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

NAME = "amp.test"
FLOODER, OTHER = "127.0.0.9", "127.0.1.9"
QPS, BURST, UNIT = 100, 50, 512
COUNT, SECONDS, PORTS = 1000, 1.0, 32


@pytest.fixture(name="amp_upstream", scope="module")
def _amp_upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up = mod_upstream_factory()
    up.add_zone("test")
    up.add(NAME, "TXT", ["v=spf1 " + "x" * 240, "y" * 250, "z" * 250, "w" * 250, "k" * 100])
    return up


def start(factory: FastDNSFactory, up: FakeUpstream, **ratelimit: Any) -> Any:
    section: dict[str, Any] = {"workers": 2}
    if ratelimit:
        section["ratelimit"] = {"exempt": [], **ratelimit}
    return factory({"fastdns": section}, upstreams=[up])


def flood(fdp: Any, source: str) -> dict[str, float]:
    """COUNT TXT queries with EDNS 4096 from ``source``, paced over SECONDS, round-robin over
    PORTS sockets; the replies counted and summed."""
    q = dns.message.make_query(NAME, "TXT", use_edns=0, payload=4096).to_wire()
    socks = []
    for _ in range(PORTS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.setblocking(False)
        socks.append(s)
    out = {"sent": 0, "bytes_in": 0, "answered": 0, "answer_bytes": 0, "slipped": 0, "bytes_out": 0}
    to = (fdp.address, fdp.udp_port)

    def drain() -> None:
        for s in socks:
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                out["bytes_out"] += len(data)
                flags, ancount = struct.unpack_from("!H", data, 2)[0], data[7]
                if flags & dns.flags.TC:
                    assert len(data) <= len(q)  # a slip never amplifies
                    out["slipped"] += 1
                elif ancount:
                    out["answered"] += 1
                    out["answer_bytes"] += len(data)

    try:
        start_t = time.monotonic()
        for i in range(COUNT):
            while time.monotonic() < start_t + SECONDS * i / COUNT:
                drain()
                time.sleep(0.0005)
            socks[i % PORTS].sendto(struct.pack("!H", i) + q[2:], to)
            out["sent"] += 1
            out["bytes_in"] += len(q)
        out["elapsed"] = time.monotonic() - start_t
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            drain()
            time.sleep(0.01)
    finally:
        for s in socks:
            s.close()
    out["amplification"] = out["bytes_out"] / out["bytes_in"]
    return out


def test_unlimited_flood_is_amplified(
    mod_fastdns_factory: FastDNSFactory, amp_upstream: FakeUpstream
) -> None:
    """The issue's figures, as a baseline: without a limit every query is answered in full."""
    fdp = start(mod_fastdns_factory, amp_upstream)
    got = flood(fdp, FLOODER)
    print(f"rate limiting off: {got}")
    assert got["answered"] >= 0.95 * COUNT
    assert got["answer_bytes"] / got["answered"] > 1000
    assert got["amplification"] > 20
    fdp.close()


def test_two_workers_hold_the_aggregate_limit_in_bytes(
    mod_fastdns_factory: FastDNSFactory, amp_upstream: FakeUpstream
) -> None:
    fdp = start(mod_fastdns_factory, amp_upstream, qps=QPS, burst=BURST, slip=2)
    got = flood(fdp, FLOODER)
    print(f"rate limiting {QPS} qps, burst {BURST}, 2 workers: {got}")
    # Each worker has QPS/2 and BURST/2; a bucket may owe at most its burst: what a prefix
    # can draw in T seconds is 2*BURST + QPS*T units of 512 bytes, over both workers.
    units = 2 * BURST + QPS * got["elapsed"]
    assert got["answer_bytes"] <= units * UNIT * 1.05, got
    # ... and it does get about that: both workers' buckets are in use (one worker alone would
    # give QPS/2).
    assert got["answer_bytes"] >= 0.7 * QPS * got["elapsed"] * UNIT, got
    limited = got["sent"] - got["answered"]
    assert abs(got["slipped"] - limited / 2) <= 0.05 * limited + 2, got
    # Everything else that went out was a slip, no larger than its query.
    assert got["bytes_out"] - got["answer_bytes"] <= got["slipped"] * got["bytes_in"] / COUNT
    # Another prefix is served meanwhile (its own buckets), and TCP is not limited.
    q = make_query(NAME, "TXT", edns=4096)
    for _ in range(5):
        r = dns.query.udp(q, fdp.address, port=fdp.udp_port, source=OTHER, timeout=2.0)
        assert r.answer and not r.flags & dns.flags.TC
    for _ in range(3):
        r = dns.query.tcp(q, fdp.address, port=fdp.tcp_port, source=FLOODER, timeout=2.0)
        assert r.answer
    fdp.close()
