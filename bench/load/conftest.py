"""Guard and summary for the load runs: refuse to run outside a loopback-only namespace, and
print queries/s, losses and CPU per query under pytest-benchmark's table (which shows time
per round only)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from bench import netns

REPORT = pytest.StashKey[list[dict[str, Any]]]()


def isolation_problem() -> str | None:
    """Why this process is not in a network namespace whose only interface is lo, or None."""
    interfaces = netns.interfaces()
    if interfaces != ["lo"]:
        return f"network interfaces other than lo are present: {', '.join(interfaces)}"
    if os.environ.get("FASTDNS_TEST_NETNS") != "1":
        return "FASTDNS_TEST_NETNS=1 is not set"
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = isolation_problem()
    if problem is not None:
        pytest.exit(
            f"refusing to run outside an isolated network namespace ({problem}). Run as: "
            "tests/netns-run .venv/bin/python -m pytest bench/load -q",
            returncode=4,
        )


@pytest.fixture
def load_report(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Rows for the summary printed after the benchmark table."""
    return request.config.stash.setdefault(REPORT, [])


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's own table
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(REPORT, [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("load runs: the same rounds, per query")
    tr.write_line(
        f"{'workload':<8} {'server':<16} {'queries/s':>10} {'answered':>9} {'lost':>5} "
        f"{'errors':>6} {'server CPU us/q':>15} {'client busy':>11}  queries/s per round"
    )
    for r in rows:
        cpu = r["server_cpu_us_per_q"]
        tr.write_line(
            f"{r['workload']:<8} {r['target']:<16} {r['qps']:>10,.0f} {r['answered']:>9,} "
            f"{r['lost']:>5} {r['errors']:>6} {'-' if cpu is None else f'{cpu:.1f}':>15} "
            f"{r['client_busy']:>10.0%}  {' '.join(f'{q:,}' for q in r['qps_per_round'])}"
        )
    tr.write_line(
        "queries/s = answered / the client's wall time over all rounds; server CPU = utime + "
        "stime of the server's processes; client busy = this process's CPU / wall time (near "
        "100 % means the Python client, not the server, set the pace)."
    )
