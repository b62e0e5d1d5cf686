"""The layer rule of tests/unit/test_layers.py at run time: importing the supervisor side in a
fresh interpreter loads no event loop or c-ares module and starts no thread."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fastdns"


def test_importing_the_supervisor_side_loads_no_loop_and_starts_no_thread() -> None:
    """The same rule at run time, in a fresh interpreter."""
    code = (
        "import sys, threading\n"
        "import fastdns.cli, fastdns.config, fastdns.supervise.arbiter\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pycares', 'uvloop', "
        "'aiodns') or m.startswith('fastdns.resolve.native'))\n"
        "print(bad, threading.active_count())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=60,
    ).stdout.strip()
    assert out == "[] 1"
