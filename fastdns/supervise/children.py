"""What a forked child runs: the entry point of each kind of process the supervisor starts.

Only the ``child_*`` functions here import the serving code (uvloop, pycares, the metrics and
rules modules), and only after the fork; ``tests/unit/test_layers.py`` knows the prefix and
checks that nothing else on the supervisor's side imports it. ``run_child`` wraps them so a
child always leaves with ``os._exit`` and never returns into the supervisor's loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

from fastdns.config.schema import Config
from fastdns.errors import BootError, ExitCode
from fastdns.ipc import ControlWriter
from fastdns.serve.launch import WorkerLaunch
from fastdns.system import process
from fastdns.system.process import Credentials

Kind = Literal["worker", "metrics", "rules"]


@dataclass(eq=False)
class Child:
    kind: Kind
    pid: int
    control_fd: int  # read end of the child's control pipe; -1 once closed
    started: float
    slot: int = 0
    generation: int = 0
    config: Config | None = None
    last_beat: float = 0.0
    ready: bool = False
    served: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    buffer: bytes = b""
    eof: bool = False
    stopping: bool = False  # we asked it to exit: its exit is not a crash
    kill_at: float | None = None  # SIGKILL it at this time if it is still there
    timed_out: bool = False  # the watchdog aborted it
    stop_signal: int = 0  # the signal we sent it to stop: dying of it is no crash
    boot_error: str = ""  # why it could not start, as it reported it
    error: str = ""  # the exception it died of, as it reported it

    @property
    def name(self) -> str:
        return f"worker {self.slot}" if self.kind == "worker" else f"{self.kind} process"

    @property
    def key(self) -> tuple[str, int]:
        return (self.kind, self.slot)


@dataclass
class SlotState:
    """Restart backoff of one slot (a worker slot, or the metrics or rules process)."""

    crashes: int = 0
    next_start: float = 0.0
    was_up: bool = False  # a child in this slot reported ready once


def kill(pid: int, sig: int) -> None:
    """``os.kill``, for a child that may have gone already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


ERROR_MAX = 500  # characters of a crashed child's exception passed up the control pipe


def run_child(body: Callable[[], None], control_fd: int) -> NoReturn:
    """Run ``body`` in a forked child and leave with ``os._exit``: never return into the
    supervisor's loop, never run its atexit handlers or flush its buffers twice."""
    code: int = ExitCode.ERROR
    try:
        body()
        code = ExitCode.OK
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else ExitCode.ERROR
    except BootError as e:  # the supervisor reports it: one line, not one per process
        ControlWriter(control_fd).send(boot_error=str(e))
        code = ExitCode.BOOT_ERROR
    except BaseException as e:
        traceback.print_exc()
        # Named in the supervisor's reason if this child had not reported ready yet.
        ControlWriter(control_fd).send(error=f"{type(e).__name__}: {e}"[:ERROR_MAX])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def child_worker(launch: WorkerLaunch) -> None:
    process.set_role(f"worker {launch.slot}")
    try:
        from fastdns.serve.worker import (
            worker_process_main,  # after fork: uvloop, pycares live here
        )
    except Exception as e:  # a broken install would otherwise crash-loop
        raise BootError(f"cannot load the worker code: {type(e).__name__}: {e}") from e
    worker_process_main(launch)


def child_metrics(
    config: Config,
    stats_path: str,
    control_fd: int,
    user: Credentials | None,
    supervisor_pid: int,
) -> None:
    process.set_role("metrics")
    try:
        from fastdns.metrics.main import metrics_main  # after fork: prometheus-client lives here
    except Exception as e:  # a broken install would otherwise crash-loop
        raise BootError(f"cannot load the metrics code: {type(e).__name__}: {e}") from e
    if user is not None:
        process.drop_privileges(user)
    if not process.die_with_parent(supervisor_pid):
        return
    raise SystemExit(metrics_main(config, stats_path, control_fd=control_fd))


def child_rules(
    config: Config,
    udp_port: int,
    tcp_port: int,
    stats_path: str | None,
    ports_path: str | None,
    control_fd: int,
    supervisor_pid: int,
) -> None:
    process.set_role("rules")
    try:
        from fastdns.rules.main import run  # after fork: iptables I/O lives here
    except Exception as e:  # a broken install would otherwise crash-loop
        raise BootError(f"cannot load the rules code: {type(e).__name__}: {e}") from e
    # Stays privileged (CAP_NET_ADMIN); SIGTERM when the supervisor dies removes the DNAT.
    if not process.die_with_parent(supervisor_pid):
        return
    # Up: from here on it reports iptables failures itself and retries; an exit is a crash.
    control = ControlWriter(control_fd)
    control.send(ready=True)
    if config.nodelocal.enabled:
        from fastdns.rules.nodelocal import run as run_nodelocal

        raise SystemExit(
            run_nodelocal(
                config, udp_port, tcp_port, stats_path, ports_path=ports_path, control=control
            )
        )
    raise SystemExit(run(config, udp_port, tcp_port, stats_path, ports_path=ports_path))
