"""The printed tables and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.runner import FASTDNS_TARGETS, PEER_TARGETS, Measurement, as_dict

FASTDNS = tuple(FASTDNS_TARGETS)
PEERS = PEER_TARGETS
# The ratio columns of the main table: a row's CPU per query over these peers' in the same
# workload (lower is cheaper than that peer when < 1).
RATIO_PEERS = ("dnsmasq", "unbound", "dnsdist")
W = 20  # width of the server column: "fastdns-fwd-compiled"


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:>6.2f}" if a and b else f"{'-':>6}"


def row(m: Measurement, peers: dict[str, Measurement] | None = None) -> str:
    """One table line; ``peers`` (target -> the same workload's measurement) fills the ratio
    columns, left "-" without it (the live lines printed as the bench goes)."""
    if m.status == "error":
        return f"{m.workload:<5} {m.target:<{W}} ERROR: {m.error[:120]}"
    if m.status == "noisy":  # refuse to report it: the numbers stay in the JSON, flagged
        return (
            f"{m.workload:<5} {m.target:<{W}} NOT REPORTED: other processes used "
            f"{m.other_cpu_cores:.2f} cores ({', '.join(m.other_top) or '?'}) "
            f"in all {m.attempt} attempts"
        )
    peers = peers or {}
    cpu = m.server_cpu_us_per_q
    ratios = " ".join(
        _x(cpu, p.server_cpu_us_per_q if (p := peers.get(t)) else None) for t in RATIO_PEERS
    )
    return (
        f"{m.workload:<5} {m.target:<{W}} {m.qps:>9,.0f} {_f(m.p50_ms, '8.3f')} "
        f"{_f(m.p99_ms, '8.3f')} {_f(cpu, '9.1f')} {_f(m.server_sys_us_per_q, '8.1f')} "
        f"{ratios} {m.answered:>9,} {m.lost:>6,} {m.udp_rcvbuf_errors:>6,} "
        f"{m.error_rcodes:>6,} {_f(m.rss_worker_mb, '7.1f')} "
        f"{m.other_cpu_cores * 100:>6.1f} {m.attempt:>4}"
    )


HEADER = (
    f"{'load':<5} {'server':<{W}} {'queries/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/q':>9} "
    f"{'sys us/q':>8} {'/dnsmq':>6} {'/unbnd':>6} {'/dndst':>6} "
    f"{'answered':>9} {'lost':>6} {'drops':>6} {'errors':>6} {'RSS MB':>7} {'noise%':>6} "
    f"{'try':>4}"
)


def table(results: Sequence[Measurement]) -> str:
    ok = {(m.workload, m.target): m for m in results if m.status == "ok"}
    lines = [HEADER, "-" * len(HEADER)]
    last = ""
    for m in results:
        if last and m.workload != last:
            lines.append("")
        peers = {t: p for t in RATIO_PEERS if (p := ok.get((m.workload, t))) is not None}
        lines.append(row(m, peers))
        last = m.workload
    return "\n".join(lines)


def lost_check(results: Sequence[Measurement]) -> tuple[bool, str]:
    """(passed, text): every fastdns row answered every query it was sent (lost 0)."""
    bad = [m for m in results if m.target in FASTDNS and m.status != "error" and m.lost]
    if not bad:
        n = sum(1 for m in results if m.target in FASTDNS and m.status != "error")
        return True, f"lost queries: 0 in all {n} fastdns rows"
    rows = ", ".join(f"{m.workload}/{m.target} {m.lost:,} of {m.sent:,}" for m in bad)
    return False, f"LOST QUERIES in fastdns rows: {rows}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}" if a and b else "     -"


def ratios(results: Sequence[Measurement], skipped: dict[str, str]) -> str:
    """fastdns / peer for each workload: queries/s, p99 and CPU per query."""
    by = {(m.workload, m.target): m for m in results if m.status == "ok"}
    lines = [f"{'load':<5} {'fastdns / peer':<36} {'q/s':>6} {'p99':>6} {'CPU/q':>6}"]
    for fd in FASTDNS:
        if fd in skipped:
            lines.append(f"{fd}: {skipped[fd]}")
    for wl in dict.fromkeys(m.workload for m in results):
        for fd in FASTDNS:
            a = by.get((wl, fd))
            if a is None:
                continue
            for peer in PEERS:
                b = by.get((wl, peer))
                if b is None:
                    continue
                lines.append(
                    f"{wl:<5} {fd + ' / ' + peer:<36} {_ratio(a.qps, b.qps)} "
                    f"{_ratio(a.p99_ms, b.p99_ms)} "
                    f"{_ratio(a.server_cpu_us_per_q, b.server_cpu_us_per_q)}"
                )
    if len(lines) == 1:
        lines.append("(no fastdns results to compare)")
    return "\n".join(lines)


def _version(cmd: list[str], pattern: str) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "missing"
    m = re.search(pattern, r.stdout + r.stderr)
    return m.group(1) if m else "unknown"


def environment(repo: Path) -> dict[str, Any]:
    cpu = ""
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    git = _version(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], r"\b([0-9a-f]{7,40})\b"
    )
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git": git,
        "versions": {
            "dnsperf": _version(["dnsperf", "-h"], r"Version ([\d.]+)"),
            "nsd": _version(["nsd", "-v"], r"NSD version ([\d.]+)"),
            "dnsmasq": _version(["dnsmasq", "--version"], r"version ([\d.]+)"),
            "unbound": _version(["unbound", "-V"], r"Version ([\d.]+)"),
            "dnsdist": _version(["dnsdist", "--version"], r"dnsdist ([\d.]+)"),
        },
    }


def write_json(
    path: Path,
    env: dict[str, Any],
    settings: dict[str, Any],
    dataset: dict[str, Any],
    skipped: dict[str, str],
    results: Sequence[Measurement],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "environment": env,
        "settings": settings,
        "dataset": dataset,
        "skipped": skipped,
        "results": [as_dict(m) for m in results],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
