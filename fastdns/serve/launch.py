"""What the supervisor hands a worker it forks: one value, built in the supervisor
(``fastdns.supervise.generations``) and read in the child (``worker.worker_process_main``).

Imports nothing that serves: the supervisor imports this module before any fork.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from fastdns.config.schema import Config
from fastdns.system.process import Credentials


@dataclass(frozen=True, slots=True, eq=False)
class WorkerLaunch:
    """The parameters of one worker process."""

    config: Config
    slot: int
    generation: int
    udp_port: int  # the supervisor's bound ports: the worker binds its own SO_REUSEPORT
    tcp_port: int  # sockets on them, unless ``udp_socks``/``tcp_socks`` are given
    control_fd: int  # write end of the control pipe to the supervisor
    stats_path: str | None = None  # the metrics process's datagram socket; None: no metrics
    # Already bound (the first worker's of a generation), one per ``config.listen_addresses``
    # in that order; () = bind them.
    udp_socks: tuple[socket.socket, ...] = ()
    tcp_socks: tuple[socket.socket, ...] = ()
    user: Credentials | None = None  # drop to it after binding
    supervisor_pid: int | None = None  # None: the parent
