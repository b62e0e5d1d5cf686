"""Rolling reloads: one ``Generation`` of workers per configuration, SIGHUP starts the next,
the old one retires once the new one serves (or the new one is abandoned).

Runs in: the supervisor. ``Generations`` is part of ``arbiter.Supervisor``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from fastdns.config.load import load_config
from fastdns.config.schema import Config
from fastdns.errors import BootError, ConfigError
from fastdns.policy import acl, ratelimit
from fastdns.serve.launch import WorkerLaunch
from fastdns.supervise import children
from fastdns.supervise.binding import Prebound, bind_first, bound_port, prebound_socks
from fastdns.supervise.children import Child, Kind, SlotState, child_worker
from fastdns.system import process
from fastdns.system.process import Credentials
from fastdns.system.statefile import write_state

logger = logging.getLogger("fastdns.supervise.arbiter")

STOP_GRACE = 2.0  # beyond graceful_timeout before SIGKILL at shutdown or retirement


@dataclass(eq=False)
class Generation:
    """One configuration's set of workers; a reload starts a new one."""

    number: int
    config: Config
    udp_port: int
    tcp_port: int
    size: int
    user: Credentials | None = None
    # The first worker's sockets (UDP, TCP, one per listen address; none where the port is
    # already bound by a running generation), bound by the supervisor, until that worker is
    # forked.
    prebound: Prebound | None = None

    def close_prebound(self) -> None:
        for sock in prebound_socks(self.prebound):
            sock.close()
        self.prebound = None

    def prebound_fds(self) -> list[int]:
        return [s.fileno() for s in prebound_socks(self.prebound)]


class Generations:
    """The supervisor's reload half: HUP, worker slots per generation, retirement."""

    # Set by Supervisor.__init__ (arbiter.py).
    clock: Callable[[], float]
    children: dict[int, Child]
    current: Generation
    serving: Generation | None
    generations: Iterator[int]
    workers_override: int | None
    stopping: bool
    stats_path: str | None
    ports_path: str | None
    # Methods of Supervisor (arbiter.py).
    _prepare_run_dir: Callable[[Config, Credentials | None], None]
    _spawn: Callable[[Kind, int, Callable[[int], None], Config, Iterable[int], int], Child | None]
    _live: Callable[[Kind], Child | None]
    _slot: Callable[[tuple[str, int]], SlotState]

    @property
    def config(self) -> Config:
        """The newest generation's configuration."""
        return self.current.config

    def handle_hup(self) -> None:
        """Reload: validate, start a new generation; the old one retires once it serves."""
        path = self.config.path
        try:
            config = load_config(path)
            user = process.resolve_user(config.user)
            self._prepare_run_dir(config, user)
        except (ConfigError, BootError) as e:
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            logger.error(
                "SIGHUP: reload of %s failed, keeping the running config: %s",
                path,
                "; ".join(problems),
            )
            return
        for warning in config.warnings:
            logger.warning("%s", warning)
        base = self.serving or self.current
        # A port whose address and configured number did not change stays bound by the
        # running workers: the new ones join it. Others are bound here first.
        same = config.listen_addresses == base.config.listen_addresses
        keep_udp = same and config.udp_port == base.config.udp_port
        keep_tcp = same and config.tcp_port == base.config.tcp_port
        try:
            socks = bind_first(config, udp=not keep_udp, tcp=not keep_tcp)
        except BootError as e:
            logger.error("SIGHUP: reload of %s failed, keeping the running config: %s", path, e)
            return
        # SIGTTIN/SIGTTOU adjustments survive a reload that leaves ``workers`` as it was (an
        # operator who scaled up and then edited something else keeps the workers they added).
        # (--workers fixes the count across reloads, so it always keeps the current size.)
        latest = self.current
        same_count = config.worker_count() == latest.config.worker_count()
        size = latest.size if self.workers_override or same_count else config.worker_count()
        new = Generation(
            next(self.generations),
            config,
            bound_port(socks[0], base.udp_port),
            bound_port(socks[1], base.tcp_port),
            size,
            user,
            socks,
        )
        if self.current is not self.serving:
            self._abandon(self.current, "superseded by a newer reload")
        self.current = new
        number = new.number
        logger.info("SIGHUP: reloaded %s; starting worker generation %d", path, number)
        metrics = self._live("metrics")
        if (
            metrics is not None
            and metrics.config is not None
            and metrics.config.metrics != config.metrics
        ):
            self._retire(metrics)

    # -----------------------------------------------------------------------------------
    # Spawning

    def _spawn_worker(self, gen: Generation, slot: int) -> None:
        socks = gen.prebound
        stats_path, parent = self.stats_path, os.getpid()

        def run(control_fd: int) -> None:
            udp_socks, tcp_socks = socks if socks else ((), ())
            child_worker(
                WorkerLaunch(
                    gen.config,
                    slot,
                    gen.number,
                    gen.udp_port,
                    gen.tcp_port,
                    control_fd,
                    stats_path,
                    udp_socks,
                    tcp_socks,
                    gen.user,
                    parent,
                )
            )

        self._spawn("worker", slot, run, gen.config, gen.prebound_fds(), gen.number)
        gen.close_prebound()  # the worker has them now; a copy here would blackhole flows

    def _manage_workers(self) -> None:
        if self.stopping:
            return
        gen, now = self.current, self.clock()
        running = {c.slot: c for c in self._workers(gen.number) if not c.stopping}
        for slot in range(gen.size):
            if slot not in running and self._slot(("worker", slot)).next_start <= now:
                self._spawn_worker(gen, slot)
        for slot, child in running.items():
            if slot >= gen.size:
                self._retire(child)

    def _retire(self, child: Child, timeout: float | None = None) -> None:
        """Ask a child to stop (SIGTERM: drain and exit); SIGKILL it if it takes too long."""
        if child.stopping:
            return
        child.stopping = True
        if timeout is None:
            timeout = (child.config or self.config).graceful_timeout + STOP_GRACE
        child.kill_at = self.clock() + timeout
        child.stop_signal = signal.SIGTERM
        children.kill(child.pid, signal.SIGTERM)

    def _abandon(self, gen: Generation, why: str) -> None:
        """Stop a generation that never served as a whole (a newer reload, a failed one)."""
        gen.close_prebound()
        workers = list(self._workers(gen.number))
        if workers:
            logger.info("stopping worker generation %d: %s", gen.number, why)
        for child in workers:
            self._retire(child)

    # -----------------------------------------------------------------------------------
    # Readiness and the state file

    def _check_generations(self) -> None:
        gen = self.current
        if gen is self.serving:
            return
        ready = {c.slot for c in self._workers(gen.number) if c.ready and not c.stopping}
        if not ready.issuperset(range(gen.size)):
            return
        old, self.serving = self.serving, gen
        if old is None:
            logger.info(
                "serving DNS on %s udp/%d tcp/%d with %d workers; acl: %s; %s",
                ", ".join(gen.config.listen_addresses),
                gen.udp_port,
                gen.tcp_port,
                gen.size,
                acl.describe(gen.config.acl),
                ratelimit.describe(gen.config.ratelimit),
            )
            return
        logger.info("worker generation %d serves: retiring generation %d", gen.number, old.number)
        old.close_prebound()
        for child in self.children.values():
            if child.kind == "worker" and child.generation != gen.number:
                self._retire(child)
        rules = self._live("rules")
        if rules is not None and gen.config.rules_process and self.ports_path is not None:
            # New ports (if any) through the ports file, then SIGHUP: it re-reads the config
            # and reconciles, moving the DNAT without removing it.
            write_state(
                self.ports_path, {"udp_port": gen.udp_port, "tcp_port": gen.tcp_port}, echo=False
            )
            children.kill(rules.pid, signal.SIGHUP)

    def _workers(self, generation: int) -> Iterable[Child]:
        return (
            c for c in self.children.values() if c.kind == "worker" and c.generation == generation
        )
