"""The native path: A, AAAA, CNAME, TXT, NS, MX and SRV resolved by c-ares, as the host would.

A and AAAA go through c-ares ``getaddrinfo`` (the configured hosts file, then DNS with the
resolv.conf search list, ndots and options); the other five through ``search()`` (same search
semantics, no hosts file). Replies are rebuilt by ``fastdns.dns.answers``; the c-ares channel
runs on the worker's loop through ``fastdns.resolve.native.cares``.

Import this module only in a worker process (it loads pycares; see
``fastdns.resolve.native.cares``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pycares

from fastdns.config.schema import Config
from fastdns.dns import answers, compose, wire
from fastdns.dns.answers import AnswerStyle, Unusable
from fastdns.dns.resolved import Resolved
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.routes import Route
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.hosts import HostsFile
from fastdns.resolve.native import routedsearch
from fastdns.resolve.native.cares import (
    TIMER_MAX,
    AresDriver,
    E,
    Outcome,
    QueryCacheUnsupported,
    keep_txt_strings,
)
from fastdns.resolve.resolvconf import UpstreamPlan
from fastdns.system.files import GraceHold

logger = logging.getLogger(__name__)

NATIVE_TYPES = frozenset((wire.A, wire.AAAA, wire.CNAME, wire.TXT, wire.NS, wire.MX, wire.SRV))
# Passing flags turns c-ares' default EDNS off unless it is ORed in (c-ares' ares.h:
# ARES_FLAG_EDNS).
CHANNEL_FLAGS = pycares.ARES_FLAG_EDNS
# c-ares' own query cache (on by default, answers kept up to 3600 s) is turned off: fastdns's
# cache, bounded by cache.capacity, is the one cache. Left on, it held every distinct name the
# native path resolved for its TTL whatever the cache settings said (bench/native_memory.py:
# 200,000 names with TTL 300 grew a worker from 27 to 261 MB), served answers fastdns's cache
# had expired or evicted, and kept them across a cache flush.
CARES_QCACHE_MAX_TTL = 0
RETIRE_GRACE = 1.0  # seconds past native.timeout before a replaced channel is cancelled
MIN_TRY_TIMEOUT = TIMER_MAX  # c-ares' own floor for adaptive timeouts; the glue relies on it

_ADDRESS_TYPES = (wire.A, wire.AAAA)
_SPECIAL_TLDS = (b"localhost", b"onion")  # RFC 6761 §6.3, RFC 7686: c-ares answers them
_DEADLINE = -1  # our own hard deadline ran out (c-ares may still be trying)
# c-ares status -> (fallback reason, duration label). ENOTFOUND/ENODATA are answers, not here.
# Reasons and labels are the bounded sets of fastdns.metrics (NATIVE_FALLBACK_REASONS,
# UPSTREAM_RCODES); anything else c-ares reports (ECONNREFUSED, EBADNAME, ECANCELLED...) is
# "error".
_FAILURES: dict[int, tuple[str, str]] = {
    _DEADLINE: ("timeout", "timeout"),
    E.ARES_ETIMEOUT: ("timeout", "timeout"),
    E.ARES_ESERVFAIL: ("servfail", "SERVFAIL"),
    E.ARES_EREFUSED: ("refused", "REFUSED"),
}


def channel_options(config: Config, plan: UpstreamPlan) -> dict[str, Any]:
    """The Channel options for ``plan`` (its servers, and the resolv.conf it was read from).

    c-ares reads search/ndots/options from ``config.resolv_conf`` itself (and never the system
    /etc/resolv.conf); they are also passed explicitly from fastdns's own parse, so both paths
    agree. The servers are always the plan's: the resolv.conf ones minus fastdns itself, or the
    configured fallbacks (c-ares would otherwise fall back to 127.0.0.1).
    """
    resolv = plan.resolv
    # A per-try timeout of at most half the native deadline leaves time for a second server.
    try_timeout = max(MIN_TRY_TIMEOUT, min(resolv.timeout, config.native.timeout / 2))
    opts: dict[str, Any] = {
        "flags": CHANNEL_FLAGS,
        "timeout": try_timeout,
        "tries": resolv.attempts,
        "ndots": resolv.ndots,
        "rotate": resolv.rotate,
        "lookups": "fb",  # hosts file first, then DNS (the issue; glibc "files dns")
        "resolvconf_path": config.resolv_conf,
        "qcache_max_ttl": CARES_QCACHE_MAX_TTL,
    }
    if resolv.search:
        opts["domains"] = list(resolv.search)
    return opts


def server_csv_entries(plan: UpstreamPlan) -> list[str]:
    """c-ares server strings (``ip:port``, ``[v6%scope]:port``) for the plan's servers."""
    out = []
    for host, port in plan.servers:
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


# ------------------------------------------------------------------------------ resolver


# Printable ASCII except "." and "\\": what c-ares takes back and forth unescaped.
_PLAIN_LABEL = re.compile(rb"[\x21-\x2d\x2f-\x5b\x5d-\x7e]+")


def lookup_name(qname: bytes) -> str | None:
    """The text name handed to c-ares, without the final dot so that the host's search list
    applies; None for names c-ares cannot take faithfully (the root, labels holding dots,
    backslashes, spaces or non-ASCII bytes, IP literals)."""
    labels = []
    i = 0
    while qname[i]:
        n = qname[i]
        label = qname[i + 1 : i + 1 + n]
        if _PLAIN_LABEL.fullmatch(label) is None:
            return None
        labels.append(label.decode("ascii"))
        i += n + 1
    if not labels:
        return None
    name = ".".join(labels)
    if labels[-1].isdigit() or ":" in name:
        try:
            ipaddress.ip_address(name)
            return None  # c-ares would echo the literal back without DNS
        except ValueError:
            pass
    return name


def is_localhost(name: str) -> bool:
    """RFC 6761 §6.3: c-ares answers these itself, with TTL 0."""
    name = name.lower()
    return name == "localhost" or name.endswith(".localhost")


class NativeResolver:
    """The pipeline's native hook: ``await resolver(q, deadline) -> Resolved | None``.

    None means "forward raw instead"; every such fallback is counted in
    ``native_fallback{reason}`` and every lookup's duration in
    ``native_duration{qtype,outcome}``.
    """

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        plan: Callable[[], UpstreamPlan],
        forwarder: Forwarder | None = None,
    ) -> None:
        self.config = config
        # Its routes and upstreams: a search-list candidate under a route is asked of that
        # route's servers, never through c-ares (``routedsearch``).
        self.forwarder = forwarder
        self.loop = loop
        self.stats = stats
        self.plan = plan
        # Our own view of the hosts file, only to tell hosts-file answers (TTL 0 from c-ares)
        # from DNS ones; c-ares re-reads the file itself when its mtime changes.
        self.hosts = HostsFile(
            config.hosts_file,  # (the pipeline's copy logs its holds)
            hold=GraceHold(config.hosts_file, "entries", log=False),
        )
        self._hosts_checked = -1.0
        self.timeout = config.native.timeout
        self.max_inflight = config.native.max_inflight
        self.negative_ttl = config.native.negative_ttl
        self.lima_compat = config.lima_compat
        self.style = AnswerStyle(
            lima_compat=config.lima_compat,
            local_ttl=config.native.hosts_ttl,
            opt_size=config.udp_payload_cap,
        )
        self.retiring: set[AresDriver] = set()
        # native.forward_first (never in lima_compat: Lima's answers are flattened, TTL 5).
        self.first = config.native.forward_first and not config.lima_compat
        self.ndots = 1
        self.searching = False  # the resolv.conf has search domains
        self.domains: tuple[bytes, ...] = ()  # those domains, wire names
        self._qcache_warned = False
        # pycares has no hosts_path: c-ares reads $CARES_HOSTS when a lookup passes
        # ARES_AI_ENVHOSTS (c-ares' ares.h; pycares has no hosts_path). One worker process serves
        # one config.
        os.environ["CARES_HOSTS"] = config.hosts_file
        if not keep_txt_strings():
            logger.warning("this pycares cannot keep TXT strings apart: they are joined")
        self.driver: AresDriver | None = self._new_driver()

    # -------------------------------------------------------------- channels

    def _new_driver(self) -> AresDriver | None:
        plan = self.plan()
        self.ndots, self.searching = plan.resolv.ndots, bool(plan.resolv.search)
        self.domains = routedsearch.search_domains(plan.resolv.search)
        if not plan.servers:
            # No nameserver and no fallback: c-ares would query 127.0.0.1:53 (maybe fastdns
            # itself). The hosts file is answered by the pipeline; the rest gets SERVFAIL.
            logger.warning("native lookups are off: no nameserver to send them to")
            return None
        options = channel_options(self.config, plan)
        try:
            try:
                return AresDriver(self.loop, server_csv_entries(plan), **options)
            except QueryCacheUnsupported as e:
                if not self._qcache_warned:
                    self._qcache_warned = True
                    logger.warning(
                        "%s: c-ares keeps its own cache of native answers, beyond cache.capacity", e
                    )
                del options["qcache_max_ttl"]
                return AresDriver(self.loop, server_csv_entries(plan), **options)
        except (pycares.AresError, ValueError, RuntimeError) as e:
            logger.error("cannot start a c-ares channel (%s): native lookups are off", e)
            return None

    def reload(self) -> None:
        """resolv.conf or the hosts file changed: new lookups go to a fresh channel; the old
        one finishes what it holds (or is cancelled after the native deadline)."""
        old, self.driver = self.driver, self._new_driver()
        if old is not None:
            self._retire(old)
        logger.info("native resolver reloaded (c-ares channel replaced)")

    def _retire(self, driver: AresDriver) -> None:
        if driver.pending == 0:
            driver.close()
            return
        self.retiring.add(driver)
        driver.on_idle = self._close_retired
        self.loop.call_later(self.timeout + RETIRE_GRACE, self._close_retired, driver)

    def _close_retired(self, driver: AresDriver) -> None:
        self.retiring.discard(driver)
        driver.close()

    def close(self) -> None:
        for driver in list(self.retiring):
            self._close_retired(driver)
        if self.driver is not None:
            self.driver.close()
            self.driver = None

    @property
    def inflight(self) -> int:
        current = self.driver.pending if self.driver is not None else 0
        return current + sum(d.pending for d in self.retiring)

    # -------------------------------------------------------------- lookups

    def count_fallback(self, reason: str) -> None:
        """Count one query forwarded raw instead of looked up, for ``reason``."""
        self.stats.inc("native_fallback", reason)

    def _fallback(self, reason: str) -> Resolved | None:
        """Count a fallback; returns None, the hook's "forward it raw"."""
        self.count_fallback(reason)
        return None

    def decline_reason(self, q: wire.Query) -> str | None:
        """Why ``q`` goes raw whatever happens (its type, its DNSSEC bits, or no channel), or
        None. Pure: whoever acts on it counts it (``count_fallback``); then the pipeline may
        forward it without calling us."""
        if q.qtype not in NATIVE_TYPES or q.qclass != wire.CLASS_IN:
            # PTR, SOA, CAA, HTTPS, DS, ANY...: always raw, EDNS options and all
            # (docs/answering.md).
            # (The pipeline REFUSES other classes first.)
            return "unsupported_type"
        if q.do or q.cd:
            return "dnssec"  # c-ares cannot carry DO/CD or RRSIGs
        if self.driver is None:
            return "disabled"
        return None

    def forward_first(self, q: wire.Query) -> bool:
        """True when ``q`` (not declined) may be forwarded raw before c-ares is asked.

        c-ares asks DNS for a name with at least ``ndots`` dots as is first, and goes on to
        the search domains only when that finds nothing: for A and AAAA (``getaddrinfo``,
        after the hosts file, which the pipeline has already looked in) no address, NXDOMAIN
        or NODATA; for the other five (``search()``, no hosts file) no answer record,
        NXDOMAIN or SERVFAIL. So when the raw reply to the same question from the same
        servers has what c-ares wanted, it is the answer c-ares would have built from it, plus
        the upstream's authority and additional sections. ``settle`` says when c-ares must
        still run. Not for ``localhost`` and ``.onion``, which c-ares answers without DNS.
        """
        if not self.first or q.do or q.cd or self.driver is None:
            return False  # (DO/CD and no channel: declined, forwarded raw anyway)
        name = q.qname
        i = dots = 0
        last = 0
        while name[i]:
            last = i
            i += name[i] + 1
            dots += 1
        if dots <= self.ndots:  # labels - 1 < ndots: c-ares tries the search list first
            return False
        return name[last + 1 : i].lower() not in _SPECIAL_TLDS

    def forward_rule(self) -> tuple[tuple[int, ...], bool, int, bool, tuple[bytes, ...]]:
        """``decline_reason`` and ``forward_first`` as data (the compiled relay runs them:
        fastdns/serve/cengine/relay.c ``native_verdict``)."""
        return (
            tuple(sorted(NATIVE_TYPES)),
            bool(self.first),
            self.ndots,
            self.driver is not None,
            _SPECIAL_TLDS,
        )

    def settle(self, q: wire.Query, reply: bytes) -> bool:
        """After ``forward_first``: True when c-ares must still run (``reply`` lacks what
        c-ares wanted and the host has search domains to try); counted either way."""
        rcode = reply[3] & wire.RCODE_MASK
        if q.qtype in _ADDRESS_TYPES:
            found = compose.has_answer(reply, q.qend, q.qtype)
            go_on = rcode in (wire.NOERROR, wire.NXDOMAIN)
        else:
            found = rcode == wire.NOERROR and reply[6:8] != b"\x00\x00"
            go_on = rcode in (wire.NOERROR, wire.NXDOMAIN, wire.SERVFAIL)
        if found:
            outcome = "answered"
        elif not go_on:
            outcome = "failed"  # c-ares would stop there too, and the forward already failed
        elif self.searching:
            self.stats.inc("native_forward_first", "search")
            return True
        else:
            outcome = "failed" if rcode == wire.SERVFAIL else "negative"
        self.stats.inc("native_forward_first", outcome)
        return False

    async def __call__(self, q: wire.Query, deadline: float) -> Resolved | None:
        reason = self.decline_reason(q)
        if reason is not None:
            return self._fallback(reason)
        qtype = q.qtype
        driver = self.driver
        assert driver is not None  # decline_reason() says so
        if self.inflight >= self.max_inflight:
            return self._fallback("overload")
        name = lookup_name(q.qname)
        if name is None:
            return self._fallback("error")
        loop = self.loop
        t0 = loop.time()
        budget = min(self.timeout, deadline - t0)
        if budget <= 0:
            return self._fallback("timeout")
        address = qtype in (wire.A, wire.AAAA)
        gai = address or (qtype == wire.CNAME and self.lima_compat)
        fwd = self.forwarder
        routed = (
            routedsearch.routed_candidates(q.qname, self.domains, self.ndots, fwd.routes)
            if fwd is not None and fwd.routes and self.domains
            else None
        )
        if routed is not None:
            # A candidate is routed: c-ares would send it to the default upstreams.
            ask_type = qtype if address or not gai else wire.A
            result, status = await routedsearch.walk(routed, ask_type, gai, self._ask, t0 + budget)
        else:
            if gai:
                family = socket.AF_INET6 if qtype == wire.AAAA else socket.AF_INET
                fut = driver.getaddrinfo(name, family)
            else:
                fut = driver.search(name, qtype)
            if fut.done():  # c-ares cache, hosts file: answered inside the call
                result, status = fut.result()
            else:
                timer = loop.call_at(t0 + budget, _expire, fut)
                try:
                    result, status = await fut
                finally:
                    timer.cancel()
        res, label, reason = self._build(q, name, address, result, status)
        self.stats.observe(("native_duration", wire.TYPE_NAMES[qtype], label), loop.time() - t0)
        if res is None:
            return self._fallback(reason)
        return res

    async def _ask(
        self, name: bytes, qtype: int, route: Route | None, deadline: float
    ) -> bytes | None:
        """One candidate of a routed search, forwarded raw: to ``route``'s servers only, or
        to the default upstreams (``None``: every server failed)."""
        fwd = self.forwarder
        assert fwd is not None  # routedsearch runs only with a forwarder
        t0 = self.loop.time()
        result = await fwd.exchange(
            wire.parse_query(routedsearch.question(name, qtype)), deadline, route=route
        )
        if route is not None:
            fwd.note_route(route, t0, result.reply is not None)
        return result.reply

    def _build(
        self, q: wire.Query, name: str, address: bool, result: Any, status: int | None
    ) -> tuple[Resolved | None, str, str]:
        """(reply or None, duration label, fallback reason)."""
        if status is None:
            try:
                if address:
                    local = self._is_local(name, result)
                    reply = answers.address_reply(q, result, self.style, local=local)
                elif q.qtype == wire.CNAME and self.lima_compat:
                    reply = answers.canonical_cname_reply(q, result, self.style)
                else:
                    reply = answers.records_reply(q, result, self.style)
            except Unusable:
                return None, "error", "error"
            if reply is not None:
                return Resolved(reply, "native"), "NOERROR", ""
            if self.lima_compat:
                return None, "NOERROR", "nodata"  # Lima forwards (docs/lima-differences.md)
            return self._negative(q, wire.NOERROR), "NOERROR", ""
        if status in (E.ARES_ENOTFOUND, E.ARES_ENODATA):
            rcode = wire.NXDOMAIN if status == E.ARES_ENOTFOUND else wire.NOERROR
            label = wire.RCODE_NAMES[rcode]
            if self.lima_compat:
                # Lima forwards the original query (docs/lima-differences.md)
                return None, label, "nxdomain" if rcode == wire.NXDOMAIN else "nodata"
            return self._negative(q, rcode), label, ""
        reason, label = _FAILURES.get(status, ("error", "error"))
        return None, label, reason

    def _is_local(self, name: str, result: Any) -> bool:
        """An answer from the hosts file or RFC 6761 localhost: c-ares marks it with TTL 0
        only, and a DNS answer may have TTL 0 too, so the name must also be one of those."""
        if result.cnames or any(n.ttl != 0 for n in result.nodes):
            return False
        if is_localhost(name):
            return True
        now = time.monotonic()
        if now - self._hosts_checked >= 1.0:  # a stat() at most once a second
            self._hosts_checked = now
            self.hosts.refresh()
        return name.lower() in self.hosts.names

    def _negative(self, q: wire.Query, rcode: int) -> Resolved:
        # No SOA can be given (see answers.negative_reply); the negative TTL travels with the
        # result for fastdns's own cache instead of inside the reply.
        return Resolved(
            answers.negative_reply(q, rcode, self.style), "native", ttl=self.negative_ttl
        )


def _expire(fut: asyncio.Future[Outcome]) -> None:
    if not fut.done():
        fut.set_result((None, _DEADLINE))
