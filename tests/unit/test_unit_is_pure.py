"""tests/unit stays pure: no module there imports what opens sockets, runs an event loop, starts
a process or a thread. Tests that need those live in tests/integration (in
process, real loopback sockets) or tests/e2e (the real ``fastdns serve``).

Checked on the source (AST), so an import inside a function counts too. Inert names may be
imported from those modules by name: address-family constants and the subprocess result record.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
FORBIDDEN = frozenset(
    {
        "socket",
        "asyncio",
        "uvloop",
        "subprocess",
        "threading",
        "multiprocessing",
        "selectors",
        "concurrent",
    }
)
INERT = {
    "socket": frozenset({"AF_INET", "AF_INET6", "SOCK_DGRAM", "SOCK_STREAM"}),
    "subprocess": frozenset({"CompletedProcess"}),
}


def impure_imports(source: str) -> list[str]:
    """Each forbidden import in ``source`` as ``line: statement``."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [
                f"{node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top in FORBIDDEN:
                allowed = INERT.get(node.module, frozenset())
                bad += [
                    f"{node.lineno}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name not in allowed
                ]
    return bad


MODULES = sorted(p for p in UNIT.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(UNIT)))
def test_unit_module_imports_nothing_impure(path: Path) -> None:
    bad = impure_imports(path.read_text())
    assert not bad, f"{path.name} is not pure, move the test to tests/integration:\n" + "\n".join(
        bad
    )


@pytest.mark.parametrize(
    "source",
    [
        "import socket",
        "import asyncio.events",
        "from asyncio import new_event_loop",
        "def f():\n    import subprocess\n",
        "import uvloop as u",
        "from threading import Thread",
        "from socket import socketpair",
        "from concurrent.futures import ThreadPoolExecutor",
    ],
)
def test_the_check_catches(source: str) -> None:
    assert impure_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "from socket import AF_INET, AF_INET6",
        "from subprocess import CompletedProcess",
        "import dns.message",
        "from fastdns.dns import wire",
        "import sockets_like_name",
    ],
)
def test_the_check_lets_pass(source: str) -> None:
    assert not impure_imports(source)
