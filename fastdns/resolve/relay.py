"""The UDP forward fast lane: a cache miss relayed to the first upstream with callbacks only.

The general path (``Pipeline.answer``) runs each forwarded query as a Task through five
coroutine frames, a Future per upstream try and a timer per query; on a stream of distinct
names that machinery costs more CPU than the forwarding itself. Here the common case is plain
callbacks: the query goes out on a random-port socket to the first upstream
(``fastdns.resolve.forward.upsock``) from the datagram callback, and the upstream's reply, matched
by
``PortSocket`` (ID, source, question), is answered from that socket's callback. Timeouts come
from one timer per worker at the oldest query's deadline (every query waits the same
``upstream_timeout``, so send order is deadline order).

Which upstream to ask, and what each reply, error or timeout means, is decided by the query's
forwarding state machine (``fastdns.resolve.forward.attempts``), the same one the general path
drives. Anything but a plain answer leaves the lane with that machine, whose next step is
already decided (the next upstream after a timeout, an ICMP error, SERVFAIL or REFUSED; TCP
after a TC reply): ``Forwarder.exchange`` drives it on. After a timeout the lane's ID stays
valid: ``Forwarder.carry`` hands its reply to the general path, which still takes it until the
client's deadline. Static aliases, loop probes, native lookups, ``.local`` names for NSS and
questions already in flight (coalescing) never enter the lane; a reply without an address
leaves it for NSS (``Pipeline.after_dns``). A query in the lane is in ``Pipeline.pending``, so
identical questions coalesce onto it, and counts towards the worker's in-flight limit and
draining like a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, Protocol

from fastdns.dns import compose, loopguard, wire
from fastdns.dns.resolved import Resolved
from fastdns.resolve.cache.admission import Classified
from fastdns.resolve.forward.attempts import DONE, UDP, Attempts
from fastdns.resolve.forward.routes import Route
from fastdns.resolve.forward.upsock import PortSocket, UpstreamDown
from fastdns.resolve.forward.upstream import Mailbox
from fastdns.resolve.pipeline import Pipeline, Spawn


class Delivery(Protocol):
    """Where the lane's finished answers go: the datapath that read the query (implemented
    in fastdns/serve/udp.py, handed down with each query), so this layer never imports the
    serving one. The one way out of the lane."""

    def send_answer(self, q: wire.Query, res: Resolved, addr: Any, size: int, t0: float) -> None:
        """Send ``res`` to the client at ``addr`` (query of ``size`` bytes read at ``t0``)."""

    def account(self, q: wire.Query, res: Resolved, size: int, t0: float) -> None:
        """Count ``res``, sent to the client by the compiled datapath itself."""


logger = logging.getLogger(__name__)

ANSWERED = ("forward_fast_lane", "answered")  # WorkerStats key; hand-offs count by reason


class Relayed:
    """One query in the lane; it stands in for the Future in ``PortSocket.pending``."""

    __slots__ = (
        "addr",
        "deadline",
        "expires",
        "finished",
        "fut",
        "m",
        "native",
        "q",
        "relay",
        "route",
        "sent",
        "server",
        "sink",
        "size",
        "sock",
        "t0",
        "uid",
    )

    def __init__(
        self, relay: Relay, q: wire.Query, sink: Delivery, addr: Any, size: int, t0: float
    ) -> None:
        self.relay, self.q, self.sink = relay, q, sink
        self.addr, self.size, self.t0 = addr, size, t0
        self.finished = False
        self.native = False  # forwarded first for the native path (native.forward_first)
        self.server: tuple[str, int] = ("", 0)
        self.sock: PortSocket | None = None
        self.uid = 0
        self.sent = self.expires = self.deadline = 0.0
        self.fut: asyncio.Future[Resolved] | None = None
        self.m: Attempts | None = None  # set by ``Relay.start``
        self.route: Route | None = None  # a routed name: its route's servers only

    # The part of the Future interface PortSocket uses.
    def done(self) -> bool:
        return self.finished

    def set_result(self, data: bytes) -> None:
        self.relay.on_reply(self, data)

    def set_exception(self, exc: BaseException) -> None:
        self.relay.on_error(self, exc)


class Relay:
    """The lane of one worker: admission, the in-flight queue, completion and hand-off."""

    def __init__(self, pipeline: Pipeline, spawn: Spawn) -> None:
        self.pipeline = pipeline
        self.forwarder = pipeline.forwarder
        self.loop = pipeline.loop
        self.spawn = spawn  # ServerState.spawn: hand-offs are tasks like any other
        self.config = pipeline.config
        self.queue: deque[Relayed] = deque()  # send order = deadline order
        self.inflight = 0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def start(self, q: wire.Query, sink: Delivery, addr: Any, size: int, t0: float) -> bool:
        """Relay ``q`` if the lane can take it; False: use the general path."""
        pipeline = self.pipeline
        if (
            self.closed
            or q.key in pipeline.pending
            or pipeline.static.aliases
            or (pipeline.static.wild_aliases)
        ):
            return False
        if pipeline.loop_suffix and loopguard.is_probe(q.qname, pipeline.loop_suffix):
            return False
        if pipeline.nss is not None and pipeline.nss.first(q):
            return False  # NSS before DNS: the general path
        fwd = self.forwarder
        # A routed name is relayed to its route's servers only, never to the default ones
        # (docs/routing.md); a tcp:// first server leaves it to the general path.
        route = fwd.routes.match(q.qname) if fwd.routes else None
        if route is None and not fwd.plan.servers:
            return False
        now = self.loop.time()
        m = fwd.attempts(now + self.config.deadline, route)
        if m.start(now) != UDP:
            return False
        server = m.server
        try:
            s = fwd.channel(server).pick(now)
        except UpstreamDown:
            return False  # the general path counts the failure
        lookup = pipeline.native
        native = False
        if lookup is not None and route is None:
            reason = lookup.decline_reason(q)
            if reason is None:
                if not lookup.forward_first(q):
                    return False  # c-ares' question: the general path asks it
                native = True
            else:
                # Counted here, where it is decided: the lane takes ``q`` from here on (nothing
                # below returns False), and the general path, which counts it otherwise, never
                # sees it.
                lookup.count_fallback(reason)
        r = Relayed(self, q, sink, addr, size, t0)
        r.m = m
        r.route = route
        r.native = native
        r.server = server
        r.sent = now
        r.deadline = m.deadline
        r.expires = m.until
        r.sock = s
        r.uid = uid = s.track(r, q)
        r.fut = pipeline.pending[q.key] = self.loop.create_future()
        self.inflight += 1
        queue = self.queue
        while queue and queue[0].finished:  # answered ones at the head: drop them now, not
            queue.popleft()  # at the next timeout (keeps the queue at about what is in flight)
        queue.append(r)
        if self.timer is None:
            self.timer = self.loop.call_at(r.expires, self._expire)
        try:
            s.write(wire.set_id(q.wire, uid))
        except OSError as e:  # an ICMP error from an earlier query: fails ``r`` (on_error)
            s.channel.broken(s, e)
        return True

    # ------------------------------------------------------------------ the compiled relay

    def answered(
        self,
        q: wire.Query,
        data: bytes,
        sink: Delivery,
        addr: Any,
        size: int,
        t0: float,
        server: tuple[str, int],
        sent: float,
        fut: asyncio.Future[Resolved] | None = None,
        classified: Classified = False,
    ) -> bool:
        """The reply to a query the compiled relay sent to ``server`` (the first attempt of
        its state machine) at ``sent`` and matched (ID, source, question): answered,
        stored and counted as ``on_reply`` would; anything but a final answer (TC, SERVFAIL,
        REFUSED) enters the lane's state machine there (``adopt``): False. ``fut``: where
        the same question asked meanwhile waits (``Pipeline.pending``), resolved here;
        ``classified``: the cache's verdict on ``data`` as the engine gave it."""
        rcode = data[3] & 0xF
        if data[2] & 2 or rcode in wire.FAILOVER_RCODES:  # TC (RFC 1035 §4.1.1), failover
            self.resume(self.adopt(q, sink, addr, size, t0, server, sent, fut), data, False)
            return False
        fwd, pipeline = self.forwarder, self.pipeline
        fwd.note_reply(server, sent, rcode)
        fwd.stats.counters[ANSWERED] += 1
        res = Resolved(data, fwd.plan.answers_as)
        native, nss = pipeline.native, pipeline.nss
        if native is not None and native.decline_reason(q) is None and native.settle(q, data):
            # Forwarded first for c-ares (the engine relays only those it does not decline):
            # the reply lacks what c-ares wanted, its turn now, with the search list.
            r = self._general_now(q, sink, addr, size, t0, server, sent, fut)
            self.spawn(self._general(r, self._then_nss(r, pipeline.search(q, res, r.deadline))))
            return True
        if nss is not None and nss.wants(q, data):  # no address: the host's NSS sources
            r = self._general_now(q, sink, addr, size, t0, server, sent, fut)
            self.spawn(self._general(r, pipeline.after_dns(q, res, r.deadline)))
            return True
        try:
            out = pipeline.remember(q, res, classified)
        except Exception:  # a bug: the client still gets an answer
            logger.exception("unhandled error storing a forwarded reply")
            fwd.stats.inc("unhandled_exceptions")
            out = res
        if fut is not None:
            if not fut.done():
                fut.set_result(out)
            if pipeline.pending.get(q.key) is fut:
                del pipeline.pending[q.key]
        if out.reply is res.reply:  # not from the cache: the upstream's ID and question case
            out = Resolved(compose.splice(res.reply, q.id, q.question, q.rd), res.source)
        sink.send_answer(q, out, addr, size, t0)
        return True

    def adopt(
        self,
        q: wire.Query,
        sink: Delivery,
        addr: Any,
        size: int,
        t0: float,
        server: tuple[str, int],
        sent: float,
        fut: asyncio.Future[Resolved] | None = None,
    ) -> Relayed:
        """A query the compiled relay sent to ``server`` at ``sent`` and cannot finish (a
        failover reply, an error, a timeout): in the lane now, its state machine started
        as it was then (its first attempt that one), for ``on_reply``, ``on_error`` or
        ``time_out`` to drive on."""
        r = Relayed(self, q, sink, addr, size, t0)
        m = self.forwarder.attempts(sent + self.config.deadline, None)
        m.start(sent)
        r.m = m
        r.server = server
        r.sent = sent
        r.deadline = m.deadline
        r.expires = m.until
        pending = self.pipeline.pending
        if fut is not None:  # questions that came while the engine had it wait for this one
            r.fut = fut
            pending.setdefault(q.key, fut)
        elif q.key not in pending:  # identical questions asked from now on wait for this one
            r.fut = pending[q.key] = self.loop.create_future()
        self.inflight += 1
        return r

    def _general_now(
        self,
        q: wire.Query,
        sink: Delivery,
        addr: Any,
        size: int,
        t0: float,
        server: tuple[str, int],
        sent: float,
        fut: asyncio.Future[Resolved] | None,
    ) -> Relayed:
        """``adopt`` for a query whose forwarding is over: the general path finishes it."""
        r = self.adopt(q, sink, addr, size, t0, server, sent, fut)
        r.finished = True
        self.inflight -= 1
        return r

    def resume(
        self, r: Relayed, data: bytes | None, failed: bool, box: Mailbox | None = None
    ) -> None:
        """Drive ``r`` (``adopt``) on from what became of its first attempt: ``data`` its
        reply, else ``failed`` a socket error, else a timeout (its late reply to ``box``)."""
        assert r.m is not None
        if r.m.step != UDP:  # the plan changed since (a TLS or TCP server first): start over
            r.finished = True
            self.inflight -= 1
            self._hand_off(r, "failover", None)
        elif data is not None:
            self.on_reply(r, data)
        elif failed:
            self.on_error(r, UpstreamDown("the upstream socket failed"))
        else:
            self.time_out(r, self.loop.time(), box)

    def time_out(self, r: Relayed, now: float, box: Mailbox | None = None) -> None:
        """``r``'s attempt timed out (the compiled relay's): on to its next one; its late
        reply, until the deadline, goes to ``box``."""
        if r.finished:
            return
        r.finished = True
        self.inflight -= 1
        assert r.m is not None
        self.forwarder.note_failure(r.server, r.sent, "timeout")
        r.m.on_timeout(now)
        self._hand_off(r, "timeout", box)

    # ------------------------------------------------------------------ completion

    def on_reply(self, r: Relayed, data: bytes) -> None:
        """The upstream answered (PortSocket checked ID, source and question)."""
        if r.finished:
            return
        r.finished = True
        self.inflight -= 1
        fwd, m = self.forwarder, r.m
        assert m is not None
        if wire.truncated(data):
            fwd.stats.inc("forward_tcp_retries", f"{r.server[0]}:{r.server[1]}")
            m.on_reply(0, 0, True, self.loop.time())
            self._hand_off(r, "truncated", None)
            return
        rcode = wire.reply_rcode(data)
        fwd.note_reply(r.server, r.sent, rcode)
        if m.on_reply(0, rcode, False, self.loop.time()) != DONE:
            self._hand_off(r, "failover", None)
            return
        fwd.stats.counters[ANSWERED] += 1
        if r.route is not None:
            fwd.note_route(r.route, r.sent, True)
            source = "forward"
        else:
            source = fwd.plan.answers_as
        res = Resolved(data, source)
        native = self.pipeline.native
        if r.native and native is not None and native.settle(r.q, data):
            # The reply lacks what c-ares wanted: its turn, with the search list.
            self.spawn(
                self._general(r, self._then_nss(r, self.pipeline.search(r.q, res, r.deadline)))
            )
            return
        nss = self.pipeline.nss
        if nss is not None and nss.wants(r.q, data):
            # No address: the host's NSS sources may have one.
            self.spawn(self._general(r, self.pipeline.after_dns(r.q, res, r.deadline)))
            return
        self._finish(r, res)

    def on_error(self, r: Relayed, exc: BaseException) -> None:
        """ICMP unreachable, or the socket closed under the query."""
        if r.finished:
            return
        r.finished = True
        self.inflight -= 1
        if self.closed:
            return
        assert r.m is not None
        self.forwarder.note_failure(r.server, r.sent, "error")
        r.m.on_error(0, self.loop.time())
        self._hand_off(r, "error", None)

    def _expire(self) -> None:
        """The oldest queries' deadlines: time them out, re-arm for the next one."""
        self.timer = None
        now = self.loop.time()
        queue = self.queue
        while queue and (queue[0].finished or queue[0].expires <= now):
            r = queue.popleft()
            if not r.finished and r.sock is not None:
                r.sock.channel.stalled(r.sock)  # replies left unread answer now
            if r.finished:
                continue
            r.finished = True
            self.inflight -= 1
            fwd = self.forwarder
            assert r.m is not None
            fwd.note_failure(r.server, r.sent, "timeout")
            # The lane's attempt stays valid until the deadline: its reply goes to ``box``.
            box = fwd.carry(r.sock, r.uid, r, r.server, r.sent, 0) if r.sock is not None else None
            r.m.on_timeout(now)
            self._hand_off(r, "timeout", box)
        if queue and not self.closed:
            self.timer = self.loop.call_at(max(queue[0].expires, now), self._expire)

    def _finish(self, r: Relayed, res: Resolved) -> None:
        pipeline, q = self.pipeline, r.q
        try:
            out = pipeline.remember(q, res)
        except Exception as e:  # a bug: the client and any waiters still get an answer
            logger.exception("unhandled error storing a forwarded reply")
            self.forwarder.stats.inc("unhandled_exceptions")
            if r.fut is not None and not r.fut.done():
                r.fut.set_exception(e)
                r.fut.exception()  # retrieved: there may be no waiter
            out = res
        finally:
            # (no future of its own: the question was pending for another query already)
            if r.fut is not None and pipeline.pending.get(q.key) is r.fut:
                del pipeline.pending[q.key]
        fut = r.fut
        if fut is not None and not fut.done():
            fut.set_result(out)
        if out.reply is res.reply:  # not from the cache: the upstream's ID and question case
            out = Resolved(compose.splice(res.reply, q.id, q.question, q.rd), res.source)
        # (else the cache rendered it for q itself: q's ID, question bytes, RD and OPT)
        r.sink.send_answer(q, out, r.addr, r.size, r.t0)

    def _hand_off(self, r: Relayed, reason: str, box: Mailbox | None) -> None:
        """Leave the lane: the general path drives ``r``'s state machine on from its next
        step, in a task (``box``: where the lane's attempt still awaited reports)."""
        self.forwarder.stats.inc("forward_fast_lane", reason)
        self.spawn(self._general(r, self._forward_rest(r, box)))

    async def _forward_rest(self, r: Relayed, box: Mailbox | None) -> Resolved:
        pipeline = self.pipeline
        res = await pipeline.forward_rest(r.q, r.deadline, r.m, box, r.route)
        if r.native:
            res = await pipeline.settle(r.q, res, r.deadline)
        return await pipeline.after_dns(r.q, res, r.deadline)

    async def _then_nss(self, r: Relayed, step: Awaitable[Resolved]) -> Resolved:
        return await self.pipeline.after_dns(r.q, await step, r.deadline)

    async def _general(self, r: Relayed, step: Awaitable[Resolved]) -> None:
        """Finish ``r`` with what ``step`` (the general path's rest of it) resolves to."""
        pipeline, q = self.pipeline, r.q
        try:
            res = await step
        except BaseException as e:
            if r.fut is not None and not r.fut.done():
                r.fut.set_exception(e)
                r.fut.exception()
            if r.fut is not None and pipeline.pending.get(q.key) is r.fut:
                del pipeline.pending[q.key]
            raise
        self._finish(r, res)

    def close(self) -> None:
        """The worker stops: no more hand-offs or timers (the sockets close next)."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
