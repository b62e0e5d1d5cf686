"""DNS over TLS to upstreams (RFC 7858, RFC 8310): pooled, pipelined connections per worker.

A ``TlsPool`` keeps, for each ``TlsTarget`` (address, port, the name its certificate must carry)
it is asked to reach, a few long-lived TLS connections (RFC 7858 §3.4: reuse them). ``send``
puts a query on one (2-byte length prefix, RFC 1035 §4.2.2; many in flight at once, RFC 7766
§6.2.1.1) with an ID unique on that connection, and registers a waiter (``upsock.Waiter``, as a
UDP attempt does). Replies come in any order (RFC 7766 §7); each is matched by ID, then by
question (RFC 5452 §9): one that matches nothing is counted and dropped, never an answer.

Connections open on demand: queries sent while the handshake runs wait in the connection and go
out when it completes. A failed connection (refused, timed out, certificate or name rejected)
fails its queries at once, so the forwarding state machine (``attempts``) moves on to the next
server, and its target waits out a backoff (doubling, capped) during which ``send`` fails at
once: the first query after it reconnects. A failure is logged once per reason, not per query.
A connection with nothing in flight closes after ``idle_timeout``; one whose server went silent
(a query timed out with nothing read since it was sent) takes no new queries and closes once
its last query is answered or forgotten. Everything is bounded: queries per connection
(``MAX_PIPELINE``), connections per target (``MAX_CONNECTIONS``), frame sizes by the length
prefix.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections.abc import Callable
from typing import cast

from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.attempts import TlsTarget
from fastdns.resolve.forward.sockmark import mark_upstream
from fastdns.resolve.forward.upsock import UpstreamDown, Waiter, sockaddr

__all__ = ["TlsConnection", "TlsPool", "TlsTarget", "client_context", "failure_reason"]

logger = logging.getLogger(__name__)

MAX_PIPELINE = 256  # queries in flight on one connection
MAX_CONNECTIONS = 4  # per target and worker; a fifth is needed only past 4 x MAX_PIPELINE
BACKOFF_FIRST = 0.25  # seconds before reconnecting after a first failure, doubling ...
BACKOFF_MAX = 8.0  # ... up to this
FORGET = 300.0  # a target with no connection is forgotten this long after its last failure
LINGER = 60.0  # a retired connection closes after this even with queries left (a bug guard)


def client_context(ca_file: str = "", verify: bool = True) -> ssl.SSLContext:
    """The client TLS context: the system CA store or ``ca_file``, certificate and name
    checked (RFC 8310), TLS 1.2 at least (RFC 8310, RFC 7525). ``verify`` False: no
    authentication at all (the opportunistic profile of RFC 8310)."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def failure_reason(exc: BaseException) -> str:
    """The ``tls_handshake_failures`` reason for a failed connection."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "verify"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "error"


class TlsConnection(asyncio.Protocol):
    """One TLS connection to a target and the queries in flight on it."""

    def __init__(self, link: TlsLink, now: float) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[Waiter, wire.Query]] = {}
        # frames not written yet: asked during the handshake, or this loop iteration
        self.queued: list[bytes] = []
        self.buf = bytearray()
        self.open = False  # handshake done
        self.closed = False
        self.retired = False  # no new queries
        self.used = 0  # queries sent on it
        self.born = self.last_active = now
        self.last_read = -1.0  # loop time of the last bytes read (-1: none yet)
        self.task: asyncio.Task[None] | None = None  # the connect and handshake

    # ------------------------------------------------------------------ queries

    def send(self, q: wire.Query, waiter: Waiter) -> int:
        """Send ``q`` (or queue it until the handshake is done); its reply goes to ``waiter``.
        Returns the ID it carries on this connection."""
        pending = self.pending
        uid = random.getrandbits(16)
        while uid in pending:
            uid = random.getrandbits(16)
        pending[uid] = (waiter, q)
        payload = wire.set_id(q.wire, uid)
        frame = len(payload).to_bytes(2, "big") + payload
        if self.used:
            self.link.pool.stats.inc("tls_reused", self.link.to)
        self.used += 1
        self.last_active = self.link.pool.loop.time()
        queued = self.queued
        queued.append(frame)
        if self.open and len(queued) == 1:  # one write (one TLS record) per loop iteration
            self.link.pool.loop.call_soon(self._flush)
        return uid

    def _flush(self) -> None:
        queued = self.queued
        if queued and self.transport is not None and not self.closed:
            self.transport.write(b"".join(queued))
        queued.clear()

    def forget(self, uid: int, waiter: Waiter) -> None:
        """The exchange that sent ``uid`` is over: its reply is no longer awaited."""
        entry = self.pending.get(uid)
        if entry is not None and entry[0] is waiter:
            del self.pending[uid]
            if self.retired and not self.pending:
                self.close(None, abandoned=True)

    def stalled(self, sent: float) -> None:
        """A query sent at ``sent`` timed out. Nothing read since: the server went silent on
        this connection; no new queries on it (the next one opens a fresh connection)."""
        if self.last_read < sent and not self.retired:
            self.retired = True
            if not self.pending:
                self.close(None, abandoned=True)

    def room(self) -> bool:
        return not (self.closed or self.retired) and len(self.pending) < MAX_PIPELINE

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport implements asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_read = self.last_active = self.link.pool.loop.time()
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            size = int.from_bytes(buf[:2], "big")
            if len(buf) < 2 + size:
                return
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            if size < 12:  # no DNS header: the stream cannot be trusted any more
                self.close(UpstreamDown("TLS upstream sent a frame shorter than a header"))
                return
            self._reply(msg)
        if self.retired and not self.pending:
            self.close(None)

    def _reply(self, msg: bytes) -> None:
        to = self.link.to
        entry = self.pending.get(wire.reply_id(msg))
        if entry is None:
            self.link.pool.stats.inc("upstream_unmatched", to)  # forgotten, or never sent
            return
        waiter, q = entry
        if not wire.question_matches(msg, q):
            self.link.pool.stats.inc("upstream_mismatch", to)  # never an answer
            return
        del self.pending[wire.reply_id(msg)]
        if not waiter.done():
            waiter.set_result(msg)

    def eof_received(self) -> bool:
        return False  # close; connection_lost fails what is still in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.close(UpstreamDown(f"TLS connection to {self.link.to} closed"))

    # ------------------------------------------------------------------ lifecycle

    def close(self, exc: BaseException | None, abandoned: bool = False) -> None:
        """Close, and fail what is still in flight with ``exc`` (UpstreamDown if None).

        ``abandoned``: closed because no query is left on it. A handshake still running
        then runs on to its own end (``handshake_timeout`` at most), so that its failure is
        counted and backed off as any other's, whichever of its timeout and its queries'
        deadline came first; a success closes it then (``TlsLink._open``)."""
        if self.closed:
            return
        self.closed = self.retired = True
        self.link.drop(self)
        if self.task is not None and not self.task.done():
            if abandoned and not self.link.pool.closed:
                self.link.pool.handshaking.add(self)
            else:
                self.task.cancel()
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.close()
        pending, self.pending = self.pending, {}
        self.queued.clear()
        down = exc or UpstreamDown(f"TLS connection to {self.link.to} closed")
        for waiter, _ in pending.values():
            if not waiter.done():
                waiter.set_exception(down)


class TlsLink:
    """The connections to one target, and its reconnect backoff."""

    def __init__(self, pool: TlsPool, target: TlsTarget) -> None:
        self.pool, self.target = pool, target
        self.to = f"{target.host}:{target.port}"
        self.conns: list[TlsConnection] = []
        self.fails = 0  # connections failed in a row
        self.retry_at = 0.0  # loop time before which no new connection is tried
        self.logged = ""  # the failure reason last logged ("" after a success)

    def pick(self, now: float) -> TlsConnection:
        """A connection with room (the first: queries gather on few connections), else a new
        one; UpstreamDown while backing off or when every connection is full."""
        for conn in self.conns:
            if conn.room():
                return conn
        if now < self.retry_at:
            raise UpstreamDown(f"TLS to {self.to}: reconnecting in {self.retry_at - now:.2f}s")
        if len(self.conns) >= MAX_CONNECTIONS:
            raise UpstreamDown(f"TLS to {self.to}: {MAX_CONNECTIONS} connections are full")
        conn = TlsConnection(self, now)
        self.conns.append(conn)
        conn.task = self.pool.loop.create_task(self._open(conn))
        return conn

    async def _open(self, conn: TlsConnection) -> None:
        pool, target = self.pool, self.target
        loop = pool.loop
        family, addr = sockaddr(target.host, target.port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            mark_upstream(sock)  # before the SYN (fastdns.resolve.forward.sockmark)
            # a query is one small write, wanted out now, not after the last one's ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            async with asyncio.timeout(pool.handshake_timeout):
                await loop.sock_connect(sock, addr)
                await loop.create_connection(
                    lambda: conn,
                    sock=sock,
                    ssl=pool.context(target.verify),
                    server_hostname=target.name,
                    # the timeout above comes first; this only keeps the loop's own default
                    # (60 s) from being the bound
                    ssl_handshake_timeout=pool.handshake_timeout + 1.0,
                )
        except asyncio.CancelledError:
            sock.close()
            raise
        except Exception as e:
            sock.close()
            self._failed(conn, e)
            return
        finally:
            pool.handshaking.discard(conn)
        if conn.closed:  # closed while the handshake ran (the pool stopped, or abandoned)
            if conn.transport is not None:
                conn.transport.close()
            return
        pool.stats.inc("tls_handshakes", self.to)
        if self.logged:
            logger.info("upstream %s: TLS connection works again", self.to)
        self.fails, self.retry_at, self.logged = 0, 0.0, ""
        conn.open = True
        conn._flush()  # what was asked during the handshake

    def _failed(self, conn: TlsConnection, exc: BaseException) -> None:
        reason = failure_reason(exc)
        pool = self.pool
        pool.stats.inc("tls_handshake_failures", self.to, reason)
        self.fails += 1
        delay = min(BACKOFF_FIRST * 2 ** (self.fails - 1), BACKOFF_MAX)
        self.retry_at = pool.loop.time() + delay
        if reason != self.logged:  # once per reason, not per query or per retry
            self.logged = reason
            name = self.target.name or "(not checked)"
            logger.warning(
                "upstream %s: TLS connection failed (%s, name %s): %s; failing over to the "
                "next server, reconnecting with backoff",
                self.to,
                reason,
                name,
                exc or type(exc).__name__,
            )
        conn.close(UpstreamDown(f"TLS to {self.to} failed: {reason}"))

    def drop(self, conn: TlsConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle past ``idle_timeout``, and retired ones past LINGER."""
        idle = self.pool.idle_timeout
        for conn in list(self.conns):
            idle_long = conn.open and not conn.pending and now - conn.last_active > idle
            if idle_long or (conn.retired and now - conn.born > LINGER):
                conn.close(None)


class TlsPool:
    """A worker's TLS connections, by target. ``context`` makes the TLS context for a
    verifying (True) or non-verifying target, once, on first use."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        context: Callable[[bool], ssl.SSLContext],
        idle_timeout: float = 10.0,
        handshake_timeout: float = 4.0,
    ) -> None:
        self.loop, self.stats = loop, stats
        self._make_context = context
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.links: dict[TlsTarget, TlsLink] = {}
        # connections closed by their queries while their handshake runs on (close abandoned)
        self.handshaking: set[TlsConnection] = set()
        self.closed = False

    def context(self, verify: bool) -> ssl.SSLContext:
        ctx = self._contexts.get(verify)
        if ctx is None:
            ctx = self._contexts[verify] = self._make_context(verify)
        return ctx

    def send(self, target: TlsTarget, q: wire.Query, waiter: Waiter) -> tuple[TlsConnection, int]:
        """Send ``q`` to ``target`` over a pooled connection: (the connection, the query's ID
        on it); ``UpstreamDown`` at once when the target is backing off or full."""
        if self.closed:
            raise UpstreamDown("closed")
        link = self.links.get(target)
        if link is None:
            link = self.links[target] = TlsLink(self, target)
        conn = link.pick(self.loop.time())
        return conn, conn.send(q, waiter)

    def sweep(self) -> None:
        """Periodic (the worker's tick): idle connections close; links with nothing open are
        dropped (a failing one FORGET after its last failure, so that it is logged once): the
        pool stays as big as what is in use."""
        now = self.loop.time()
        for target, link in list(self.links.items()):
            link.sweep(now)
            if not link.conns and now >= link.retry_at + FORGET * (link.fails > 0):
                del self.links[target]

    def open_connections(self) -> dict[str, int]:
        """Connections open or opening, per ``to`` label (the gauge)."""
        out: dict[str, int] = {}
        for link in self.links.values():
            out[link.to] = out.get(link.to, 0) + len(link.conns)
        return out

    def close(self) -> None:
        self.closed = True
        for link in self.links.values():
            for conn in list(link.conns):
                conn.close(UpstreamDown("closed"))
        self.links.clear()
        for conn in self.handshaking:
            if conn.task is not None:
                conn.task.cancel()
        self.handshaking.clear()
