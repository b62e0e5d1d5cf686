"""A per-worker wire-level packet cache with CoreDNS cache semantics (plugin/cache).

Pure: no I/O, no event loop; the caller passes ``now`` (``time.monotonic()``) and a ``refresh``
callback that starts a background lookup. An entry keeps the reply's bytes after the question
(OPT stripped, as CoreDNS strips it) and the offsets of its TTLs, so a hit is a join of five
byte strings: the client's ID, a precomputed header, the client's own question bytes (its 0x20
case), the body with every TTL counted down, and our OPT record when the client sent one. The
body is rewritten in place at most once a second per entry (TTLs change once a second). A UDP
query whose bytes, ID aside, were answered from the cache before is answered from ``front``
(``fastdns.resolve.cache.front``) without even a parse: stub resolvers repeat the same bytes with a
new ID.

Admission follows CoreDNS ``cache.go``/``item.go`` and RFC 2308: positive answers and denials
(NXDOMAIN/NODATA with an SOA, TTL ``min(SOA TTL, SOA MINIMUM)``) go to separate bounded maps,
SERVFAIL is kept ``servfail_ttl`` seconds, every TTL a client sees is the capped one; TC,
mismatched, malformed and SOA-less negative replies are never cached (unless the lookup gives a
negative TTL of its own: native and static answers). Serve-stale (RFC 8767, "immediate", or
"verify": look up first, stale only when that fails) and prefetch start at most one background
refresh per entry.
"""

from __future__ import annotations

import math
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.resolve.cache.admission import (
    KIND_NAMES,
    SERVFAIL,
    SUCCESS,
    Classified,
    Verdict,
    classify,
)
from fastdns.resolve.cache.entry import STALE, Entry, Form, Raw, retime
from fastdns.resolve.cache.front import Front, FrontTable, counted_down
from fastdns.resolve.cache.heads import Heads
from fastdns.resolve.cache.truncated import truncated_form

_HEAD = struct.Struct("!HHHHH")  # flags, qd, an, ns, ar: the header after the ID

TCP_LIMIT = 65535  # no truncation: TCP, and the pipeline's full-size replies
FAILURE_RECHECK = 30.0  # RFC 8767 §5 "failure recheck": after a failed refresh, wait this long
NOT_CACHED_SOURCES = frozenset(("server", "cache"))  # fastdns's own errors; already cached
# Fast-lane hits summed by (qtype, DO, rcode, reply size, query size): fold_front.
Tally = tuple[int, bool, int, int, int]

# WorkerStats keys, built once: a hit costs plain dict increments only.
_REQUESTS = ("cache_requests",)
_MISSES = ("cache_misses",)
_STALE = ("cache_served_stale",)
_PREFETCH = ("cache_prefetch",)
_DROPS = ("cache_drops",)
_HITS = tuple(("cache_hits", name) for name in KIND_NAMES)
_EVICTIONS = tuple(("cache_evictions", name) for name in KIND_NAMES)


class KeyMirror(Protocol):
    """Who keeps the set of keys the cache holds (the compiled relay, which relays only the
    queries whose key is not here: fastdns/serve/crelay.py); told every key that comes and
    goes. The cache stays the one that decides."""

    def key_add(self, key: bytes, /) -> object: ...

    def key_discard(self, key: bytes, /) -> object: ...

    def key_clear(self) -> object: ...


class PacketCache:
    """Success and denial maps in insertion order, each bounded; the oldest entry goes first.

    ``OrderedDict`` rather than ``dict``: evicting the first key of a plain dict rescans the
    deleted slots in front of it, about 55 us per eviction at 100,000 entries against 0.6 us.
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        counters: MutableMapping[Any, int] | None = None,
        refresh: Callable[[wire.Query], None] | None = None,
        refresh_hold: float = 5.0,
        opt_size: int = 1232,
        max_udp: int = 1232,
    ) -> None:
        self.config = config
        self.counters: MutableMapping[Any, int] = counters if counters is not None else {}
        for key in (_REQUESTS, _MISSES, _STALE, _PREFETCH, _DROPS, *_HITS, *_EVICTIONS):
            self.counters.setdefault(key, 0)
        self.refresh = refresh or (lambda q: None)
        self.refresh_hold = refresh_hold  # a refresh in flight blocks another this long
        self.failure_recheck = FAILURE_RECHECK
        self.max_udp = max_udp
        self.success: OrderedDict[bytes, Entry | Raw] = OrderedDict()
        self.denial: OrderedDict[bytes, Entry | Raw] = OrderedDict()
        # Query forms (bytes after the ID) that hit before -> their ready reply: the UDP
        # server answers them itself while fresh, and ``renew`` renders them again.
        self.front = FrontTable()
        self.keys: KeyMirror | None = None  # told every key that comes and goes
        self._opts = (compose.opt_record(opt_size, False), compose.opt_record(opt_size, True))
        self._heads = Heads()  # the headers entries answer with, interned
        self._stale_window = config.serve_stale
        # Verify mode: an expired entry is a miss that is kept; ``admit`` answers it when the
        # lookup fails. Immediate mode serves it from ``_serve`` (and the fast lane's renew).
        self._verify = config.stale_refresh == "verify"
        self._serve_window = 0 if self._verify else config.serve_stale
        self._stale_ttl = config.stale_ttl
        self._prefetch_hits = config.prefetch
        self._prefetch_window = config.prefetch_duration

    clock = staticmethod(time.monotonic)  # the clock ``now`` must come from

    def __len__(self) -> int:
        return len(self.success) + len(self.denial)

    def clear(self) -> None:
        """Forget everything: resolv.conf or the hosts file changed (a VPN came up, say)."""
        self.success.clear()
        self.denial.clear()
        self.front.clear()
        if self.keys is not None:
            self.keys.key_clear()

    def sample(self, gauges: MutableMapping[Any, float]) -> None:
        """Entry counts for the metrics process (per tick, not per query)."""
        gauges[("cache_entries", "success")] = len(self.success)
        gauges[("cache_entries", "denial")] = len(self.denial)

    # ------------------------------------------------------------------------------ the hit path

    def get(self, q: wire.Query, now: float, tcp: bool = False) -> bytes | None:
        """The reply for ``q`` from the cache (fresh, or stale within the serve-stale window),
        or None on a miss. May call ``refresh(q)``, once per entry (prefetch, stale)."""
        counters = self.counters
        counters[_REQUESTS] += 1
        key = q.key
        e = self.lookup(key)
        if e is None or q.edns_version:  # an unknown EDNS version gets BADVERS, not a hit
            counters[_MISSES] += 1
            return None
        reply = self._serve(e, q, q.wire, now, TCP_LIMIT if tcp else self._udp_limit(q))
        if reply is None:
            if (
                not self._verify
                or int(now - e.stored) - e.ttl >= self._stale_window
                or e.kind == SERVFAIL
            ):
                self._remove(key, e)  # (verify keeps a stale entry for ``admit``)
            counters[_MISSES] += 1
        elif not tcp and q.qname == key[: len(q.qname)] and len(q.wire) <= 512:
            # Remember this exact query form (lower-case name: not a 0x20 client, whose every
            # query differs; small: padded queries would hold memory) so that the next one
            # is answered without a parse: ``front``.
            self._install(q.wire[2:], q, e, reply, now)
        return reply

    def _install(self, form: bytes, q: wire.Query, e: Entry, reply: bytes, now: float) -> None:
        """Keep ``reply`` for ``form`` until its TTLs change or prefetch or expiry is due; for
        a mirror that counts TTLs down (the compiled datapath), until prefetch or expiry is
        due (or FORM_LIFE), with where its TTLs sit."""
        age = int(now - e.stored)
        if age < e.ttl:  # not a stale answer: those go through _serve every time
            until = e.stored + age + 1
            if until > e.prefetch_at:
                until = e.prefetch_at
            if until > now:
                if self.front.mirror is None:
                    self.front.install(form, Front(q, e, reply[2:], until))
                else:
                    rendered = self._form_for(e, q, self._udp_limit(q))
                    self.front.install(form, counted_down(q, e, reply, until, now, rendered.ttls))
                return
        self.front.drop(form)

    def renew(self, f: Front, data: bytes, now: float) -> tuple[bytes, wire.Query] | None:
        """A UDP hit on a query whose bytes, ID aside, equal the form ``f`` (looked up by the
        caller in ``front.forms``) once its ready reply is out of date: (reply, that query)
        without parsing, and ``front`` renewed; None means parse and call ``get``.

        Equal bytes parse equally, so the earlier ``Query`` stands for this one; only the ID
        comes from ``data``. A stub resolver repeats the same bytes with a new ID each time.
        """
        form = data[2:]
        q = f.q
        e = self.lookup(q.key)
        if e is None or int(now - e.stored) - e.ttl >= (
            self._serve_window if e.kind != SERVFAIL else 0
        ):
            self.front.drop(form)  # gone or expired: the full path counts and forgets it
            return None
        self.counters[_REQUESTS] += 1
        reply = self._serve(e, q, data, now, self._udp_limit(q))
        assert reply is not None  # checked above
        self._install(form, q, e, reply, now)
        return reply, q

    def fold_front(self, now: float) -> dict[Tally, list[float]]:
        """Count the fast lane's hits since the last fold as cache hits (and towards their
        entry's popularity), zero them, and return them summed by what the caller's per-query
        stats need: (qtype, DO, rcode, reply size, query size) -> [hits, hits within the first
        duration bucket, their summed duration]. One dict update per form: a hot worker holds
        thousands of forms, and this runs once a tick.

        Each form starts with a hit through ``_serve``, which applied CoreDNS's gap rule; a
        form that lives a second has its fast hits after that one. One counted down elsewhere
        (the compiled datapath) lives longer: its first and last hit times since the last fold
        (``Front.first``, ``last``) apply the rule at its first hit (hits between two folds are
        a tick apart at most). Such a form whose entry is no longer the cache's (evicted,
        replaced, removed) is dropped here: its next hit goes through ``renew``."""
        counters = self.counters
        window = self._prefetch_window
        tallies: dict[Tally, list[float]] = {}
        orphans: list[Front] = []
        for f in self.front.counted():
            n = f.n + f.late
            e = f.entry
            counters[_HITS[e.kind]] += n
            first = f.first
            if first:
                e.hits = n if first - e.last_hit > window else e.hits + n
                last = f.last
                f.first = f.last = 0.0
                if f.end > f.until and not self._holds(f.q.key, e):
                    orphans.append(f)
            else:
                e.hits += n
                last = now
            if e.last_hit < last:
                e.last_hit = last
            q = f.q
            sig = (q.qtype, q.do, f.body[1] & 0xF, len(f.body) + 2, len(q.wire))
            t = tallies.get(sig)
            if t is None:
                tallies[sig] = [n, f.n, f.dur]
            else:
                t[0] += n
                t[1] += f.n
                t[2] += f.dur
            f.n = f.late = 0
            f.dur = 0.0
        counters[_REQUESTS] += sum(int(t[0]) for t in tallies.values())
        for f in orphans:
            self.front.discard(f)
        return tallies

    def _holds(self, key: bytes, e: Entry) -> bool:
        """Whether ``e`` is still the cache's entry for ``key``."""
        held = self.success.get(key)
        if held is None:
            held = self.denial.get(key)
        return held is e

    def _udp_limit(self, q: wire.Query) -> int:
        """Largest UDP reply for this client: its EDNS size capped by ours; 512 without OPT."""
        if q.has_opt:
            return q.udp_size if q.udp_size < self.max_udp else self.max_udp
        return 512

    def _serve(self, e: Entry, q: wire.Query, data: bytes, now: float, limit: int) -> bytes | None:
        """``e`` rendered for the query ``data`` (parsed as ``q``); None when too old."""
        age = int(now - e.stored)
        counters = self.counters
        if age < e.ttl:
            # CoreDNS freq.Update: a gap longer than the window starts the count over.
            e.hits = 1 if now - e.last_hit > self._prefetch_window else e.hits + 1
            e.last_hit = now
            if now >= e.prefetch_at and e.hits >= self._prefetch_hits and now >= e.next_refresh:
                # CoreDNS tryPrefetch: popular and near expiry; one refresh in flight at most.
                e.next_refresh = now + self.refresh_hold
                counters[_PREFETCH] += 1
                self.refresh(q)
        elif (
            age - e.ttl < self._stale_window
            and e.kind != SERVFAIL
            and (not self._verify or now < e.next_refresh)
        ):
            # RFC 8767 §4 immediate mode: answer stale now with a short TTL, refresh behind.
            # Verify mode: only within the failure recheck after a failed lookup
            # (RFC 8767 §5), else the lookup goes first (a miss; ``admit`` serves it if that fails).
            age = STALE
            counters[_STALE] += 1
            if now >= e.next_refresh:
                e.next_refresh = now + self.refresh_hold
                self.refresh(q)
        else:
            return None
        counters[_HITS[e.kind]] += 1
        return self._render(e, q, age, limit, data)

    def _render(
        self, e: Entry, q: wire.Query, stamp: int, limit: int, data: bytes | None = None
    ) -> bytes:
        """The reply to ``data`` (default ``q.wire``): its ID, its question bytes."""
        if data is None:
            data = q.wire
        opt = e.opt if q.has_opt else b""
        form = self._form_for(e, q, limit)
        if form.stamp != stamp:
            retime(form, stamp, self._stale_ttl)
        return b"".join(
            (
                data[:2],
                form.heads[(data[2] & 1) | (2 if opt else 0)],
                data[12 : q.qend],
                form.body,
                opt,
            )
        )

    def _form_for(self, e: Entry, q: wire.Query, limit: int) -> Form:
        """The Form that renders ``e`` for ``q`` within ``limit`` bytes: the entry itself, or
        one of its truncated renderings."""
        opt = len(e.opt) if q.has_opt else 0
        if e.size + opt > limit:
            return truncated_form(e, q, limit - opt, self._heads)
        return e

    def _remove(self, key: bytes, e: Entry) -> None:
        table = self.success if e.kind == SUCCESS else self.denial
        if table.get(key) is e:
            del table[key]
            if self.keys is not None:
                self.keys.key_discard(key)

    # ------------------------------------------------------------------------------ the store

    def admit(
        self,
        q: wire.Query,
        reply: bytes,
        source: str,
        ttl: int | None,
        now: float,
        classified: Classified = False,
    ) -> tuple[bytes, str]:
        """Store a resolved reply; return the full-size reply to send ``q`` and its source.

        That is the stored reply rendered (capped TTLs), or, when the lookup failed (SERVFAIL,
        REFUSED) and a usable entry exists, that entry (RFC 8767 §5: stale data beats an error;
        source "cache"), or else ``reply`` untouched.
        """
        if len(reply) >= 4 and reply[3] & 0xF in (wire.SERVFAIL, wire.REFUSED):
            old = self.lookup(q.key)
            if old is not None and old.kind != SERVFAIL:
                age = int(now - old.stored)
                if age - old.ttl < self._stale_window:
                    old.next_refresh = now + self.failure_recheck
                    if age >= old.ttl:
                        age = STALE
                        self.counters[_STALE] += 1
                    return self._render(old, q, age, TCP_LIMIT), "cache"
        entry = self.put(q, reply, source, ttl, now, classified)
        if entry is None:
            return reply, source
        if type(entry) is not Entry:
            return self._first_reply(entry, q), source
        return self._render(entry, q, 0, TCP_LIMIT), source

    def _entry(
        self,
        kind: int,
        life: int,
        stored: float,
        reply: bytes,
        qend: int,
        opt_start: int,
        ttls: tuple[int, ...],
        do: bool,
    ) -> Entry:
        """An Entry for ``reply`` (its body showing the TTLs it came with: ``stamp`` 0)."""
        body_end = opt_start or len(reply)
        e = Entry()
        e.heads = self._heads.cached(reply, opt_start, do)
        e.body = bytearray(reply[qend:body_end])
        e.ttls = ttls
        e.size = body_end
        e.stamp = 0
        e.kind = kind
        e.ttl = life
        e.stored = stored
        e.hits = 0
        e.last_hit = stored
        e.next_refresh = 0.0
        e.opt = self._opts[do]
        e.trunc = None
        if self._prefetch_hits > 0 and kind != SERVFAIL:
            e.prefetch_at = stored + life - math.ceil(self.config.prefetch_percent / 100 * life)
        else:
            e.prefetch_at = math.inf
        return e

    def lookup(self, key: bytes) -> Entry | None:
        """The entry for ``key`` (a raw one made into an Entry now, in its place), or None."""
        table = self.success
        e = table.get(key)
        if e is None:
            table = self.denial
            e = table.get(key)
            if e is None:
                return None
        if type(e) is not Entry:  # a Raw tuple: one exact type test on the hit path
            e = table[key] = self._entry(*e)  # the same place in the eviction order
        return e

    def put(
        self,
        q: wire.Query,
        reply: bytes,
        source: str,
        ttl: int | None,
        now: float,
        classified: Classified = False,
    ) -> Entry | Raw | None:
        """Cache ``reply`` to ``q`` if CoreDNS would; None when it is not cacheable.

        ``ttl`` is the negative TTL of a reply that has no SOA to say it (native and static
        answers); None: only the TTLs in the reply count.
        """
        if source in NOT_CACHED_SOURCES:
            return None
        # (``classified``: the verdict of admission.c, the same function run by the relay)
        verdict = classify(q, reply, self.config, ttl) if classified is False else classified
        assert verdict is not True
        return self.put_classified(q.key, q.qend, reply, verdict, now)

    def put_classified(
        self, key: bytes, qend: int, reply: bytes, verdict: Verdict | None, now: float
    ) -> Entry | Raw | None:
        """``put`` of a reply already classified (``verdict``) to the query whose key is
        ``key`` and whose question ends at ``qend``: what the compiled relay hands up for
        the answers it sent (fastdns/serve/crelay.py), with no Query made for it."""
        if verdict is None or verdict[1] <= 0:  # TTL 0: use once, never cache (RFC 1035 §3.2.1)
            if verdict is None:
                self.counters[_DROPS] += 1
            old = self.lookup(key)
            if old is not None:  # the answer changed into an uncacheable one: forget the old
                self._remove(key, old)
            return None
        kind, life, opt_start, ttls, as_is = verdict
        cfg = self.config
        table, other, capacity = (
            (self.success, self.denial, cfg.capacity)
            if kind == SUCCESS
            else (self.denial, self.success, cfg.denial_capacity)
        )
        if capacity <= 0:
            return None
        e: Entry | Raw
        if as_is:  # built on its first hit: most names asked once are never asked again
            e = (kind, life, now, reply, qend, opt_start, ttls, key[-2] == 1)
        else:
            e = self._entry(kind, life, now, reply, qend, opt_start, ttls, key[-2] == 1)
            retime(e, 0, 0)  # the capped TTLs
        other.pop(key, None)
        if key in table:
            table.move_to_end(key)  # a refreshed entry is young again
        table[key] = e
        keys = self.keys
        if keys is not None:
            keys.key_add(key)
        while len(table) > capacity:
            gone = table.popitem(last=False)[0]
            self.counters[_EVICTIONS[kind]] += 1
            if keys is not None:
                keys.key_discard(gone)
        return e

    def _first_reply(self, raw: Raw, q: wire.Query) -> bytes:
        """What ``_render`` of the Entry that ``raw`` becomes would give ``q`` at age 0."""
        _, _, _, reply, qend, opt_start, _, do = raw
        heads = self._heads.cached(reply, opt_start, do)
        opt = self._opts[do] if q.has_opt else b""
        data = q.wire
        return b"".join(
            (
                data[:2],
                heads[(data[2] & 1) | (2 if opt else 0)],
                data[12 : q.qend],
                reply[qend : opt_start or len(reply)],
                opt,
            )
        )
