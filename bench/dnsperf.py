"""Run dnsperf 2.10 once and read its results.

dnsperf 2.10 has no ``-O latency-histogram`` (that long option came later; ``dnsperf -H`` lists
only num-queries-per-conn, suppress and doh-*), so latency percentiles come from ``-v``: one line
per completed query, ``> RCODE qname qtype latency_seconds``, folded into a fixed-size
histogram by bench/dnsperf_parse.py. Its stdout goes to a file, not a pipe, so the bench never
stalls dnsperf. The totals (sent, completed, lost, qps) come from its
"Statistics" block. dnsperf's own CPU is read with wait4(2).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import dnsperf_parse
from bench.dnsperf_parse import LatencyHistogram


@dataclass(frozen=True, slots=True)
class Load:
    """The load settings; identical for every server in one bench run."""

    clients: int = 8  # -c: client sockets (spreads over SO_REUSEPORT workers)
    outstanding: int = 100  # -q: queries in flight
    timeout: float = 2.0  # -t: a query unanswered after this is lost
    max_qps: int = 0  # -Q: 0 = as fast as the server answers


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    query_file: Path
    seconds: int  # -l: upper bound of the run
    once: bool  # -n 1: every line once (cold, mix); else loop over the file until -l (hot)


@dataclass(slots=True)
class Result:
    sent: int = 0
    completed: int = 0
    lost: int = 0  # unanswered after -t; at the end of -l dnsperf waits for those in flight
    qps: float = 0.0
    run_time: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    client_user_s: float = 0.0
    client_system_s: float = 0.0
    exit_code: int = 0
    stderr: str = ""


def command(ep_ip: str, ep_port: int, wl: Workload, load: Load, cpus: str) -> list[str]:
    cmd = [
        "taskset",
        "-c",
        cpus,
        "dnsperf",
        "-s",
        ep_ip,
        "-p",
        str(ep_port),
        "-d",
        str(wl.query_file),
        "-c",
        str(load.clients),
        "-q",
        str(load.outstanding),
        "-T",
        "1",
        "-t",
        str(load.timeout),
        "-l",
        str(wl.seconds),
        "-v",
    ]
    if wl.once:
        cmd += ["-n", "1"]
    if load.max_qps:
        cmd += ["-Q", str(load.max_qps)]
    return cmd


def parse(stdout_path: Path, into: Result) -> None:
    """Fill ``into`` from dnsperf's stdout (per-query ``-v`` lines plus the statistics)."""
    with open(stdout_path, encoding="ascii", errors="replace") as fh:
        out = dnsperf_parse.parse(fh)
    into.sent, into.completed, into.lost = out.sent, out.completed, out.lost
    into.qps, into.run_time, into.rcodes = out.qps, out.run_time, out.rcodes
    into.latency = out.latency


def run(cmd: list[str], workdir: Path, tag: str, wall_limit: float) -> Result:
    """Run dnsperf to completion (killed after ``wall_limit`` s) and parse its output."""
    out_path = workdir / f"dnsperf-{tag}.out"
    err_path = workdir / f"dnsperf-{tag}.err"
    res = Result()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    deadline = time.monotonic() + wall_limit
    while True:
        # wait4 instead of Popen.wait: it also returns dnsperf's rusage (its CPU use).
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, ru = os.wait4(proc.pid, 0)
            break
        time.sleep(0.1)
    proc.returncode = res.exit_code = os.waitstatus_to_exitcode(status)
    res.client_user_s, res.client_system_s = ru.ru_utime, ru.ru_stime
    res.stderr = err_path.read_text(errors="replace").strip()[-2000:]
    parse(out_path, res)
    out_path.unlink()  # per-query lines: up to ~100 MB for a long run
    return res
