"""Lint of the metric definitions (promlint and CoreDNS conventions) and of the mapping from
the counters the code records to exported families.

``promtool check metrics`` is Prometheus's own promlint; it runs on an exposition in which
every family has samples.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from support.exposition import full_exposition
from support.metrics import parse

from fastdns.metrics.definitions import (
    BY_NAME,
    CAPPED_LABELS,
    METRICS,
    SIZE_BUCKETS,
    TIME_BUCKETS,
)
from fastdns.metrics.sources import SOURCES

PACKAGE = Path(__file__).resolve().parents[2] / "fastdns"
NAME = re.compile(r"^fastdns_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
LABEL = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
# Labels filled from context with one value per process, or from versions: bounded by nature.
CONTEXT_LABELS = {"server", "family", "proxy_name", "version", "python", "pycares", "cares"}
UNBOUNDED = {"pid", "qname", "name", "client", "ip", "id", "query", "path", "error"}
BASE_UNITS = ("_seconds", "_bytes")
NON_BASE_UNITS = re.compile(
    r"_(milli|micro|nano)?(secs?|ms|us|ns|minutes?|hours?|days?|kb|mb|"
    r"kilobytes|megabytes|percent|ratio_percent)(_|$)"
)
MAX_SERIES = 5000  # per family, with every bounded label at its cap

# CoreDNS metrics fastdns mirrors: the same name after the namespace and the same labels, minus
# zone and view (fastdns serves one zone, ".") - so CoreDNS dashboards port by renaming.
COREDNS = {
    "dns_requests_total": {"server", "zone", "view", "proto", "family", "type"},
    "dns_responses_total": {"server", "zone", "view", "rcode", "plugin"},
    "dns_request_duration_seconds": {"server", "zone", "view", "type"},
    "dns_request_size_bytes": {"server", "zone", "view", "proto"},
    "dns_response_size_bytes": {"server", "zone", "view", "proto"},
    "dns_do_requests_total": {"server", "zone", "view"},
    "proxy_request_duration_seconds": {"proxy_name", "to", "rcode"},
    "cache_entries": {"server", "type", "zones", "view"},
    "cache_requests_total": {"server", "zones", "view"},
    "cache_hits_total": {"server", "type", "zones", "view"},
    "cache_misses_total": {"server", "zones", "view"},
    "cache_prefetch_total": {"server", "zones", "view"},
    "cache_served_stale_total": {"server", "zones", "view"},
    "cache_evictions_total": {"server", "type", "zones", "view"},
}


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_name_follows_promlint(metric: object) -> None:
    m = BY_NAME[metric.name]  # type: ignore[attr-defined]
    assert NAME.match(m.name), "snake_case under the fastdns_ namespace"
    assert not NON_BASE_UNITS.search(m.name), "use base units: _seconds, _bytes"
    if m.kind == "counter":
        assert m.name.endswith("_total")
    else:
        assert not m.name.endswith("_total")
    if m.kind == "histogram":
        assert m.name.endswith(BASE_UNITS), "a histogram measures something with a unit"
        assert m.buckets in (TIME_BUCKETS, SIZE_BUCKETS)
        assert m.name.endswith("_seconds") == (m.buckets == TIME_BUCKETS)
    else:
        assert not m.buckets
    assert m.name.endswith("_info") == (m.kind == "info")
    assert not m.name.endswith(("_count", "_sum", "_bucket", "_created"))
    assert m.help and not m.help[0].islower() and m.help.endswith("."), "help is a sentence"


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_labels_are_snake_case_and_bounded(metric: object) -> None:
    m = BY_NAME[metric.name]  # type: ignore[attr-defined]
    series = 1
    for label in m.labels:
        assert LABEL.match(label) and label not in ("le", "quantile"), label
        assert label not in UNBOUNDED, f"{label} would make one series per query or process"
        if label in m.values:
            size = len(m.values[label]) + 1  # + "other"
        elif label in CAPPED_LABELS:
            size = CAPPED_LABELS[label] + 1
        else:
            assert label in CONTEXT_LABELS, f"{m.name}: label {label} has no bound"
            size = 1
        series *= size
    assert len(set(m.labels)) == len(m.labels)
    assert series * (len(m.buckets) + 3 if m.buckets else 1) <= MAX_SERIES * 20, series
    assert series <= MAX_SERIES, f"{m.name}: up to {series} series"
    assert set(m.values) <= set(m.labels)


def test_coredns_names_and_labels_are_kept() -> None:
    for name, labels in COREDNS.items():
        ours = BY_NAME.get(f"fastdns_{name}")
        assert ours is not None, f"CoreDNS has coredns_{name}"
        assert set(ours.labels) == labels - {"zone", "zones", "view"}, name


def test_every_source_feeds_an_existing_family_with_all_its_labels() -> None:
    for key, sources in SOURCES.items():
        for src in sources:
            metric = BY_NAME[src.metric]
            given = set(src.key_labels) | {name for name, _ in src.const}
            assert given <= set(metric.labels), (key, src)
            assert set(metric.labels) - given <= {"server", "family"}, (key, src)
            assert metric.kind != "info"


def _recorded_keys() -> set[str]:
    """Every WorkerStats key name the code records: inc("x", ...), observe(("x", ...),
    histogram(("x", ...),
    counters["x", ...] and gauges[("x", ...)]."""
    pattern = re.compile(
        r"""\.inc\(\s*["']([a-z_]+)["']"""
        r"""|\.(?:observe|histogram)\(\s*\(\s*["']([a-z_]+)["']"""
        r"""|counters\[\s*\(?\s*["']([a-z_]+)["']"""
        r"""|gauges\[\s*\(\s*["']([a-z_]+)["']"""
    )
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            found.add(next(g for g in match.groups() if g))
    return found


def test_every_recorded_counter_is_exported() -> None:
    recorded = _recorded_keys()
    assert {"requests", "responses", "duration", "proxy_duration"} <= recorded  # the scan works
    missing = sorted(recorded - set(SOURCES))
    assert not missing, (
        f"WorkerStats keys recorded but not exported: {missing}; map them "
        "in fastdns/metrics/definitions.py SOURCES (and docs/metrics.md)"
    )


def test_every_family_is_exported() -> None:
    names = {name for name, _ in parse(full_exposition())}
    for m in METRICS:
        sample = m.name + "_count" if m.kind == "histogram" else m.name
        assert sample in names, m.name


def test_buckets_are_increasing() -> None:
    for buckets in (TIME_BUCKETS, SIZE_BUCKETS):
        assert list(buckets) == sorted(set(buckets)) and not any(map(math.isinf, buckets))
