"""UDPServer's own socket handling: reads in batches on the loop, queues replies that would
block until the socket is writable, counts replies that cannot be sent. Real loopback sockets
and a real event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import dns.message
import pytest

from fastdns.config.load import build_config
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve import udp as server_mod
from fastdns.serve.udp import ServerState, UDPServer

STATIC_IP = "10.9.8.7"


@pytest.fixture(name="loop")
def _loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(name="udp")
def _udp(loop: asyncio.AbstractEventLoop) -> Iterator[tuple[UDPServer, socket.socket]]:
    config = build_config(
        {
            "hostResolver": {"hosts": {"static.test": STATIC_IP}},
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "fallback": [],
                "hosts_file": "/nonexistent",
            },
        }
    )
    stats = WorkerStats()
    udp = UDPServer(
        ServerState(config, Pipeline(config, loop, stats, Forwarder(loop, stats)), stats)
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    udp.start(loop, sock)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    yield udp, client
    udp.close()
    client.close()


def query(qid: int) -> bytes:
    return dns.message.make_query("static.test", "A", id=qid).to_wire()


def run_until(loop: asyncio.AbstractEventLoop, done: Any, timeout: float = 2.0) -> None:
    async def wait() -> None:
        async with asyncio.timeout(timeout):
            while not done():
                await asyncio.sleep(0.001)

    loop.run_until_complete(wait())


def test_more_datagrams_than_a_batch_are_all_answered(
    udp: tuple[UDPServer, socket.socket], loop: asyncio.AbstractEventLoop
) -> None:
    server, client = udp
    assert server.sock is not None
    n = server_mod.BATCH * 3 + 5
    for i in range(n):
        client.sendto(query(i), server.sock.getsockname())
    server._on_readable()  # one wakeup reads one batch, no more
    replies = [client.recv(512) for _ in range(server_mod.BATCH)]
    client.settimeout(0.05)
    with pytest.raises(TimeoutError):
        client.recv(512)
    client.setblocking(False)
    rest: list[bytes] = []

    def all_in() -> bool:
        try:
            while True:
                rest.append(client.recv(512))
        except BlockingIOError:
            return len(rest) >= n - server_mod.BATCH

    run_until(loop, all_in)  # the loop calls the reader again while datagrams wait
    replies += rest
    ids = sorted(dns.message.from_wire(r).id for r in replies)
    assert ids == list(range(n))
    assert all(STATIC_IP in dns.message.from_wire(r).answer[0].to_text() for r in replies[:3])


class Flaky:
    """A sendto that fails as told, then sends through the real socket."""

    def __init__(self, sock: socket.socket, errors: list[OSError]) -> None:
        self.sock, self.errors = sock, errors

    def sendto(self, data: bytes, addr: Any) -> int:
        if self.errors:
            raise self.errors.pop(0)
        return self.sock.sendto(data, addr)


def test_a_reply_that_would_block_is_sent_when_the_socket_is_writable(
    udp: tuple[UDPServer, socket.socket], loop: asyncio.AbstractEventLoop
) -> None:
    server, client = udp
    assert server.sock is not None
    server.connection_made(Flaky(server.sock, [BlockingIOError(), BlockingIOError()]))
    client.sendto(query(1), server.sock.getsockname())
    client.sendto(query(2), server.sock.getsockname())
    server._on_readable()
    assert len(server.backlog) == 2  # both waited: the socket "was full"
    run_until(loop, lambda: not server.backlog)  # the writer callback sends them in order
    assert [dns.message.from_wire(client.recv(512)).id for _ in range(2)] == [1, 2]
    assert not server.state.stats.counters.get(("send_errors", "udp"))


def test_a_reply_the_socket_refuses_is_counted_not_raised(
    udp: tuple[UDPServer, socket.socket], loop: asyncio.AbstractEventLoop
) -> None:
    server, client = udp
    assert server.sock is not None
    server.connection_made(Flaky(server.sock, [PermissionError(1, "EPERM (a firewall)")]))
    client.sendto(query(1), server.sock.getsockname())
    client.sendto(query(2), server.sock.getsockname())
    server._on_readable()
    assert dns.message.from_wire(client.recv(512)).id == 2  # the next one goes out
    assert server.state.stats.counters["send_errors", "udp"] == 1
    assert not server.backlog


def test_a_closed_server_stops_reading(
    udp: tuple[UDPServer, socket.socket], loop: asyncio.AbstractEventLoop
) -> None:
    server, client = udp
    assert server.sock is not None
    addr = server.sock.getsockname()
    server.close()
    client.sendto(query(1), addr)  # nobody listens now: no reply, no error in the loop
    loop.run_until_complete(asyncio.sleep(0.05))
    client.settimeout(0.05)
    with pytest.raises((TimeoutError, ConnectionRefusedError)):
        client.recv(512)
