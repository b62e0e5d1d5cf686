"""The state file: what the supervisor publishes about the running service (ports, pids,
served counts), written atomically (``system.statefile``) and echoed on stdout when it
changes; and the status datagram to the metrics process.

Runs in: the supervisor. ``StatePublisher`` is part of ``arbiter.Supervisor``.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from fastdns.ipc import StatusSender
from fastdns.metrics.stats import supervisor_message
from fastdns.serve.choice import datapath_of
from fastdns.supervise.children import Child
from fastdns.supervise.generations import Generation
from fastdns.system.statefile import write_state

logger = logging.getLogger("fastdns.supervise.arbiter")

STATE_MIN_INTERVAL = 1.0  # rewrite the state file for served counts at most this often


class StatePublisher:
    """The supervisor's publishing half."""

    # Set by Supervisor.__init__ (arbiter.py).
    clock: Callable[[], float]
    state_file: str | None
    children: dict[int, Child]
    restarts: Counter[tuple[int, str]]
    current: Generation
    serving: Generation | None
    stopping: bool
    status: StatusSender
    metrics_port: int | None
    published: dict[str, Any] | None
    published_at: float
    # Of Generations (generations.py).
    _workers: Callable[[int], Iterable[Child]]

    def _state(self) -> dict[str, Any] | None:
        gen = self.serving
        if gen is None:
            return None
        workers = sorted(
            (c for c in self._workers(gen.number) if c.ready and not c.stopping),
            key=lambda c: c.slot,
        )
        state: dict[str, Any] = {
            "udp_port": gen.udp_port,
            "tcp_port": gen.tcp_port,
            "listen": gen.config.listen,
            "addresses": list(gen.config.listen_addresses),
            "pid": os.getpid(),
            "ready": bool(workers),
            "workers": [c.pid for c in workers],
            "served": [c.served for c in workers],
            "generation": gen.number,
            "datapath": datapath_of(gen.config),
        }
        if self.metrics_port is not None:
            state["metrics_port"] = self.metrics_port
        for child in self.children.values():  # what node-local mode made (docs/nodelocal.md)
            if child.kind == "rules" and not child.stopping and "nodelocal" in child.info:
                state["nodelocal"] = child.info["nodelocal"]
        return state

    def _publish(self) -> None:
        """Rewrite the state file when the workers change (echoed on stdout, fsynced), and at
        most once a second for the served counts; send the status datagram."""
        self._send_status()
        state = self._state()
        if state is None or self.stopping or state == self.published:
            return
        metrics_listen = self.current.config.metrics.listen
        if self.published is None and metrics_listen and self.metrics_port is None:
            return  # the first state names the metrics port (docs/process-model.md, "State file")
        last = self.published or {}
        changed = any(state.get(k) != last.get(k) for k in state if k != "served")
        now = self.clock()
        if not changed and now - self.published_at < STATE_MIN_INTERVAL:
            return
        try:
            write_state(self.state_file, state, echo=changed, sync=changed)
        except OSError as e:
            logger.error("cannot write the state file %s: %s", self.state_file, e)
        self.published, self.published_at = state, now

    def _send_status(self) -> None:
        if not self.status.path:
            return
        workers = [c for c in self.children.values() if c.kind == "worker" and not c.stopping]
        restarts = [(slot, reason, n) for (slot, reason), n in sorted(self.restarts.items())]
        self.status.send(
            supervisor_message(
                os.getpid(),
                self.current.size,
                len(workers),
                sum(c.ready for c in workers),
                restarts,
                self.stopping,
                self.serving is not None and not self.stopping,
            )
        )

    # -----------------------------------------------------------------------------------
    # Shutdown

    def _unpublish(self) -> None:
        """Leave a state file that no longer says ready (its pid is about to be gone)."""
        if self.published is None:
            return
        state = {**self.published, "ready": False, "workers": [], "served": []}
        try:
            write_state(self.state_file, state, echo=False)
        except OSError as e:
            logger.error("cannot write the state file %s: %s", self.state_file, e)
