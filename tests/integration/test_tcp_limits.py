"""Clients that are slow or hostile over TCP (docs/answering.md, "Transport"): a client that never
reads its replies, slowloris connections that trickle a byte at a time, and one address opening many
connections. A real worker (``support.inproc``) on loopback, real sockets; the server's own state
(buffered reply bytes, open connections) and counters read on its loop.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
BIG = "big.tcp.test"  # ~53 KB of TXT: one reply fills a small receive buffer many times over
TXT_RECORDS = 200


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("tcp.test")
    up.add(BIG, "TXT", *(f"{i:04d}" + "x" * 250 for i in range(TXT_RECORDS)))
    up.add("small.tcp.test", "A", "192.0.2.7")
    return up


def serve(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, **fastdns: Any
) -> InProcessServer:
    resolv = write_resolv_conf(tmp_path / f"resolv-{len(inproc.made)}.conf", up)
    section = {
        "resolv_conf": str(resolv),
        "native": {"enabled": False},
        "upstream_timeout": 0.5,
        "deadline": 2.0,
        **fastdns,
    }
    return inproc({"fastdns": section})


def frame(name: str, rdtype: str = "A", qid: int = 0) -> bytes:
    wire = dns.message.make_query(name, rdtype, id=qid).to_wire()
    return struct.pack("!H", len(wire)) + wire


def served(srv: InProcessServer, source: str = LOCAL, timeout: float = 2.0) -> bool:
    """One well-behaved TCP client from ``source``: True when it gets its answer."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.bind((source, 0))
            s.connect((LOCAL, srv.tcp_port))
            s.sendall(frame("small.tcp.test", qid=4242))
            head = _recv_exactly(s, 2)
            reply = dns.message.from_wire(_recv_exactly(s, struct.unpack("!H", head)[0]))
    except (OSError, ValueError):
        return False
    return reply.id == 4242 and reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by the server")
        buf += chunk
    return bytes(buf)


def closed_by_server(s: socket.socket) -> bool:
    """True once the server closed ``s`` (EOF or reset); never blocks."""
    try:
        return s.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def buffered(srv: InProcessServer) -> int:
    """Reply bytes the worker holds for its TCP clients (the transports' write buffers)."""
    return srv.call(
        lambda: sum(
            c.transport.get_write_buffer_size()
            for c in srv.worker.state.tcp_connections  # type: ignore[union-attr]
            if c.transport is not None
        )
    )


def open_connections(srv: InProcessServer) -> int:
    return srv.call(lambda: len(srv.worker.state.tcp_connections))  # type: ignore[union-attr]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(name="sockets")
def _sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def connect(port: int, source: str = LOCAL, rcvbuf: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect((LOCAL, port))
    return s


def test_a_client_that_never_reads_cannot_grow_the_worker(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, sockets: list[socket.socket]
) -> None:
    """1000 queries for a 53 KB cached answer, never read. Before the fix the
    worker buffered every reply (~53 MB here; 1 GB with 20,000 queries)."""
    srv = serve(inproc, tmp_path, up, tcp_idle_timeout=1.0)
    warm = query(LOCAL, srv.tcp_port, BIG, "TXT", tcp=True, timeout=3)
    assert len(warm.answer[0]) == TXT_RECORDS  # now cached
    s = connect(srv.tcp_port, rcvbuf=4096)
    sockets.append(s)
    s.setblocking(False)
    data = b"".join(frame(BIG, "TXT", qid=i) for i in range(1000))
    sent, peak, deadline = 0, 0, time.monotonic() + 3.0
    while sent < len(data) and time.monotonic() < deadline:
        try:
            sent += s.send(data[sent : sent + 4096])
        except BlockingIOError:
            time.sleep(0.01)  # the server stopped reading: it is holding back
        peak = max(peak, buffered(srv))
    for _ in range(10):
        peak = max(peak, buffered(srv))
        time.sleep(0.02)
    assert peak < 1 << 20, f"{peak} reply bytes buffered for a client that never reads"
    assert served(srv)  # the worker still serves others meanwhile
    # The stalled connection is closed (its replies were not read for tcp_idle_timeout).
    wait_for(lambda: open_connections(srv) == 0, 5.0, "the stalled connection to be closed")
    assert srv.counter("tcp_closed", "write_stalled") == 1
    assert served(srv)


def test_slowloris_does_not_starve_new_clients(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, sockets: list[socket.socket]
) -> None:
    """Slowloris: connections that send one byte at a time hold every slot; before the fix
    every byte restarted the idle timer and a new client was refused."""
    srv = serve(inproc, tmp_path, up, tcp_max_connections=8)
    for _ in range(12):  # more than the slots: each starts a frame and never finishes it
        s = connect(srv.tcp_port)
        sockets.append(s)
        s.sendall(b"\x00")
    wait_for(lambda: open_connections(srv) == 8, 3.0, "8 slow connections")
    started = time.monotonic()
    assert served(srv), "a well-behaved client was refused while slow ones held the slots"
    # The slow ones trickle on: each is closed when its frame is not complete in time
    # (tcp_frame_timeout, 2 s by default), however steadily its bytes come.
    live = [s for s in sockets if not closed_by_server(s)]
    while live and time.monotonic() - started < 5.0:
        for s in list(live):
            try:
                s.send(b"\x40")
            except OSError:
                live.remove(s)
                continue
            if closed_by_server(s):
                live.remove(s)
        time.sleep(0.2)
    assert not live, f"{len(live)} trickling connections still open after 5 s"
    assert srv.counter("tcp_closed", "frame_timeout") >= 1
    assert srv.counter("tcp_closed", "evicted") >= 1
    assert served(srv)


def test_one_address_cannot_take_every_slot(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, sockets: list[socket.socket]
) -> None:
    """At most tcp_max_connections_per_source (64 by default) connections from one address:
    the 65th makes room by closing that address's idlest connection; other addresses are
    unaffected."""
    srv = serve(inproc, tmp_path, up)
    for _ in range(70):
        sockets.append(connect(srv.tcp_port, "127.0.0.1"))
    wait_for(lambda: open_connections(srv) == 64, 3.0, "64 connections from 127.0.0.1")
    wait_for(lambda: sum(map(closed_by_server, sockets)) == 6, 3.0, "6 closed")
    assert all(closed_by_server(s) for s in sockets[:6])  # the idlest went first
    assert srv.counter("tcp_closed", "per_source") == 6
    others = [connect(srv.tcp_port, "127.0.0.2") for _ in range(3)]
    sockets.extend(others)
    wait_for(lambda: open_connections(srv) == 67, 3.0, "3 more from 127.0.0.2")
    assert served(srv, "127.0.0.3")
    assert not any(closed_by_server(s) for s in others)


def test_replies_piling_up_unread_close_the_connection(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, sockets: list[socket.socket]
) -> None:
    """Queries already being answered when the client stops reading still get replies: past
    tcp_max_write_buffer unsent bytes the connection is closed, and its memory freed."""
    for i in range(12):
        up.add(f"big{i}.tcp.test", "TXT", *(f"{j:04d}" + "y" * 250 for j in range(TXT_RECORDS)))
        up.behave(f"big{i}.tcp.test", delay=0.3)
    srv = serve(inproc, tmp_path, up, tcp_max_write_buffer=128 * 1024)
    s = connect(srv.tcp_port, rcvbuf=4096)
    sockets.append(s)
    s.sendall(b"".join(frame(f"big{i}.tcp.test", "TXT", qid=i) for i in range(12)))
    wait_for(lambda: srv.counter("tcp_closed", "write_buffer") == 1, 5.0, "the close")
    wait_for(lambda: open_connections(srv) == 0, 2.0, "the slot to be free")
    assert served(srv)


def test_when_every_slot_is_busy_a_new_connection_is_refused(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, sockets: list[socket.socket]
) -> None:
    up.add("slow.tcp.test", "A", "192.0.2.8")
    up.behave("slow.tcp.test", delay=0.8)
    srv = serve(inproc, tmp_path, up, tcp_max_connections=2, upstream_timeout=2.0, deadline=3.0)
    for i in range(2):
        s = connect(srv.tcp_port)
        sockets.append(s)
        s.sendall(frame("slow.tcp.test", qid=i))
    wait_for(
        lambda: srv.call(lambda: srv.worker.state.inflight) == 2,  # type: ignore[union-attr]
        2.0,
        "two queries in flight",
    )
    assert not served(srv, timeout=0.5)
    assert srv.counter("tcp_closed", "max_connections") == 1
    assert srv.counter("overload", "tcp") == 1
    for s in sockets:  # the busy connections were left alone and get their answers
        s.settimeout(3)
        head = _recv_exactly(s, 2)
        assert dns.message.from_wire(_recv_exactly(s, struct.unpack("!H", head)[0])).answer
