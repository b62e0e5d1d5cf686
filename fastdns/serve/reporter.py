"""A supervised worker's reports: heartbeats to the supervisor and stats to the metrics
process, sent from inside the worker's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Protocol

from fastdns.config.schema import Config
from fastdns.ipc import ControlWriter, StatusSender
from fastdns.metrics.stats import WorkerStats, worker_message
from fastdns.serve.datapath import Datapath
from fastdns.serve.udp import ServerState

__all__ = ["HEARTBEAT_MAX", "Reported", "WorkerReporter"]

logger = logging.getLogger(__name__)

HEARTBEAT_MAX = 1.0  # seconds between a worker's heartbeats to the supervisor, at most


class Reported(Protocol):
    """What the reporter reads of a worker (fastdns/serve/worker.py ``Worker``)."""

    @property
    def config(self) -> Config: ...
    @property
    def stats(self) -> WorkerStats: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def state(self) -> ServerState | None: ...
    @property
    def datapaths(self) -> list[Datapath]: ...
    @property
    def server_label(self) -> str: ...
    def stop(self) -> None: ...
    def sample_gauges(self) -> None: ...


class WorkerReporter:
    """Heartbeats to the supervisor and stats to the metrics process, sent from inside the
    worker's event loop, so a stalled loop falls silent and gets replaced."""

    def __init__(
        self,
        control: ControlWriter,
        status: StatusSender,
        slot: int,
        generation: int,
        supervisor_pid: int,
    ) -> None:
        self.control = control
        self.status = status
        self.slot = slot
        self.generation = generation
        self.supervisor_pid = supervisor_pid
        self.serving = False
        self.server = ""

    def ready(self, worker: Reported) -> None:
        # Worker.run traps SIGINT; in a supervised worker it belongs to the supervisor, which
        # stops the children in order (a terminal's Ctrl+C reaches the whole group).
        if worker.loop is not None:
            worker.loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.serving = True
        self.server = worker.server_label  # kept: the socket is closed at the last report
        self.beat(worker)

    def tick(self, worker: Reported) -> None:
        if os.getppid() != self.supervisor_pid or self.control.broken:
            logger.warning("the supervisor is gone: stopping")
            worker.stop()
        self.send_stats(worker)

    def beat(self, worker: Reported) -> None:
        """Tell the supervisor this loop runs, and how much it served; then again in a while.

        Several beats per ``worker_timeout`` (at most a second apart), so that a loop that is
        merely busy for a moment is never mistaken for a stalled one.
        """
        inflight = worker.state.inflight if worker.state is not None else 0
        # (the fast lane's hits are in ``served`` from the last tick's fold: send_stats)
        served = sum(n for key, n in worker.stats.counters.items() if key[0] == "requests")
        self.control.send(ready=True, served=served, inflight=inflight)
        if worker.loop is not None and not self.control.broken:
            interval = min(HEARTBEAT_MAX, worker.config.worker_timeout / 4)
            worker.loop.call_later(interval, self.beat, worker)

    def send_stats(self, worker: Reported) -> None:
        for datapath in worker.datapaths:
            # Fast-lane hits are counted per form; fold them into the per-query stats (and
            # the served count) once a tick, here, and at the last report.
            datapath.fold()
        if self.status.path:
            worker.sample_gauges()
            self.status.send(
                worker_message(self.slot, os.getpid(), self.generation, worker.stats, self.server)
            )
