"""The entry point of the metrics process: signals, the control pipe, then ``http.serve``.

Runs in: the metrics process only (forked by the supervisor, ``supervise.children``).
"""

from __future__ import annotations

import os
import signal
import socket
import threading

from fastdns.config.schema import Config
from fastdns.errors import BootError, ExitCode
from fastdns.ipc import ControlWriter
from fastdns.metrics.http import serve
from fastdns.system.process import die_with_parent, reset_child_signals, set_role


def metrics_main(
    config: Config,
    stats_path: str,
    control_fd: int = -1,
    *,
    http_sock: socket.socket | None = None,
) -> int:
    """Entry point of the forked metrics process; returns its exit code.

    Binds the stats socket at ``stats_path`` and (unless the supervisor passes a pre-bound
    ``http_sock``) a listening socket on ``config.metrics.listen`` (port 0: any free port), then
    writes ``{"metrics_port": N}`` to its control pipe ``control_fd`` (``ipc`` line format).
    When binding fails it writes ``{"boot_error": why}`` and returns ``ExitCode.BOOT_ERROR``.
    Serves until SIGTERM/SIGQUIT or until the supervisor goes away, then returns 0.
    """
    ppid = os.getppid()
    set_role("metrics")
    reset_child_signals()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, lambda *_: stop.set())
    control = ControlWriter(control_fd)
    if not die_with_parent(ppid):
        return ExitCode.OK
    try:
        serve(
            config,
            stats_path,
            lambda: stop.is_set() or os.getppid() != ppid,
            on_ready=lambda port: control.send(metrics_port=port),
            http_sock=http_sock,
        )
    except BootError as e:  # the supervisor reports it
        control.send(boot_error=str(e))
        return ExitCode.BOOT_ERROR
    return ExitCode.OK
