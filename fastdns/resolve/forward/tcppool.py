"""Pooled, pipelined TCP connections to one upstream (``tcp://`` route servers).

A ``tcp://`` server is always asked over TCP (node-local-dns's ``force_tcp`` for the cluster
domain), and a connection per query would cost a handshake and a TIME_WAIT socket each time.
So each worker keeps up to ``MAX_CONNECTIONS`` connections per server, sends many queries on
each without waiting (RFC 7766 §6.2.1.1 pipelining), and matches replies, which may come in
any order, by a fresh random ID per query and the question (RFC 5452 §9; RFC 7766 §7). A new
connection is opened only when every open one has ``MAX_PIPELINE`` queries waiting; queries
that arrive while it connects wait for that same connection.

Failures: a connection closed by the server, reset, or that sent a frame we cannot read fails
the queries still waiting on it (their forwarding state machine goes on to the next server,
``fastdns.resolve.forward.attempts``). A query sent on a connection that had already answered
before and is then closed with no reply is sent once more on a fresh connection: the server
may have closed it as idle as our query crossed (RFC 7766 §6.2.3). A query that times out on
a connection that received nothing since it was sent retires that connection (it looks
stalled: new queries go to a new one). Idle connections close after ``IDLE_TIMEOUT``.

A subclass can change how a connection is opened (``_open``), e.g. to add TLS.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from typing import cast

from fastdns.dns import wire
from fastdns.errors import FastDNSError
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.sockmark import mark_upstream

__all__ = ["IDLE_TIMEOUT", "MAX_CONNECTIONS", "MAX_PIPELINE", "TcpConnection", "TcpPool"]

logger = logging.getLogger(__name__)

MAX_CONNECTIONS = 4  # per server and worker
MAX_PIPELINE = 128  # queries waiting on one connection before another is opened
IDLE_TIMEOUT = 10.0  # seconds a connection with nothing waiting stays open (CoreDNS expire)
CONNECT_TIMEOUT = 3.0  # seconds to connect; the queries waiting for it have their own bound
MAX_WRITE_BUFFER = 256 * 1024  # unsent bytes on a connection before it counts as full


class ConnectionLost(FastDNSError):
    """The connection closed before the reply came."""


class TcpConnection(asyncio.Protocol):
    """One connection: 2-byte length framing (RFC 1035 §4.2.2), queries by upstream ID."""

    def __init__(self, pool: TcpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = pool.loop.create_future()
        self.pending: dict[int, tuple[asyncio.Future[bytes], wire.Query]] = {}
        self.buf = bytearray()
        self.closed = False
        self.retired = False
        self.answered = 0  # replies received: a reused connection may have been closed idle
        self.received = 0.0  # loop time of the last frame received
        self.idle_since = pool.loop.time()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            size = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + size:
                return
            frame = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self._frame(frame)

    def _frame(self, data: bytes) -> None:
        self.received = self.pool.loop.time()
        stats, to = self.pool.stats, self.pool.to
        if len(data) < 12:
            stats.inc("upstream_mismatch", to)
            return
        entry = self.pending.get(wire.reply_id(data))
        if entry is None:
            stats.inc("upstream_unmatched", to)  # late (timed out) or never ours
            return
        fut, q = entry
        if not wire.question_matches(data, q):
            stats.inc("upstream_mismatch", to)
            return
        del self.pending[wire.reply_id(data)]
        self.answered += 1
        if not self.pending:
            self.idle_since = self.received
        if not fut.done():
            fut.set_result(data)
        if self.retired and not self.pending:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        pending, self.pending = self.pending, {}
        lost = ConnectionLost(str(exc) if exc else "closed by the server")
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(lost)
        if not self.ready.done():
            self.ready.set_exception(lost)
            self.ready.exception()  # retrieved: nobody may wait

    # ------------------------------------------------------------------ queries

    def usable(self) -> bool:
        t = self.transport
        return (
            not self.closed
            and not self.retired
            and (t is None or t.get_write_buffer_size() < MAX_WRITE_BUFFER)
        )

    async def ask(self, q: wire.Query) -> bytes:
        """Send ``q`` with a fresh ID; its reply (the caller bounds the wait)."""
        if not self.ready.done():
            await asyncio.shield(self.ready)
        if self.closed or self.transport is None:
            raise ConnectionLost("closed")
        pending = self.pending
        uid = random.getrandbits(16)
        while uid in pending:
            uid = random.getrandbits(16)
        fut: asyncio.Future[bytes] = self.pool.loop.create_future()
        pending[uid] = (fut, q)
        payload = wire.set_id(q.wire, uid)
        sent = self.pool.loop.time()
        self.transport.write(len(payload).to_bytes(2, "big") + payload)
        try:
            return await fut
        finally:
            if pending.get(uid, (None,))[0] is fut:  # timed out or cancelled
                del pending[uid]
                if self.received < sent and not self.closed:
                    self.retired = True  # nothing came back since: stalled, take no more
                    if not pending:
                        self.close()
                elif not pending:
                    self.idle_since = self.pool.loop.time()

    def close(self) -> None:
        self.retired = True
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True
        self.pool.forget(self)


class TcpPool:
    """The connections of one worker to one ``tcp://`` server."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        server: tuple[str, int],
        sockaddr: Callable[[str, int], tuple[int, tuple[object, ...]]],
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.server = server
        self.to = f"{server[0]}:{server[1]}"
        self._sockaddr = sockaddr
        self.conns: list[TcpConnection] = []
        self.opened = 0  # connections opened, ever (tests, logs)
        self.closed = False

    def forget(self, conn: TcpConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def _pick(self) -> TcpConnection:
        best: TcpConnection | None = None
        for c in self.conns:
            if c.usable() and (best is None or len(c.pending) < len(best.pending)):
                best = c
        if best is not None and (
            len(best.pending) < MAX_PIPELINE or len(self.conns) >= MAX_CONNECTIONS
        ):
            return best
        return self._connect()

    def _connect(self) -> TcpConnection:
        if self.closed:
            raise ConnectionLost("pool closed")
        conn = TcpConnection(self)
        self.conns.append(conn)
        self.opened += 1
        self.stats.inc("upstream_socket", self.to, "opened")
        task = self.loop.create_task(self._open(conn))
        task.add_done_callback(_retrieve)
        return conn

    async def _open(self, conn: TcpConnection) -> None:
        family, addr = self._sockaddr(*self.server)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            mark_upstream(sock)  # before the SYN (fastdns.resolve.forward.sockmark)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self.loop.sock_connect(sock, addr)
                await self.loop.create_connection(lambda: conn, sock=sock)
        except BaseException as e:
            sock.close()
            conn.connection_lost(e if isinstance(e, Exception) else None)
            raise
        if not conn.ready.done():
            conn.ready.set_result(None)

    async def query(self, q: wire.Query, timeout: float) -> bytes:
        """The reply to ``q`` within ``timeout`` seconds (TimeoutError), or ConnectionLost/
        OSError when the server cannot be reached or closes on it."""
        async with asyncio.timeout(timeout):
            conn = self._pick()
            reused = conn.answered > 0
            try:
                return await conn.ask(q)
            except ConnectionLost:
                if not reused or self.closed:
                    raise
                # Closed under a reused connection: idle close racing our query, most
                # likely. Once more on a fresh one (RFC 7766 §6.2.3).
                return await self._connect().ask(q)

    def sweep(self, now: float) -> None:
        """Close connections idle for IDLE_TIMEOUT (the worker's tick)."""
        for c in list(self.conns):
            if not c.pending and now - c.idle_since > IDLE_TIMEOUT:
                c.close()

    def close(self) -> None:
        self.closed = True
        for c in list(self.conns):
            c.close()


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # reported to the queries waiting on the connection instead
