"""The client ACL and the rate limiter on a real worker's sockets (docs/exposure.md).

Loopback has a whole /8 of source addresses, so one worker bound on 127.0.0.1 sees "inside"
and "outside" clients, and different /24 prefixes, without leaving the test namespace.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from support.clients import make_query
from support.inproc import InProcessFactory, InProcessServer

pytestmark = pytest.mark.integration

NAME = "acl.test"
INSIDE, OUTSIDE = "127.0.0.2", "127.0.0.1"


def ask(
    srv: InProcessServer, source: str, *, tcp: bool = False, timeout: float = 1.0, name: str = NAME
) -> dns.message.Message | None:
    q = make_query(name, "A")
    try:
        if tcp:
            return dns.query.tcp(q, srv.address, timeout=timeout, port=srv.tcp_port, source=source)
        return dns.query.udp(q, srv.address, timeout=timeout, port=srv.udp_port, source=source)
    except (dns.exception.Timeout, ConnectionError, EOFError):
        return None


def answers(m: dns.message.Message | None) -> list[str]:
    return [] if m is None else [rd.to_text() for rrset in m.answer for rd in rrset]


def server(inproc: InProcessFactory, **section: Any) -> InProcessServer:
    return inproc({"hostResolver": {"hosts": {NAME: "10.9.9.9"}}, "fastdns": section})


def fronts(srv: InProcessServer) -> int:
    cache = srv.worker.state.cache  # type: ignore[union-attr]
    return srv.call(lambda: len(cache.front))


def test_refuse_outside_clients_udp_tcp_and_fast_lane(inproc: InProcessFactory) -> None:
    srv = server(inproc, acl={"allow": [f"{INSIDE}/32"], "action": "refuse"})
    # The inside client is answered, twice: the second time by the fast lane (the form kept).
    assert answers(ask(srv, INSIDE)) == ["10.9.9.9"]
    assert answers(ask(srv, INSIDE)) == ["10.9.9.9"]
    assert fronts(srv) == 1
    # The same bytes from outside: REFUSED with the question, no answer, not the cached reply.
    r = ask(srv, OUTSIDE)
    assert r is not None and r.rcode() == dns.rcode.REFUSED and not r.answer
    assert r.question[0].name.to_text() == f"{NAME}."
    # TCP from outside: closed at accept, nothing read, nothing answered.
    assert ask(srv, OUTSIDE, tcp=True) is None
    assert answers(ask(srv, INSIDE, tcp=True)) == ["10.9.9.9"]
    assert srv.counter("acl_blocked", "udp", "refuse") == 1
    assert srv.counter("acl_blocked", "tcp", "refuse") == 1


def test_drop_outside_clients(inproc: InProcessFactory) -> None:
    srv = server(inproc, acl={"allow": [f"{INSIDE}/32", "::1/128"]})
    assert answers(ask(srv, INSIDE)) == ["10.9.9.9"]
    assert ask(srv, OUTSIDE, timeout=0.5) is None
    assert ask(srv, OUTSIDE, timeout=0.5) is None  # the cached verdict
    # Junk from outside is dropped too: no FORMERR for those we do not serve.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((OUTSIDE, 0))
        s.settimeout(0.3)
        s.sendto(b"\x12\x34\x01", (srv.address, srv.udp_port))
        with pytest.raises(TimeoutError):
            s.recv(512)
    assert ask(srv, OUTSIDE, tcp=True) is None
    assert srv.counter("acl_blocked", "udp", "drop") == 3
    assert srv.counter("acl_blocked", "tcp", "drop") == 1
    assert answers(ask(srv, INSIDE, tcp=True)) == ["10.9.9.9"]


def test_default_acl_serves_loopback(inproc: InProcessFactory) -> None:
    srv = server(inproc)
    assert answers(ask(srv, OUTSIDE)) == ["10.9.9.9"]
    assert answers(ask(srv, OUTSIDE, tcp=True)) == ["10.9.9.9"]
    assert srv.counter("acl_blocked", "udp", "drop") == 0


def flood(srv: InProcessServer, source: str, count: int, seconds: float) -> dict[str, float]:
    """``count`` queries for NAME from ``source`` paced over ``seconds`` (one socket), and the
    replies that come back: answered (NOERROR with data), slipped (TC=1, empty)."""
    q = make_query(NAME, "A").to_wire()
    out = {"answered": 0, "slipped": 0, "bytes": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setblocking(False)
        start = time.monotonic()
        to = (srv.address, srv.udp_port)

        def drain() -> None:
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    return
                out["bytes"] += len(data)
                flags = struct.unpack_from("!H", data, 2)[0]
                ancount = struct.unpack_from("!H", data, 6)[0]
                if flags & dns.flags.TC:
                    assert ancount == 0 and len(data) <= len(q) + 11
                    out["slipped"] += 1
                elif ancount:
                    out["answered"] += 1

        for i in range(count):
            while time.monotonic() < start + seconds * i / count:
                drain()
                time.sleep(0.0005)
            s.sendto(q[:0] + struct.pack("!H", i & 0xFFFF) + q[2:], to)
        out["elapsed"] = time.monotonic() - start
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            drain()
            time.sleep(0.01)
    return out


def test_flood_from_one_prefix_is_limited_another_is_served(inproc: InProcessFactory) -> None:
    qps, burst = 20, 10
    srv = server(inproc, ratelimit={"qps": qps, "burst": burst, "exempt": [], "slip": 2})
    got = flood(srv, "127.0.0.9", 300, 1.0)
    allowed = burst + qps * got["elapsed"]
    limited = 300 - got["answered"]
    assert burst <= got["answered"] <= allowed + 1, got
    # slip 2: every second limited query got an empty TC=1 reply, the others nothing
    assert abs(got["slipped"] - limited / 2) <= 1, got
    assert srv.counter("ratelimited", "slip") == got["slipped"]
    assert srv.counter("ratelimited", "drop") == limited - got["slipped"]
    # Another /24 has its own bucket: served in full while the first one is still limited.
    assert all(answers(ask(srv, "127.0.1.9")) == ["10.9.9.9"] for _ in range(5))
    # Loopback sources are exempt by default; TCP is never limited.
    assert all(answers(ask(srv, "127.0.0.9", tcp=True)) == ["10.9.9.9"] for _ in range(3))


def test_exempt_sources_are_not_limited(inproc: InProcessFactory) -> None:
    srv = server(inproc, ratelimit={"qps": 1, "burst": 1})  # exempt: loopback (the default)
    got = flood(srv, "127.0.0.9", 50, 0.2)
    assert got["answered"] == 50 and got["slipped"] == 0, got
