"""Sums worker snapshots into the exported metrics: the metrics process's custom collector.

Counters and histograms are summed over every ``(slot, pid)`` that ever reported; a worker
that exited leaves its last snapshot behind in ``retired`` so nothing goes backwards. Gauges
come only from workers that reported recently. Label values are bounded here (``other``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastdns.config.schema import Config
from fastdns.metrics.context import address_family, build_versions, default_server
from fastdns.metrics.definitions import (
    BY_NAME,
    CAPPED_LABELS,
    METRICS,
    SOURCE_TO_PLUGIN,
    MetricDef,
)
from fastdns.metrics.sources import SOURCES
from fastdns.metrics.stats import REPORT_INTERVAL, Key, decode
from fastdns.metrics.zeros import initial_label_sets

logger = logging.getLogger(__name__)

SUPERVISOR_STALE = 5.0  # /health fails when the supervisor has been silent this long
GAUGE_STALE = 5 * REPORT_INTERVAL  # a worker's gauges count only while its reports are fresh
TOMBSTONE_TTL = 600.0  # how long a retired worker's last snapshot is kept to absorb late reports


class Totals:
    """Counters, histograms and gauges keyed like ``WorkerStats`` keys."""

    __slots__ = ("counters", "gauges", "histograms")

    def __init__(self) -> None:
        self.counters: dict[Key, float] = {}
        # key -> [bounds, counts, sum, n]
        self.histograms: dict[Key, list[Any]] = {}
        self.gauges: dict[Key, float] = {}

    @classmethod
    def from_snapshot(cls, snap: Any) -> Totals:
        """Parse ``WorkerStats.snapshot()``; ``ValueError`` on anything unexpected."""
        if not isinstance(snap, dict):
            raise ValueError("snapshot is not an object")
        t = cls()
        counters = t.counters
        for key, value in snap.get("counters", ()):
            k = _key(key)
            counters[k] = counters.get(k, 0) + _number(value)
        for key, value in snap.get("gauges", ()):
            t.gauges[_key(key)] = _number(value)
        for key, bounds, counts, total, n in snap.get("histograms", ()):
            bounds = tuple(_number(b) for b in bounds)
            counts = [_number(c) for c in counts]
            if len(counts) != len(bounds) + 1:
                raise ValueError("histogram counts do not match its bounds")
            t.histograms[_key(key)] = [bounds, counts, _number(total), _number(n)]
        return t

    def add(self, other: Totals, sign: int = 1) -> None:
        """Add (sign 1) or subtract (sign -1) another's counters and histograms (not gauges)."""
        counters = self.counters
        for key, value in other.counters.items():
            counters[key] = counters.get(key, 0) + sign * value
        for key, (bounds, counts, total, n) in other.histograms.items():
            mine = self.histograms.get(key)
            if mine is None:
                mine = self.histograms[key] = [bounds, [0] * len(counts), 0.0, 0]
            elif mine[0] != bounds:
                continue  # other buckets (another fastdns version): never mix or reset
            mine[1] = [a + sign * b for a, b in zip(mine[1], counts, strict=True)]
            mine[2] += sign * total
            mine[3] += sign * n

    def covers(self, older: Totals) -> bool:
        """Whether every count here is >= the one in ``older`` (else the process reset)."""
        counters = self.counters
        for key, value in older.counters.items():
            if counters.get(key, 0) < value:
                return False
        for key, h in older.histograms.items():
            mine = self.histograms.get(key)
            if mine is None or mine[3] < h[3]:
                return False
        return True

    def copy(self) -> Totals:
        t = Totals()
        t.counters = dict(self.counters)
        t.histograms = {k: [b, list(c), s, n] for k, (b, c, s, n) in self.histograms.items()}
        return t


def _key(raw: Any) -> Key:
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise ValueError(f"bad stats key {raw!r}")
    return tuple(raw)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return value


@dataclass(slots=True)
class WorkerEntry:
    totals: Totals
    seen: float  # monotonic time of the last report
    generation: int = 0


class StatsAggregator:
    """Sums worker snapshots per ``(slot, pid)`` and keeps retired workers' totals.

    When a slot reports a new pid, the old pid's last snapshot is folded into ``retired``; a
    late report from that old pid (a draining worker) adds only its increase. A snapshot that
    went backwards for the same ``(slot, pid)`` (pid reuse) folds the earlier one in first.
    So every exported counter is monotonic, and exact while no report is lost.
    """

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.lock = threading.Lock()
        self.live: dict[tuple[int, int], WorkerEntry] = {}
        self.tombstones: dict[tuple[int, int], WorkerEntry] = {}
        self.retired = Totals()
        self.slot_retired: dict[int, float] = {}  # requests of retired processes, by slot
        self.server = default_server(config)
        self.worker_seen = False
        self.family = address_family(config.listen)
        self.supervisor: dict[str, Any] | None = None
        self.supervisor_seen = -1e18
        self.rules: dict[str, Any] | None = None
        # Reconcile counts restart at 0 with a restarted rules process: keep them monotonic.
        self.reconciles: dict[str, list[int]] = {}  # result -> [retired base, last seen]
        self.messages: Counter[str] = Counter()
        self.versions = build_versions()
        self._admitted: dict[tuple[str, str], set[str]] = {}  # (metric, label) -> values
        # (family, its label sets) exported at 0 from the start (fastdns.metrics.zeros);
        # the rules series only when there is a rules process.
        self._initial = [
            (m, sets)
            for m in METRICS
            if (sets := initial_label_sets(m)) is not None
            and (config.rules_process or not m.name.startswith("fastdns_rules_"))
        ]

    # --------------------------------------------------------------------------- input

    def feed(self, data: bytes) -> None:
        """One datagram; a malformed one is counted and ignored."""
        with self.lock:
            try:
                self.handle(decode(data))
            except (ValueError, TypeError, KeyError) as e:
                self.messages["invalid"] += 1
                logger.debug("ignored a stats datagram: %s", e)

    def handle(self, msg: dict[str, Any]) -> None:
        kind = msg["kind"]
        if kind == "worker":
            self._worker(msg)
        elif kind == "supervisor":
            if not isinstance(msg.get("workers_expected"), int):
                raise ValueError("supervisor message without workers_expected")
            self.supervisor = msg
            self.supervisor_seen = self.clock()
        elif kind == "rules":
            self.rules = msg
            self._reconciles(msg.get("reconcile"))
        else:
            raise ValueError(f"unknown kind {kind!r}")
        self.messages[kind] += 1

    def _worker(self, msg: dict[str, Any]) -> None:
        slot, pid = msg["slot"], msg["pid"]
        if not isinstance(slot, int) or not isinstance(pid, int):
            raise ValueError("worker message without an integer slot and pid")
        totals = Totals.from_snapshot(msg["snapshot"])
        now = self.clock()
        self.worker_seen = True
        if isinstance(msg.get("server"), str) and msg["server"]:
            self.server = msg["server"]
        key = (slot, pid)
        old = self.tombstones.get(key)
        if old is not None:
            if totals.covers(old.totals):  # a retired worker still draining: add its increase
                self._fold(slot, totals)
                self._fold(slot, old.totals, -1)
                old.totals, old.seen = totals, now
                return
            del self.tombstones[key]  # counts went down: a new process that reused the pid
        prev = self.live.get(key)
        if prev is not None and not totals.covers(prev.totals):
            self._fold(slot, prev.totals)  # same pid, counts went down: a new process
        for other in [k for k in self.live if k[0] == slot and k[1] != pid]:
            self._retire(other)
        self.live[key] = WorkerEntry(totals, now, int(msg.get("generation") or 0))
        self._expire(now)

    def _reconciles(self, counts: Any) -> None:
        for result, n in (counts or {}).items():
            if isinstance(n, int) and not isinstance(n, bool):
                seen = self.reconciles.setdefault(str(result), [0, 0])
                if n < seen[1]:
                    seen[0] += seen[1]  # a new rules process counts from zero
                seen[1] = n

    def _fold(self, slot: int, totals: Totals, sign: int = 1) -> None:
        self.retired.add(totals, sign)
        self.slot_retired[slot] = self.slot_retired.get(slot, 0) + sign * _requests(totals)

    def _retire(self, key: tuple[int, int]) -> None:
        entry = self.live.pop(key)
        self._fold(key[0], entry.totals)
        self.tombstones[key] = entry

    def _expire(self, now: float) -> None:
        for key in [k for k, e in self.tombstones.items() if now - e.seen > TOMBSTONE_TTL]:
            del self.tombstones[key]
        for key in [k for k, e in self.live.items() if now - e.seen > TOMBSTONE_TTL]:
            self._retire(key)  # gone for good without a successor (TTOU)

    # --------------------------------------------------------------------------- state

    def totals(self) -> Totals:
        """Counters and histograms over every worker that ever reported; gauges of the
        workers that reported recently."""
        out = self.retired.copy()
        now = self.clock()
        for entry in self.live.values():
            out.add(entry.totals)
        for entry in self.live.values():
            if now - entry.seen > GAUGE_STALE:
                continue
            for gkey, value in entry.totals.gauges.items():
                how = _gauge_aggregate(gkey)
                if how == "max":
                    out.gauges[gkey] = max(out.gauges.get(gkey, value), value)
                else:
                    out.gauges[gkey] = out.gauges.get(gkey, 0) + value
        return out

    def health(self) -> tuple[bool, str]:
        """(alive, why): the supervisor reported within SUPERVISOR_STALE seconds."""
        if self.supervisor is None:
            return False, "no status from the supervisor yet"
        age = self.clock() - self.supervisor_seen
        if age > SUPERVISOR_STALE:
            return False, f"the supervisor has been silent for {age:.1f}s"
        return True, "OK"

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): every worker serves, rules (if enabled) are installed, not draining."""
        alive, why = self.health()
        if not alive:
            return False, why
        sup = self.supervisor
        assert sup is not None
        if sup.get("draining"):
            return False, "draining"
        expected = sup.get("workers_expected", 0)
        ready = sup.get("workers_ready", 0)
        if not expected or ready < expected:
            return False, f"{ready} of {expected} workers ready"
        if self.config.rules_process and not (self.rules and self.rules.get("installed")):
            error = (self.rules or {}).get("error") or "not installed yet"
            return False, f"rules: {error}"
        if not sup.get("ready", False):
            return False, "the supervisor is not ready"
        down = self.upstreams_down()
        if down is not None and down[1] and len(down[1]) == down[0]:
            # Not ready only when *every* upstream is unreachable: with one of several down the
            # others still answer (a Lima VM's DNS must not go "not ready" over one of them).
            return False, "every upstream is unreachable: " + ", ".join(down[1])
        if down is not None and down[1]:
            return True, "OK; unreachable upstreams: " + ", ".join(down[1])
        return True, "OK"

    def upstreams_down(self) -> tuple[int, list[str]] | None:
        """(upstreams the workers report, those marked down) from fastdns_forward_upstream_up
        (max over recent workers: down only when every worker has it down); None: none."""
        gauges = self.totals().gauges
        ups = {k[1]: v for k, v in gauges.items() if k[0] == "upstream_up" and len(k) == 2}
        if not ups:
            return None
        return len(ups), sorted(to for to, v in ups.items() if not v)

    # --------------------------------------------------------------------------- labels

    def _label(self, metric: MetricDef, label: str, value: str) -> str:
        allowed = metric.values.get(label)
        if allowed is not None:
            return value if value in allowed else "other"
        cap = CAPPED_LABELS.get(label)
        if cap is None:
            return value
        admitted = self._admitted.setdefault((metric.name, label), set())
        if value in admitted:
            return value
        if len(admitted) < cap:
            admitted.add(value)
            return value
        return "other"

    def _labels(self, metric: MetricDef, given: dict[str, str]) -> tuple[str, ...]:
        context = {"server": self.server, "family": self.family}
        return tuple(
            self._label(metric, name, given[name] if name in given else context.get(name, ""))
            for name in metric.labels
        )

    # --------------------------------------------------------------------------- output

    def samples(self) -> dict[str, dict[tuple[str, ...], Any]]:
        """Every family's label values -> value (counters, gauges) or [bounds, counts, sum, n]
        (histograms), with bounded labels applied. Families with no data are absent."""
        out: dict[str, dict[tuple[str, ...], Any]] = {}
        totals = self.totals()

        def put(metric: MetricDef, labels: tuple[str, ...], value: Any) -> None:
            family = out.setdefault(metric.name, {})
            if metric.kind == "histogram":
                have = family.get(labels)
                bounds, counts, total, n = value
                if have is None:
                    family[labels] = [bounds, list(counts), total, n]
                elif have[0] == bounds:
                    have[1] = [a + b for a, b in zip(have[1], counts, strict=True)]
                    have[2] += total
                    have[3] += n
            elif metric.kind == "gauge" and metric.aggregate == "max":
                family[labels] = max(family.get(labels, value), value)
            else:
                family[labels] = family.get(labels, 0) + value

        self._zero_samples(put, totals)
        stores: tuple[dict[Key, Any], ...] = (totals.counters, totals.histograms, totals.gauges)
        for store in stores:
            for key, value in store.items():
                for src in SOURCES.get(key[0], ()):
                    metric = BY_NAME[src.metric]
                    if metric.kind == "histogram" and tuple(value[0]) != metric.buckets:
                        continue  # recorded with other buckets: a version mismatch
                    given = dict(zip(src.key_labels, key[1:], strict=False))
                    given.update(src.const)
                    if "plugin" in given:
                        given["plugin"] = SOURCE_TO_PLUGIN.get(given["plugin"], given["plugin"])
                    put(metric, self._labels(metric, given), value)
        self._process_samples(put)
        return out

    def _zero_samples(
        self, put: Callable[[MetricDef, tuple[str, ...], Any], None], totals: Totals
    ) -> None:
        """Every bounded series at 0, so that rates read 0 before the first event; families
        labelled by upstream for the upstreams the workers report now (upstream_up)."""
        if not self.worker_seen:
            return  # the server label is the configured port until a worker reports its own
        upstreams = sorted({k[1] for k in totals.gauges if k[0] == "upstream_up" and len(k) > 1})
        # TLS families only for the upstreams reached over TLS (docs/tls.md), not every one
        tls = sorted({k[1] for k in totals.gauges if k[0] == "tls_connections" and len(k) > 1})
        for metric, sets in self._initial:
            zero: Any = (
                [metric.buckets, [0] * (len(metric.buckets) + 1), 0.0, 0]
                if (metric.kind == "histogram")
                else 0
            )
            for given in sets:
                targets = tls if metric.name.startswith("fastdns_forward_tls_") else upstreams
                for to in targets if "to" in metric.labels else ("",):
                    labels = {**given, "to": to} if to else given
                    put(metric, self._labels(metric, labels), zero)

    def _process_samples(self, put: Callable[[MetricDef, tuple[str, ...], Any], None]) -> None:
        put(
            BY_NAME["fastdns_build_info"],
            self._labels(BY_NAME["fastdns_build_info"], self.versions),
            1,
        )
        for kind, n in self.messages.items():
            metric = BY_NAME["fastdns_stats_messages_total"]
            put(metric, self._labels(metric, {"kind": kind}), n)
        metric = BY_NAME["fastdns_worker_requests_total"]
        per_slot = dict(self.slot_retired)
        for (slot, _pid), entry in self.live.items():
            per_slot[slot] = per_slot.get(slot, 0) + _requests(entry.totals)
        for slot, served in per_slot.items():
            put(metric, self._labels(metric, {"slot": str(slot)}), served)
        ready, _ = self.readiness()
        put(BY_NAME["fastdns_ready"], (), 1 if ready else 0)
        sup = self.supervisor
        if sup is not None:
            for name in ("workers_expected", "workers_running", "workers_ready"):
                value = sup.get(name)
                if isinstance(value, int | float):
                    put(BY_NAME[f"fastdns_{name}"], (), value)
            metric = BY_NAME["fastdns_worker_restarts_total"]
            for item in sup.get("restarts") or ():
                if isinstance(item, list) and len(item) == 3 and isinstance(item[2], int):
                    given = {"slot": str(item[0]), "reason": str(item[1])}
                    put(metric, self._labels(metric, given), item[2])
        rules = self.rules
        if rules is not None and self.config.rules_process:
            put(BY_NAME["fastdns_rules_installed"], (), 1 if rules.get("installed") else 0)
            metric = BY_NAME["fastdns_rules_reconcile_total"]
            for result, (base, seen) in self.reconciles.items():
                put(metric, self._labels(metric, {"result": result}), base + seen)
            when = rules.get("last_reconcile")
            if isinstance(when, int | float) and when > 0:
                put(BY_NAME["fastdns_rules_last_reconcile_timestamp_seconds"], (), when)

    def collect(self) -> Iterator[Any]:
        """The prometheus-client custom-collector hook (runs in a scrape thread)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

        with self.lock:
            samples = self.samples()
        for metric in METRICS:
            family = samples.get(metric.name)
            if family is None:
                continue
            labels = list(metric.labels)
            if metric.kind == "counter":
                fam: Any = CounterMetricFamily(metric.name, metric.help, labels=labels)
                for values, value in sorted(family.items()):
                    fam.add_metric(list(values), value)
            elif metric.kind == "info":  # OpenMetrics "info"; a gauge of 1 in the text format
                fam = InfoMetricFamily(metric.name.removesuffix("_info"), metric.help)
                for values in sorted(family):
                    fam.add_metric([], dict(zip(metric.labels, values, strict=True)))
            elif metric.kind == "gauge":
                fam = GaugeMetricFamily(metric.name, metric.help, labels=labels)
                for values, value in sorted(family.items()):
                    fam.add_metric(list(values), value)
            else:
                fam = HistogramMetricFamily(metric.name, metric.help, labels=labels)
                for values, (bounds, counts, total, _n) in sorted(family.items()):
                    fam.add_metric(list(values), _cumulative(bounds, counts), total)
            yield fam


def _requests(totals: Totals) -> float:
    return sum(v for k, v in totals.counters.items() if k[0] == "requests")


def _gauge_aggregate(key: Key) -> str:
    for src in SOURCES.get(key[0], ()):
        return BY_NAME[src.metric].aggregate
    return "sum"


def _cumulative(bounds: Iterable[float], counts: list[float]) -> list[tuple[str, float]]:
    """Per-bucket counts (last = +Inf) to Prometheus's cumulative ``le`` buckets."""
    from prometheus_client.utils import floatToGoString

    out, running = [], 0.0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        # prometheus_client.utils has no annotations; it returns the Go float text ("+Inf").
        out.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
    return out
