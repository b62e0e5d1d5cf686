"""``python -m bench.harness2``: the second harness's miss cost, and what explains it.

An independent harness (NSD serving 60,000 A names ``h<i>.bench.test`` on 127.0.0.2; 50,000
distinct names each once at ``dnsperf -c 8 -q 100``; fastdns ``workers: 1`` with shipped
defaults otherwise) measured a fastdns miss at about 1.5 times what ``bench/run``'s cold row
shows. This script runs that setup, and variants of it that each change one thing towards
``bench/run`` (or away from the shipped defaults), in alternating rounds: every variant once per
round, a fresh server each time, so slow drifts of a shared machine hit all of them alike.
It prints, per variant, the median and the range over the rounds of the server's CPU per
answered query (user + kernel, and each apart) and of queries/s.

Same isolation as ``bench/run`` (bench/netns.py): it re-executes itself in a loopback-only
network namespace; every config names only the loopback upstream. Bounded: a fixed number of
queries per run, dnsperf ``-l`` and a wall limit per run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType

from bench import dnsperf, netns, procstat, zone
from bench.runner import Window, cpu_set
from bench.servers import Fastdns, Nsd

TEST_ZONE = "bench.test."
TEST_NAMES = 60_000
QUERIES = 50_000
RUN_LIMIT = 120  # dnsperf -l: a bound, the file is sent once
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class Variant:
    """One fastdns setup and load. The defaults are the second harness's setup."""

    name: str
    what: str
    zone: str = "test"  # "test": h<i>.bench.test, 60,000 names; "example": bench/run's zone
    bench_config: bool = False  # bench/run's fastdns-1w YAML (bench/servers.py Fastdns)
    ipv6: bool | None = None  # hostResolver.ipv6; None = not in the file (default false)
    hosts: str = "etc"  # "etc": the lines of a stock /etc/hosts; "empty": an empty file
    native: bool | None = None  # native.enabled; None = not in the file (default true)
    cache: bool | None = None  # cache.enabled; None = not in the file (default true)
    metrics: bool = False  # fastdns.metrics.listen on a free loopback port
    resolv_extra: str = ""  # lines added to the generated resolv.conf
    verbose: bool = False  # dnsperf -v (bench/run always passes it)
    clients: int = 8
    outstanding: int = 100
    # "dnsperf": CPU read just before dnsperf starts and just after it exits (both harnesses
    # say they do); "start": read from before the server is started, so its start-up counts
    window: str = "dnsperf"
    queries: int = 0  # names sent (each once); 0: --queries


# The stock Debian /etc/hosts: what a default hosts_file holds on a fresh host. A generated
# copy, so the config names no file of the machine's.
STOCK_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"

BASE = Variant("h2", "the second harness: shipped defaults, bench.test zone, no -v")
VARIANTS: tuple[Variant, ...] = (
    BASE,
    Variant(
        "bench-1w",
        "bench/run's fastdns-1w as it runs: its YAML, bench.example zone, -v",
        zone="example",
        bench_config=True,
        verbose=True,
    ),
    replace(BASE, name="cfg", what="only the YAML: bench/run's", bench_config=True),
    replace(BASE, name="ipv6", what="only hostResolver.ipv6: true", ipv6=True),
    replace(BASE, name="hosts0", what="only an empty hosts file", hosts="empty"),
    replace(BASE, name="fwd", what="only native.enabled: false", native=False),
    replace(BASE, name="nocache", what="only cache.enabled: false", cache=False),
    replace(BASE, name="metrics", what="only metrics on", metrics=True),
    replace(BASE, name="zone", what="only the zone: bench.example, 100k names", zone="example"),
    replace(BASE, name="v", what="only dnsperf -v", verbose=True),
    replace(BASE, name="search", what="only a search line", resolv_extra="search lan\n"),
    replace(BASE, name="startwin", what="only the CPU window: from server start", window="start"),
    # The number of queries of one cold run: bench/run --quick sends 20,000, the second
    # harness 50,000, bench/run 100,000 (on bench/run's zone, which has 100,000 names).
    replace(
        BASE, name="cold20k", what="bench.example, 20,000 names", zone="example", queries=20_000
    ),
    replace(
        BASE, name="cold50k", what="bench.example, 50,000 names", zone="example", queries=50_000
    ),
    replace(
        BASE, name="cold100k", what="bench.example, 100,000 names", zone="example", queries=100_000
    ),
)


class Custom(Fastdns):
    """fastdns ``workers: 1`` with a config built from a Variant."""

    def __init__(self, workdir: Path, cpus: str, v: Variant, probe: str) -> None:
        super().__init__(workdir, cpus, 1)
        self.v = v
        self.name = f"fastdns-{v.name}"
        self.probe = probe
        self.state_file = workdir / f"{self.name}.state.json"

    def config_yaml(self) -> str:
        v, d = self.v, self.workdir
        if v.bench_config:
            return super().config_yaml()
        resolv, hosts = d / f"{self.name}.resolv.conf", d / f"{self.name}.hosts"
        resolv.write_text(f"nameserver {zone.UPSTREAM_IP}\n{v.resolv_extra}")
        hosts.write_text(STOCK_HOSTS if v.hosts == "etc" else "")
        lines = [
            "fastdns:",
            f"  resolv_conf: {resolv}",
            f"  hosts_file: {hosts}",
            "  fallback: []",  # used only when resolv.conf is unusable; never off-machine
            "  workers: 1",
        ]
        if v.native is not None:
            lines.append(f"  native: {{enabled: {str(v.native).lower()}}}")
        if v.cache is not None:
            lines.append(f"  cache: {{enabled: {str(v.cache).lower()}}}")
        if v.metrics:
            lines.append('  metrics: {listen: "127.0.0.1:0"}')
        if v.ipv6 is not None:
            lines.insert(0, f"hostResolver: {{ipv6: {str(v.ipv6).lower()}}}")
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Run:
    variant: str
    round: int
    answered: int
    lost: int
    qps: float
    user_us: float
    sys_us: float
    other_cores: float
    wall_s: float
    startup_cpu_s: float = 0.0  # the server's CPU from its start to the opening of the window

    @property
    def cpu_us(self) -> float:
        return self.user_us + self.sys_us


@dataclass(slots=True)
class Data:
    zone_files: dict[str, Path] = field(default_factory=dict)
    query_files: dict[str, Path] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    default_queries: int = QUERIES


def build(workdir: Path, queries: int) -> Data:
    rng = random.Random(zone.SEED)
    data = Data()
    zf = workdir / "bench.test.zone"
    lines = [f"$ORIGIN {TEST_ZONE}", "$TTL 3600", "@ IN SOA ns1 hostmaster 1 3600 600 86400 300"]
    lines += ["@ IN NS ns1", f"ns1 IN A {zone.UPSTREAM_IP}"]
    lines += [f"h{i} IN A 198.18.{i >> 8 & 0xFF}.{i & 0xFF}" for i in range(TEST_NAMES)]
    zf.write_text("\n".join(lines) + "\n")
    order = list(range(TEST_NAMES))
    rng.shuffle(order)
    qf = workdir / "test.queries"
    qf.write_text("".join(f"h{i}.{TEST_ZONE} A\n" for i in order))
    data.zone_files["test"], data.query_files["test"], data.probes["test"] = (
        zf,
        qf,
        f"h0.{TEST_ZONE}",
    )
    ze = workdir / "bench.example.zone"
    zone.write_zone(ze, zone.Sizes().names)
    order = list(range(zone.Sizes().names))
    rng.shuffle(order)
    qe = workdir / "example.queries"
    qe.write_text("".join(f"{zone.host(i)} A\n" for i in order))
    data.zone_files["example"], data.query_files["example"] = ze, qe
    data.probes["example"] = zone.host(0)
    data.default_queries = queries
    return data


def query_file(v: Variant, data: Data, workdir: Path) -> Path:
    """The first N names of the zone's shuffled list (N: the variant's, else --queries)."""
    n = v.queries or data.default_queries
    path = workdir / f"{v.zone}-{n}.queries"
    if not path.exists():
        lines = data.query_files[v.zone].read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:n]))
    return path


def measure(v: Variant, rnd: int, data: Data, workdir: Path, nsd: Nsd) -> Run:
    server = Custom(workdir, "1", v, data.probes[v.zone])
    w = Window([], nsd.roots(), cpu_set("1"))
    if v.window == "start":
        w.start()
    server.start()
    w.server_roots = server.roots()
    snap = procstat.snapshot()
    startup = sum(snap[p].ticks for p in procstat.descendants(server.roots(), snap))
    try:
        wl = dnsperf.Workload(v.name, query_file(v, data, workdir), RUN_LIMIT, once=True)
        load = dnsperf.Load(clients=v.clients, outstanding=v.outstanding)
        cmd = dnsperf.command(server.endpoint.ip, server.endpoint.port, wl, load, "0")
        if not v.verbose:
            cmd.remove("-v")
        if v.window != "start":
            w.start()
        t0 = time.monotonic()
        res = dnsperf.run(cmd, workdir, f"h2-{v.name}", RUN_LIMIT + 30)
        wall = time.monotonic() - t0
        u = w.stop(res.client_user_s, res.client_system_s, forks=1)
    finally:
        server.stop()
    n = max(res.completed, 1)
    tk = procstat.ticks_to_s
    return Run(
        v.name,
        rnd,
        res.completed,
        res.lost,
        res.qps,
        tk(u.server - u.server_system) * 1e6 / n,
        tk(u.server_system) * 1e6 / n,
        tk(u.other) / wall,
        wall,
        tk(startup),
    )


def measure_slices(v: Variant, slices: int, data: Data, workdir: Path, nsd: Nsd) -> list[Run]:
    """One server, the query file cut into ``slices`` consecutive parts, each sent by its own
    dnsperf with its own CPU window: whether a miss costs more early in a server's life."""
    lines = query_file(v, data, workdir).read_text().splitlines(keepends=True)
    size = len(lines) // slices
    server = Custom(workdir, "1", v, data.probes[v.zone])
    server.start()
    runs: list[Run] = []
    try:
        for i in range(slices):
            part = workdir / f"slice-{i}.queries"
            part.write_text("".join(lines[i * size : (i + 1) * size]))
            wl = dnsperf.Workload(v.name, part, RUN_LIMIT, once=True)
            load = dnsperf.Load(clients=v.clients, outstanding=v.outstanding)
            cmd = dnsperf.command(server.endpoint.ip, server.endpoint.port, wl, load, "0")
            if not v.verbose:
                cmd.remove("-v")
            w = Window(server.roots(), nsd.roots(), cpu_set("1"))
            w.start()
            t0 = time.monotonic()
            res = dnsperf.run(cmd, workdir, f"h2s-{v.name}", RUN_LIMIT + 30)
            wall = time.monotonic() - t0
            u = w.stop(res.client_user_s, res.client_system_s, forks=1)
            n = max(res.completed, 1)
            tk = procstat.ticks_to_s
            runs.append(
                Run(
                    f"{v.name}#{i + 1}",
                    i + 1,
                    res.completed,
                    res.lost,
                    res.qps,
                    tk(u.server - u.server_system) * 1e6 / n,
                    tk(u.server_system) * 1e6 / n,
                    tk(u.other) / wall,
                    wall,
                )
            )
    finally:
        server.stop()
    return runs


def _stats(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.1f} [{min(xs):6.1f}-{max(xs):6.1f}]"


def summary(runs: Sequence[Run], variants: Sequence[Variant]) -> str:
    head = (
        f"{'variant':<9} {'CPU us/q med [min-max]':>23} {'user us/q':>23} {'sys us/q':>23} "
        f"{'q/s med':>8} {'lost':>5} {'noise':>5} {'start s':>7}  what"
    )
    out = [head, "-" * len(head)]
    for v in variants:
        rs = [r for r in runs if r.variant == v.name]
        if not rs:
            continue
        out.append(
            f"{v.name:<9} {_stats([r.cpu_us for r in rs]):>23} "
            f"{_stats([r.user_us for r in rs]):>23} {_stats([r.sys_us for r in rs]):>23} "
            f"{statistics.median(r.qps for r in rs):8,.0f} {max(r.lost for r in rs):5} "
            f"{max(r.other_cores for r in rs):5.2f} "
            f"{statistics.median(r.startup_cpu_s for r in rs):7.2f}  {v.what}"
        )
    return "\n".join(out)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.harness2", description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    names = [v.name for v in VARIANTS]
    p.add_argument("--variants", default=",".join(names), help=f"comma list of {names}")
    p.add_argument("--queries", type=int, default=QUERIES, help="names per run (default 50000)")
    p.add_argument(
        "--slices",
        type=int,
        default=0,
        help="instead of fresh servers: per round one server per variant, the queries sent "
        "in this many consecutive parts, CPU per part (default 0: off)",
    )
    args = p.parse_args(argv)
    chosen = [v for v in VARIANTS if v.name in args.variants.split(",")]
    if not chosen or not 1 <= args.rounds <= 20 or not 1000 <= args.queries <= TEST_NAMES:
        p.error("bad --variants, --rounds (1-20) or --queries (1000-60000)")
    if not netns.isolated():
        netns.reexec_isolated(argv, module="bench.harness2")
    netns.bring_up_loopback()
    signal.signal(signal.SIGTERM, _on_sigterm)  # unwind through the finally that stops servers
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    workdir = Path(tempfile.mkdtemp(prefix="fastdns-h2-", dir=shm))
    runs: list[Run] = []
    try:
        data = build(workdir, args.queries)
        for rnd in range(1, args.rounds + 1):
            for z in dict.fromkeys(v.zone for v in chosen):
                name = TEST_ZONE if z == "test" else zone.ZONE
                nsd = Nsd(workdir, "0", data.zone_files[z], zone=name, probe=data.probes[z])
                nsd.start()
                try:
                    for v in (x for x in chosen if x.zone == z):
                        if args.slices:
                            for r in measure_slices(v, args.slices, data, workdir, nsd):
                                runs.append(r)
                                print(
                                    f"round {rnd} {r.variant:<11} {r.cpu_us:6.1f} us/q (user "
                                    f"{r.user_us:.1f} sys {r.sys_us:.1f}) {r.qps:8,.0f} q/s "
                                    f"noise {r.other_cores:.2f}",
                                    file=sys.stderr,
                                    flush=True,
                                )
                            continue
                        r = measure(v, rnd, data, workdir, nsd)
                        runs.append(r)
                        print(
                            f"round {rnd} {v.name:<9} {r.cpu_us:6.1f} us/q (user {r.user_us:.1f}"
                            f" sys {r.sys_us:.1f}) {r.qps:8,.0f} q/s lost {r.lost} "
                            f"noise {r.other_cores:.2f}",
                            file=sys.stderr,
                            flush=True,
                        )
                finally:
                    nsd.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.slices:
        chosen = [
            replace(v, name=f"{v.name}#{i}", what=f"part {i} of {args.slices}, same server")
            for v in chosen
            for i in range(1, args.slices + 1)
        ]
    print(summary(runs, chosen))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"harness2-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    doc = {"variants": [asdict(v) for v in chosen], "runs": [asdict(r) for r in runs]}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
