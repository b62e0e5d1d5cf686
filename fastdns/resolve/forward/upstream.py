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
from collections.abc import Callable
from dataclasses import dataclass, field

from fastdns.dns import wire
from fastdns.metrics.stats import Histogram, WorkerStats
from fastdns.resolve.forward.fdpoll import FdPoll
from fastdns.resolve.forward.sockmark import mark_upstream
from fastdns.resolve.forward.upsock import PortSocket, UdpChannel, UpstreamDown, Waiter
from fastdns.resolve.resolvconf import UpstreamPlan

__all__ = ["FRESH", "Attempt", "ForwardResult", "Forwarder", "Mailbox", "Resume", "UdpChannel",
           "UpstreamDown", "Waiter", "order_servers", "sockaddr"]

logger = logging.getLogger(__name__)

FAILOVER_RCODES = frozenset((wire.SERVFAIL, wire.REFUSED))
# An upstream that timed out this many times in a row is tried after the healthy ones
# (CoreDNS forward max_fails), until it answers again or DOWN_FOR seconds pass.
MAX_FAILS = 2
DOWN_FOR = 10.0
_TC = 0x02


def sockaddr(host: str, port: int) -> tuple[int, tuple[object, ...]]:
    """(family, sockaddr) for a numeric address, with IPv6 ``%scope`` support; no DNS."""
    addr, _, scope = host.partition("%")
    if ":" in addr:
        scope_id = 0
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        return socket.AF_INET6, (addr, port, 0, scope_id)
    return socket.AF_INET, (addr, port)


class Attempt:
    """One UDP attempt of an exchange; it stands in for a Future in ``PortSocket.pending``
    until the client's deadline, so a late reply still answers (docs/answering.md)."""

    __slots__ = ("box", "finished", "server", "sock", "t0", "uid")

    def __init__(self, box: Mailbox, server: tuple[str, int], t0: float) -> None:
        self.box, self.server, self.t0 = box, server, t0
        self.sock: PortSocket | None = None
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
    """Where the forward fast lane (``fastdns.resolve.relay``) left a query for ``exchange``:
    ``force_tcp`` after a TC reply; ``tried``, servers that timed out or failed in this first
    round (asked again from the next attempt); ``refused``, servers that answered SERVFAIL or
    REFUSED (not asked again); ``box``, where the lane's attempt still waiting for its reply
    now reports (``Forwarder.carry``)."""

    force_tcp: bool = False
    tried: frozenset[tuple[str, int]] = frozenset()
    refused: frozenset[tuple[str, int]] = frozenset()
    box: Mailbox | None = None


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
    _poll: FdPoll | None = None  # the upstream sockets' epoll set, made with the first channel

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
        if self._poll is not None:
            self._poll.close()
            self._poll = None

    def channel(self, server: tuple[str, int]) -> UdpChannel:
        ch = self.channels.get(server)
        if ch is None:
            if self._poll is None:
                self._poll = FdPoll(self.loop)
            ch = self.channels[server] = UdpChannel(
                self.stats, f"{server[0]}:{server[1]}", self._poll, sockaddr(*server))
        return ch

    def sweep(self) -> None:
        """Periodic (the worker's tick): retire old sockets, close lingering ones."""
        now = self.loop.time()
        for ch in self.channels.values():
            ch.sweep(now)

    def _send(self, server: tuple[str, int], q: wire.Query, box: Mailbox, t0: float) -> Attempt:
        """Send ``q`` to ``server`` from a random-port socket; its outcome goes to ``box``."""
        s = self.channel(server).pick(t0)
        a = Attempt(box, server, t0)
        a.sock = s
        a.uid = s.track(a, q)
        box.attempts.append(a)
        try:
            s.write(wire.set_id(q.wire, a.uid))
        except OSError as e:  # an earlier ICMP error, or a full buffer: this one is lost too
            s.channel.broken(s, e)  # fails ``a`` (and any other query on ``s``) into ``box``
        return a

    def carry(self, sock: PortSocket, uid: int, old: Waiter, server: tuple[str, int],
              t0: float) -> Mailbox:  # fmt: skip
        """A mailbox that takes over the reply to ``uid`` on ``sock`` (sent by the fast lane
        at ``t0``), for the general path's ``exchange`` to go on with."""
        box = Mailbox(self.loop)
        a = Attempt(box, server, t0)
        if sock.repoint(uid, old, a):
            a.sock, a.uid = sock, uid
            box.attempts.append(a)
        return box

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
        from where ``resume`` says the fast lane left off. Every UDP attempt's ID stays valid
        until the deadline: a reply later than ``upstream_timeout`` still answers."""
        plan = self.plan
        attempts = plan.resolv.attempts if plan.source == "resolv_conf" else 2
        refused_now = set(resume.refused)
        tried = resume.tried
        box = resume.box if resume.box is not None else Mailbox(self.loop)
        try:
            for attempt in range(attempts):
                for server in order_servers(plan.servers, self.health, self.clock()):
                    if server in refused_now or (attempt == 0 and server in tried):
                        continue
                    t0 = self.loop.time()
                    if deadline - t0 <= 0.001:
                        return ForwardResult(None)
                    if resume.force_tcp:
                        result = await self._over_tcp(server, q, t0, deadline, refused_now)
                    else:
                        try:
                            current = self._send(server, q, box, t0)
                        except (OSError, UpstreamDown):
                            self.note_failure(server, t0, "error")
                            continue
                        until = min(t0 + self.upstream_timeout, deadline)
                        result = await self._wait(box, q, current, until, deadline, refused_now)
                    if result is not None:
                        return result
            # Every server was asked: replies still due may come until the deadline.
            if box.waiting():
                result = await self._wait(box, q, None, deadline, deadline, refused_now)
                if result is not None:
                    return result
            return ForwardResult(None)
        finally:
            box.close()

    async def _wait(
        self, box: Mailbox, q: wire.Query, current: Attempt | None, until: float,
        deadline: float, refused_now: set[tuple[str, int]],
    ) -> ForwardResult | None:  # fmt: skip
        """The first acceptable reply to any attempt in ``box`` before ``until``; None when
        ``current`` failed (error, SERVFAIL/REFUSED, timeout) or ``until`` passed."""
        timed_out = False
        while True:
            event = await box.get(until)
            if event is None:
                if current is not None and not current.finished and not timed_out:
                    timed_out = True
                    self.note_failure(current.server, current.t0, "timeout")
                    if current.sock is not None:
                        current.sock.channel.stalled(current.sock)
                        if box.events:  # the hand read found a reply: take it
                            continue
                return None
            a, outcome = event
            if isinstance(outcome, BaseException):
                self.note_failure(a.server, a.t0, "error")
                if a is current:
                    return None
                continue
            reply = outcome
            if reply[2] & _TC:  # retry the same upstream over TCP
                self.stats.inc("forward_tcp_retries", f"{a.server[0]}:{a.server[1]}")
                result = await self._over_tcp(a.server, q, a.t0, deadline, refused_now)
                if result is not None or a is current:
                    return result
                continue
            if not self.note_reply(a.server, a.t0, wire.reply_rcode(reply)):
                refused_now.add(a.server)
                if a is current:
                    return None
                continue
            return ForwardResult(reply, f"{a.server[0]}:{a.server[1]}")

    async def _over_tcp(
        self, server: tuple[str, int], q: wire.Query, t0: float, deadline: float,
        refused_now: set[tuple[str, int]],
    ) -> ForwardResult | None:  # fmt: skip
        try:
            reply = await self._tcp(server, q, deadline - self.loop.time())
        except (TimeoutError, OSError, UpstreamDown) as e:
            self.note_failure(server, t0, "timeout" if isinstance(e, TimeoutError) else "error")
            return None
        if not self.note_reply(server, t0, wire.reply_rcode(reply)):
            refused_now.add(server)
            return None
        return ForwardResult(reply, f"{server[0]}:{server[1]}", True)
