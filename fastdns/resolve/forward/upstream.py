"""Raw forwarding of client queries to upstream servers.

Each UDP attempt leaves from a random-port socket (``fastdns.resolve.forward.upsock``, RFC 5452
§9.2) with a
fresh upstream ID. A reply is accepted only when its ID is in flight on the socket it came to,
it came from that upstream (the connected socket makes the kernel filter the source) and its
question equals ours (RFC 5452 §9). TC replies are retried over TCP; timeouts, socket errors,
SERVFAIL and REFUSED move on to the next upstream, and every attempt's ID stays valid until the
client's deadline, so a reply slower than ``upstream_timeout`` still answers (docs/answering.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fastdns.dns import wire
from fastdns.metrics.stats import Histogram, WorkerStats
from fastdns.resolve.forward.attempts import (
    DONE,
    GIVE_UP,
    TCP,
    TLS,
    UDP,
    Attempts,
    Health,
    Server,
    TlsTarget,
)
from fastdns.resolve.forward.dot import TlsConnection, TlsPool
from fastdns.resolve.forward.fdpoll import FdPoll
from fastdns.resolve.forward.routes import Route, RouteTable
from fastdns.resolve.forward.sockmark import mark_upstream
from fastdns.resolve.forward.tcppool import ConnectionLost, TcpPool
from fastdns.resolve.forward.upsock import (
    PortSocket,
    UdpChannel,
    UpstreamDown,
    Waiter,
    sockaddr,
)
from fastdns.resolve.resolvconf import UpstreamPlan

__all__ = [
    "Attempt",
    "ForwardResult",
    "Forwarder",
    "Health",
    "Mailbox",
    "UdpChannel",
    "UpstreamDown",
    "Waiter",
    "sockaddr",
]

logger = logging.getLogger(__name__)


class Attempt:
    """One UDP or TLS attempt of an exchange; it stands in for a Future in
    ``PortSocket.pending`` (``TlsConnection.pending``) until the client's deadline, so a late
    reply still answers (docs/answering.md)."""

    __slots__ = ("box", "finished", "seq", "server", "sock", "t0", "uid")

    def __init__(self, box: Mailbox, server: tuple[str, int], t0: float, seq: int) -> None:
        self.box, self.server, self.t0, self.seq = box, server, t0, seq
        self.sock: PortSocket | TlsConnection | None = None
        self.uid = 0
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, data: bytes) -> None:
        self.finished = True
        self.box.put(self, data)

    def set_exception(self, exc: BaseException) -> None:
        self.finished = True
        self.box.put(self, exc)


class Mailbox:
    """Where the replies and errors of every UDP attempt of one exchange arrive."""

    __slots__ = ("attempts", "events", "fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.attempts: list[Attempt] = []
        self.events: deque[tuple[Attempt, bytes | BaseException]] = deque()
        self.fut: asyncio.Future[None] | None = None

    def put(self, attempt: Attempt, outcome: bytes | BaseException) -> None:
        self.events.append((attempt, outcome))
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def get(self, until: float) -> tuple[Attempt, bytes | BaseException] | None:
        """The next reply or error, or None once the loop clock passes ``until``."""
        if not self.events:
            # A timer that completes the future instead of asyncio.wait_for: on Python 3.11
            # wait_for adds a waiter future, a done callback and ensure_future per query.
            fut = self.fut = self.loop.create_future()
            timer = self.loop.call_at(until, _wake, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self.fut = None
        return self.events.popleft() if self.events else None

    def waiting(self) -> bool:
        return any(not a.finished for a in self.attempts)

    def close(self) -> None:
        """The exchange is over: no attempt's reply is awaited any more."""
        for a in self.attempts:
            if not a.finished and a.sock is not None:
                a.finished = True
                a.sock.forget(a.uid, a)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
    # Per-domain routes (docs/routing.md): a routed name goes to its route's servers only.
    routes: RouteTable = field(default_factory=RouteTable)
    pools: dict[tuple[str, int], TcpPool] = field(default_factory=dict)  # tcp:// servers
    _proxy_histograms: dict[tuple[tuple[str, int], int], Histogram] = field(default_factory=dict)
    _route_histograms: dict[str, Histogram] = field(default_factory=dict)
    _poll: FdPoll | None = None  # the upstream sockets' epoll set, made with the first channel
    # DNS over TLS (fastdns.resolve.forward.dot): the worker's connection pool, and how the
    # default upstreams use it (fastdns.forward.tls; None: they are asked over UDP).
    tls: TlsPool | None = None
    default_tls: TlsTarget | None = None  # its name and verify; host and port per server
    _tls_targets: dict[Server, TlsTarget] = field(default_factory=dict)

    def set_plan(self, plan: UpstreamPlan) -> None:
        """Switch upstreams (resolv.conf changed); sockets of servers still named are kept."""
        self.plan = plan
        d = self.default_tls
        self._tls_targets = (
            {s: TlsTarget(s[0], s[1], d.name, d.verify) for s in plan.servers} if d else {}
        )
        self._forget_unnamed()

    def tls_servers(self) -> tuple[Server, ...]:
        """The default upstreams asked over TLS (fastdns.forward.tls), for the gauges."""
        return tuple(self._tls_targets)

    def set_routes(self, routes: RouteTable) -> None:
        """Switch routes (config or resolver_dir changed); what is still named is kept."""
        self.routes = routes
        self._forget_unnamed()

    def _forget_unnamed(self) -> None:
        keep = set(self.plan.servers) | self.routes.servers()
        for server in list(self.channels):
            if server not in keep:
                self.channels.pop(server).close()
        for server in list(self.health):
            if server not in keep:
                del self.health[server]
        tcp = {s for r in self.routes.routes for s in r.tcp}
        for server in list(self.pools):
            if server not in tcp:
                self.pools.pop(server).close()

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()
        if self.tls is not None:
            self.tls.close()
        if self._poll is not None:
            self._poll.close()
            self._poll = None

    def channel(self, server: tuple[str, int]) -> UdpChannel:
        ch = self.channels.get(server)
        if ch is None:
            if self._poll is None:
                self._poll = FdPoll(self.loop)
            ch = self.channels[server] = UdpChannel(
                self.stats, f"{server[0]}:{server[1]}", self._poll, sockaddr(*server)
            )
        return ch

    def sweep(self) -> None:
        """Periodic (the worker's tick): retire old sockets, close lingering ones."""
        now = self.loop.time()
        for ch in self.channels.values():
            ch.sweep(now)
        for pool in self.pools.values():
            pool.sweep(now)
        if self.tls is not None:
            self.tls.sweep()

    def attempts(
        self,
        deadline: float,
        route: Route | None = None,
        servers: tuple[Server, ...] | None = None,
        tls: Mapping[Server, TlsTarget] | None = None,
    ) -> Attempts:
        """The state machine of one query (``fastdns.resolve.forward.attempts``) forwarded
        under the current plan (resolv.conf's ``attempts`` rounds, else 2); with ``route``,
        to that route's servers only, 2 rounds; or to ``servers`` when given, with those in
        ``tls`` asked over TLS. ``exchange`` drives any of them."""
        if route is not None:
            timeout = route.timeout or self.upstream_timeout
            return Attempts(
                route.servers,
                self.health,
                2,
                timeout,
                deadline,
                tcp_only=route.tcp,
                tls=route.tls or None,
            )
        plan = self.plan
        rounds = plan.resolv.attempts if plan.source == "resolv_conf" else 2
        if servers is None:
            servers, tls = plan.servers, self._tls_targets or None
        return Attempts(servers, self.health, rounds, self.upstream_timeout, deadline, tls=tls)

    def note_route(self, route: Route, t0: float, ok: bool) -> None:
        """One query of ``route`` is done (an answer, or SERVFAIL when ``ok`` is false)."""
        h = self._route_histograms.get(route.name)
        if h is None:
            h = self._route_histograms[route.name] = self.stats.histogram(
                ("route_duration", route.name)
            )
        h.observe(self.loop.time() - t0)
        counters = self.stats.counters
        counters[("route_requests", route.name)] += 1
        if not ok:
            counters[("route_failures", route.name)] += 1

    def pool(self, server: tuple[str, int]) -> TcpPool:
        pool = self.pools.get(server)
        if pool is None:
            pool = self.pools[server] = TcpPool(self.loop, self.stats, server, sockaddr)
        return pool

    def _send(
        self, server: tuple[str, int], q: wire.Query, box: Mailbox, t0: float, seq: int
    ) -> Attempt:
        """Send ``q`` to ``server`` from a random-port socket; its outcome goes to ``box``."""
        s = self.channel(server).pick(t0)
        a = Attempt(box, server, t0, seq)
        a.sock = s
        a.uid = s.track(a, q)
        box.attempts.append(a)
        try:
            s.write(wire.set_id(q.wire, a.uid))
        except OSError as e:  # an earlier ICMP error, or a full buffer: this one is lost too
            s.channel.broken(s, e)  # fails ``a`` (and any other query on ``s``) into ``box``
        return a

    def _send_tls(
        self, target: TlsTarget, q: wire.Query, box: Mailbox, t0: float, seq: int
    ) -> Attempt:
        """Send ``q`` over a pooled TLS connection to ``target``; its outcome goes to ``box``.
        UpstreamDown at once when the target cannot take it (backing off, full)."""
        if self.tls is None:
            raise UpstreamDown("no TLS pool")
        a = Attempt(box, (target.host, target.port), t0, seq)
        a.sock, a.uid = self.tls.send(target, q, a)
        box.attempts.append(a)
        return a

    def carry(
        self, sock: PortSocket, uid: int, old: Waiter, server: tuple[str, int], t0: float, seq: int
    ) -> Mailbox:
        """A mailbox that takes over the reply to ``uid`` on ``sock`` (the fast lane's attempt
        ``seq``, sent at ``t0``), for the general path's ``exchange`` to go on with."""
        box = Mailbox(self.loop)
        a = Attempt(box, server, t0, seq)
        if sock.repoint(uid, old, a):
            a.sock, a.uid = sock, uid
            box.attempts.append(a)
        return box

    def late_box(self, server: tuple[str, int], t0: float) -> tuple[Mailbox, Attempt]:
        """A mailbox for the general path to go on with after an attempt sent elsewhere (the
        compiled relay's first, to ``server`` at ``t0``) timed out, and that attempt: its
        late reply is put there by whoever reads it (fastdns/serve/crelay.py)."""
        box = Mailbox(self.loop)
        a = Attempt(box, server, t0, 0)
        box.attempts.append(a)
        return box, a

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
        self.stats.observe(
            ("proxy_duration", f"{server[0]}:{server[1]}", reason), self.loop.time() - t0
        )
        h = self.health.setdefault(server, Health())
        h.fails += 1
        h.last_fail = self.clock()

    def note_reply(self, server: tuple[str, int], t0: float, rcode: int) -> None:
        """``server`` answered with ``rcode``: it is healthy; the reply's duration and, for
        SERVFAIL or REFUSED, the failover are counted."""
        if self.health:
            self.health.pop(server, None)
        # The histogram per (server, rcode), found once: this runs for every forwarded reply.
        h = self._proxy_histograms.get((server, rcode))
        if h is None:
            h = self._proxy_histogram(server, rcode)
        h.observe(self.loop.time() - t0)
        if rcode in wire.FAILOVER_RCODES:
            self.stats.inc("forward_failover", f"{server[0]}:{server[1]}", wire.RCODE_NAMES[rcode])

    def note_replies(
        self, server: tuple[str, int], tallies: list[tuple[int, int, tuple[int, ...], float]]
    ) -> None:
        """``note_reply`` for replies counted elsewhere (the compiled relay's tallies,
        fastdns/serve/cengine/tally.h): per rcode, how many, their reply times by histogram
        slot and in sum (the health was noted as they came: ``CRelay.stored``)."""
        for rcode, n, slots, seconds in tallies:
            self._proxy_histogram(server, rcode).add_slots(slots, seconds, n)
            if rcode in wire.FAILOVER_RCODES:
                to = f"{server[0]}:{server[1]}"
                self.stats.counters["forward_failover", to, wire.RCODE_NAMES[rcode]] += n

    def _proxy_histogram(self, server: tuple[str, int], rcode: int) -> Histogram:
        h = self._proxy_histograms.get((server, rcode))
        if h is None:
            to = f"{server[0]}:{server[1]}"
            h = self._proxy_histograms[(server, rcode)] = self.stats.histogram(
                ("proxy_duration", to, wire.RCODE_NAMES.get(rcode, "other"))
            )
        return h

    async def exchange(
        self,
        q: wire.Query,
        deadline: float,
        machine: Attempts | None = None,
        box: Mailbox | None = None,
        route: Route | None = None,
    ) -> ForwardResult:
        """Drive ``machine`` (a fresh one for ``deadline`` when None; one not started yet, e.g.
        from ``attempts`` with a caller's own servers; or the one the fast lane handed over
        with its next step decided, and ``box``, where its attempt still awaited reports)
        until an acceptable reply or GIVE_UP. Every UDP attempt's ID stays valid until the
        deadline: a reply later than ``upstream_timeout`` still answers. A fresh machine for
        a routed name (``route``) asks that route's servers only."""
        loop = self.loop
        m = machine if machine is not None else self.attempts(deadline, route)
        box = box if box is not None else Mailbox(loop)
        tcp_t0 = loop.time()  # a TCP step handed over: its duration counts from here
        timed_out = -1  # the attempt whose timeout was noted
        try:
            step = m.step if m.started else m.start(tcp_t0)
            while True:
                if step in (UDP, TLS):
                    server, seq, t0 = m.server, m.seq, loop.time()
                    try:
                        if step == UDP:
                            self._send(server, q, box, t0, seq)
                        else:
                            self._send_tls(m.tls[server], q, box, t0, seq)  # type: ignore[index]
                    except (OSError, UpstreamDown):
                        self.note_failure(server, t0, "error")
                        step = m.on_error(seq, t0)
                        continue
                elif step == TCP:
                    step, reply = await self._over_tcp(m, q, tcp_t0)
                    if step == DONE:
                        return ForwardResult(reply, f"{m.server[0]}:{m.server[1]}", True)
                    continue
                elif step == GIVE_UP:
                    return ForwardResult(None)
                event = await box.get(m.until)  # WAIT (after UDP too)
                if event is None:
                    cur = m.current
                    if cur >= 0 and cur != timed_out:
                        timed_out = cur
                        a = _attempt_of(box, cur)
                        if a is not None and not a.finished:
                            self.note_failure(a.server, a.t0, "timeout")
                            if isinstance(a.sock, TlsConnection):
                                a.sock.stalled(a.t0)
                            elif a.sock is not None:
                                a.sock.channel.stalled(a.sock)
                                if box.events:  # the hand read found a reply: take it
                                    continue
                    step = m.on_timeout(loop.time())
                    continue
                a, outcome = event
                if isinstance(outcome, BaseException):
                    self.note_failure(a.server, a.t0, "error")
                    step = m.on_error(a.seq, loop.time())
                    continue
                if wire.truncated(outcome) and not isinstance(a.sock, TlsConnection):
                    # the same upstream over TCP
                    self.stats.inc("forward_tcp_retries", f"{a.server[0]}:{a.server[1]}")
                    tcp_t0 = a.t0
                    step = m.on_reply(a.seq, 0, True, loop.time())
                    continue
                rcode = wire.reply_rcode(outcome)
                self.note_reply(a.server, a.t0, rcode)
                step = m.on_reply(a.seq, rcode, False, loop.time())
                if step == DONE:
                    return ForwardResult(outcome, f"{a.server[0]}:{a.server[1]}")
        finally:
            box.close()

    async def _over_tcp(self, m: Attempts, q: wire.Query, t0: float) -> tuple[int, bytes | None]:
        """Attempt ``m.seq`` over TCP to ``m.server``: the machine's next step, and the reply
        when that step is DONE."""
        server, seq = m.server, m.seq
        try:
            if server in m.tcp_only:  # a tcp:// route server: pooled connections
                reply = await self.pool(server).query(q, m.until - self.loop.time())
            else:  # a truncated UDP reply's retry: one connection (RFC 7766 §5)
                reply = await self._tcp(server, q, m.until - self.loop.time())
        except (TimeoutError, OSError, UpstreamDown, ConnectionLost) as e:
            self.note_failure(server, t0, "timeout" if isinstance(e, TimeoutError) else "error")
            return m.on_error(seq, self.loop.time()), None
        rcode = wire.reply_rcode(reply)
        self.note_reply(server, t0, rcode)
        return m.on_reply(seq, rcode, False, self.loop.time()), reply


def _attempt_of(box: Mailbox, seq: int) -> Attempt | None:
    for a in box.attempts:
        if a.seq == seq:
            return a
    return None
