"""Per-query accounting for a worker's servers: what ``record`` counts for every answered
query, and the fold of the UDP fast lane's per-form counts into the same series.

Plain counters and histograms (``fastdns.metrics.stats``): no prometheus-client, no lock, no syscall
per query. ``ServerState`` holds one (``state.accounting``).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence

from fastdns.dns import wire
from fastdns.dns.resolved import PROBE, Resolved
from fastdns.metrics.stats import SIZE_BUCKETS, Histogram, WorkerStats
from fastdns.resolve.cache.front import Front
from fastdns.resolve.cache.store import PacketCache

# record()'s per (transport, qtype) keys: the requests counter key and three histograms
# (duration, request size, response size).
_QueryKeys = tuple[tuple[str, ...], Histogram, Histogram, Histogram]
_DO_REQUESTS = ("do_requests",)
# One tally of the compiled relay (Engine.relay_tallies): qtype, DO, rcode, request size slot
# and bytes, response size slot and bytes, answers, duration slots, duration sum.
RelayTally = tuple[int, bool, int, int, int, int, int, int, tuple[int, ...], float]


class Accounting:
    """The CoreDNS request series of one worker, kept cheap enough to run for every query."""

    def __init__(self, stats: WorkerStats, cache: PacketCache | None) -> None:
        self.stats = stats
        self.cache = cache
        # Per-query histograms, looked up once instead of by a new tuple key per query
        # (record() is the metrics cost of every query: tests/unit/test_stats_overhead.py).
        self.request_size = {
            p: stats.histogram(("request_size", p), SIZE_BUCKETS) for p in ("udp", "tcp")
        }
        self.response_size = {
            p: stats.histogram(("response_size", p), SIZE_BUCKETS) for p in ("udp", "tcp")
        }
        self.duration: dict[str, Histogram] = {}
        # record()'s keys, found once: (transport -> qtype -> keys), ((rcode, source) -> key)
        self._query_keys: dict[str, dict[int, _QueryKeys]] = {"udp": {}, "tcp": {}}
        self._response_keys: dict[tuple[int, str], tuple[str, ...]] = {}

    def record(
        self, proto: str, q: wire.Query | None, res: Resolved | None, size: int, t0: float
    ) -> None:
        """Account one answered query (cheap: plain counters, no prometheus-client).

        The keys and histograms for each (transport, qtype) and (rcode, source) are found
        once and kept; the three histogram observations are inlined (``Histogram.observe``):
        this runs for every query the fast lane does not answer."""
        if res is not None and res.source == PROBE:
            return  # fastdns's own probe (self-check, loop probe): not a client's query
        counters = self.stats.counters  # direct increments: no method call per counter
        keys = self._query_keys[proto].get(q.qtype if q is not None else -1)
        if keys is None:
            keys = self._new_query_keys(proto, q)
        requests, duration, request_size, response_size = keys
        counters[requests] += 1
        if q is not None and q.do:
            counters[_DO_REQUESTS] += 1
        if res is not None:
            reply = res.reply
            response = self._response_keys.get((reply[3] & 0xF, res.source))
            if response is None:
                response = self._new_response_key(reply[3] & 0xF, res.source)
            counters[response] += 1
            n = len(reply)
            response_size.counts[bisect_left(response_size.bounds, n)] += 1
            response_size.total += n
            response_size.n += 1
        request_size.counts[bisect_left(request_size.bounds, size)] += 1
        request_size.total += size
        request_size.n += 1
        seconds = time.monotonic() - t0
        duration.counts[bisect_left(duration.bounds, seconds)] += 1
        duration.total += seconds
        duration.n += 1

    def _new_query_keys(self, proto: str, q: wire.Query | None) -> _QueryKeys:
        qtype = q.qtype if q is not None else -1
        name = wire.TYPE_NAMES.get(qtype, "other")
        keys = (
            ("requests", proto, name),
            self._duration(name),
            self.request_size[proto],
            self.response_size[proto],
        )
        if name != "other" or qtype == -1:  # bounded: known types only (and "no question")
            self._query_keys[proto][qtype] = keys
        return keys

    def _new_response_key(self, rcode: int, source: str) -> tuple[str, ...]:
        key = ("responses", wire.RCODE_NAMES.get(rcode, "other"), source)
        if len(self._response_keys) < 1024:  # sources are a fixed few; rcodes 16
            self._response_keys[(rcode, source)] = key
        return key

    def _duration(self, qtype: str) -> Histogram:
        duration = self.duration.get(qtype)
        if duration is None:
            duration = self.duration[qtype] = self.stats.histogram(("duration", qtype))
        return duration

    def late_front_hit(self, f: Front, seconds: float) -> None:
        """A fast-lane hit that took longer than the first duration bucket (a GC pause)."""
        f.late += 1
        self._duration(wire.TYPE_NAMES.get(f.q.qtype, "other")).observe(seconds)

    def late_front_hits(self, f: Front, hits: int, seconds: float, slots: Sequence[int]) -> None:
        """Fast-lane hits counted elsewhere (the compiled datapath) that took longer than the
        first duration bucket: ``slots`` are their counts by histogram slot."""
        f.late += hits
        self._duration(wire.TYPE_NAMES.get(f.q.qtype, "other")).add_slots(slots, seconds, hits)

    def fold_relayed(self, tallies: Sequence[RelayTally], source: str) -> None:
        """Count the answers the compiled relay sent itself (its tallies, tally.h: per
        qtype, DO, rcode and size slots, with their sizes and durations) as ``record``
        would have counted each, answered from ``source`` ("forward" or "fallback")."""
        counters = self.stats.counters
        request_size, response_size = self.request_size["udp"], self.response_size["udp"]
        for (
            qtype_code,
            do,
            rcode,
            req_slot,
            req_bytes,
            resp_slot,
            resp_bytes,
            n,
            slots,
            secs,
        ) in tallies:
            qtype = wire.TYPE_NAMES.get(qtype_code, "other")
            counters["requests", "udp", qtype] += n
            if do:
                counters[_DO_REQUESTS] += n
            counters["responses", wire.RCODE_NAMES.get(rcode, "other"), source] += n
            request_size.counts[req_slot] += n
            request_size.total += req_bytes
            request_size.n += n
            response_size.counts[resp_slot] += n
            response_size.total += resp_bytes
            response_size.n += n
            self._duration(qtype).add_slots(slots, secs, n)

    def flush_fronts(self) -> None:
        """Fold the fast lane's per-form hit counts into the stats, as ``record`` would have
        counted each hit (called per tick, before every snapshot)."""
        if self.cache is None:
            return
        counters = self.stats.counters
        response_size, request_size = self.response_size["udp"], self.request_size["udp"]
        for (qtype_code, do, rcode, reply_size, query_size), (
            n,
            fast,
            seconds,
        ) in self.cache.fold_front(time.monotonic()).items():
            hits = int(n)
            qtype = wire.TYPE_NAMES.get(qtype_code, "other")
            counters["requests", "udp", qtype] += hits
            if do:
                counters[_DO_REQUESTS] += hits
            counters["responses", wire.RCODE_NAMES.get(rcode, "other"), "cache"] += hits
            response_size.observe_many(reply_size, hits)
            request_size.observe_many(query_size, hits)
            if fast:
                duration = self._duration(qtype)
                duration.counts[0] += int(fast)  # every one took at most FIRST_BUCKET
                duration.total += seconds
                duration.n += int(fast)
