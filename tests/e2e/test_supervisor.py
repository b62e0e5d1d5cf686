"""The process model of ``fastdns serve``: one supervisor, N SO_REUSEPORT workers.

Shape, fd hygiene, titles, worker count signals, boot errors and orphans. What happens to
queries while workers die, reload or stop is in test_supervisor_faults.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from support import procfs
from support.server import FastDNSProcess

from fastdns.errors import ExitCode

pytestmark = pytest.mark.e2e

STATIC_NAME, STATIC_IP = "svc.test", "10.0.0.1"


def config(**fastdns: Any) -> dict[str, Any]:
    return {
        "hostResolver": {"hosts": {STATIC_NAME: STATIC_IP}},
        "fastdns": {"workers": 2, "graceful_timeout": 2.0, **fastdns},
    }


def answer(fdp: FastDNSProcess, *, tcp: bool = False) -> str:
    reply = fdp.query(STATIC_NAME, "A", tcp=tcp)
    return str(reply.answer[0][0]) if reply.answer else ""


def test_workers_share_the_ports_and_all_serve(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config())
    workers = fdp.state["workers"]
    assert len(workers) == 2 and fdp.pid not in workers
    assert procfs.children(fdp.pid) == sorted(workers)

    # ps shows the roles; the supervisor has no event loop, no c-ares and no thread.
    assert procfs.cmdline(fdp.pid) == "fastdns: supervisor"
    assert sorted(procfs.cmdline(p) for p in workers) == ["fastdns: worker 0", "fastdns: worker 1"]
    assert procfs.threads(fdp.pid) == 1
    assert not [p for p in procfs.mapped_files(fdp.pid) if "uvloop" in p or "cares" in p]
    for pid in workers:
        assert any("uvloop" in p for p in procfs.mapped_files(pid))

    # Each worker holds exactly its own socket of each group; the supervisor holds none
    # (a stray copy would blackhole a share of the flows: docs/process-model.md, "Ports").
    for proto, port in (("udp", fdp.udp_port), ("tcp", fdp.tcp_port)):
        group = procfs.bound_sockets(proto, port)
        assert len(group) == 2, (proto, group)
        assert not group & procfs.socket_inodes(fdp.pid)
        held = [group & procfs.socket_inodes(pid) for pid in workers]
        assert [len(h) for h in held] == [1, 1] and held[0] != held[1], (proto, held)

    # Queries from many source ports land on both workers (the per-worker served counts).
    n = 150
    for _ in range(n):
        assert answer(fdp) == STATIC_IP
    for _ in range(10):
        assert answer(fdp, tcp=True) == STATIC_IP
    state = fdp.wait_state(lambda s: sum(s["served"]) >= n + 10)
    assert len(state["served"]) == 2 and min(state["served"]) > 0, state


def test_workers_option_overrides_the_config(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config(workers=1), args=["--workers", "3"])
    assert len(fdp.state["workers"]) == 3
    assert len(procfs.bound_sockets("udp", fdp.udp_port)) == 3
    assert answer(fdp) == STATIC_IP


def test_ttin_adds_a_worker_and_ttou_removes_one_but_never_the_last(
    fastdns_factory: Any,
) -> None:
    fdp = fastdns_factory(config(workers=1))
    [first] = fdp.state["workers"]

    fdp.send_signal(signal.SIGTTIN)
    state = fdp.wait_state(lambda s: len(s["workers"]) == 2)
    assert state["workers"][0] == first
    added = state["workers"][1]
    assert procfs.cmdline(added) == "fastdns: worker 1"

    fdp.send_signal(signal.SIGTTOU)
    state = fdp.wait_state(lambda s: s["workers"] == [first])
    assert procfs.wait_until(lambda: not procfs.alive(added), 10)
    assert len(procfs.bound_sockets("udp", fdp.udp_port)) == 1

    fdp.send_signal(signal.SIGTTOU)
    assert procfs.wait_until(lambda: fdp.stderr.count("SIGTTOU: 1 workers") == 2, 10)
    assert fdp.read_state()["workers"] == [first]
    assert answer(fdp) == STATIC_IP


@pytest.mark.parametrize("holder_reuses_port", [False, True], ids=["plain", "reuseport"])
def test_a_port_in_use_is_a_boot_error_not_a_restart_loop(
    tmp_path: Path, holder_reuses_port: bool
) -> None:
    # Also a SO_REUSEPORT holder of our uid: joining its group would silently share traffic.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        if holder_reuses_port:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        fdp = FastDNSProcess(config(udp_port=port), tmp_path, wait=False)
        try:
            rc = fdp.wait_exit(15)
        finally:
            fdp.close()
    assert rc == ExitCode.BOOT_ERROR
    assert f"cannot bind UDP 127.0.0.1:{port}: Address already in use" in fdp.stderr
    assert "fastdns-worker" not in fdp.stderr  # no worker was ever started
    assert not fdp.state_path.exists()


def test_a_worker_that_cannot_start_halts_the_service(tmp_path: Path) -> None:
    """A worker-side boot error (here: it may not drop privileges, CAP_SETUID/SETGID are gone
    from the bounding set) stops everything with the reason, instead of respawning."""
    program = ["setpriv", "--bounding-set", "-setuid,-setgid", sys.executable, "-m", "fastdns"]
    fdp = FastDNSProcess(config(user="nobody"), tmp_path, wait=False, program=program)
    try:
        rc = fdp.wait_exit(20)
    finally:
        fdp.close()
    assert rc == ExitCode.BOOT_ERROR, fdp.stderr
    assert "could not start: cannot drop privileges to user 'nobody'" in fdp.stderr
    assert "restarting" not in fdp.stderr
    assert fdp.orphans == []


def test_workers_die_with_a_killed_supervisor(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config())
    workers = fdp.state["workers"]
    os.kill(fdp.pid, signal.SIGKILL)
    fdp.proc.wait(10)
    assert procfs.wait_until(lambda: not any(procfs.alive(p) for p in workers), 10), [
        procfs.cmdline(p) for p in workers if procfs.alive(p)
    ]


def test_a_stalled_worker_is_aborted_and_replaced(fastdns_factory: Any) -> None:
    fdp = fastdns_factory(config(worker_timeout=2))
    victim, other = fdp.state["workers"]
    os.kill(victim, signal.SIGSTOP)  # its loop sends no heartbeat from now on
    state = fdp.wait_state(lambda s: len(s["workers"]) == 2 and victim not in s["workers"], 15)
    assert other in state["workers"]
    assert f"worker 0 (pid {victim}) sent no heartbeat" in fdp.stderr
    assert f"worker 0 (pid {victim}) did not exit in time: SIGKILL" in fdp.stderr
    assert fdp.stderr.count("sent no heartbeat") == 1  # the busy-but-alive one is left alone
    assert not procfs.alive(victim)
    assert answer(fdp) == STATIC_IP


@pytest.mark.skipif(shutil.which("iptables-restore") is None, reason="needs iptables")
def test_metrics_and_rules_processes_start_and_stop_around_the_workers(
    fastdns_factory: Any,
) -> None:
    """Metrics starts first and names its port in the first state; rules starts once the
    workers serve and is stopped first (new clients stop arriving before the drain)."""
    rules = {"enabled": True, "virtual_ip": "10.53.0.3", "hooks": ["OUTPUT"]}
    fdp = fastdns_factory(config(metrics={"listen": "127.0.0.1:0"}, rules=rules))
    assert isinstance(fdp.state["metrics_port"], int)
    assert procfs.wait_until(lambda: len(procfs.children(fdp.pid)) == 4, 10)
    titles = sorted(procfs.children_titled(fdp.pid).values())
    assert titles == [
        "fastdns: metrics",
        "fastdns: rules",
        "fastdns: worker 0",
        "fastdns: worker 1",
    ]
    assert answer(fdp) == STATIC_IP
    workers = fdp.state["workers"]
    assert fdp.stop() == 0
    log = fdp.stderr
    rules_gone = log.index("rules process (pid")
    assert all(log.index(f"(pid {pid}) exited with code 0") > rules_gone for pid in workers)
    assert log.index("metrics process (pid") > max(log.index(f"(pid {p}) exited") for p in workers)
    assert "crash" not in log and fdp.orphans == []
