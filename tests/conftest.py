"""Session guard and shared fixtures.

The tests must never send a packet beyond loopback: this host's resolv.conf names an address
that must not be queried. So the session refuses to start unless it runs inside a network
namespace that has only ``lo`` (``tests/netns-run python -m pytest``).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

# tests/ is the root of the ``support`` package; pytest's default import mode puts it on
# sys.path already, this keeps it there under --import-mode=importlib too.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

pytest_plugins = ["support.fixtures"]

NETNS_EXIT_CODE = 4  # pytest's "usage error"

MARKERS = {
    "e2e": "runs the real fastdns serve process",
    "integration": "real loopback sockets, in-process",
    "privileged": "needs CAP_NET_ADMIN in the test namespace (iptables, netns)",
    "slow": "takes more than a few seconds",
}


def isolation_problem() -> str | None:
    """Why this process is not in an isolated, loopback-only network namespace, or None."""
    if os.environ.get("FASTDNS_TEST_NETNS") != "1":
        return "FASTDNS_TEST_NETNS=1 is not set"
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        return f"network interfaces other than lo are present: {', '.join(interfaces)}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")


def pytest_sessionstart(session: pytest.Session) -> None:
    problem = isolation_problem()
    if problem is not None:
        pytest.exit(
            f"refusing to run outside an isolated network namespace ({problem}). "
            "Run the tests as: tests/netns-run python -m pytest",
            returncode=NETNS_EXIT_CODE,
        )
