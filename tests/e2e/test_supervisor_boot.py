"""Children that cannot boot, and a supervisor that is killed: what ``fastdns serve`` leaves.

A child that fails before it reported ready is a boot failure: the service halts with exit
code 3 and one line naming the cause, instead of restart-looping (gunicorn's
WORKER_BOOT_ERROR). The private run directory of a supervisor killed with SIGKILL is removed
by the next start, never a live instance's.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import procfs
from support.server import REPO_ROOT, FastDNSProcess

from fastdns.errors import ExitCode

pytestmark = pytest.mark.e2e

STATIC_NAME, STATIC_IP = "svc.test", "10.0.0.1"
PROMPT = 5.0  # a boot failure halts within this (the restart loop took ~43 s)
SECONDARY = ("killed by", "did not exit in time", "restarting", "crashes within")


def config(**fastdns: Any) -> dict[str, Any]:
    return {
        "hostResolver": {"hosts": {STATIC_NAME: STATIC_IP}},
        "fastdns": {"workers": 2, "graceful_timeout": 2.0, **fastdns},
    }


def answer(fdp: FastDNSProcess) -> str:
    reply = fdp.query(STATIC_NAME, "A")
    return str(reply.answer[0][0]) if reply.answer else ""


def run_to_exit(fdp: FastDNSProcess, timeout: float) -> tuple[int, float]:
    start = time.monotonic()
    try:
        rc = fdp.wait_exit(timeout)
    finally:
        fdp.close()
    return rc, time.monotonic() - start


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "bound"])
def test_a_taken_metrics_port_halts_with_boot_error_and_one_line(
    tmp_path: Path, listening: bool
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))  # held before fastdns starts: no race
        if listening:
            holder.listen()
        port = holder.getsockname()[1]
        fdp = FastDNSProcess(config(metrics={"listen": f"127.0.0.1:{port}"}), tmp_path, wait=False)
        rc, took = run_to_exit(fdp, 20)
    err = fdp.stderr
    assert rc == ExitCode.BOOT_ERROR, err
    assert took < PROMPT, err
    cause = [line for line in err.splitlines() if f"127.0.0.1:{port}" in line]
    assert len(cause) == 1, err
    assert "metrics" in cause[0] and "Address already in use" in cause[0]
    assert not [line for line in err.splitlines() if any(s in line for s in SECONDARY)], err
    assert "Traceback" not in err
    assert not fdp.state_path.exists()
    assert fdp.orphans == []


def test_a_metrics_process_that_crashes_while_booting_halts_with_the_cause(
    tmp_path: Path,
) -> None:
    """Not a BootError but an exception (here: a broken prometheus_client install) before
    the metrics process was up: a boot failure all the same, with the exception named."""
    broken = tmp_path / "broken"
    (broken / "prometheus_client").mkdir(parents=True)
    (broken / "prometheus_client" / "__init__.py").write_text(
        "raise ImportError('prometheus_client is broken for this test')\n"
    )
    env = {"PYTHONPATH": f"{broken}{os.pathsep}{REPO_ROOT}"}
    fdp = FastDNSProcess(config(metrics={"listen": "127.0.0.1:0"}), tmp_path, wait=False, env=env)
    rc, took = run_to_exit(fdp, 60)
    err = fdp.stderr
    assert rc == ExitCode.BOOT_ERROR, err
    assert took < PROMPT, err
    cause = [
        line
        for line in err.splitlines()
        if line.startswith("fastdns: ") and "broken for this test" in line
    ]
    assert len(cause) == 1, err
    assert "metrics" in cause[0] and "ImportError" in cause[0]
    assert not [line for line in err.splitlines() if any(s in line for s in SECONDARY)], err
    assert fdp.orphans == []


def run_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("fastdns-*"))


def metrics_health(fdp: FastDNSProcess) -> int:
    url = f"http://127.0.0.1:{fdp.state['metrics_port']}/health"
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status)


def test_a_killed_supervisors_run_directory_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    doc = config(metrics={"listen": "127.0.0.1:0"})
    first = FastDNSProcess(doc, tmp_path, env=env)
    try:
        (stale,) = run_dirs(tmp)
        assert stale.name.startswith(f"fastdns-{first.pid}-")
        children = procfs.children(first.pid)
        assert len(children) == 3  # two workers and the metrics process
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(10)
        # The children exit by themselves (parent-death signal), none is left behind.
        assert procfs.wait_until(lambda: not any(procfs.alive(p) for p in children), 10), [
            procfs.cmdline(p) for p in children if procfs.alive(p)
        ]
        assert stale.is_dir()  # nobody removed it: that is the next start's job
    finally:
        first.close()
    with FastDNSProcess(doc, tmp_path, env=env) as second:
        assert not stale.exists()
        (fresh,) = run_dirs(tmp)
        assert fresh.name.startswith(f"fastdns-{second.pid}-")
        assert answer(second) == STATIC_IP
        assert metrics_health(second) == 200
        assert f"removed {stale}" in second.stderr
        assert second.stop() == 0
    assert run_dirs(tmp) == []  # a clean stop removes its own


def test_a_live_instances_run_directory_is_never_removed(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    doc = config(metrics={"listen": "127.0.0.1:0"}, workers=1)
    with FastDNSProcess(doc, tmp_path, env=env) as first:
        (mine,) = run_dirs(tmp)
        with FastDNSProcess(doc, tmp_path, env=env) as second:
            assert mine in run_dirs(tmp) and len(run_dirs(tmp)) == 2
            assert (mine / "stats.sock").exists()
            assert answer(first) == STATIC_IP and metrics_health(first) == 200
            assert answer(second) == STATIC_IP and metrics_health(second) == 200
            assert "removed" not in second.stderr
