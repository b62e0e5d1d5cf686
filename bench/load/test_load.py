"""pytest-benchmark load runs: fastdns and dnsmasq side by side on the hot, cold and mix loads.

    tests/netns-run .venv/bin/python -m pytest bench/load -q
    tests/netns-run .venv/bin/python -m pytest bench/load -q --benchmark-json=load.json

The same rig as ``bench/run`` (``bench.zone``, ``bench.servers``), smaller: a 20,000-name zone
served by NSD on 127.0.0.2:53 (started once), and each server started fresh for each workload
(so cold is cold) on the second CPU, the client and NSD on the first. The load comes from
``bench.load.client``, a Python client with at most 100 queries in flight (a 2 s timeout), not
from dnsperf. Each benchmark round sends a fixed batch:

- hot: 20,000 queries cycling over the 1,000 hot names (the cache is primed before round 1;
  20,000 rather than 5,000 so that the server's CPU, counted in 10 ms ticks, is read to ~2 %);
- cold: 5,000 names from the cold file, never repeated across rounds;
- mix: the next 5,000 lines of the mix file (qtype mix, Zipf names, 8 % NXDOMAIN).

pytest-benchmark's table is time per round (the same batch for every server in a group);
``extra_info`` (in ``--benchmark-json``) and the summary printed after the table carry
queries/s, losses and server CPU per answered query. Every test asserts what a user would see:
every query answered, with the rcode and data the zone has, no SERVFAIL or REFUSED. Timings are
reported, never asserted.
"""

from __future__ import annotations

import os
import resource
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench import procstat, zone
from bench.load import client
from bench.load.conftest import isolation_problem
from bench.servers import Dnsmasq, Fastdns, Nsd, Server, ServerUnavailable

ROUNDS = 3
BATCH = {"hot": 20_000, "cold": 5_000, "mix": 5_000}  # queries per round
SIZES = zone.Sizes(names=20_000, hot=1_000, cold=ROUNDS * BATCH["cold"], mix=ROUNDS * BATCH["mix"])
WORKLOADS = ("hot", "cold", "mix")
TARGETS = ("fastdns-1w", "fastdns-fwd", "dnsmasq", "dnsmasq-nocache")
WINDOW = 100  # queries in flight, as bench/run's -q 100
TIMEOUT_S = 2.0  # a query unanswered after this is lost, as dnsperf -t 2
ROUND_CAP_S = 20.0  # a round stops by itself after this, whatever happens


@dataclass(frozen=True, slots=True)
class Rig:
    workdir: Path
    server_cpus: str
    queries: dict[str, list[client.Query]]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """The zone, the query files and the NSD upstream, once for the module."""
    problem = isolation_problem()
    if problem is not None:  # also guarded at session start, when run as documented
        pytest.exit(f"refusing to run outside an isolated network namespace ({problem})", 4)
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu = cpus[0]
    server_cpu = cpus[1] if len(cpus) > 1 else cpus[0]
    workdir = tmp_path_factory.mktemp("load")
    data = zone.build(workdir, SIZES)
    upstream = Nsd(workdir, str(client_cpu), data.zone_file)
    try:
        upstream.check()
    except ServerUnavailable as e:
        pytest.skip(f"upstream: {e}")
    queries = {wl: client.read_queries(data.query_files[wl]) for wl in WORKLOADS}
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {client_cpu})  # keep the client off the server's CPU
    upstream.start()
    try:
        yield Rig(workdir, str(server_cpu), queries)
    finally:
        upstream.stop()
        os.sched_setaffinity(0, affinity)


def make_server(target: str, workdir: Path, cpus: str) -> Server:
    if target == "fastdns-1w":
        return Fastdns(workdir, cpus, 1)
    if target == "fastdns-fwd":
        return Fastdns(workdir, cpus, 1, native=False)
    if target == "dnsmasq":
        return Dnsmasq(workdir, cpus, cache_size=10000)
    if target == "dnsmasq-nocache":
        return Dnsmasq(workdir, cpus, cache_size=0)
    raise ValueError(target)


@pytest.fixture
def server(request: pytest.FixtureRequest, rig: Rig) -> Iterator[Server]:
    """A fresh server for one workload, stopped afterwards."""
    srv = make_server(request.param, rig.workdir, rig.server_cpus)
    try:
        srv.check()
    except ServerUnavailable as e:
        pytest.skip(f"{srv.name}: {e}")
    srv.start()  # ServerFailed (it did not come up) is an error, not a skip
    try:
        yield srv
    finally:
        srv.stop()


def batches(workload: str, queries: list[client.Query]) -> list[list[client.Query]]:
    """The ROUNDS batches of one workload: hot loops over its file, cold and mix go on
    through theirs (no cold name is sent twice)."""
    n = BATCH[workload]
    if workload == "hot":
        loop = [queries[i % len(queries)] for i in range(n)]
        return [loop] * ROUNDS
    assert len(queries) >= ROUNDS * n, f"{workload}: {len(queries)} queries"
    return [queries[k * n : (k + 1) * n] for k in range(ROUNDS)]


def server_ticks(pids: list[int], start: dict[int, int]) -> int:
    """utime + stime of ``pids``; a pid that is gone, or reused, counts as nothing."""
    total = 0
    for pid in pids:
        p = procstat.read_proc(pid)
        if p is not None and p.start == start[pid]:
            total += p.ticks
    return total


def client_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True, slots=True)
class Round:
    result: client.Result
    server_ticks: int
    client_s: float


PARAMS = [pytest.param(wl, t, id=f"{wl}-{t}") for wl in WORKLOADS for t in TARGETS]


@pytest.mark.timeout(ROUNDS * ROUND_CAP_S + 90)  # start, priming and the capped rounds
@pytest.mark.parametrize(("workload", "server"), PARAMS, indirect=["server"])
def test_load(
    benchmark: Any,
    rig: Rig,
    server: Server,
    workload: str,
    load_report: list[dict[str, Any]],
) -> None:
    endpoint = (server.endpoint.ip, server.endpoint.port)
    plan = batches(workload, rig.queries[workload])
    if workload == "hot":  # the hit path: every hot name is in the cache before round 1
        prime = client.run(rig.queries["hot"], endpoint, window=WINDOW, timeout=TIMEOUT_S)
        assert prime.ok(), f"{server.name} priming: {prime.summary()}; {server.log_tail()}"

    snap = procstat.snapshot()
    pids = sorted(procstat.descendants(server.roots(), snap))
    start = {pid: snap[pid].start for pid in pids}
    rounds: list[Round] = []

    def one_round() -> None:
        batch = plan[len(rounds) % ROUNDS]
        if rounds and not rounds[-1].result.ok():
            batch = []  # the test fails anyway: do not spend another capped round on it
        t0, c0 = server_ticks(pids, start), client_seconds()
        res = client.run(batch, endpoint, window=WINDOW, timeout=TIMEOUT_S, cap=ROUND_CAP_S)
        c1, t1 = client_seconds(), server_ticks(pids, start)
        rounds.append(Round(res, t1 - t0, c1 - c0))

    benchmark.group = f"load-{workload}"
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    alive = server.proc is not None and server.proc.poll() is None

    results = [r.result for r in rounds]
    answered = sum(r.answered for r in results)
    wall = sum(r.wall_s for r in results)
    cpu_s = procstat.ticks_to_s(sum(r.server_ticks for r in rounds))
    rcodes: Counter[str] = Counter()
    for r in results:
        rcodes.update(r.rcodes)
    info: dict[str, Any] = {
        "server": server.name,
        "workload": workload,
        "queries_per_round": BATCH[workload],
        "window": WINDOW,
        "sent": sum(r.sent for r in results),
        "answered": answered,
        "lost": sum(r.lost + r.unsent for r in results),
        "late": sum(r.late for r in results),
        "errors": sum(r.errors for r in results),
        "unexpected": sum(r.unexpected + r.mismatched for r in results),
        "truncated": sum(r.truncated for r in results),
        "rcodes": dict(rcodes),
        "qps": answered / wall if wall else 0.0,
        "qps_per_round": [round(r.qps) for r in results],
        "server_cpu_s": cpu_s,
        "server_cpu_us_per_q": cpu_s * 1e6 / answered if answered else None,
        "server_pids": len(pids),
        "client_busy": sum(r.client_s for r in rounds) / wall if wall else 0.0,
    }
    benchmark.extra_info.update(info)
    load_report.append({"target": server.name, **info})

    # What a user would see; never timings.
    assert alive, f"{server.name} died during the run: {server.log_tail()}"
    for i, r in enumerate(results, 1):
        assert r.ok(), f"{server.name} {workload} round {i}: {r.summary()}"
    if workload == "mix":  # the file's intended NXDOMAINs came back as such
        assert rcodes["NXDOMAIN"] > 0, dict(rcodes)
    else:
        assert set(rcodes) == {"NOERROR"}, dict(rcodes)
