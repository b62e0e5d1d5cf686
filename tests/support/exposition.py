"""An exposition of every fastdns metric family, each with at least one sample (for lints)."""

from __future__ import annotations

import json

from prometheus_client.exposition import generate_latest

from fastdns.config.load import build_config
from fastdns.metrics.aggregator import StatsAggregator
from fastdns.metrics.definitions import BY_NAME
from fastdns.metrics.http import make_registry
from fastdns.metrics.sources import SOURCES
from fastdns.metrics.stats import WorkerStats, rules_message, supervisor_message, worker_message


def full_exposition() -> str:
    """An exposition in which every family has at least one sample."""
    config = build_config(
        {
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "rules": {"enabled": True},
                "hosts_file": "/nonexistent",
                "fallback": [],
            }
        }
    )
    agg = StatsAggregator(config)
    st = WorkerStats()
    for key, sources in SOURCES.items():
        for src in sources:
            metric = BY_NAME[src.metric]
            values = tuple(
                sorted(metric.values[label])[-1] if label in metric.values else "x"
                for label in src.key_labels
            )
            if metric.kind == "histogram":
                st.observe((key, *values), 0.5, metric.buckets)
            elif metric.kind == "gauge":
                st.gauges[(key, *values)] = 1
            else:
                st.counters[(key, *values)] += 1
    agg.feed(json.dumps(worker_message(0, 1, 1, st, "dns://127.0.0.1:53")).encode())
    agg.feed(json.dumps(supervisor_message(2, 1, 1, 1, [(0, "crash", 1)], False, True)).encode())
    agg.feed(json.dumps(rules_message(True, True, "", {"ok": 1}, 1.0)).encode())
    return generate_latest(make_registry(agg)).decode()
