"""Every metric fastdns exports: names, help, labels, buckets, and the worker stats keys
that feed them.

Workers never touch prometheus-client: they count in ``stats.WorkerStats`` and send cumulative
snapshots over the stats datagram socket (``stats.py`` holds that contract). The metrics
process sums them (``aggregator.StatsAggregator``, a custom collector that keeps the totals of
workers that exited, so counters stay monotonic across restarts) and serves ``/metrics``,
``/health`` and ``/ready`` (``metrics.http``; the process entry is ``metrics.main``).

``METRICS`` is the single source of truth for names, help, labels and buckets (CoreDNS names
under the ``fastdns_`` namespace, so CoreDNS dashboards port by renaming; docs/metrics.md lists
them all, checked by tests/unit/test_docs.py); ``SOURCES`` maps ``WorkerStats`` keys onto them.
Importing this module creates nothing; the supervisor does not import it (the metrics process
does, in ``children.child_metrics``, after the fork). prometheus-client and pycares are
imported only inside the metrics process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from fastdns.dns import wire
from fastdns.metrics.stats import SIZE_BUCKETS, TIME_BUCKETS

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------
# Bounded label values. Anything outside a set becomes "other".


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# CoreDNS plugin/metrics/vars/monitor.go monitorType.
MONITOR_TYPES = _words(
    "A AAAA CNAME DNSKEY DS MX NSEC3 NSEC NS PTR RRSIG SOA SRV TXT HTTPS SVCB IXFR AXFR ANY"
)
RCODES = _words(
    "NOERROR FORMERR SERVFAIL NXDOMAIN NOTIMP REFUSED YXDOMAIN YXRRSET NXRRSET NOTAUTH "
    "NOTZONE BADVERS"
)
UPSTREAM_RCODES = RCODES | {"timeout", "error"}  # upstream attempts that got no reply
PROTOS = frozenset(("udp", "tcp"))
# Who wrote the reply. CoreDNS leaves ``plugin`` empty when the server itself wrote it
# (REFUSED for overload, FORMERR, SERVFAIL after exhausted upstreams).
PLUGINS = frozenset(("static", "hosts", "cache", "native", "nss", "forward", "fallback", ""))
SOURCE_TO_PLUGIN = {"server": ""}
# fastdns/resolve/native/resolver.py NativeResolver._fallback reasons.
NATIVE_FALLBACK_REASONS = _words(
    "unsupported_type dnssec disabled overload error timeout nodata nxdomain servfail refused"
)
# fastdns/resolve/native/resolver.py NativeResolver.settle outcomes (native.forward_first).
FORWARD_FIRST_OUTCOMES = frozenset(("answered", "negative", "search", "failed"))
# fastdns/resolve/native/nss.py OUTCOMES.
NSS_OUTCOMES = frozenset(("answered", "notfound", "error", "timeout", "overload"))
# fastdns/serve/tcp.py CloseReason (kept here: this module must not import the serving code).
TCP_CLOSE_REASONS = _words(
    "idle frame_timeout write_stalled write_buffer oversize per_source evicted max_connections"
)
UPSTREAM_SOURCES = frozenset(("resolv_conf", "dns", "fallback", "none"))
RECONCILE_RESULTS = frozenset(("ok", "changed", "error"))
# Label values chosen by configuration (upstream addresses) or the supervisor (slots, restart
# reasons): bounded by admitting the first N distinct values and mapping later ones to "other".
CAPPED_LABELS = {"to": 32, "slot": 128, "reason": 16, "result": 8, "kind": 8, "route": 64}
# Labels every series of a family shares, filled by the metrics process (one value each).
CONTEXT_LABELS = frozenset(("server", "family"))
DATAPATHS = frozenset(("compiled", "python"))  # fastdns/serve/choice.py
# The rcodes after which a forwarder asks the next upstream (fastdns/dns/wire.py).
FAILOVER_RCODES = frozenset(wire.RCODE_NAMES[r] for r in wire.FAILOVER_RCODES)

Kind = Literal["counter", "gauge", "histogram", "info"]


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family. ``labels`` are all its label names in exposition order."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    # Label-value sets for this family (label -> allowed values); others are "other".
    values: dict[str, frozenset[str]] = field(default_factory=dict)
    aggregate: Literal["sum", "max"] = "sum"  # gauges across workers


@dataclass(frozen=True, slots=True)
class Source:
    """How a ``WorkerStats`` key ``(name, *values)`` feeds a family: ``key_labels`` name the
    values in order, ``const`` adds fixed labels; ``server``/``family`` come from the worker."""

    metric: str
    key_labels: tuple[str, ...] = ()
    const: tuple[tuple[str, str], ...] = ()


_TYPE = {"type": MONITOR_TYPES}
_PROTO = {"proto": PROTOS}

METRICS: tuple[MetricDef, ...] = (
    # --- the DNS server (CoreDNS plugin/metrics) -------------------------------------------
    MetricDef(
        "fastdns_build_info",
        "info",
        "Always 1; the labels carry the versions of fastdns, Python, pycares and c-ares.",
        ("version", "python", "pycares", "cares"),
    ),
    MetricDef(
        "fastdns_dns_requests_total",
        "counter",
        "Queries answered, by transport, address family (1 IPv4, 2 IPv6) and query type.",
        ("server", "proto", "family", "type"),
        values={**_TYPE, **_PROTO},
    ),
    MetricDef(
        "fastdns_dns_responses_total",
        "counter",
        "Replies sent, by rcode and by who wrote the reply (plugin: static, hosts, cache, "
        "native, nss, forward, fallback; empty when the server itself answered).",
        ("server", "rcode", "plugin"),
        values={"rcode": RCODES, "plugin": PLUGINS},
    ),
    MetricDef(
        "fastdns_dns_request_duration_seconds",
        "histogram",
        "Time from receiving a query to sending its reply.",
        ("server", "type"),
        TIME_BUCKETS,
        values=_TYPE,
    ),
    MetricDef(
        "fastdns_dns_request_size_bytes",
        "histogram",
        "Size of client queries in bytes.",
        ("server", "proto"),
        SIZE_BUCKETS,
        values=_PROTO,
    ),
    MetricDef(
        "fastdns_dns_response_size_bytes",
        "histogram",
        "Size of replies in bytes, after truncation.",
        ("server", "proto"),
        SIZE_BUCKETS,
        values=_PROTO,
    ),
    MetricDef(
        "fastdns_dns_do_requests_total",
        "counter",
        "Queries with the DNSSEC OK bit set.",
        ("server",),
    ),
    MetricDef(
        "fastdns_dns_dropped_total",
        "counter",
        "Queries dropped without a reply (too short or unparseable to answer).",
        ("server", "proto", "reason"),
        values={**_PROTO, "reason": frozenset(["malformed"])},
    ),
    MetricDef(
        "fastdns_dns_send_errors_total",
        "counter",
        "Replies that could not be sent (the socket refused them, or too many waited for "
        "a full send buffer).",
        ("server", "proto"),
        values=_PROTO,
    ),
    MetricDef(
        "fastdns_dns_malformed_requests_total",
        "counter",
        "Malformed queries answered with FORMERR or NOTIMP (not in requests_total).",
        ("server", "proto"),
        values=_PROTO,
    ),
    MetricDef(
        "fastdns_dns_max_concurrent_rejects_total",
        "counter",
        "Queries refused (UDP: REFUSED) or TCP connections closed because a worker was at "
        "its in-flight or connection limit.",
        ("server", "proto"),
        values=_PROTO,
    ),
    MetricDef(
        "fastdns_dns_coalesced_requests_total",
        "counter",
        "Queries answered by joining an identical query already in flight.",
        ("server",),
    ),
    MetricDef(
        "fastdns_inflight_requests",
        "gauge",
        "Queries being resolved now, summed over workers.",
        ("server",),
    ),
    MetricDef(
        "fastdns_dns_tcp_connections",
        "gauge",
        "Open client TCP connections, summed over workers.",
        ("server",),
    ),
    MetricDef(
        "fastdns_dns_tcp_connections_closed_total",
        "counter",
        "Client TCP connections fastdns closed or refused, by reason (fastdns/serve/tcp.py: "
        "idle, frame_timeout, write_stalled, write_buffer, oversize, per_source, evicted, "
        "max_connections).",
        ("server", "reason"),
        values={"reason": TCP_CLOSE_REASONS},
    ),
    # --- the UDP datapath (docs/datapath.md) ----------------------------------------------
    MetricDef(
        "fastdns_datapath_workers",
        "gauge",
        "Workers running each UDP datapath: compiled (C) or python.",
        ("datapath",),
        values={"datapath": DATAPATHS},
    ),
    MetricDef("fastdns_datapath_batches_total", "counter", "Reads (recvmmsg) in C."),
    MetricDef(
        "fastdns_datapath_datagrams_total",
        "counter",
        "UDP datagrams the compiled datapath read, by who handled them: compiled or python.",
        ("handled_by",),
        values={"handled_by": DATAPATHS},
    ),
    MetricDef("fastdns_datapath_send_batches_total", "counter", "Sends (sendmmsg) in C."),
    MetricDef(
        "fastdns_datapath_relayed_total",
        "counter",
        "Cache misses the compiled datapath relayed to the upstream itself, by outcome: "
        "answered, or handed to the forwarding state machine after an error or a timeout.",
        ("outcome",),
        values={"outcome": frozenset(("answered", "error", "timeout"))},
    ),
    # --- exposure: the client ACL and response rate limiting (docs/exposure.md) -------------
    MetricDef(
        "fastdns_acl_blocked_total",
        "counter",
        "Queries (UDP) and connections (TCP, closed at accept) from sources outside "
        "fastdns.acl.allow, by transport and action (drop or refuse).",
        ("proto", "action"),
        values={**_PROTO, "action": frozenset(("drop", "refuse"))},
    ),
    MetricDef(
        "fastdns_ratelimit_limited_total",
        "counter",
        "UDP queries over their client prefix's rate limit (fastdns.ratelimit), by what "
        "they got: slip (an empty TC=1 reply) or drop.",
        ("action",),
        values={"action": frozenset(("slip", "drop"))},
    ),
    MetricDef(
        "fastdns_loop_probes_total",
        "counter",
        "Loop-detection probes of fastdns that came back to it: a forwarding loop.",
    ),
    MetricDef(
        "fastdns_unhandled_exceptions_total",
        "counter",
        "Queries that hit an unexpected error and got SERVFAIL (CoreDNS panics_total).",
    ),
    # --- forwarding (CoreDNS plugin/forward and plugin/pkg/proxy) ---------------------------
    MetricDef(
        "fastdns_proxy_request_duration_seconds",
        "histogram",
        "Duration of each upstream attempt, by upstream and outcome (an rcode, or timeout "
        "/ error when no reply came). Its _count is the per-upstream request count.",
        ("proxy_name", "to", "rcode"),
        TIME_BUCKETS,
        values={"rcode": UPSTREAM_RCODES},
    ),
    MetricDef(
        "fastdns_forward_failover_total",
        "counter",
        "Upstream replies with SERVFAIL or REFUSED that made fastdns try the next upstream.",
        ("to", "rcode"),
        values={"rcode": FAILOVER_RCODES},
    ),
    MetricDef(
        "fastdns_forward_tcp_retries_total",
        "counter",
        "Truncated UDP replies retried over TCP (the UDP -> TCP fallback).",
        ("to",),
    ),
    MetricDef(
        "fastdns_forward_fast_lane_total",
        "counter",
        "UDP queries forwarded by the callback fast lane, by outcome: answered there, or "
        "handed to the general path after a timeout, an error, SERVFAIL/REFUSED "
        "(failover) or a truncated reply.",
        ("outcome",),
        values={"outcome": frozenset(("answered", "timeout", "error", "failover", "truncated"))},
    ),
    MetricDef(
        "fastdns_forward_upstreams_exhausted_total",
        "counter",
        "Queries answered SERVFAIL because every upstream failed or the deadline passed.",
    ),
    MetricDef(
        "fastdns_forward_rejected_replies_total",
        "counter",
        "Upstream replies thrown away: unknown ID (late or spoofed) or a question that "
        "does not match (RFC 5452).",
        ("to", "reason"),
        values={"reason": frozenset(("unknown_id", "question_mismatch"))},
    ),
    MetricDef(
        "fastdns_forward_upstream_up",
        "gauge",
        "1 when at least one worker considers the upstream healthy, 0 when all have "
        "marked it down after repeated failures.",
        ("to",),
        aggregate="max",
    ),
    MetricDef(
        "fastdns_forward_upstream_sockets",
        "gauge",
        "Open random-port UDP sockets to the upstream (RFC 5452 §9.2), retired ones "
        "still waiting for replies included.",
        ("to",),
    ),
    MetricDef(
        "fastdns_forward_socket_events_total",
        "counter",
        "Upstream UDP socket events: opened (a fresh random port), error (ICMP "
        "unreachable: the queries on it failed over, the socket closed), stalled (a "
        "timeout found replies unread: replaced), fallback (no descriptor or port free: "
        "an open socket reused), lingered (closed with replies still due).",
        ("to", "event"),
        values={"event": frozenset(("opened", "error", "stalled", "fallback", "lingered"))},
    ),
    # --- DNS over TLS to upstreams (fastdns/resolve/forward/dot.py, docs/tls.md) ------------
    MetricDef("fastdns_forward_tls_connections", "gauge", "Open TLS connections.", ("to",)),
    MetricDef("fastdns_forward_tls_handshakes_total", "counter", "TLS handshakes done.", ("to",)),
    MetricDef(
        "fastdns_forward_tls_handshake_failures_total",
        "counter",
        "TLS connections that failed before carrying a query: verify (certificate or name "
        "rejected), timeout, refused, error.",
        ("to", "reason"),
        values={"reason": frozenset(("verify", "timeout", "refused", "error"))},
    ),
    MetricDef(
        "fastdns_forward_tls_reused_queries_total",
        "counter",
        "Queries sent over a TLS connection that had already carried one (no handshake).",
        ("to",),
    ),
    MetricDef(
        "fastdns_forward_upstream_source",
        "gauge",
        "Workers whose upstream list comes from this source: resolv_conf, dns (lima.yaml), "
        "fallback (resolv.conf had no usable server) or none.",
        ("source",),
        values={"source": UPSTREAM_SOURCES},
    ),
    # --- per-domain routes (docs/routing.md) ---------------------------------------------------
    MetricDef(
        "fastdns_forward_route_requests_total",
        "counter",
        "Queries forwarded by a per-domain route, by route (its first domain).",
        ("route",),
    ),
    MetricDef(
        "fastdns_forward_route_failures_total",
        "counter",
        "Queries of a route answered SERVFAIL because every server of the route failed or "
        "the deadline passed, by route.",
        ("route",),
    ),
    MetricDef(
        "fastdns_forward_route_duration_seconds",
        "histogram",
        "Time to forward a routed query through its route (all attempts), by route.",
        ("route",),
        TIME_BUCKETS,
    ),
    # --- the native (c-ares) path ------------------------------------------------------------
    MetricDef(
        "fastdns_native_request_duration_seconds",
        "histogram",
        "Duration of native (c-ares) lookups, by query type and outcome rcode.",
        ("type", "rcode"),
        TIME_BUCKETS,
        values={**_TYPE, "rcode": UPSTREAM_RCODES},
    ),
    MetricDef(
        "fastdns_native_fallbacks_total",
        "counter",
        "Queries the native path handed to raw forwarding, by reason.",
        ("reason",),
        values={"reason": NATIVE_FALLBACK_REASONS},
    ),
    MetricDef(
        "fastdns_native_forward_first_total",
        "counter",
        "Native-type questions forwarded raw before c-ares (native.forward_first), by "
        "what the reply settled: answered (it had the data), negative (it had not, and "
        "no search domain to try), search (it had not: c-ares went on with the search "
        "list), failed (SERVFAIL or REFUSED: answered as is).",
        ("outcome",),
        values={"outcome": FORWARD_FIRST_OUTCOMES},
    ),
    MetricDef(
        "fastdns_nss_lookups_total",
        "counter",
        "A/AAAA questions asked of the host's NSS sources (fastdns.native.nss), by outcome: "
        "answered, notfound (no address: the DNS answer stands), error, timeout (the "
        "deadline passed first), overload (too many lookups pending: not asked).",
        ("outcome",),
        values={"outcome": NSS_OUTCOMES},
    ),
    # --- the packet cache (CoreDNS plugin/cache) ------------------------------------------
    MetricDef(
        "fastdns_cache_entries",
        "gauge",
        "Cached replies, summed over workers' caches.",
        ("server", "type"),
        values={"type": frozenset(("success", "denial"))},
    ),
    MetricDef(
        "fastdns_cache_requests_total", "counter", "Queries looked up in the cache.", ("server",)
    ),
    MetricDef(
        "fastdns_cache_hits_total",
        "counter",
        "Cache hits, by entry type.",
        ("server", "type"),
        values={"type": frozenset(("success", "denial"))},
    ),
    MetricDef("fastdns_cache_misses_total", "counter", "Cache misses.", ("server",)),
    MetricDef(
        "fastdns_cache_prefetch_total", "counter", "Popular entries refreshed early.", ("server",)
    ),
    MetricDef(
        "fastdns_cache_served_stale_total",
        "counter",
        "Expired entries served (RFC 8767 serve-stale).",
        ("server",),
    ),
    MetricDef(
        "fastdns_cache_evictions_total",
        "counter",
        "Entries evicted to make room.",
        ("server", "type"),
        values={"type": frozenset(("success", "denial"))},
    ),
    MetricDef(
        "fastdns_cache_drops_total",
        "counter",
        "Replies never cached: truncated, question mismatch, malformed, NXDOMAIN or NODATA "
        "without SOA, extended rcode.",
        ("server",),
    ),
    # --- processes -----------------------------------------------------------------------------
    MetricDef("fastdns_workers_expected", "gauge", "Worker processes the supervisor wants."),
    MetricDef("fastdns_workers_running", "gauge", "Worker processes alive."),
    MetricDef("fastdns_workers_ready", "gauge", "Worker processes that serve queries."),
    MetricDef(
        "fastdns_worker_requests_total",
        "counter",
        "Queries answered by each worker slot, over all its processes (SO_REUSEPORT balance).",
        ("slot",),
    ),
    MetricDef(
        "fastdns_worker_restarts_total",
        "counter",
        "Worker processes restarted, by slot and reason.",
        ("slot", "reason"),
    ),
    MetricDef("fastdns_ready", "gauge", "1 when /ready answers 200, else 0."),
    MetricDef("fastdns_rules_installed", "gauge", "1 when the DNAT rules are installed."),
    MetricDef(
        "fastdns_rules_reconcile_total",
        "counter",
        "Rule reconciliations, by result (ok, changed, error).",
        ("result",),
        values={"result": RECONCILE_RESULTS},
    ),
    MetricDef(
        "fastdns_rules_last_reconcile_timestamp_seconds",
        "gauge",
        "Unix time of the last rule reconciliation.",
    ),
    MetricDef(
        "fastdns_stats_messages_total",
        "counter",
        "Stats datagrams received by the metrics process, by kind (invalid: unreadable).",
        ("kind",),
        values={"kind": frozenset(("worker", "supervisor", "rules", "invalid"))},
    ),
)

BY_NAME = {m.name: m for m in METRICS}
