"""The order of answer sources: static hosts, hosts file, then native lookup or raw forward.

``answer_now`` handles everything that needs no I/O, synchronously, in the datagram callback.
``answer`` resolves the rest, coalescing identical questions in flight into one lookup.
Replies come back as full wire messages for the asking client (its ID, its question bytes);
transport-specific truncation is the server's job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastdns import wire
from fastdns.config import Config
from fastdns.hosts import HostsFile, StaticAnswer, StaticHosts
from fastdns.stats import WorkerStats
from fastdns.upstream import Forwarder

logger = logging.getLogger(__name__)

MAX_ALIAS_DEPTH = 1  # an alias target is resolved once; targets are never static aliases


@dataclass(slots=True)
class Resolved:
    """A reply and who produced it: static, hosts, cache, native, forward, fallback or server."""

    reply: bytes
    source: str


# A hook the native (c-ares) path plugs into: returns a Resolved, or None to fall back.
NativeLookup = Callable[[wire.Query, float], Awaitable[Resolved | None]]


def _canonical_text(qname: bytes) -> str:
    return wire.name_to_text(qname.lower()).rstrip(".") or "."


class Pipeline:
    """Answers one worker's queries; owns the static tables and in-flight coalescing."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        forwarder: Forwarder,
        native: NativeLookup | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.stats = stats
        self.forwarder = forwarder
        self.native = native
        self.static = StaticHosts.from_pairs(config.hosts)
        self.hosts_file = HostsFile(config.hosts_file)
        self.hosts_file.refresh()
        self.pending: dict[bytes, asyncio.Future[Resolved]] = {}
        self.opt_size = config.udp_payload_cap

    # ------------------------------------------------------------------ synchronous answers

    def _records_reply(
        self, q: wire.Query, records: tuple[tuple[int, bytes], ...], ttl: int
    ) -> bytes:
        answers = [wire.rr(wire.POINTER_TO_QNAME, rtype, ttl, rdata) for rtype, rdata in records]
        return wire.build_reply(q, wire.NOERROR, answers, opt_size=self.opt_size)

    def _static_reply(self, q: wire.Query, verdict: StaticAnswer, ttl: int) -> bytes:
        if verdict.kind == "answer":
            return self._records_reply(q, verdict.records, ttl)
        if verdict.kind == "servfail":
            return wire.error_reply(q, wire.SERVFAIL, self.opt_size)
        return wire.error_reply(q, wire.NOERROR, self.opt_size)  # NODATA

    def answer_now(self, q: wire.Query) -> Resolved | None:
        """The reply when no I/O is needed, else None (then call ``answer``)."""
        if q.qclass != wire.CLASS_IN:
            return Resolved(wire.error_reply(q, wire.REFUSED, self.opt_size), "server")
        if q.edns_version:
            return Resolved(wire.error_reply(q, wire.BADVERS, self.opt_size), "server")
        cfg = self.config
        if q.qtype == wire.AAAA and not cfg.ipv6:
            # Lima: AAAA is NODATA at once when ipv6 is off (PR #3419; IPv6 is not routable
            # over slirp, lima#547).
            return Resolved(wire.error_reply(q, wire.NOERROR, self.opt_size), "static")
        name = _canonical_text(q.qname)
        verdict = self.static.lookup(name, q.qtype, cfg.ipv6)
        if verdict is not None:
            if verdict.kind == "alias":
                return None
            return Resolved(self._static_reply(q, verdict, cfg.static_ttl), "static")
        verdict = self.hosts_file.lookup(name, q.qtype, cfg.ipv6)
        if verdict is not None:
            return Resolved(self._static_reply(q, verdict, cfg.native.hosts_ttl), "hosts")
        return None

    # ------------------------------------------------------------------ asynchronous answers

    async def answer(self, q: wire.Query) -> Resolved:
        """Resolve ``q`` (not answerable synchronously) within the configured deadline."""
        deadline = self.loop.time() + self.config.deadline
        verdict = self.static.lookup(_canonical_text(q.qname), q.qtype, self.config.ipv6)
        if verdict is not None and verdict.kind == "alias":
            return await self._alias(q, verdict.target, deadline)
        res = await self._coalesced(q, deadline)
        return Resolved(wire.splice(res.reply, q.id, q.question), res.source)

    async def _coalesced(self, q: wire.Query, deadline: float) -> Resolved:
        fut = self.pending.get(q.key)
        if fut is not None:
            self.stats.inc("coalesced")
            return await asyncio.shield(fut)
        fut = self.loop.create_future()
        self.pending[q.key] = fut
        try:
            res = await self._resolve(q, deadline)
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e)
                fut.exception()  # mark retrieved: waiters may not exist
            raise
        finally:
            if self.pending.get(q.key) is fut:
                del self.pending[q.key]
        if not fut.done():
            fut.set_result(res)
        return res

    async def _resolve(self, q: wire.Query, deadline: float) -> Resolved:
        if self.native is not None:
            res = await self.native(q, deadline)
            if res is not None:
                return res
        result = await self.forwarder.exchange(q, deadline)
        if result.reply is None:
            self.stats.inc("servfail_exhausted")
            return Resolved(wire.error_reply(q, wire.SERVFAIL, self.opt_size), "server")
        source = "fallback" if self.forwarder.plan.source == "fallback" else "forward"
        return Resolved(result.reply, source)

    async def _alias(self, q: wire.Query, target: str, deadline: float) -> Resolved:
        """Resolve a static alias's non-static target; answer flattened under the query name
        with the static TTL, as Lima does (acceptance case 6)."""
        try:
            tq = wire.parse_query(_question_wire(target, q))
        except (ValueError, wire.Malformed):
            return Resolved(wire.error_reply(q, wire.SERVFAIL, self.opt_size), "static")
        res = await self._coalesced(tq, deadline)
        reply = res.reply
        rcode = wire.reply_rcode(reply)
        try:
            records = tuple(
                (r.rtype, reply[r.rdata_offset : r.end])
                for r in wire.iter_records(reply)
                if r.section == 0 and r.rtype == q.qtype
            )
        except wire.Malformed:
            records, rcode = (), wire.SERVFAIL
        if records:
            return Resolved(self._records_reply(q, records, self.config.static_ttl), res.source)
        return Resolved(wire.error_reply(q, rcode, self.opt_size), res.source)


def _question_wire(name: str, like: wire.Query) -> bytes:
    """A fresh query for ``name`` with ``like``'s type, class, RD and EDNS settings."""
    flags = like.flags & (wire.RD | wire.CD)
    parts = [
        wire.HEADER.pack(0, flags, 1, 0, 0, 1 if like.has_opt else 0),
        wire.name_to_wire(name),
        like.qtype.to_bytes(2, "big"),
        like.qclass.to_bytes(2, "big"),
    ]
    if like.has_opt:
        parts.append(wire.opt_record(like.udp_size, like.do))
    return b"".join(parts)
