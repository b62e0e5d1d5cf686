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

from bench.runner import Measurement, as_dict

FASTDNS = ("fastdns-1w", "fastdns-fwd", "fastdns-cares", "fastdns-py", "fastdns-2w")
PEERS = ("dnsmasq", "dnsmasq-nocache", "unbound", "dnsdist", "dnsdist-nocache", "lima", "upstream")


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def row(m: Measurement) -> str:
    if m.status == "error":
        return f"{m.workload:<5} {m.target:<16} ERROR: {m.error[:120]}"
    if m.status == "noisy":  # refuse to report it: the numbers stay in the JSON, flagged
        return (
            f"{m.workload:<5} {m.target:<16} NOT REPORTED: other processes used "
            f"{m.other_cpu_cores:.2f} cores ({', '.join(m.other_top) or '?'}) "
            f"in all {m.attempt} attempts"
        )
    return (
        f"{m.workload:<5} {m.target:<16} {m.qps:>9,.0f} {_f(m.p50_ms, '8.3f')} "
        f"{_f(m.p99_ms, '8.3f')} {_f(m.server_cpu_us_per_q, '9.1f')} {m.answered:>9,} "
        f"{m.lost:>6,} {m.udp_rcvbuf_errors:>6,} {m.error_rcodes:>6,} "
        f"{m.other_cpu_cores * 100:>6.1f} {m.attempt:>4}"
    )


HEADER = (
    f"{'load':<5} {'server':<16} {'queries/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/q':>9} "
    f"{'answered':>9} {'lost':>6} {'drops':>6} {'errors':>6} {'noise%':>6} {'try':>4}"
)


def table(results: Sequence[Measurement]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    last = ""
    for m in results:
        if last and m.workload != last:
            lines.append("")
        lines.append(row(m))
        last = m.workload
    return "\n".join(lines)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}" if a and b else "     -"


def ratios(results: Sequence[Measurement], skipped: dict[str, str]) -> str:
    """fastdns / peer for each workload: queries/s, p99 and CPU per query."""
    by = {(m.workload, m.target): m for m in results if m.status == "ok"}
    lines = [f"{'load':<5} {'fastdns / peer':<30} {'q/s':>6} {'p99':>6} {'CPU/q':>6}"]
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
                    f"{wl:<5} {fd + ' / ' + peer:<30} {_ratio(a.qps, b.qps)} "
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
