"""The order of answer sources: static hosts, hosts file, then native lookup or raw forward,
then the host's NSS sources for A/AAAA that found no address (``.local`` names: NSS first).

``answer_now`` handles everything that needs no I/O, synchronously, in the datagram callback.
``answer`` resolves the rest, coalescing identical questions in flight into one lookup.
Replies come back as full wire messages for the asking client (its ID, its question bytes);
transport-specific truncation is the server's job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from fastdns.config.schema import Config
from fastdns.dns import compose, loopguard, wire
from fastdns.dns.resolved import PROBE, Resolved
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.cache.admission import Classified
from fastdns.resolve.cache.store import PacketCache
from fastdns.resolve.forward.attempts import Attempts
from fastdns.resolve.forward.routes import Route
from fastdns.resolve.forward.upstream import Forwarder, Mailbox
from fastdns.resolve.hosts import HostsFile, StaticAnswer, StaticHosts

logger = logging.getLogger(__name__)

# Runs a coroutine as a task that draining waits for (``ServerState.spawn``).
Spawn = Callable[[Coroutine[Any, Any, Any]], None]


# (the types the native path answers, forward_first on, ndots, a channel exists, the
# top-level labels c-ares answers itself)
ForwardRule = tuple[tuple[int, ...], bool, int, bool, tuple[bytes, ...]]


class NativeLookup(Protocol):
    """The native (c-ares) source, as the pipeline and the forward fast lane use it;
    ``fastdns.resolve.native.resolver.NativeResolver`` implements it."""

    async def __call__(self, q: wire.Query, deadline: float) -> Resolved | None:
        """The answer, or None: forward ``q`` raw (the fallback counted)."""

    def decline_reason(self, q: wire.Query) -> str | None:
        """Why ``q`` goes raw whatever happens (a ``native_fallback`` reason), else None.
        Pure: the caller that acts on it counts it (``count_fallback``)."""

    def count_fallback(self, reason: str) -> None:
        """Count one query forwarded raw instead, for ``reason``."""

    def forward_first(self, q: wire.Query) -> bool:
        """True when ``q`` (not declined) is forwarded raw before c-ares is asked."""

    def forward_rule(self) -> ForwardRule:
        """``decline_reason`` and ``forward_first`` as data, for a relay that runs them
        elsewhere (the compiled datapath's: fastdns/serve/crelay.py)."""
        ...

    def settle(self, q: wire.Query, reply: bytes) -> bool:
        """After ``forward_first``: True when c-ares must still run (counted either way)."""

    def close(self) -> None:
        """Cancel what is pending (the worker is stopping)."""


class NssLookup(Protocol):
    """The host's NSS sources for A/AAAA; ``fastdns.resolve.native.nss.NssResolver``."""

    async def __call__(self, q: wire.Query, deadline: float) -> Resolved | None:
        """An answer with addresses, or None (keep the other sources' answer; counted)."""

    def first(self, q: wire.Query) -> bool:
        """True when ``q`` goes to NSS before DNS (``.local``)."""

    def wants(self, q: wire.Query, reply: bytes) -> bool:
        """True when ``reply`` left ``q`` without an address that NSS may still have."""

    def close(self) -> None:
        """Drop queued lookups (the worker is stopping)."""


def _canonical_text(qname: bytes) -> str:
    if b"." in qname:  # rare: a label may hold a dot (or a length byte is 46)
        return _escaped_text(qname.lower())
    return wire.name_to_text(qname.lower()).rstrip(".") or "."


def _escaped_text(qname: bytes) -> str:
    """Text of a wire name with dots inside labels escaped, so that the one label ``my.domain``
    followed by ``com`` never matches the static name ``my.domain.com``."""
    labels = []
    i = 0
    while qname[i]:
        label = qname[i + 1 : i + 1 + qname[i]].decode("ascii", "backslashreplace")
        labels.append(label.replace(".", "\\."))
        i += qname[i] + 1
    return ".".join(labels) or "."


class Pipeline:
    """Answers one worker's queries; owns the static tables and in-flight coalescing."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        forwarder: Forwarder,
        native: NativeLookup | None = None,
        nss: NssLookup | None = None,
    ) -> None:
        self.config = config
        self.loop = loop
        self.stats = stats
        self.forwarder = forwarder
        # Queries it declines (``decline_reason``) may take the forward fast lane
        # (fastdns.resolve.relay); with native.forward_first, native types are forwarded raw
        # first and c-ares runs only when the search list may still find what that reply lacks.
        self.native = native
        self.nss = nss
        # hostResolver.enabled false: Lima's guest would ask the dns: servers directly, so
        # nothing is answered locally (no static names, hosts file or AAAA rule).
        self.static = StaticHosts.from_pairs(config.hosts if config.enabled else ())
        self.hosts_file = HostsFile(config.hosts_file)
        self.hosts_file.refresh()
        # The wire endings of every name the two tables know (see _local_endings), rebuilt
        # when the hosts file is re-read (a new ``names`` dict).
        self._endings: tuple[bytes, ...] | None = None
        self._endings_of: object = None
        self.pending: dict[bytes, asyncio.Future[Resolved]] = {}
        self.opt_size = config.udp_payload_cap
        # Set by the worker when rules are enabled: queries under it are loop probes
        # (fastdns.loopguard), answered here and never forwarded.
        self.loop_suffix = b""
        self._loop_logged = False
        # Background work (cache refreshes): its own tasks until ``use_spawn`` hands it the
        # server's, so that draining waits for and cancels these tasks too.
        self.spawn: Spawn = self._spawn
        self._background: set[asyncio.Task[Any]] = set()
        # The per-worker packet cache; lima_compat keeps Lima's behaviour: no cache.
        self.cache: PacketCache | None = None
        if config.cache.enabled and not config.lima_compat:
            self.cache = PacketCache(
                config.cache,
                counters=stats.counters,
                refresh=self._refresh_soon,
                refresh_hold=config.deadline + 1.0,
                opt_size=self.opt_size,
                max_udp=config.edns_max_udp,
            )

    # ------------------------------------------------------------------ synchronous answers

    def _records_reply(
        self, q: wire.Query, records: tuple[tuple[int, bytes], ...], ttl: int
    ) -> bytes:
        answers = [wire.rr(wire.POINTER_TO_QNAME, rtype, ttl, rdata) for rtype, rdata in records]
        return compose.build_reply(q, wire.NOERROR, answers, opt_size=self.opt_size)

    def _static_reply(self, q: wire.Query, verdict: StaticAnswer, ttl: int) -> bytes:
        if verdict.kind == "answer":
            return self._records_reply(q, verdict.records, ttl)
        if verdict.kind == "servfail":
            return compose.error_reply(q, wire.SERVFAIL, self.opt_size)
        return compose.error_reply(q, wire.NOERROR, self.opt_size)  # NODATA

    def answer_now(self, q: wire.Query) -> Resolved | None:
        """The reply when no I/O is needed, else None (then call ``answer``)."""
        if q.qclass != wire.CLASS_IN:
            # The rules process's self-check (a CH question under our probe suffix) gets the
            # same REFUSED as any other class, but is not a client's.
            probe = self.loop_suffix and loopguard.is_probe(q.qname, self.loop_suffix)
            return Resolved(
                compose.error_reply(q, wire.REFUSED, self.opt_size), PROBE if probe else "server"
            )
        if q.edns_version:
            return Resolved(compose.error_reply(q, wire.BADVERS, self.opt_size), "server")
        cfg = self.config
        if not cfg.enabled:
            return None  # everything goes to the dns: servers (see __init__)
        if q.qtype == wire.AAAA and not cfg.ipv6:
            # Lima: AAAA is NODATA at once when ipv6 is off (PR #3419; IPv6 is not routable
            # over slirp, lima#547).
            return self.remember(
                q,
                Resolved(
                    compose.error_reply(q, wire.NOERROR, self.opt_size), "static", cfg.static_ttl
                ),
            )
        endings = self.local_endings()
        if endings is not None and not q.qname.lower().endswith(endings):
            return None  # no static or hosts-file name ends this way: skip the text lookups
        name = _canonical_text(q.qname)
        verdict = self.static.lookup(name, q.qtype, cfg.ipv6)
        if verdict is not None:
            if verdict.kind == "alias":
                return None
            # Cached like any answer, with its own TTL (CoreDNS's cache wraps its hosts plugin):
            # a hit costs a third of this lookup.
            return self.remember(
                q,
                Resolved(self._static_reply(q, verdict, cfg.static_ttl), "static", cfg.static_ttl),
            )
        verdict = self.hosts_file.lookup(name, q.qtype, cfg.ipv6)
        if verdict is not None:
            return self.remember(
                q,
                Resolved(
                    self._static_reply(q, verdict, cfg.native.hosts_ttl),
                    "hosts",
                    cfg.native.hosts_ttl,
                ),
            )
        return None

    def local_endings(self) -> tuple[bytes, ...] | None:
        """The wire endings a static or hosts-file name may have (``_local_endings``), for
        the hosts file read last; None: any name may be one."""
        if self._endings_of is not self.hosts_file.names:
            self._endings = self._local_endings()
            self._endings_of = self.hosts_file.names
        return self._endings

    def _local_endings(self) -> tuple[bytes, ...] | None:
        """The last label plus root (``\\x03com\\x00``) of every name, wildcard suffix and
        reverse name in the static tables and the hosts file, or None when a label cannot be
        matched on the wire that simply (then every query is looked up). A query name that
        ends in none of them cannot be static: most forwarded queries skip two text lookups
        (about 2 us each)."""
        static, hosts = self.static, self.hosts_file
        labels: set[str] = set()
        for table in (
            static.ips,
            static.aliases,
            static.wild_ips,
            static.wild_aliases,
            static.reverse,
            hosts.names,
            hosts.reverse,
        ):
            for name in table:
                last = name.rsplit(".", 1)[-1]
                if not last or "\\" in last or not last.isascii():
                    return None
                labels.add(last)
        try:
            return tuple(wire.name_to_wire(label) for label in labels)
        except ValueError:
            return None

    # ------------------------------------------------------------------ asynchronous answers

    async def answer_or_servfail(self, q: wire.Query, proto: str) -> Resolved:
        """``answer``, with a bug turned into SERVFAIL for the client (logged and counted)
        instead of a lost query: what the UDP and TCP servers run as a task."""
        try:
            return await self.answer(q)
        except Exception:
            logger.exception("unhandled error answering a %s query", proto.upper())
            self.stats.inc("unhandled_exceptions")
            return Resolved(compose.error_reply(q, wire.SERVFAIL), "server")

    async def answer(self, q: wire.Query) -> Resolved:
        """Resolve ``q`` (not answerable synchronously) within the configured deadline."""
        deadline = self.loop.time() + self.config.deadline
        static = self.static
        # answer_now already looked the name up; only an alias sends it here again. Without
        # aliases, skip the second name decoding on the forward path.
        verdict = (
            static.lookup(_canonical_text(q.qname), q.qtype, self.config.ipv6)
            if static.aliases or static.wild_aliases
            else None
        )
        if verdict is not None and verdict.kind == "alias":
            # Cached under the alias's own key with the static TTL: the next one is a hit.
            return self.remember(q, await self._alias(q, verdict.target, deadline))
        res = await self._coalesced(q, deadline)
        return Resolved(compose.splice(res.reply, q.id, q.question, q.rd), res.source)

    async def _coalesced(self, q: wire.Query, deadline: float) -> Resolved:
        fut = self.pending.get(q.key)
        if fut is not None:
            self.stats.inc("coalesced")
            shared = await asyncio.shield(fut)
            # The key has no EDNS size: the reply was made for a query that may have had an
            # OPT record where this one has none, or the reverse (RFC 6891 §7).
            reply = compose.match_opt(shared.reply, q, self.opt_size)
            return shared if reply is shared.reply else dataclasses.replace(shared, reply=reply)
        fut = self.loop.create_future()
        self.pending[q.key] = fut
        try:
            # Stored once, by the leader; the waiters get this reply with their own ID,
            # question case and OPT (below, and ``answer``).
            res = self.remember(q, await self._resolve(q, deadline))
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
        if self.loop_suffix and loopguard.is_probe(q.qname, self.loop_suffix):
            self._loop_detected(q)
            return Resolved(loopguard.marker_reply(q, self.opt_size), PROBE)
        nss = self.nss
        if nss is not None and nss.first(q):
            found = await nss(q, deadline)
            return found if found is not None else await self._dns(q, deadline)
        return await self.after_dns(q, await self._dns(q, deadline), deadline)

    async def after_dns(self, q: wire.Query, res: Resolved, deadline: float) -> Resolved:
        """``res``, or the NSS answer when ``res`` has no address NSS may have."""
        nss = self.nss
        if nss is None or not nss.wants(q, res.reply):
            return res
        found = await nss(q, deadline)
        return res if found is None else found

    async def _dns(self, q: wire.Query, deadline: float) -> Resolved:
        """A route's servers, else c-ares (hosts file, DNS with the search list) or raw
        forwarding."""
        routes = self.forwarder.routes
        if routes:
            route = routes.match(q.qname)
            if route is not None:  # its servers only: no c-ares, no default upstream
                return await self.forward_rest(q, deadline, route=route)
        native = self.native
        if native is not None:
            if native.forward_first(q):
                return await self.settle(q, await self.forward_rest(q, deadline), deadline)
            res = await native(q, deadline)
            if res is not None:
                return res
        return await self.forward_rest(q, deadline)

    async def settle(self, q: wire.Query, res: Resolved, deadline: float) -> Resolved:
        """The answer to a question forwarded first (``NativeLookup.forward_first``): ``res``,
        or when it lacks the data and the host has search domains, ``search``."""
        if self.native is None or not self.native.settle(q, res.reply):
            return res
        return await self.search(q, res, deadline)

    async def search(self, q: wire.Query, res: Resolved, deadline: float) -> Resolved:
        """What c-ares finds with the search list after the forwarded ``res`` lacked the data
        (``res`` still, if c-ares falls back)."""
        found = await self.native(q, deadline) if self.native is not None else None
        return res if found is None else found

    async def forward_rest(
        self,
        q: wire.Query,
        deadline: float,
        machine: Attempts | None = None,
        box: Mailbox | None = None,
        route: Route | None = None,
    ) -> Resolved:
        """Forward ``q`` raw (``Forwarder.exchange``; with ``machine`` and ``box``, from where
        the forward fast lane left off; ``route``: a routed name, to its servers only): the
        reply, or SERVFAIL when every upstream failed."""
        fwd = self.forwarder
        result = await fwd.exchange(q, deadline, machine, box, route)
        if route is not None:  # the query started ``config.deadline`` before its deadline
            fwd.note_route(route, deadline - self.config.deadline, result.reply is not None)
        if result.reply is None:
            self.stats.inc("servfail_exhausted")
            return Resolved(compose.error_reply(q, wire.SERVFAIL, self.opt_size), "server")
        if route is not None:
            return Resolved(result.reply, "forward")
        source = fwd.plan.answers_as
        return Resolved(result.reply, source)

    # ------------------------------------------------------------------ the packet cache

    def store(self, q: wire.Query, res: Resolved, classified: Classified = False) -> None:
        """Store ``res`` in the cache, rendering nothing (the client has its reply)."""
        if self.cache is not None:
            self.cache.put(q, res.reply, res.source, res.ttl, time.monotonic(), classified)

    def remember(self, q: wire.Query, res: Resolved, classified: Classified = False) -> Resolved:
        """Store ``res`` in the cache; the reply to send (capped TTLs, or a stale entry when
        the lookup failed, RFC 8767)."""
        cache = self.cache
        if cache is None:
            return res
        reply, source = cache.admit(q, res.reply, res.source, res.ttl, time.monotonic(), classified)
        return res if reply is res.reply else Resolved(reply, source)

    def _refresh_soon(self, q: wire.Query) -> None:
        """Called by the cache on a hit (prefetch, stale): look ``q`` up again, behind."""
        self.spawn(self._refresh(q))

    async def _refresh(self, q: wire.Query) -> None:
        try:
            # Static and hosts-file entries refresh from the tables (answer_now stores them);
            # only the rest is looked up again. Stores the new reply, or keeps the stale one
            # when the lookup fails.
            if self.answer_now(q) is None:
                await self.answer(q)
        except Exception:
            logger.exception("background cache refresh failed")
            self.stats.inc("unhandled_exceptions")

    def use_spawn(self, spawn: Spawn) -> None:
        """Run background work with ``spawn`` (the server's, which draining waits for)."""
        self.spawn = spawn

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _loop_detected(self, q: wire.Query) -> None:
        self.stats.inc("loop_probes")
        if not self._loop_logged:
            self._loop_logged = True
            logger.error(
                "forwarding loop: fastdns's own loop probe %s came back to it; the "
                "upstream path leads to the virtual DNS address that the rules redirect "
                "to fastdns (see the rules process log)",
                q.name,
            )

    async def _alias(self, q: wire.Query, target: str, deadline: float) -> Resolved:
        """Resolve a static alias's non-static target; answer flattened under the query name
        with the static TTL, as Lima does (docs/answering.md, "The order of sources")."""
        try:
            tq = wire.parse_query(_question_wire(target, q))
        except (ValueError, wire.Malformed):
            return Resolved(compose.error_reply(q, wire.SERVFAIL, self.opt_size), "static")
        # The target goes through the same sources as a query for it would: the hosts file
        # (and the AAAA rule) first. Looking it up elsewhere only would ask DNS for a name the
        # hosts file owns, and cache that NXDOMAIN under the target's own key, where it beats
        # the hosts file for every later query of the target (the cache is read first).
        res = self.answer_now(tq) or await self._coalesced(tq, deadline)
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
        return Resolved(compose.error_reply(q, rcode, self.opt_size), res.source)


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
        parts.append(compose.opt_record(like.udp_size, like.do))
    return b"".join(parts)
