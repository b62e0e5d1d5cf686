"""The series a counter or histogram is exported with at 0 before anything is counted, so a
rate panel shows 0 rather than "no data" (Prometheus practice). Runs in the metrics process.
May import: ``fastdns.metrics.definitions``."""

from __future__ import annotations

from fastdns.metrics.definitions import CONTEXT_LABELS, MetricDef
from fastdns.metrics.sources import SOURCES

# Counters and histograms whose labels all come from fixed sets are exported at 0 from the
# start (a rate shows 0, not "no data"), up to this many label sets per family (per upstream
# for those with ``to``); larger products (native duration by type and rcode) appear as used.
INITIAL_SERIES_CAP = 100


def initial_label_sets(metric: MetricDef) -> list[dict[str, str]] | None:
    """The label sets (without the context labels and ``to``) a counter or histogram is
    exported with at 0 before anything is counted; None when one of its labels has no fixed
    set of values or the product exceeds INITIAL_SERIES_CAP. "other" is never among them."""
    if metric.kind not in ("counter", "histogram"):
        return None
    consts: dict[str, set[str]] = {}
    for sources in SOURCES.values():
        for src in sources:
            if src.metric == metric.name:
                for label, value in src.const:
                    consts.setdefault(label, set()).add(value)
    sets: list[dict[str, str]] = [{}]
    for label in metric.labels:
        if label in CONTEXT_LABELS or label == "to":
            continue
        values = metric.values.get(label) or consts.get(label)
        if not values:
            return None
        sets = [{**s, label: v} for s in sets for v in sorted(values)]
        if len(sets) > INITIAL_SERIES_CAP:
            return None
    return sets
