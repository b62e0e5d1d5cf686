"""Where each WorkerStats key (fastdns/metrics/stats.py) goes among the metric families of
fastdns/metrics/definitions.py: its family, the labels its key parts fill, and fixed labels.
"""

from __future__ import annotations

from fastdns.metrics.definitions import Source

__all__ = ["SOURCES"]

_PROXY = Source(
    "fastdns_proxy_request_duration_seconds", ("to", "rcode"), (("proxy_name", "forward"),)
)
_REJECTED = "fastdns_forward_rejected_replies_total"
_TLS_FAILURES = "fastdns_forward_tls_handshake_failures_total"

# WorkerStats key name -> where it goes. Keys recorded by the code but absent here are ignored
# (and listed by tests/unit/test_metrics_names.py so nothing is forgotten silently).
SOURCES: dict[str, tuple[Source, ...]] = {
    "requests": (Source("fastdns_dns_requests_total", ("proto", "type")),),
    "responses": (Source("fastdns_dns_responses_total", ("rcode", "plugin")),),
    "duration": (Source("fastdns_dns_request_duration_seconds", ("type",)),),
    "request_size": (Source("fastdns_dns_request_size_bytes", ("proto",)),),
    "response_size": (Source("fastdns_dns_response_size_bytes", ("proto",)),),
    "do_requests": (Source("fastdns_dns_do_requests_total"),),
    "dropped": (Source("fastdns_dns_dropped_total", ("proto",), (("reason", "malformed"),)),),
    "malformed": (Source("fastdns_dns_malformed_requests_total", ("proto",)),),
    "send_errors": (Source("fastdns_dns_send_errors_total", ("proto",)),),
    "overload": (Source("fastdns_dns_max_concurrent_rejects_total", ("proto",)),),
    "coalesced": (Source("fastdns_dns_coalesced_requests_total"),),
    "unhandled_exceptions": (Source("fastdns_unhandled_exceptions_total"),),
    "loop_probes": (Source("fastdns_loop_probes_total"),),
    "acl_blocked": (Source("fastdns_acl_blocked_total", ("proto", "action")),),
    "ratelimited": (Source("fastdns_ratelimit_limited_total", ("action",)),),
    "inflight": (Source("fastdns_inflight_requests"),),
    "tcp_connections": (Source("fastdns_dns_tcp_connections"),),
    "tcp_closed": (Source("fastdns_dns_tcp_connections_closed_total", ("reason",)),),
    "proxy_duration": (_PROXY,),
    "forward_failover": (Source("fastdns_forward_failover_total", ("to", "rcode")),),
    "forward_tcp_retries": (Source("fastdns_forward_tcp_retries_total", ("to",)),),
    "forward_fast_lane": (Source("fastdns_forward_fast_lane_total", ("outcome",)),),
    "servfail_exhausted": (Source("fastdns_forward_upstreams_exhausted_total"),),
    "upstream_unmatched": (Source(_REJECTED, ("to",), (("reason", "unknown_id"),)),),
    "upstream_mismatch": (Source(_REJECTED, ("to",), (("reason", "question_mismatch"),)),),
    "upstream_up": (Source("fastdns_forward_upstream_up", ("to",)),),
    "upstream_source": (Source("fastdns_forward_upstream_source", ("source",)),),
    "datapath_workers": (Source("fastdns_datapath_workers", ("datapath",)),),
    "datapath_batches": (Source("fastdns_datapath_batches_total"),),
    "datapath_datagrams": (Source("fastdns_datapath_datagrams_total", ("handled_by",)),),
    "datapath_relayed": (Source("fastdns_datapath_relayed_total", ("outcome",)),),
    "datapath_send_batches": (Source("fastdns_datapath_send_batches_total"),),
    "upstream_sockets": (Source("fastdns_forward_upstream_sockets", ("to",)),),
    "upstream_socket": (Source("fastdns_forward_socket_events_total", ("to", "event")),),
    "route_requests": (Source("fastdns_forward_route_requests_total", ("route",)),),
    "route_failures": (Source("fastdns_forward_route_failures_total", ("route",)),),
    "route_duration": (Source("fastdns_forward_route_duration_seconds", ("route",)),),
    "tls_connections": (Source("fastdns_forward_tls_connections", ("to",)),),
    "tls_handshakes": (Source("fastdns_forward_tls_handshakes_total", ("to",)),),
    "tls_handshake_failures": (Source(_TLS_FAILURES, ("to", "reason")),),
    "tls_reused": (Source("fastdns_forward_tls_reused_queries_total", ("to",)),),
    "native_duration": (Source("fastdns_native_request_duration_seconds", ("type", "rcode")),),
    "native_fallback": (Source("fastdns_native_fallbacks_total", ("reason",)),),
    "native_forward_first": (Source("fastdns_native_forward_first_total", ("outcome",)),),
    "nss_lookups": (Source("fastdns_nss_lookups_total", ("outcome",)),),
    "cache_entries": (Source("fastdns_cache_entries", ("type",)),),
    "cache_requests": (Source("fastdns_cache_requests_total"),),
    "cache_hits": (Source("fastdns_cache_hits_total", ("type",)),),
    "cache_misses": (Source("fastdns_cache_misses_total"),),
    "cache_prefetch": (Source("fastdns_cache_prefetch_total"),),
    "cache_served_stale": (Source("fastdns_cache_served_stale_total"),),
    "cache_evictions": (Source("fastdns_cache_evictions_total", ("type",)),),
    "cache_drops": (Source("fastdns_cache_drops_total"),),
}
