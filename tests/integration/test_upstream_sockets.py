"""The upstream socket machinery on real loopback sockets: ``fastdns.resolve.forward.portswap``
(a new random port without a new socket) and ``fastdns.resolve.forward.fdpoll`` (many sockets
behind one loop reader), on uvloop and on the standard asyncio loop."""

from __future__ import annotations

import _socket
import asyncio
import socket
from collections.abc import Callable, Iterator

import pytest
from support.upstream import next_address

from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward import portswap, upsock
from fastdns.resolve.forward.fdpoll import FdPoll
from fastdns.serve.worker import new_event_loop

pytestmark = pytest.mark.integration

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


@pytest.fixture(name="peer")
def _peer() -> Iterator[socket.socket]:
    """A UDP socket on a loopback address of its own, standing in for an upstream."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((next_address(), 53))
    s.settimeout(2.0)
    yield s
    s.close()


def connected(peer: socket.socket) -> _socket.socket:
    s = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    s.connect(peer.getsockname())
    return s


def test_release_gives_the_port_back_and_the_next_connect_a_new_one(
    peer: socket.socket,
) -> None:
    s = connected(peer)
    try:
        ports = {s.getsockname()[1]}
        for _ in range(20):
            old = s.getsockname()[1]
            assert portswap.release(s)
            assert s.getsockname()[1] == 0  # unbound: nothing reaches the old port any more
            peer.sendto(b"late", ("127.0.0.1", old))
            s.connect(peer.getsockname())
            ports.add(s.getsockname()[1])
            with pytest.raises(BlockingIOError):
                s.recv(100)  # what was sent to the old port is not delivered to the new one
        assert len(ports) >= 18  # random ephemeral ports (a repeat is possible, not likely)
    finally:
        s.close()


def test_release_drops_what_was_queued_for_the_old_port(peer: socket.socket) -> None:
    """A spoofer's datagrams that reached the old port before it was given back must not be
    read as replies on the new one (RFC 5452 §9.2)."""
    s = connected(peer)
    try:
        for i in range(5):
            peer.sendto(b"spoof%d" % i, s.getsockname())
        assert portswap.release(s)
        s.connect(peer.getsockname())
        with pytest.raises(BlockingIOError):
            s.recv(100)
        peer.sendto(b"real", s.getsockname())
        assert _wait_readable(s) == b"real"
    finally:
        s.close()


def test_release_refuses_a_socket_with_a_pending_error() -> None:
    """An ICMP port unreachable queued on the socket: it is closed, not reused."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind((next_address(), 53))
    addr = closed.getsockname()
    closed.close()  # nothing listens there now: the kernel answers with ICMP unreachable
    s = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    try:
        s.connect(addr)
        s.send(b"x")
        assert not portswap.release(s)
    finally:
        s.close()


def _wait_readable(s: _socket.socket) -> bytes:
    import select

    assert select.select([s], [], [], 2.0)[0]
    return s.recv(100)


@pytest.mark.parametrize("kind", sorted(LOOPS))
def test_fdpoll_dispatches_replies_and_errors(kind: str, peer: socket.socket) -> None:
    loop = LOOPS[kind]()
    poll = FdPoll(loop)
    got: list[tuple[int, bytes | str]] = []
    socks = [connected(peer) for _ in range(20)]

    def reader(i: int, s: _socket.socket) -> Callable[[], None]:
        def on_readable() -> None:
            try:
                got.append((i, s.recv(100)))
            except BlockingIOError:
                pass
            except OSError as e:  # the socket's error is ours to handle, every time
                got.append((i, type(e).__name__))

        return on_readable

    async def main() -> None:
        for i, s in enumerate(socks):
            poll.add(s.fileno(), reader(i, s))
        for i, s in enumerate(socks):
            peer.sendto(b"r%d" % i, s.getsockname())
        while len(got) < len(socks):
            await asyncio.sleep(0.01)
        # An ICMP error on one socket: reported to its callback, and the others go on.
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind((next_address(), 53))
        target = dead.getsockname()
        dead.close()
        socks[0].connect(target)
        socks[0].send(b"x")
        peer.sendto(b"after", socks[1].getsockname())
        while (0, "ConnectionRefusedError") not in got or (1, b"after") not in got:
            await asyncio.sleep(0.01)
        # A descriptor whose callback is gone is ignored; a removed one can be closed.
        poll.set_callback(socks[2].fileno(), None)
        poll.remove(socks[3].fileno())
        before = len(got)
        peer.sendto(b"ignored", socks[3].getsockname())
        peer.sendto(b"again", socks[4].getsockname())
        while (4, b"again") not in got:
            await asyncio.sleep(0.01)
        assert len(got) == before + 1

    try:
        loop.run_until_complete(asyncio.wait_for(main(), 5.0))
        assert sorted(g for g in got if isinstance(g[1], bytes))[:3] == [
            (0, b"r0"),
            (1, b"after"),
            (1, b"r1"),
        ]
    finally:
        poll.close()
        for s in socks:
            s.close()
        loop.close()


def test_channel_reuses_sockets_for_new_ports_and_bounds_the_spares(
    peer: socket.socket,
) -> None:
    """A retired socket with nothing in flight takes the next new port (no new descriptor);
    at most SPARES wait unused, and closing the channel closes them all."""
    loop = new_event_loop()
    poll = FdPoll(loop)
    family, addr = socket.AF_INET, peer.getsockname()
    ch = upsock.UdpChannel(WorkerStats(), "peer", poll, (family, addr))
    try:
        s = ch._open(0.0, 0)
        assert s is not None
        fd, port = s.fd, s.sock.getsockname()[1]  # type: ignore[union-attr]
        ch.retire(s)  # nothing in flight: released at once
        assert ch.spare and s.sock is None and s.fd == -1
        t = ch.slots[1] = ch._open(0.0, 1)
        assert t is not None and t.fd == fd and not ch.spare
        assert t.sock.getsockname()[1] not in (0, port)  # type: ignore[union-attr]
        many = [ch._open(0.0, i) for i in range(upsock.SPARES + 10)]
        for m in many:
            assert m is not None
            ch.retire(m)
        assert len(ch.spare) == upsock.SPARES
        assert len(poll) == 1  # only ``t`` has a callback; the spares are silent
        ch.close()
        assert not ch.spare and ch.open == 0 and len(poll) == 0
    finally:
        ch.close()
        poll.close()
        loop.close()
