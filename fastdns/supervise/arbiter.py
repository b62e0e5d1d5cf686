"""The supervisor: forks the worker, metrics and rules processes and keeps them alive.

It owns no event loop, no thread and no c-ares channel, so forking is safe,
and it never imports pycares, uvloop or fastdns.native, even indirectly (tests/unit/
test_layers.py): whatever serves is imported by a child after the fork, in the ``child_*``
functions of ``fastdns.supervise.children``. The shape is gunicorn's arbiter: signal handlers only
enqueue; one loop waits (interruptibly, on the signal wake-up pipe and the children's control
pipes), then handles signals, reaps, kills stalled workers and tops the pool up.

Ports: the supervisor binds the first worker's SO_REUSEPORT sockets itself (port 0 becomes a
real port here, once), hands them to that worker by fork and closes its own copies; every
other worker binds the same ports in its own process. So no process ever holds a socket of
the group that it does not read (a stray copy blackholes 1/N of the flows: the kernel hashes
flows onto every socket of the group; docs/process-model.md, "Ports").
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from queue import Empty, SimpleQueue
from typing import Any

from fastdns.config.schema import Config
from fastdns.errors import BootError, ExitCode, FastDNSError, HaltServer
from fastdns.ipc import StatusSender, split_messages
from fastdns.supervise import children, rundir
from fastdns.supervise.binding import bind_first, bound_port, prebound_socks
from fastdns.supervise.children import (
    Child,
    Kind,
    SlotState,
    child_metrics,
    child_rules,
    run_child,
)
from fastdns.supervise.exits import ChildExits
from fastdns.supervise.generations import STOP_GRACE, Generation, Generations
from fastdns.supervise.statefile import StatePublisher
from fastdns.system import process
from fastdns.system.process import Credentials
from fastdns.system.statefile import write_state

logger = logging.getLogger(__name__)

TICK = 1.0  # longest wait of the supervisor loop
RULES_STOP_TIMEOUT = 5.0  # the rules process removes its DNAT within this at shutdown

HANDLED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class _Stop(FastDNSError):
    """Leave the main loop and shut down (``fast``: no drain). Control flow, not a failure;
    under the root like every exception fastdns defines, and caught only by its own name."""

    def __init__(self, fast: bool) -> None:
        super().__init__("stop")
        self.fast = fast


class Supervisor(Generations, ChildExits, StatePublisher):
    """Runs the service until a stop signal (returns 0) or ``HaltServer``."""

    def __init__(
        self,
        config: Config,
        *,
        state_file: str | None = None,
        workers: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.state_file = state_file
        self.workers_override = workers
        self.generations = itertools.count(1)
        self.current = Generation(
            next(self.generations),
            config,
            config.udp_port,
            config.tcp_port,
            workers or config.worker_count(),
        )
        self.serving: Generation | None = None  # the newest generation that was fully ready
        self.children: dict[int, Child] = {}
        self.slots: dict[tuple[str, int], SlotState] = {}
        self.crashes: deque[float] = deque()
        self.restarts: Counter[tuple[int, str]] = Counter()
        self.signals: SimpleQueue[int] = SimpleQueue()
        self.wake_r = self.wake_w = -1
        self.stopping = False
        self.rundir: rundir.RunDir | None = None  # private: stats socket, rules ports file
        self.run_dir: str | None = None  # its path
        self.stats_path: str | None = None
        self.ports_path: str | None = None
        self.status = StatusSender(None)
        self.metrics_port: int | None = None
        self.published: dict[str, Any] | None = None
        self.published_at = 0.0

    # -----------------------------------------------------------------------------------
    # Main loop

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0); ``BootError`` / ``HaltServer`` when it cannot."""
        process.set_role("supervisor")
        gen = self.current
        try:
            gen.user = process.resolve_user(gen.config.user)
            owners = {os.geteuid()} | ({gen.user.uid} if gen.user else set())
            rundir.remove_stale(owners=owners)  # left by a supervisor killed with SIGKILL
            self._prepare_run_dir(gen.config, gen.user)
            gen.prebound = bind_first(gen.config)
            gen.udp_port = bound_port(gen.prebound[0], 0)
            gen.tcp_port = bound_port(gen.prebound[1], 0)
            self._install_signals()
            while True:
                self._step()
        except _Stop as stop:
            self._shutdown(fast=stop.fast)
            return ExitCode.OK
        except HaltServer as halt:
            if halt.exit_code != ExitCode.BOOT_ERROR:  # that reason is the CLI's one line
                logger.error("halting: %s", halt.reason)
            self._shutdown(fast=False)
            raise
        finally:
            self._cleanup()

    def _step(self) -> None:
        self._manage_children()
        self._wait(self._next_timeout())
        self._handle_signals()
        self._reap()
        self._murder_stalled()
        self._check_generations()
        self._publish()

    def _manage_children(self) -> None:
        self._manage_workers()
        self._manage_metrics()
        self._manage_rules()

    def _next_timeout(self) -> float:
        now = self.clock()
        timeout = TICK
        for child in self.children.values():
            if child.kill_at is not None:
                timeout = min(timeout, child.kill_at - now)
        for state in self.slots.values():
            if state.next_start > now:
                timeout = min(timeout, state.next_start - now)
        return max(timeout, 0.01)

    def _wait(self, timeout: float) -> None:
        """Sleep until a signal, a control message or ``timeout``; read what arrived."""
        poller = select.poll()
        poller.register(self.wake_r, select.POLLIN)
        by_fd = {}
        for child in self.children.values():
            if child.control_fd >= 0 and not child.eof:
                poller.register(child.control_fd, select.POLLIN)
                by_fd[child.control_fd] = child
        try:
            events = poller.poll(timeout * 1000)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; be safe anyway
            events = []
        for fd, _ in events:
            if fd == self.wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake_r, 4096):
                        pass
            elif fd in by_fd:
                self._read_control(by_fd[fd])

    # -----------------------------------------------------------------------------------
    # Signals: handlers only enqueue; handle_<name> methods act, from the loop.

    def _install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._enqueue_signal)

    def _enqueue_signal(self, sig: int, frame: object) -> None:
        """Signal handler: no logging, no work (gunicorn ``Arbiter.signal``)."""
        self.signals.put_nowait(sig)

    def _handle_signals(self) -> None:
        while True:
            try:
                sig = self.signals.get_nowait()
            except Empty:
                return
            name = signal.Signals(sig).name.lower()
            getattr(self, f"handle_{name[3:]}")()

    def handle_term(self) -> None:
        logger.info("SIGTERM: stopping gracefully")
        raise _Stop(fast=False)

    def handle_int(self) -> None:
        logger.info("SIGINT: stopping gracefully")
        raise _Stop(fast=False)

    def handle_quit(self) -> None:
        logger.info("SIGQUIT: stopping now")
        raise _Stop(fast=True)

    def handle_chld(self) -> None:
        pass  # the loop reaps after every wake-up

    def handle_ttin(self) -> None:
        self.current.size += 1
        logger.info("SIGTTIN: %d workers", self.current.size)

    def handle_ttou(self) -> None:
        if self.current.size > 1:
            self.current.size -= 1
        logger.info("SIGTTOU: %d workers", self.current.size)

    def _fork(self, keep: Iterable[int]) -> int:
        """fork(); in the child also reset signals and close every supervisor fd not kept."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:
            try:
                process.reset_child_signals()
                self._close_in_child(set(keep))
                self.status.close()
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            except BaseException:
                os._exit(ExitCode.ERROR)
            return 0
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _close_in_child(self, keep: set[int]) -> None:
        """A child holds no fd of its siblings and none of the supervisor's (a stray
        SO_REUSEPORT copy blackholes a share of the flows; docs/process-model.md, "Ports")."""
        fds = [self.wake_r, self.wake_w, *(c.control_fd for c in self.children.values())]
        for fd in fds:
            if fd >= 0 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        for gen in (self.current, self.serving):
            for sock in prebound_socks(gen.prebound if gen is not None else None):
                if sock.fileno() not in keep:
                    sock.close()
        rundir.close_in_child(self.rundir)
        self.children.clear()

    def _spawn(
        self,
        kind: Kind,
        slot: int,
        run: Callable[[int], None],
        config: Config,
        keep: Iterable[int] = (),
        generation: int = 0,
    ) -> Child | None:
        try:
            read_fd, write_fd = os.pipe()
        except OSError as e:  # EMFILE: try again later
            logger.error("cannot start the %s %d: %s", kind, slot, e.strerror or e)
            self._slot((kind, slot)).next_start = self.clock() + TICK
            return None
        os.set_blocking(read_fd, False)
        try:
            pid = self._fork([write_fd, *keep])
        except OSError as e:  # EAGAIN, ENOMEM: try again later, like after a crash
            os.close(read_fd)
            os.close(write_fd)
            logger.error("cannot fork the %s %d: %s", kind, slot, e.strerror or e)
            self._slot((kind, slot)).next_start = self.clock() + TICK
            return None
        if pid == 0:
            os.close(read_fd)
            run_child(lambda: run(write_fd), write_fd)
        os.close(write_fd)
        now = self.clock()
        child = Child(
            kind, pid, read_fd, now, slot=slot, generation=generation, config=config, last_beat=now
        )
        self.children[pid] = child
        logger.debug("started %s (pid %d)", child.name, pid)
        return child

    def _manage_metrics(self) -> None:
        config = self.config
        if self.stopping or not config.metrics.listen:
            return
        if any(c.kind == "metrics" for c in self.children.values()):
            return  # running, or an old one still stopping (it holds the HTTP port)
        if self._slot(("metrics", 0)).next_start > self.clock():
            return
        assert self.stats_path is not None
        stats_path, user, parent = self.stats_path, self.current.user, os.getpid()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stats_path)  # a dead metrics process's socket file

        def run(control_fd: int) -> None:
            child_metrics(config, stats_path, control_fd, user, parent)

        self._spawn("metrics", 0, run, config)

    def _manage_rules(self) -> None:
        """The rules process follows the serving generation: it starts once that serves
        (no DNAT into a void), learns new ports through the ports file plus SIGHUP
        (``_check_generations``), and stops when a reload disables it."""
        gen = self.serving
        if gen is None or self.stopping:
            return
        rules = self._live("rules")
        if rules is not None:
            if not gen.config.rules_process:
                logger.info("rules disabled by the reload: stopping the rules process")
                self._retire(rules, RULES_STOP_TIMEOUT)
            return
        if not gen.config.rules_process or self._slot(("rules", 0)).next_start > self.clock():
            return
        if any(c.kind == "rules" for c in self.children.values()):
            return  # the old one is still removing its rules
        assert self.ports_path is not None  # made by the reload that enabled rules
        write_state(
            self.ports_path, {"udp_port": gen.udp_port, "tcp_port": gen.tcp_port}, echo=False
        )
        config, udp_port, tcp_port = gen.config, gen.udp_port, gen.tcp_port
        stats_path, ports_path, parent = self.stats_path, self.ports_path, os.getpid()

        def run(control_fd: int) -> None:
            child_rules(config, udp_port, tcp_port, stats_path, ports_path, control_fd, parent)

        self._spawn("rules", 0, run, config)

    def _prepare_run_dir(self, config: Config, user: Credentials | None = None) -> None:
        """The private folder for the metrics process's stats socket and the rules process's
        ports file, made once either is configured."""
        if not config.metrics.listen and not config.rules_process:
            return
        if self.rundir is None:
            try:
                self.rundir = rundir.RunDir()
            except OSError as e:
                raise BootError(f"cannot create a run directory: {e}") from e
            self.run_dir = self.rundir.path
            self.ports_path = os.path.join(self.run_dir, "ports.json")
        if config.metrics.listen and self.stats_path is None:
            self.stats_path = os.path.join(self.rundir.path, "stats.sock")
            self.status = StatusSender(self.stats_path)
        if user is not None:  # the metrics process binds there after dropping privileges
            self.rundir.chown(user.uid, user.gid)

    # -----------------------------------------------------------------------------------
    # Children's messages, exits and stalls

    def _read_control(self, child: Child) -> None:
        while True:
            try:
                data = os.read(child.control_fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                child.eof = True
                return
            messages, child.buffer = split_messages(child.buffer, data)
            for message in messages:
                self._on_message(child, message)

    def _on_message(self, child: Child, message: dict[str, Any]) -> None:
        child.last_beat = self.clock()
        child.info.update(message)
        if "boot_error" in message:
            child.boot_error = str(message["boot_error"])
        if "error" in message:
            child.error = str(message["error"])
        if isinstance(message.get("served"), int):
            child.served = message["served"]
        up = message.get("ready") is True
        if isinstance(message.get("metrics_port"), int):
            self.metrics_port = message["metrics_port"]
            up = True  # the metrics process is up once it listens
        if up and not child.ready:
            child.ready = True
            self._slot(child.key).was_up = True
            logger.debug("%s (pid %d) serves", child.name, child.pid)

    def _shutdown(self, *, fast: bool) -> None:
        """Rules first (new clients stop arriving), then workers drain, then metrics."""
        self.stopping = True
        self._send_status()
        rules = self._live("rules")
        if rules is not None:
            self._retire(rules, RULES_STOP_TIMEOUT)
            fast = self._wait_gone(lambda c: c.kind == "rules", fast)
        workers = [c for c in self.children.values() if c.kind == "worker"]
        for child in workers:
            if fast:
                child.stopping = True
                child.stop_signal = signal.SIGQUIT
                children.kill(child.pid, signal.SIGQUIT)
                child.kill_at = self.clock() + STOP_GRACE
            else:
                self._retire(child)
        fast = self._wait_gone(lambda c: c.kind == "worker", fast)
        for child in list(self.children.values()):
            self._retire(child, STOP_GRACE)
        self._wait_gone(lambda c: True, fast)
        logger.info("stopped")

    def _wait_gone(self, which: Callable[[Child], bool], fast: bool) -> bool:
        """Reap until no child matches ``which``; a second INT/TERM or a QUIT means hurry:
        SIGKILL what is left. Returns whether we are hurrying."""
        while any(which(c) for c in self.children.values()):
            self._wait(self._next_timeout())
            while True:
                try:
                    sig = self.signals.get_nowait()
                except Empty:
                    break
                if sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT) and not fast:
                    logger.warning(
                        "%s while stopping: killing the children now", signal.Signals(sig).name
                    )
                    fast = True
                    for child in self.children.values():  # at once: nothing timed out
                        child.stop_signal, child.kill_at = signal.SIGKILL, None
                        children.kill(child.pid, signal.SIGKILL)
            self._reap()
            self._murder_stalled()
            self._send_status()  # /health stays 200 (and /ready 503) for the whole drain
        return fast

    def _cleanup(self) -> None:
        self._unpublish()
        for gen in (self.current, self.serving):
            if gen is not None:
                gen.close_prebound()
        for child in self.children.values():  # only after an error in the loop itself
            children.kill(child.pid, signal.SIGKILL)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if self.wake_w >= 0:
            signal.set_wakeup_fd(-1)
            os.close(self.wake_r)
            os.close(self.wake_w)
            self.wake_r = self.wake_w = -1
        self.status.close()
        if self.rundir is not None:
            self.rundir.remove()

    # -----------------------------------------------------------------------------------
    # Small helpers

    def _live(self, kind: Kind) -> Child | None:
        for child in self.children.values():
            if child.kind == kind and not child.stopping:
                return child
        return None

    def _was_up(self, child: Child) -> bool:
        """A child in ``child``'s slot reported ready before."""
        slot = self.slots.get(child.key)
        return slot is not None and slot.was_up

    def _slot(self, key: tuple[str, int]) -> SlotState:
        state = self.slots.get(key)
        if state is None:
            state = self.slots[key] = SlotState()
        return state
