"""``promtool check metrics`` (Prometheus's own promlint, a subprocess) on an exposition in which
every family has samples."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support.exposition import full_exposition


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics_finds_nothing() -> None:
    proc = subprocess.run(
        ["promtool", "check", "metrics"],
        input=full_exposition(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
