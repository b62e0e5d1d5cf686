"""Raw forwarding of client queries to upstream servers over long-lived sockets.

Each upstream has one connected UDP socket with a table of in-flight upstream IDs. A reply is
accepted only when its ID is in flight, it came from that upstream (the connected socket makes
the kernel filter the source) and its question equals ours (RFC 5452 §9). TC replies are
retried over TCP; timeouts, socket errors, SERVFAIL and REFUSED move on to the next upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fastdns import wire
from fastdns.resolvconf import UpstreamPlan
from fastdns.sockmark import mark_upstream
from fastdns.stats import Histogram, WorkerStats

logger = logging.getLogger(__name__)

FAILOVER_RCODES = frozenset((wire.SERVFAIL, wire.REFUSED))
# An upstream that timed out this many times in a row is tried after the healthy ones
# (CoreDNS forward max_fails), until it answers again or DOWN_FOR seconds pass.
MAX_FAILS = 2
DOWN_FOR = 10.0
TCP_MAX_REPLY = 65535
READ_BATCH = 64  # replies read per wakeup of an upstream socket


def sockaddr(host: str, port: int) -> tuple[int, tuple[object, ...]]:
    """(family, sockaddr) for a numeric address, with IPv6 ``%scope`` support; no DNS."""
    addr, _, scope = host.partition("%")
    if ":" in addr:
        scope_id = 0
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        return socket.AF_INET6, (addr, port, 0, scope_id)
    return socket.AF_INET, (addr, port)


def _expire(fut: asyncio.Future[bytes]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class Waiter(Protocol):
    """Who gets an upstream reply: a Future, or a fast-lane query (``fastdns.relay``)."""

    def done(self) -> bool: ...

    def set_result(self, data: bytes) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


class UpstreamDown(Exception):
    """The upstream could not be reached (ICMP unreachable, socket closed)."""


class UdpChannel:
    """One connected UDP socket to one upstream, multiplexing queries by upstream ID.

    The channel reads its socket itself from an ``add_reader`` callback, as the UDP server does
    (``fastdns.server.UDPServer``: uvloop's datagram transport costs more per datagram). A
    socket error on a connected UDP socket is an ICMP error from the upstream: every query in
    flight on it fails at once instead of waiting for its timeout.
    """

    def __init__(self, stats: WorkerStats, to: str) -> None:
        self.pending: dict[int, tuple[Waiter, wire.Query]] = {}
        self.stats = stats
        self.to = to
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # Sends one datagram to the upstream; None once closed.
        self.write: Callable[[bytes], object] | None = None

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Serve ``sock`` (connected, non-blocking) on ``loop``."""
        self.loop, self.sock = loop, sock
        self.write = sock.send
        loop.add_reader(sock.fileno(), self._on_readable)

    def attach(self, write: Callable[[bytes], object]) -> None:
        """Send through ``write`` instead of a socket (tests, benchmarks)."""
        self.write = write

    def _on_readable(self) -> None:
        recv = self.sock.recv  # type: ignore[union-attr]
        for _ in range(READ_BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.error_received(e)
                return
            self.datagram_received(data, None)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12:
            return
        entry = self.pending.get(wire.reply_id(data))
        if entry is None:
            self.stats.inc("upstream_unmatched", self.to)  # late or spoofed
            return
        fut, q = entry
        if not wire.question_matches(data, q):
            self.stats.inc("upstream_mismatch", self.to)  # never an answer (STYLE R7)
            return
        del self.pending[wire.reply_id(data)]
        if not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        self._fail_all(UpstreamDown(str(exc)))

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for fut, _ in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def send(
        self, q: wire.Query, loop: asyncio.AbstractEventLoop
    ) -> tuple[int, asyncio.Future[bytes]]:
        write = self.write
        if write is None:
            raise UpstreamDown("socket closed")
        fut: asyncio.Future[bytes] = loop.create_future()
        uid = self.track(fut, q)
        try:
            write(wire.set_id(q.wire, uid))
        except OSError as e:  # an earlier ICMP error, or a full buffer: this one is lost too
            del self.pending[uid]
            raise UpstreamDown(str(e)) from e
        return uid, fut

    def track(self, waiter: Waiter, q: wire.Query) -> int:
        """A fresh upstream ID for ``q``, whose reply (or failure) goes to ``waiter``."""
        uid = random.getrandbits(16)
        while uid in self.pending:
            uid = random.getrandbits(16)
        self.pending[uid] = (waiter, q)
        return uid

    def forget(self, uid: int, fut: Waiter) -> None:
        entry = self.pending.get(uid)
        if entry is not None and entry[0] is fut:
            del self.pending[uid]

    def close(self) -> None:
        if self.sock is not None and self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.sock = None
        self.write = None
        self._fail_all(UpstreamDown("socket closed"))


@dataclass
class Health:
    fails: int = 0
    last_fail: float = 0.0

    def down(self, now: float) -> bool:
        return self.fails >= MAX_FAILS and now - self.last_fail < DOWN_FOR


def order_servers(
    servers: tuple[tuple[str, int], ...], health: dict[tuple[str, int], Health], now: float
) -> list[tuple[str, int]]:
    """resolv.conf order, with servers that keep timing out moved to the end (stable)."""
    up = [s for s in servers if not (h := health.get(s)) or not h.down(now)]
    if len(up) == len(servers):
        return list(servers)
    return up + [s for s in servers if s not in up]


@dataclass(frozen=True, slots=True)
class Resume:
    """Where the forward fast lane (``fastdns.relay``) left a query for ``exchange``:
    ``force_tcp`` after a TC reply; ``tried``, servers that timed out or failed in this first
    round (asked again from the next attempt); ``refused``, servers that answered SERVFAIL or
    REFUSED (not asked again)."""

    force_tcp: bool = False
    tried: frozenset[tuple[str, int]] = frozenset()
    refused: frozenset[tuple[str, int]] = frozenset()


FRESH = Resume()  # a query nothing was sent for yet


@dataclass
class ForwardResult:
    reply: bytes | None  # None: every upstream failed
    to: str = ""  # who answered, "host:port"
    tcp: bool = False


@dataclass
class Forwarder:
    """Sends client queries upstream; ``exchange`` gives the first acceptable reply."""

    loop: asyncio.AbstractEventLoop
    stats: WorkerStats
    upstream_timeout: float = 1.0
    plan: UpstreamPlan = field(default_factory=lambda: UpstreamPlan((), "none"))
    clock: Callable[[], float] = time.monotonic
    channels: dict[tuple[str, int], UdpChannel] = field(default_factory=dict)
    health: dict[tuple[str, int], Health] = field(default_factory=dict)
    _proxy_histograms: dict[tuple[tuple[str, int], int], Histogram] = field(default_factory=dict)

    def set_plan(self, plan: UpstreamPlan) -> None:
        """Switch upstreams (resolv.conf changed); sockets of servers still named are kept."""
        keep = set(plan.servers)
        for server in list(self.channels):
            if server not in keep:
                self.channels.pop(server).close()
                self.health.pop(server, None)
        self.plan = plan

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()

    async def _channel(self, server: tuple[str, int]) -> UdpChannel:
        ch = self.channels.get(server)
        if ch is not None and ch.write is not None:
            return ch
        family, addr = sockaddr(*server)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            mark_upstream(sock)  # before the first packet (fastdns.sockmark)
            sock.setblocking(False)
            sock.connect(addr)
        except OSError:
            sock.close()
            raise
        ch = UdpChannel(self.stats, f"{server[0]}:{server[1]}")
        ch.start(self.loop, sock)
        self.channels[server] = ch
        return ch

    async def _udp(self, server: tuple[str, int], q: wire.Query, timeout: float) -> bytes:
        ch = self.channels.get(server)
        if ch is None or ch.write is None:
            ch = await self._channel(server)
        uid, fut = ch.send(q, self.loop)
        # A timer that fails the future instead of asyncio.wait_for: on Python 3.11 wait_for
        # adds a waiter future, a done callback and ensure_future per query (the forward
        # path's largest asyncio cost). Cancelling our task still cancels ``fut``.
        timer = self.loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            ch.forget(uid, fut)

    async def _tcp(self, server: tuple[str, int], q: wire.Query, timeout: float) -> bytes:
        family, addr = sockaddr(*server)
        sock = socket.socket(family, socket.SOCK_STREAM)
        mark_upstream(sock)  # before the SYN (fastdns.sockmark)
        sock.setblocking(False)
        writer = None
        try:
            async with asyncio.timeout(timeout):
                await self.loop.sock_connect(sock, addr)
                reader, writer = await asyncio.open_connection(sock=sock)
                uid = random.getrandbits(16)
                payload = wire.set_id(q.wire, uid)
                writer.write(len(payload).to_bytes(2, "big") + payload)
                while True:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                    if wire.reply_id(data) == uid and wire.question_matches(data, q):
                        return data
                    self.stats.inc("upstream_mismatch", f"{server[0]}:{server[1]}")
        except asyncio.IncompleteReadError as e:
            raise UpstreamDown("TCP connection closed early") from e
        finally:
            if writer is not None:
                writer.close()
            else:
                sock.close()

    def note_failure(self, server: tuple[str, int], t0: float, reason: str) -> None:
        """An exchange with ``server`` started at ``t0`` timed out or failed ("error")."""
        self.stats.observe(("proxy_duration", f"{server[0]}:{server[1]}", reason),
                           self.loop.time() - t0)  # fmt: skip
        h = self.health.setdefault(server, Health())
        h.fails += 1
        h.last_fail = self.clock()

    def note_reply(self, server: tuple[str, int], t0: float, rcode: int) -> bool:
        """``server`` answered with ``rcode``; False when that rcode means "try the next one"."""
        if self.health:
            self.health.pop(server, None)
        # The histogram per (server, rcode), found once: this runs for every forwarded reply.
        h = self._proxy_histograms.get((server, rcode))
        if h is None:
            to = f"{server[0]}:{server[1]}"
            h = self._proxy_histograms[(server, rcode)] = self.stats.histogram(
                ("proxy_duration", to, wire.RCODE_NAMES.get(rcode, "other")))
        h.observe(self.loop.time() - t0)
        if rcode in FAILOVER_RCODES:
            self.stats.inc("forward_failover", f"{server[0]}:{server[1]}", wire.RCODE_NAMES[rcode])
            return False
        return True

    async def exchange(
        self, q: wire.Query, deadline: float, resume: Resume = FRESH
    ) -> ForwardResult:
        """Try the upstreams in order until one gives an acceptable reply or time runs out,
        from where ``resume`` says the fast lane left off."""
        plan = self.plan
        attempts = plan.resolv.attempts if plan.source == "resolv_conf" else 2
        refused_now = set(resume.refused)
        tried = resume.tried
        for attempt in range(attempts):
            for server in order_servers(plan.servers, self.health, self.clock()):
                if server in refused_now or (attempt == 0 and server in tried):
                    continue
                remaining = deadline - self.loop.time()
                if remaining <= 0.001:
                    return ForwardResult(None)
                to = f"{server[0]}:{server[1]}"
                t0 = self.loop.time()
                tcp = resume.force_tcp
                try:
                    if tcp:
                        reply = await self._tcp(server, q, remaining)
                    else:
                        reply = await self._udp(server, q, min(self.upstream_timeout, remaining))
                        if reply[2] & 0x02:  # TC: retry the same upstream over TCP
                            self.stats.inc("forward_tcp_retries", to)
                            tcp = True
                            reply = await self._tcp(server, q, deadline - self.loop.time())
                except (TimeoutError, OSError, UpstreamDown) as e:
                    self.note_failure(server, t0, "timeout" if isinstance(e, TimeoutError)
                                      else "error")  # fmt: skip
                    continue
                if not self.note_reply(server, t0, wire.reply_rcode(reply)):
                    refused_now.add(server)
                    continue
                return ForwardResult(reply, to, tcp)
        return ForwardResult(None)
