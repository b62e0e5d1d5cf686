"""The /proc helpers the tests use to look at fastdns's processes (support.procfs)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import procfs

pytestmark = pytest.mark.integration  # real child processes


def test_a_child_that_is_gone_is_left_out_not_an_error() -> None:
    """A child killed and reaped between the listing and the read has no /proc entry: its
    title cannot be read, and ``children_titled`` leaves it out (a rules process killed by a
    test, say) instead of failing the test that looks."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: /proc/<pid> is gone
    with pytest.raises(FileNotFoundError):
        procfs.cmdline(child.pid)
    assert child.pid not in procfs.children_titled(os.getpid())


def test_live_children_are_listed_with_their_titles() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        titled = procfs.children_titled(os.getpid())
        assert child.pid in titled and "time.sleep" in titled[child.pid]
    finally:
        child.kill()
        child.wait()
