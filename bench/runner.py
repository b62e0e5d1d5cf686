"""One bench run: the upstream, then each (workload, server) pair, measured and noise-checked."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import dnsperf, procstat
from bench.servers import (
    Dnsdist,
    Dnsmasq,
    Fastdns,
    Lima,
    Nsd,
    Server,
    ServerFailed,
    ServerUnavailable,
    Unbound,
)
from bench.zone import Dataset


@dataclass(frozen=True, slots=True)
class FastdnsTarget:
    """One fastdns row: its config, as fields (bench/servers.py Fastdns writes the YAML)."""

    name: str
    workers: int  # 0: the --fastdns-workers variant
    native: bool = True
    forward_first: bool = True
    datapath: str = "python"  # fastdns.datapath: python | compiled


FASTDNS_TARGETS: dict[str, FastdnsTarget] = {
    t.name: t
    for t in (
        FastdnsTarget("fastdns-1w", 1),
        FastdnsTarget("fastdns-fwd", 1, native=False),
        FastdnsTarget("fastdns-cares", 1, forward_first=False),
        FastdnsTarget("fastdns-2w", 0),
        FastdnsTarget("fastdns-1w-compiled", 1, datapath="compiled"),
        FastdnsTarget("fastdns-fwd-compiled", 1, native=False, datapath="compiled"),
        FastdnsTarget("fastdns-2w-compiled", 0, datapath="compiled"),
    )
}
PEER_TARGETS = (
    "dnsmasq",
    "dnsmasq-nocache",
    "unbound",
    "dnsdist",
    "dnsdist-nocache",
    "lima",
    "upstream",
)
TARGETS = (*FASTDNS_TARGETS, *PEER_TARGETS)
WORKLOADS = ("hot", "cold", "mix", "paced")
PACED_QPS = 60_000  # dnsperf -Q of the paced workload: p99 at one offered load for all
QUIET_WAIT = 60.0  # at most this long waiting for the machine to calm down before a run
QUIET_SAMPLE = 1.0
ERROR_RCODES = ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP")


@dataclass(frozen=True, slots=True)
class Settings:
    workloads: tuple[str, ...]
    targets: tuple[str, ...]
    durations: dict[str, int]  # -l per workload
    load: dnsperf.Load
    client_cpus: str
    server_cpus: str
    upstream_cpus: str
    retries: int  # extra attempts after a noisy one
    noise_limit: float  # other processes' CPU, in cores, above which a run is rejected
    fastdns_workers: int  # the "N workers" variant
    fastdns_cache_capacity: int | None = None  # cache.capacity of the fastdns rows
    paced_qps: int = PACED_QPS  # -Q of the paced workload


@dataclass(slots=True)
class Measurement:
    workload: str
    target: str
    status: str = "ok"  # ok | noisy | error
    error: str = ""
    attempt: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # noisy attempts
    qps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    sent: int = 0
    answered: int = 0
    lost: int = 0  # unanswered within -t
    udp_rcvbuf_errors: int = 0  # in the namespace: server, upstream or dnsperf socket overflow
    rcodes: dict[str, int] = field(default_factory=dict)
    error_rcodes: int = 0
    server_cpu_s: float = 0.0
    server_cpu_us_per_q: float | None = None
    server_sys_us_per_q: float | None = None  # of server_cpu_us_per_q: in the kernel
    server_core_us_per_q: float | None = None  # all busy time of the server's CPUs
    server_pids: int = 0
    rss_mb: list[float] = field(default_factory=list)  # per worker (fastdns) or process, after
    rss_worker_mb: float | None = None  # the largest of rss_mb
    upstream_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    other_cpu_cores: float = 0.0
    other_top: dict[str, float] = field(default_factory=dict)
    foreign_forks: int = 0
    steal_cores: float = 0.0
    softirq_s: float = 0.0
    unattributed_kernel_s: float = 0.0
    wall_s: float = 0.0
    dnsperf_exit: int = 0
    dnsperf_stderr: str = ""


Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU use over one measured window, in ticks."""

    server: int
    server_system: int  # of ``server``: time in the kernel (system calls, softirq charged)
    upstream: int
    other: int  # processes that are not part of the bench (the noise)
    other_top: dict[str, int]  # the biggest of them, by command name
    foreign_forks: int  # processes created by someone else during the window
    steal: int
    softirq: int
    unattributed: int  # busy ticks charged to no process: loopback softirq on an idle CPU
    server_cores: int  # everything that ran on the server's CPUs, server or not
    udp_rcvbuf_errors: int  # datagrams dropped because a socket's receive buffer was full


class Window:
    """Snapshots of /proc before and after a run, and who used the CPU in between.

    Noise = the larger of (a) the ticks of every process outside the bench, which catches
    long-lived ones and kernel threads, and (b) user time in /proc/stat not charged to the
    bench, which also catches processes that started and ended inside the window. System time
    is not used for (b): loopback softirq on an idle CPU is counted there but charged to no
    process, and it is the bench's own work.
    """

    def __init__(self, server_roots: list[int], upstream_roots: list[int], cpus: set[int]):
        self.server_roots = server_roots
        self.upstream_roots = upstream_roots
        self.cpus = cpus

    def start(self) -> None:
        self.udp0 = procstat.udp_counters()
        self.y0 = procstat.system()
        self.s0 = procstat.snapshot()

    def stop(self, client_user: float = 0.0, client_system: float = 0.0, forks: int = 0) -> Usage:
        s1 = procstat.snapshot()
        y1 = procstat.system()
        udp1 = procstat.udp_counters()
        s0 = self.s0
        both = {**s0, **s1}
        server = procstat.descendants(self.server_roots, both)
        upstream = procstat.descendants(self.upstream_roots, both) - server
        ours = {os.getpid()} | procstat.kernel_net_threads(s1)
        bench = server | upstream | ours
        d = y1.total - self.y0.total
        tk = procstat.CLK_TCK
        client_ticks = (client_user + client_system) * tk
        by_pid = {pid: procstat.delta(s0, s1, [pid]) for pid in s1}
        other_proc = 0
        top: dict[str, int] = {}
        for pid, (ut, st) in by_pid.items():
            if pid not in bench and ut + st > 0:
                other_proc += ut + st
                top[s1[pid].comm] = top.get(s1[pid].comm, 0) + ut + st
        bench_user = sum(by_pid[p][0] for p in bench if p in by_pid) + client_user * tk
        bench_all = sum(sum(by_pid[p]) for p in bench if p in by_pid) + client_ticks
        other = max(other_proc, round(d.user - bench_user), 0)
        return Usage(
            server=sum(sum(by_pid[p]) for p in server if p in by_pid),
            server_system=sum(by_pid[p][1] for p in server if p in by_pid),
            upstream=sum(sum(by_pid[p]) for p in upstream if p in by_pid),
            other=other,
            other_top=dict(sorted(top.items(), key=lambda kv: -kv[1])[:3]),
            foreign_forks=max(0, y1.forks - self.y0.forks - forks),
            steal=d.steal,
            softirq=d.softirq,
            unattributed=max(0, round(d.busy - bench_all - other_proc)),
            server_cores=sum((y1.per_cpu[c] - self.y0.per_cpu[c]).busy for c in self.cpus),
            udp_rcvbuf_errors=udp1["RcvbufErrors"] - self.udp0["RcvbufErrors"],
        )


class Bench:
    def __init__(
        self, settings: Settings, data: Dataset, workdir: Path, log: Log, deadline: float
    ) -> None:
        self.s = settings
        self.deadline = deadline  # monotonic; no waiting for quiet and no retries after it
        self.data = data
        self.workdir = workdir
        self.log = log
        self.upstream = Nsd(workdir, settings.upstream_cpus, data.zone_file)
        self.skipped: dict[str, str] = {}
        self.server_cpus = cpu_set(settings.server_cpus)

    # -- servers -------------------------------------------------------------------------

    def _make(self, target: str) -> Server:
        cpus, d = self.s.server_cpus, self.workdir
        ft = FASTDNS_TARGETS.get(target)
        if ft is not None:
            return Fastdns(
                d,
                cpus,
                ft.workers or self.s.fastdns_workers,
                native=ft.native,
                forward_first=ft.forward_first,
                datapath=ft.datapath,
                cache_capacity=self.s.fastdns_cache_capacity,
                name=ft.name,
            )
        if target == "dnsmasq":
            return Dnsmasq(d, cpus, cache_size=10000)
        if target == "dnsmasq-nocache":
            return Dnsmasq(d, cpus, cache_size=0)
        if target == "unbound":
            return Unbound(d, cpus)
        if target == "dnsdist":
            return Dnsdist(d, cpus, cache_size=10000)
        if target == "dnsdist-nocache":
            return Dnsdist(d, cpus, cache_size=0)
        if target == "lima":
            return Lima(d, cpus)
        raise ValueError(target)

    def _pin(self, server: Server, cpus: str) -> None:
        for pid in procstat.descendants(server.roots(), procstat.snapshot()):
            try:
                os.sched_setaffinity(pid, cpu_set(cpus))
            except ProcessLookupError:
                pass

    def available_targets(self) -> list[str]:
        out = []
        for t in self.s.targets:
            if t == "upstream":
                out.append(t)
                continue
            try:
                self._make(t).check()
                out.append(t)
            except ServerUnavailable as e:
                self.skipped[t] = str(e)
                self.log(f"skip {t}: {e}")
        return out

    # -- noise ---------------------------------------------------------------------------

    def wait_quiet(self) -> None:
        """Wait until others use less than the noise limit: at most QUIET_WAIT, and not at all
        once the run's time budget is spent."""
        deadline = min(time.monotonic() + QUIET_WAIT, self.deadline)
        said = False
        while True:
            w = Window([], self.upstream.roots(), self.server_cpus)
            w.start()
            time.sleep(QUIET_SAMPLE)
            u = w.stop()
            other = procstat.ticks_to_s(u.other) / QUIET_SAMPLE
            if other <= self.s.noise_limit or time.monotonic() + QUIET_SAMPLE > deadline:
                return
            if not said:
                self.log(
                    f"  waiting for a quiet machine (others use {other:.2f} cores: "
                    f"{', '.join(u.other_top)})"
                )
                said = True

    # -- one measurement -----------------------------------------------------------------

    def measure(self, workload: str, target: str) -> Measurement:
        m = Measurement(workload, target)
        for attempt in range(1, self.s.retries + 2):
            if attempt > 1 and time.monotonic() > self.deadline:
                self.log("  time budget spent: no more retries")
                break
            self.wait_quiet()
            m.attempt = attempt
            try:
                self._measure_once(m)
            except (ServerFailed, ServerUnavailable) as e:
                m.status, m.error = "error", str(e)
                return m
            if m.status != "noisy":
                return m
            m.rejected.append(
                {
                    "attempt": attempt,
                    "other_cpu_cores": m.other_cpu_cores,
                    "steal_cores": m.steal_cores,
                    "qps": m.qps,
                    "other_top": m.other_top,
                }
            )
            self.log(
                f"  rejected attempt {attempt}: other processes used {m.other_cpu_cores:.2f} "
                f"cores ({', '.join(m.other_top) or '?'}), steal {m.steal_cores:.2f} "
                f"(limit {self.s.noise_limit:.2f})"
            )
        return m  # still noisy after all retries: reported, but flagged

    def _measure_once(self, m: Measurement) -> None:
        paced = m.workload == "paced"  # the hot names at a fixed offered load, cache primed
        wl = dnsperf.Workload(
            m.workload,
            self.data.query_files["hot" if paced else m.workload],
            self.s.durations[m.workload],
            once=m.workload in ("cold", "mix"),
        )
        load = replace(self.s.load, max_qps=self.s.paced_qps) if paced else self.s.load
        is_upstream = m.target == "upstream"
        server = self.upstream if is_upstream else self._make(m.target)
        if is_upstream:
            self._pin(server, self.s.server_cpus)
        else:
            server.start()
        try:
            window = Window(
                server.roots(), [] if is_upstream else self.upstream.roots(), self.server_cpus
            )
            ep = server.endpoint
            if paced:  # one pass over the names first, unmeasured: the run sees hits only
                prime = dnsperf.Workload("prime", wl.query_file, 10, once=True)
                dnsperf.run(
                    dnsperf.command(ep.ip, ep.port, prime, dnsperf.Load(), self.s.client_cpus),
                    self.workdir,
                    f"prime-{m.target}",
                    40,
                )
            cmd = dnsperf.command(ep.ip, ep.port, wl, load, self.s.client_cpus)
            window.start()
            t0 = time.monotonic()
            res = dnsperf.run(cmd, self.workdir, f"{m.workload}-{m.target}", wl.seconds + 30)
            wall = time.monotonic() - t0
            usage = window.stop(res.client_user_s, res.client_system_s, forks=1)
            if server.proc is not None and server.proc.poll() is not None:
                raise ServerFailed(f"{server.name} died during the run: {server.log_tail()}")
            m.server_pids = len(procstat.descendants(server.roots(), procstat.snapshot()))
            m.rss_mb = [round(r, 1) for r in server.rss_mb()]
            m.rss_worker_mb = max(m.rss_mb) if m.rss_mb else None
        finally:
            if is_upstream:
                self._pin(server, self.s.upstream_cpus)
            else:
                server.stop()
        self._fill(m, res, wall, usage)

    def _fill(self, m: Measurement, res: dnsperf.Result, wall: float, u: Usage) -> None:
        tk = procstat.ticks_to_s
        m.qps, m.sent, m.answered, m.lost = res.qps, res.sent, res.completed, res.lost
        m.rcodes = res.rcodes
        m.error_rcodes = sum(res.rcodes.get(c, 0) for c in ERROR_RCODES)
        m.p50_ms = res.latency.percentile_ms(50)
        m.p99_ms = res.latency.percentile_ms(99)
        m.p999_ms = res.latency.percentile_ms(99.9)
        m.server_cpu_s, m.upstream_cpu_s = tk(u.server), tk(u.upstream)
        m.client_cpu_s = res.client_user_s + res.client_system_s
        per_q = 1e6 / m.answered if m.answered else None
        m.server_cpu_us_per_q = m.server_cpu_s * per_q if per_q else None
        m.server_sys_us_per_q = tk(u.server_system) * per_q if per_q else None
        m.server_core_us_per_q = tk(u.server_cores) * per_q if per_q else None
        m.wall_s = wall
        m.other_cpu_cores = tk(u.other) / wall
        m.other_top = {k: tk(v) for k, v in u.other_top.items()}
        m.foreign_forks = u.foreign_forks
        m.steal_cores = tk(u.steal) / wall
        m.softirq_s = tk(u.softirq)
        m.unattributed_kernel_s = tk(u.unattributed)
        m.udp_rcvbuf_errors = u.udp_rcvbuf_errors
        m.dnsperf_exit, m.dnsperf_stderr = res.exit_code, res.stderr
        noisy = max(m.other_cpu_cores, m.steal_cores) > self.s.noise_limit
        m.status = "noisy" if noisy else "ok"
        if res.exit_code != 0 or not res.sent:
            m.status, m.error = "error", f"dnsperf exit {res.exit_code}: {res.stderr[-300:]}"

    # -- the whole run -------------------------------------------------------------------

    def run(self, on_result: Callable[[Measurement], None]) -> list[Measurement]:
        targets = self.available_targets()
        self.log(f"starting upstream nsd on {self.upstream.endpoint.ip}:53 ...")
        self.upstream.start()
        results: list[Measurement] = []
        try:
            for wl in self.s.workloads:
                for target in targets:
                    self.log(f"[{wl}] {target}")
                    m = self.measure(wl, target)
                    results.append(m)
                    on_result(m)
        finally:
            self.upstream.stop()
        return results


def cpu_set(cpus: str) -> set[int]:
    """A taskset-style list ("1", "0,1", "0-3") as a set of CPU numbers."""
    out: set[int] = set()
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def as_dict(m: Measurement) -> dict[str, Any]:
    return asdict(m)
