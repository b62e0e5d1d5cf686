"""DNS over TLS to the default upstreams (docs/tls.md), against real TLS DNS servers on
loopback port 853: Debian's unbound with a certificate this test generates, and a small Python
TLS server that answers pipelined queries out of order (tests/support/dot.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
from support.clients import make_query
from support.dot import Certs, ReorderingTlsServer, UnboundDoT, make_certs
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import dead_address, next_address

from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.attempts import TlsTarget
from fastdns.resolve.forward.dot import TlsPool, client_context

pytestmark = pytest.mark.integration

NAME = "dns.test"  # the name in the server certificates
DEADLINE = 2.0
# How late after DEADLINE a SERVFAIL may arrive: the loop's timer plus a loaded 2-core machine
# (0.5 s was overshot by 12 ms once); a wait for upstream_timeout x rounds would still fail.
SLACK = 1.0
DOT_LOGGER = "fastdns.resolve.forward.dot"


@pytest.fixture(name="dot_address")
def _dot_address() -> str:
    return next_address()


@pytest.fixture(name="certs")
def _certs(tmp_path: Path, dot_address: str) -> Certs:
    return make_certs(tmp_path / "certs", NAME, dot_address)


@pytest.fixture(name="unbound")
def _unbound(tmp_path: Path, certs: Certs, dot_address: str) -> Iterator[UnboundDoT]:
    server = UnboundDoT(dot_address, certs, tmp_path / "unbound")
    yield server
    server.close()


def serve(
    inproc: InProcessFactory,
    tmp_path: Path,
    servers: list[str],
    *,
    upstream_timeout: float = 0.5,
    **tls: Any,
) -> InProcessServer:
    resolv = write_resolv_conf(tmp_path / f"resolv-{len(inproc.made)}.conf", *servers)
    return inproc(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "upstream_timeout": upstream_timeout,
                "deadline": DEADLINE,
                "cache": {"enabled": False},  # every query goes upstream
                "forward": {"tls": {"enabled": True, "tls_name": NAME, **tls}},
            }
        }
    )


def ask(srv: InProcessServer, name: str, timeout: float = 3.0) -> dns.message.Message:
    return dns.query.udp(make_query(name, "A"), srv.address, timeout=timeout, port=srv.udp_port)


def ask_many(srv: InProcessServer, names: list[str], window: int = 50) -> list[dns.message.Message]:
    """The replies to A queries for ``names``, ``window`` of them in flight at a time (one
    socket, matched by ID)."""
    out: list[dns.message.Message] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(DEADLINE + 1)
        s.connect((srv.address, srv.udp_port))
        for start in range(0, len(names), window):
            queries = {}
            for i, name in enumerate(names[start : start + window]):
                q = make_query(name, "A", qid=start + i)
                queries[q.id] = q
                s.send(q.to_wire())
            replies = {}
            while len(replies) < len(queries):
                r = dns.message.from_wire(s.recv(65535))
                replies[r.id] = r
            out += [replies[qid] for qid in sorted(replies)]
    return out


def addresses(m: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in m.answer for rd in rrset]


def test_answers_flow_and_1000_queries_share_one_handshake(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    srv = serve(inproc, tmp_path, [unbound.address], ca_file=str(certs.ca))
    to = f"{unbound.address}:853"
    assert addresses(ask(srv, "a.dot.test")) == ["192.0.2.1"]
    replies = ask_many(srv, [f"n{i}.bulk.dot.test" for i in range(999)])  # pipelined
    assert all(addresses(r) == ["192.0.2.7"] for r in replies) and len(replies) == 999
    counters = srv.counters()
    assert counters.get(("tls_handshakes", to)) == 1
    assert counters.get(("tls_reused", to)) == 999
    assert not any(k[0] == "tls_handshake_failures" for k in counters)
    # Nothing went to the upstream in clear text: no UDP socket, no fast-lane query.
    assert srv.call(lambda: len(srv.worker.forwarder.channels)) == 0  # type: ignore[union-attr]
    assert not any(k[0] == "forward_fast_lane" for k in counters)
    assert srv.call(lambda: srv.worker.forwarder.tls.open_connections()) == {to: 1}  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["wrong_name", "untrusted_ca", "system_store"])
def test_a_certificate_that_does_not_check_out_fails_closed_and_is_logged_once(
    inproc: InProcessFactory,
    tmp_path: Path,
    unbound: UnboundDoT,
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    tls: dict[str, Any] = {
        "wrong_name": {"ca_file": str(certs.ca), "tls_name": "other.test"},
        "untrusted_ca": {"ca_file": str(certs.other_ca)},
        "system_store": {},  # the test CA is not in it
    }[case]
    caplog.set_level(logging.WARNING, logger=DOT_LOGGER)
    srv = serve(inproc, tmp_path, [unbound.address], **tls)
    to = f"{unbound.address}:853"
    for i in range(6):
        t0 = time.monotonic()
        r = ask(srv, f"v{i}.bulk.dot.test")
        assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
        assert time.monotonic() - t0 < DEADLINE + SLACK
        if i == 2:
            time.sleep(0.6)  # past the first backoff: a second handshake is tried, and fails
    counters = srv.counters()
    assert counters.get(("tls_handshake_failures", to, "verify"), 0) >= 2
    assert counters.get(("tls_handshakes", to), 0) == 0
    logged = [
        r for r in caplog.records if r.name == DOT_LOGGER and "TLS connection failed" in r.message
    ]
    assert len(logged) == 1, [r.message for r in logged]
    assert "verify" in logged[0].message


def test_verify_false_encrypts_without_checking(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT
) -> None:
    srv = inproc(
        {
            "fastdns": {
                "resolv_conf": str(write_resolv_conf(tmp_path / "r.conf", unbound.address)),
                "cache": {"enabled": False},
                "forward": {"tls": {"enabled": True, "verify": False}},
            }
        }
    )
    assert addresses(ask(srv, "a.dot.test")) == ["192.0.2.1"]


def test_a_restarted_server_is_reconnected(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    srv = serve(inproc, tmp_path, [unbound.address], ca_file=str(certs.ca))
    to = f"{unbound.address}:853"
    assert addresses(ask(srv, "r0.bulk.dot.test")) == ["192.0.2.7"]
    unbound.stop()
    assert ask(srv, "r1.bulk.dot.test").rcode() == dns.rcode.SERVFAIL
    unbound.start()
    deadline, i, answered = time.monotonic() + 15.0, 2, False
    while not answered and time.monotonic() < deadline:
        r = ask(srv, f"r{i}.bulk.dot.test")
        answered, i = addresses(r) == ["192.0.2.7"], i + 1
        if not answered:
            time.sleep(0.1)
    assert answered, "not reconnected within 15 s"
    assert srv.counter("tls_handshakes", to) == 2


def test_pipelined_replies_out_of_order_are_matched_by_id_and_question(
    inproc: InProcessFactory, tmp_path: Path, certs: Certs, dot_address: str
) -> None:
    batch = 8
    server = ReorderingTlsServer(dot_address, certs, batch)
    try:
        srv = serve(inproc, tmp_path, [dot_address], ca_file=str(certs.ca), upstream_timeout=1.5)
        names = [f"o{i}.dot.test" for i in range(batch)]
        socks = []
        for name in names:  # all sent before any is answered: the server waits for 8
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(DEADLINE + 1)
            s.connect((srv.address, srv.udp_port))
            s.send(make_query(name, "A").to_wire())
            socks.append(s)
        got = {}
        for name, s in zip(names, socks, strict=True):
            with s:
                got[name] = addresses(dns.message.from_wire(s.recv(65535)))
        assert not server.errors, server.errors
        assert len(server.order) == batch and server.answered == batch
        # Each client got the address of its own question's position, not its neighbour's.
        want = {name.rstrip("."): [f"192.0.2.{i}"] for i, name in enumerate(server.order, 1)}
        assert got == want
        to = f"{dot_address}:853"
        counters = srv.counters()
        assert counters.get(("tls_handshakes", to)) == 1
        assert counters.get(("upstream_unmatched", to)) == 1  # the reply with an unknown ID
        assert counters.get(("upstream_mismatch", to)) == 1  # a known ID, another question
    finally:
        server.close()


def test_a_silent_connection_takes_no_new_queries(
    inproc: InProcessFactory, tmp_path: Path, certs: Certs, dot_address: str
) -> None:
    """The server takes queries on its connection and never answers: the timeout retires that
    connection, so round two goes out on a fresh one (and, after the client's deadline,
    SERVFAIL)."""
    server = ReorderingTlsServer(dot_address, certs, batch=1000)  # never reached: silent
    try:
        srv = serve(inproc, tmp_path, [dot_address], ca_file=str(certs.ca))
        t0 = time.monotonic()
        assert ask(srv, "s0.dot.test").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < DEADLINE + SLACK
        to = f"{dot_address}:853"
        assert srv.counter("tls_handshakes", to) == 2
        assert server.accepted == 2 and len(server.order) == 2
    finally:
        server.close()


def test_idle_connections_close(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    srv = serve(inproc, tmp_path, [unbound.address], ca_file=str(certs.ca), idle_timeout=0.2)
    pool = srv.worker.forwarder.tls  # type: ignore[union-attr]
    assert pool is not None
    assert addresses(ask(srv, "i0.bulk.dot.test")) == ["192.0.2.7"]
    deadline = time.monotonic() + 5.0  # the worker's tick (1 s) sweeps them
    while srv.call(pool.open_connections) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.call(pool.open_connections) == {}
    assert addresses(ask(srv, "i1.bulk.dot.test")) == ["192.0.2.7"]  # a new one
    assert srv.counter("tls_handshakes", f"{unbound.address}:853") == 2


def test_any_caller_with_a_query_and_a_deadline_can_use_a_tls_server(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    """With forward.tls off, a caller that names its own servers (a route's) reaches a TLS one
    through the same state machine and driver: ``Forwarder.attempts(deadline, servers=...,
    tls=...)`` then ``Forwarder.exchange``. The pool's contexts use forward.tls.ca_file."""
    resolv = write_resolv_conf(tmp_path / "plain.conf", dead_address())
    srv = inproc(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "cache": {"enabled": False},
                "forward": {"tls": {"ca_file": str(certs.ca)}},
            }
        }
    )
    fwd = srv.worker.forwarder
    assert fwd is not None
    server = (unbound.address, 853)
    q = wire.parse_query(make_query("h.bulk.dot.test", "A").to_wire())

    async def exchange() -> bytes | None:
        deadline = fwd.loop.time() + DEADLINE
        m = fwd.attempts(deadline, servers=(server,), tls={server: TlsTarget(*server, NAME)})
        return (await fwd.exchange(q, deadline, m)).reply

    reply = asyncio.run_coroutine_threadsafe(exchange(), srv.loop).result(DEADLINE + 1)
    assert reply is not None and addresses(dns.message.from_wire(reply)) == ["192.0.2.7"]
    assert srv.counter("tls_handshakes", f"{unbound.address}:853") == 1


def test_a_handshake_that_never_completes_times_out(
    inproc: InProcessFactory, tmp_path: Path, dot_address: str
) -> None:
    """A listener that takes the TCP connection and never speaks TLS: SERVFAIL within the
    deadline, and the handshake counted as timed out (bounded by fastdns.deadline)."""
    with socket.create_server((dot_address, 853)):  # never accepts: the kernel queues it
        srv = serve(inproc, tmp_path, [dot_address])
        t0 = time.monotonic()
        assert ask(srv, "t0.dot.test").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < DEADLINE + SLACK
        to, deadline = f"{dot_address}:853", time.monotonic() + 5.0
        while not srv.counter("tls_handshake_failures", to, "timeout"):
            assert time.monotonic() < deadline, srv.counters()
            time.sleep(0.05)


def test_a_handshake_outlived_by_its_queries_is_still_counted(dot_address: str) -> None:
    """The queries that opened a connection may be over before its handshake is (their
    deadline first, the connection retired and closed with nothing pending): the handshake
    still runs to its own timeout and is counted, so an upstream whose TLS never completes
    shows in ``tls_handshake_failures`` whatever the timers' order."""
    stats = WorkerStats()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        pool = TlsPool(loop, stats, lambda verify: client_context("", verify), 10.0, 0.5)
        q = wire.parse_query(make_query("gone.dot.test", "A").to_wire())
        waiter = loop.create_future()
        conn, uid = pool.send(TlsTarget(dot_address, 853, NAME, True), q, waiter)
        conn.stalled(loop.time())  # its attempt timed out, nothing read: retired
        conn.forget(uid, waiter)  # its exchange is over: nothing pending, closed
        assert conn.closed
        await asyncio.sleep(1.0)  # the handshake's own timeout is 0.5 s
        pool.close()

    with socket.create_server((dot_address, 853)):  # never accepts: the kernel queues it
        asyncio.run(run())
    assert stats.counters.get(("tls_handshake_failures", f"{dot_address}:853", "timeout")) == 1


def test_failover_to_the_next_server_when_one_is_dead(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    dead = dead_address()
    srv = serve(inproc, tmp_path, [dead, unbound.address], ca_file=str(certs.ca))
    for i in range(3):
        assert addresses(ask(srv, f"f{i}.bulk.dot.test")) == ["192.0.2.7"]
    assert srv.counter("tls_handshake_failures", f"{dead}:853", "refused") >= 1
    assert srv.counter("tls_handshakes", f"{unbound.address}:853") == 1


def test_servfail_within_the_deadline_when_every_server_is_dead(
    inproc: InProcessFactory, tmp_path: Path
) -> None:
    srv = serve(inproc, tmp_path, [dead_address(), dead_address()])
    for i in range(3):
        t0 = time.monotonic()
        r = ask(srv, f"d{i}.dot.test")
        assert r.rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - t0 < DEADLINE + SLACK
    assert srv.counter("servfail_exhausted") == 3


def test_a_route_with_a_tls_server_is_answered_over_tls_only(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    """``forward.domains`` with a ``tls://`` server (docs/routing.md): a client's query for a
    routed name is answered over one TLS connection, while the default upstream (dead) is never
    needed; the route's ``tls_name`` is the name checked."""
    resolv = write_resolv_conf(tmp_path / "plain.conf", dead_address())
    route = {"domains": ["dot.test"], "servers": [f"tls://{unbound.address}"], "tls_name": NAME}
    srv = inproc(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "deadline": DEADLINE,
                "cache": {"enabled": False},
                "forward": {"domains": [route], "tls": {"ca_file": str(certs.ca)}},
            }
        }
    )
    replies = ask_many(srv, [f"r{i}.bulk.dot.test" for i in range(20)])
    assert all(addresses(r) == ["192.0.2.7"] for r in replies)
    to = f"{unbound.address}:853"
    assert srv.counter("tls_handshakes", to) == 1
    assert srv.counter("route_requests", "dot.test") == 20


def test_a_route_with_a_tls_server_and_the_wrong_name_fails_closed(
    inproc: InProcessFactory, tmp_path: Path, unbound: UnboundDoT, certs: Certs
) -> None:
    """The route's ``tls_name`` is checked against the certificate: a wrong one is SERVFAIL
    within the deadline, never an answer."""
    resolv = write_resolv_conf(tmp_path / "plain.conf", dead_address())
    route = {
        "domains": ["dot.test"],
        "servers": [f"tls://{unbound.address}"],
        "tls_name": "wrong.test",
    }
    srv = inproc(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "deadline": DEADLINE,
                "cache": {"enabled": False},
                "forward": {"domains": [route], "tls": {"ca_file": str(certs.ca)}},
            }
        }
    )
    t0 = time.monotonic()
    assert ask(srv, "w1.bulk.dot.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < DEADLINE + SLACK
