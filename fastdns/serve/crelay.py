"""Misses relayed in C (fastdns/serve/cengine/relay.c, docs/datapath.md "Misses"): the policy
Python pushes to the engine, and what becomes of the outcomes it hands up.

The engine relays a query itself only where Python's lane (``fastdns.resolve.relay``) would
relay it raw to the first upstream with nothing else to decide: no static alias, no route, the
first server plain UDP, a name that cannot be static or a loop probe, a key the cache does not
hold (the cache's ``keys`` mirror); with the native path on, a query it declines (its types,
DNSSEC) or lets go raw first (``forward_first``), never a ``.local`` address NSS asks first.
``policy`` says so in one call, made again whenever any of that may have changed (each tick, a
reload, a failover). Every
outcome comes back here in one list per wakeup: an answer is stored, answered and counted by
``Relay.answered``; a failover reply, a socket error or a timeout enters the lane's state
machine where the engine left it (``Relay.adopt``), so every decision stays in Python.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastdns.dns import compose, wire
from fastdns.dns.resolved import Resolved
from fastdns.resolve.cache.admission import Classified, Verdict
from fastdns.resolve.forward import sockmark
from fastdns.resolve.forward.attempts import UDP, Server
from fastdns.resolve.forward.upsock import UpstreamDown
from fastdns.resolve.forward.upstream import Attempt
from fastdns.resolve.pipeline import ForwardRule
from fastdns.resolve.relay import ANSWERED
from fastdns.serve.udp import ServerState, UDPServer

__all__ = ["CRelay", "Policy", "policy"]

logger = logging.getLogger(__name__)

# an item's kind (relay.h FD_RELAY_*)
REPLY, ERROR, TIMEOUT, LATE, LATE_ERROR, FOLLOW = 0, 1, 2, 3, 4, 5

# Engine.relay_policy's arguments: (server, timeout, deadline, mark, endings, suffix,
# ipv6_local, the native path's rule or None, NSS first for .local)
Endings = tuple[bytes, ...]
Rule = ForwardRule
Policy = tuple[Server | None, float, float, int, Endings | None, bytes, bool, Rule | None, bool]
QueryParts = tuple[int, int, int, int, int, int, bool, int, bool, int, bytes]
Item = tuple[int, int, bytes, bytes | None, Any, float, float, QueryParts, Classified, bytes | None]
# an answer the engine sent and counted itself: (seq, key, qend, reply, verdict, sent)
Stored = tuple[int, bytes, int, bytes, Verdict | None, bytes]


def query_of(data: bytes, parts: QueryParts) -> wire.Query:
    """The ``wire.Query`` that ``wire.parse_query(data)`` gives, from the fields the engine
    read (its parser gives the same: tests/fuzz/test_fuzz_cwire.py), without a second parse."""
    q = wire.Query()
    q.wire = data
    (q.id, q.flags, n, q.qtype, q.qclass, q.qend, q.has_opt, q.udp_size, q.do) = parts[:9]
    q.edns_version, q.key = parts[9], parts[10]
    q.qname = data[12 : 12 + n]
    return q


def policy(state: ServerState) -> Policy:
    """What the engine may relay now; server None: nothing (everything goes up)."""
    pipeline, relay = state.pipeline, state.relay
    fwd, cfg = pipeline.forwarder, pipeline.config
    off: Policy = (None, cfg.upstream_timeout, cfg.deadline, 0, None, b"", False, None, False)
    static = pipeline.static
    if (
        state.draining
        or relay.closed
        or static.aliases
        or static.wild_aliases
        or fwd.routes
        or not fwd.plan.servers
    ):
        return off
    endings = pipeline.local_endings() if cfg.enabled else ()
    if endings is None:
        return off  # any name may be static: each must be looked up
    now = pipeline.loop.time()
    m = fwd.attempts(now + cfg.deadline, None)
    if m.start(now) != UDP or "%" in m.server[0]:
        return off  # a TLS or TCP server first, a scoped address: Python's lane
    return (
        m.server,
        m.until - now,
        cfg.deadline,
        sockmark.current(),
        endings,
        pipeline.loop_suffix,
        bool(cfg.enabled and not cfg.ipv6),
        pipeline.native.forward_rule() if pipeline.native is not None else None,
        pipeline.nss is not None,
    )


class CRelay:
    """The Python side of one engine's relay: its policy and the outcomes it hands up."""

    def __init__(self, state: ServerState, udp: UDPServer) -> None:
        self.state = state
        self.udp = udp
        self.server: Server | None = None  # whom the engine relays to (the policy's)
        self.told: Policy | None = None
        self.source = "forward"  # the label of the answers relayed under ``told``
        self.engine: Any = None
        # Queries that timed out in C, handed to the general path: seq -> the attempt their
        # late reply answers, and until when it may come (the engine forgets them then).
        self.late: dict[int, tuple[Attempt, float]] = {}
        # Queries the engine has in flight that others wait for (the same question asked
        # meanwhile, FOLLOW items): seq -> the future they wait on (Pipeline.pending's).
        self.waiting: dict[int, asyncio.Future[Resolved]] = {}

    def tell(self) -> None:
        """Push the policy to the engine when it changed; forget late attempts past due."""
        if self.late:
            now = self.state.pipeline.loop.time()
            for seq in [seq for seq, (a, until) in self.late.items() if until < now or a.done()]:
                del self.late[seq]
        engine = self.engine
        if engine is None:
            return
        p = policy(self.state)
        source = self.state.pipeline.forwarder.plan.answers_as
        if p != self.told or source != self.source:
            self.fold()  # what was counted so far, under the server and source it had
            engine.relay_policy(*p)
            self.told, self.source = p, source
            if p[0] is not None:
                self.server = p[0]

    def fold(self) -> None:
        """The accounting of the answers the engine sent itself (tally.h) into the stats:
        each tick, before every policy change and before the engine closes."""
        engine, server = self.engine, self.server
        if engine is None:
            return
        requests, replies = engine.relay_tallies()
        if requests:
            self.state.accounting.fold_relayed(requests, self.source)
        if replies and server is not None:
            self.state.pipeline.forwarder.note_replies(server, replies)

    def relayed(self, items: list[Item], stored: list[Stored]) -> None:
        """The engine's outcomes of one wakeup (relay.h): answers, failures, timeouts; and
        the answers it sent and counted itself, to store."""
        relay, udp, server = self.state.relay, self.udp, self.server
        if stored and server is not None:
            self.stored(stored, server)
        failed = False
        for kind, seq, query, reply, addr, t0, sent, parts, verdict, done in items:
            if kind in (LATE, LATE_ERROR):
                entry = self.late.pop(seq, None)
                if entry is not None and not entry[0].done():
                    if reply is not None:
                        entry[0].set_result(reply)
                    else:
                        entry[0].set_exception(UpstreamDown("the upstream socket failed"))
                continue
            q = query_of(query, parts)
            if kind == FOLLOW:
                self.follow(seq, q, addr, len(query), t0)
                continue
            fut = self.waiting.pop(seq, None) if self.waiting else None
            if server is None:
                continue
            if kind == REPLY and reply is not None and done is not None:
                # answered by the engine itself (render.c): stored and counted here
                self.answered_there(
                    q, reply, done, addr, len(query), t0, server, sent, fut, verdict
                )
                continue
            if kind == REPLY and reply is not None:
                failed |= not relay.answered(
                    q, reply, udp, addr, len(query), t0, server, sent, fut, verdict
                )
                continue
            failed = True
            r = relay.adopt(q, udp, addr, len(query), t0, server, sent, fut)
            box = None
            if kind == TIMEOUT:
                box, attempt = relay.forwarder.late_box(server, sent)
                self.late[seq] = (attempt, sent + self.state.config.deadline)
            relay.resume(r, None, kind == ERROR, box)
        if failed:
            self.tell()  # a server that keeps failing is asked last: maybe another first

    def answered_there(
        self,
        q: wire.Query,
        data: bytes,
        sent_reply: bytes,
        addr: Any,
        size: int,
        t0: float,
        server: Server,
        sent: float,
        fut: asyncio.Future[Resolved] | None,
        classified: Classified,
    ) -> None:
        """``Relay.answered`` for a reply the engine already sent the client as
        ``sent_reply`` (render.c: the bytes ``answered`` would send, held equal by
        tests/fuzz/test_fuzz_crender.py; only final answers) and left to Python to count (a
        forwarded-first one, or no room in its tallies): stored, counted, and handed to the
        questions waiting on it, without rendering or sending."""
        pipeline = self.state.pipeline
        fwd = pipeline.forwarder
        fwd.note_reply(server, sent, data[3] & 0xF)
        fwd.stats.counters[ANSWERED] += 1
        source = fwd.plan.answers_as
        native = pipeline.native
        if native is not None and native.decline_reason(q) is None and native.settle(q, data):
            # (counted there; the engine sends a forward-first reply only when it is final)
            logger.error("the compiled relay answered a reply c-ares wanted to go on from")
        try:
            pipeline.store(q, Resolved(data, source), classified)
        except Exception:  # a bug: the client has its answer already
            logger.exception("unhandled error storing a forwarded reply")
            fwd.stats.inc("unhandled_exceptions")
        out = Resolved(sent_reply, source)
        if fut is not None:
            if not fut.done():
                fut.set_result(out)
            if pipeline.pending.get(q.key) is fut:
                del pipeline.pending[q.key]
        self.udp.account(q, out, size, t0)

    def stored(self, batch: list[Stored], server: Server) -> None:
        """``answered_there`` for the answers the engine sent and counted itself (its
        tallies: fastdns/serve/cengine/tally.h, folded by ``fold``): each ``(seq, key, qend,
        reply, verdict, sent)`` is stored and handed to the questions waiting on query
        ``seq``, with no Query built for it."""
        pipeline, waiting = self.state.pipeline, self.waiting
        fwd = pipeline.forwarder
        if fwd.health:
            fwd.health.pop(server, None)  # it answers: healthy (``note_reply``)
        fwd.stats.counters[ANSWERED] += len(batch)
        cache, now = pipeline.cache, time.monotonic()
        for seq, key, qend, reply, verdict, sent_reply in batch:
            if cache is not None:
                try:
                    cache.put_classified(key, qend, reply, verdict, now)
                except Exception:  # a bug: the client has its answer already
                    logger.exception("unhandled error storing a forwarded reply")
                    fwd.stats.inc("unhandled_exceptions")
            if waiting:
                fut = waiting.pop(seq, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(Resolved(sent_reply, self.source))
                    if pipeline.pending.get(key) is fut:
                        del pipeline.pending[key]

    def follow(self, seq: int, q: wire.Query, addr: Any, size: int, t0: float) -> None:
        """``q`` came while the engine has the same question in flight (query ``seq``): it
        waits for that one's answer, as ``Pipeline._coalesced`` waiters do (each a task,
        counted towards ``max_inflight``: REFUSED above it, as ``UDPServer._full``)."""
        state = self.state
        if state.full():
            state.stats.inc("overload", "udp")
            self.udp.send_answer(
                q, Resolved(compose.error_reply(q, wire.REFUSED), "server"), addr, size, t0
            )
            return
        fut = self.waiting.get(seq)
        if fut is None:
            fut = self.waiting[seq] = self.state.pipeline.loop.create_future()
            self.state.pipeline.pending.setdefault(q.key, fut)
        self.state.spawn(self._follow(fut, q, addr, size, t0))

    async def _follow(
        self, fut: asyncio.Future[Resolved], q: wire.Query, addr: Any, size: int, t0: float
    ) -> None:
        pipeline = self.state.pipeline
        pipeline.stats.inc("coalesced")
        try:
            shared = await asyncio.shield(fut)
        except Exception:
            res = Resolved(compose.error_reply(q, wire.SERVFAIL), "server")
        else:
            # the reply of a question with or without OPT, for this one (RFC 6891 §7)
            reply = compose.match_opt(shared.reply, q, pipeline.opt_size)
            res = Resolved(compose.splice(reply, q.id, q.question, q.rd), shared.source)
        self.udp.send_answer(q, res, addr, size, t0)
