"""``python -m bench [--quick] ...``: isolate, generate, measure, print, save."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from bench import netns, report, zone
from bench.dnsperf import Load
from bench.runner import PACED_QPS, TARGETS, WORKLOADS, Bench, Measurement, Settings, cpu_set
from bench.servers import ServerFailed

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# (zone sizes, dnsperf -l per workload). hot loops over its file until -l; cold and mix send
# their file once (-n 1) and -l only bounds a slow server.
# paced runs like hot, at a fixed -Q.
FULL = (zone.Sizes(), {"hot": 8, "cold": 30, "mix": 30, "paced": 8})
QUICK = (zone.Sizes(cold=20_000, mix=40_000), {"hot": 3, "cold": 15, "mix": 15, "paced": 3})
# fastdns's cache.capacity in the bench: the full cold run (100,000 names) then leaves 100,000
# entries in the cache, where the RSS column reads a worker's memory.
CACHE_CAPACITY = 100_000


def _csv(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}")
        return items

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput, latency and CPU per query: fastdns vs dnsmasq, unbound, "
        "dnsdist and the NSD upstream, in a loopback-only network namespace.",
    )
    p.add_argument("--quick", action="store_true", help="short run (about 1-2 minutes)")
    p.add_argument(
        "--targets",
        type=_csv(TARGETS),
        default=TARGETS,
        help=f"comma list (default: all): {','.join(TARGETS)}",
    )
    p.add_argument(
        "--workloads",
        type=_csv(WORKLOADS),
        default=WORKLOADS,
        help=f"comma list (default: all): {','.join(WORKLOADS)}",
    )
    p.add_argument("--clients", type=int, default=8, help="dnsperf -c (default 8)")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (default 100)")
    p.add_argument(
        "--max-qps",
        type=int,
        default=0,
        help="dnsperf -Q: fixed offered load for latency comparisons (default: off)",
    )
    p.add_argument(
        "--paced-qps",
        type=int,
        default=PACED_QPS,
        help=f"dnsperf -Q of the paced workload (default {PACED_QPS})",
    )
    p.add_argument(
        "--fastdns-cache-capacity",
        type=int,
        default=CACHE_CAPACITY,
        help=f"cache.capacity of the fastdns rows (default {CACHE_CAPACITY}; 0: fastdns's own)",
    )
    p.add_argument("--client-cpus", default="0", help="taskset list for dnsperf (default 0)")
    p.add_argument("--server-cpus", default="1", help="taskset list for the server (default 1)")
    p.add_argument(
        "--upstream-cpus",
        default=None,
        help="taskset list for NSD when it is not the measured server (default: the client's)",
    )
    p.add_argument("--fastdns-workers", type=int, default=2, help="N of fastdns-2w (default 2)")
    p.add_argument("--retries", type=int, default=3, help="re-runs of a noisy run (default 3)")
    p.add_argument(
        "--noise-limit",
        type=float,
        default=0.05,
        help="max CPU, in cores, that other processes may use during a run (default 0.05)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of waiting for a quiet machine and retrying noisy runs, after which each "
        "remaining run is measured once (default 300, quick 60)",
    )
    p.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/)")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs, zone and logs")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers


def _missing_tools() -> list[str]:
    need = {"dnsperf": "dnsperf", "taskset": "util-linux", "ip": "iproute2", "nsd": "nsd"}
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
    return [f"{b} ({pkg})" for b, pkg in need.items() if not shutil.which(b, path=path)]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    missing = _missing_tools()
    if missing:
        _log(f"bench: missing tools: {', '.join(missing)}; apt-get install -y dnsperf nsd ...")
        return 2
    if not netns.isolated():
        netns.reexec_isolated(argv)  # does not return
    netns.bring_up_loopback()
    signal.signal(signal.SIGTERM, _on_sigterm)

    ncpu = len(os.sched_getaffinity(0))
    if ncpu < 2:
        _log("bench: fewer than 2 CPUs; client and server share one (numbers are indicative)")
        args.client_cpus = args.server_cpus = "0"
    upstream_cpus = args.upstream_cpus or args.client_cpus
    os.sched_setaffinity(0, cpu_set(args.client_cpus))  # keep off the server's

    sizes, durations = QUICK if args.quick else FULL
    budget = args.budget if args.budget is not None else (60.0 if args.quick else 300.0)
    settings = Settings(
        workloads=tuple(args.workloads),
        targets=tuple(args.targets),
        durations=durations,
        load=Load(clients=args.clients, outstanding=args.outstanding, max_qps=args.max_qps),
        client_cpus=args.client_cpus,
        server_cpus=args.server_cpus,
        upstream_cpus=upstream_cpus,
        retries=args.retries,
        noise_limit=args.noise_limit,
        fastdns_workers=args.fastdns_workers,
        fastdns_cache_capacity=args.fastdns_cache_capacity or None,
        paced_qps=args.paced_qps,
    )
    env = report.environment(REPO)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = args.out or RESULTS / f"{stamp}{'-quick' if args.quick else ''}.json"

    # tmpfs when there is one: dnsperf -v writes ~40 bytes per query, and on a disk the
    # writeback kworkers it wakes would count as noise.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="fastdns-bench-", dir=shm))
    started = time.monotonic()
    results: list[Measurement] = []
    try:
        t = time.monotonic()
        data = zone.build(workdir, sizes)
        _log(
            f"zone: {data.records:,} records, {sizes.names:,} host names "
            f"({time.monotonic() - t:.1f} s); workdir {workdir}"
        )
        bench = Bench(settings, data, workdir, _log, deadline=started + budget)

        def show(m: Measurement) -> None:
            _log("  " + report.row(m))

        results = bench.run(show)
    except ServerFailed as e:  # the upstream did not come up: nothing can be measured
        _log(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        _log("bench: interrupted; servers stopped, nothing saved")
        return 130
    finally:
        if args.keep_workdir:
            _log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(report.table(results))
    print()
    print(report.ratios(results, bench.skipped))
    print()
    lost_ok, lost_text = report.lost_check(results)
    print(lost_text)
    for target, why in bench.skipped.items():
        print(f"skipped {target}: {why}")
    dataset = {
        "zone": zone.ZONE,
        "records": data.records,
        "sizes": asdict(sizes),
        "mix_shares": zone.MIX_SHARES,
        "zipf_s": zone.ZIPF_S,
        "seed": zone.SEED,
    }
    settings_doc = asdict(settings) | {"quick": args.quick, "budget_s": budget}
    report.write_json(out, env, settings_doc, dataset, bench.skipped, results)
    print(f"\nresults: {out}  ({time.monotonic() - started:.0f} s)")
    return 0 if lost_ok and all(m.status == "ok" for m in results) else 1
