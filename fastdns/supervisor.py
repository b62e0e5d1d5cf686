"""The supervisor: forks the worker, metrics and rules processes and keeps them alive.

It owns no event loop, no thread and no c-ares channel, so forking is safe, and it never imports
pycares, uvloop or fastdns.native, even indirectly (tests/unit/test_layers.py): whatever serves is
imported by a child after the fork, in the ``child_*`` functions of ``fastdns.children``. The shape
is gunicorn's arbiter: signal handlers only enqueue; one loop waits (interruptibly, on the signal
wake-up pipe and the children's control pipes), then handles signals, reaps, kills stalled workers
and tops the pool up.

Ports: the supervisor binds the first worker's SO_REUSEPORT sockets itself (port 0 becomes a
real port here, once), hands them to that worker by fork and closes its own copies; every
other worker binds the same ports in its own process. So no process ever holds a socket of
the group that it does not read (a stray copy blackholes 1/N of the flows: the kernel hashes
flows onto every socket of the group; docs/process-model.md, "Ports").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from typing import Any, Literal

from fastdns import acl, process, ratelimit, rundir
from fastdns.children import child_metrics, child_rules, child_worker, run_child
from fastdns.config import Config, load_config
from fastdns.errors import BootError, ConfigError, ExitCode, HaltServer
from fastdns.ipc import StatusSender, split_messages
from fastdns.process import Credentials
from fastdns.sockets import bind_tcp, bind_udp
from fastdns.stats import supervisor_message

logger = logging.getLogger(__name__)

TICK = 1.0  # longest wait of the supervisor loop
BACKOFF_BASE = 0.1  # first restart delay of a slot; doubles per crash ...
BACKOFF_MAX = 10.0  # ... up to this
HEALTHY_AFTER = 30.0  # a child that lived this long resets its slot's backoff
CRASH_LIMIT = 10  # more crashes than this within CRASH_WINDOW halt the service
CRASH_WINDOW = 60.0
BOOT_TIMEOUT = 10.0  # least time a new worker gets to send its first heartbeat
KILL_AFTER_ABORT = 1.0  # a stalled worker still alive this long after SIGABRT gets SIGKILL
STOP_GRACE = 2.0  # beyond graceful_timeout before SIGKILL at shutdown or retirement
RULES_STOP_TIMEOUT = 5.0  # the rules process removes its DNAT within this at shutdown
STATE_MIN_INTERVAL = 1.0  # rewrite the state file for served counts at most this often

HANDLED_SIGNALS = (
    signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP,
    signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD,
)  # fmt: skip

Kind = Literal["worker", "metrics", "rules"]


class _Stop(Exception):
    """Leave the main loop and shut down (``fast``: no drain)."""

    def __init__(self, fast: bool) -> None:
        super().__init__("stop")
        self.fast = fast


@dataclass(eq=False)
class Generation:
    """One configuration's set of workers; a reload starts a new one."""

    number: int
    config: Config
    udp_port: int
    tcp_port: int
    size: int
    user: Credentials | None = None
    # The first worker's sockets (UDP, TCP; None where the port is already bound by a running
    # generation), bound by the supervisor, until that worker is forked.
    prebound: tuple[socket.socket | None, socket.socket | None] | None = None

    def close_prebound(self) -> None:
        if self.prebound is not None:
            for sock in self.prebound:
                if sock is not None:
                    sock.close()
            self.prebound = None

    def prebound_fds(self) -> list[int]:
        return [s.fileno() for s in self.prebound or () if s is not None]


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


def write_state(path: str | None, state: dict[str, Any], *, echo: bool = True,
                sync: bool = True) -> None:  # fmt: skip
    """Print ``state`` as one JSON line (``echo``) and write it atomically to ``path``."""
    line = json.dumps(state, sort_keys=True)
    if echo:
        with contextlib.suppress(OSError, ValueError):  # nobody reads stdout any more
            print(line, flush=True)
    if not path:
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(line + "\n")
        if sync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def bind_first(
    config: Config, *, udp: bool = True, tcp: bool = True
) -> tuple[socket.socket | None, socket.socket | None]:
    """Bind the first worker's UDP and/or TCP socket (``BootError`` when not possible).

    A fixed port is first bound without SO_REUSEPORT and released: that fails when anything
    holds the port, even a SO_REUSEPORT socket of another fastdns under the same uid, whose
    group we would otherwise silently join and share traffic with. Port 0 needs no probe:
    the kernel hands out a port nobody holds, and the workers then join it.
    """
    jobs: tuple[tuple[bool, int, Callable[..., socket.socket]], ...] = (
        (udp, config.udp_port, bind_udp), (tcp, config.tcp_port, bind_tcp))  # fmt: skip
    for wanted, port, bind in jobs:
        if wanted and port:
            bind(config.listen, port).close()
    socks: list[socket.socket | None] = []
    try:
        for wanted, port, bind in jobs:
            socks.append(bind(config.listen, port, reuse_port=True) if wanted else None)
    except BaseException:
        for sock in socks:
            if sock is not None:
                sock.close()
        raise
    return socks[0], socks[1]


def _port(sock: socket.socket | None, default: int) -> int:
    return int(sock.getsockname()[1]) if sock is not None else default


class Supervisor:
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
        self.current = Generation(next(self.generations), config, config.udp_port,
                                  config.tcp_port, workers or config.worker_count())  # fmt: skip
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

    @property
    def config(self) -> Config:
        return self.current.config

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
            gen.udp_port = _port(gen.prebound[0], 0)
            gen.tcp_port = _port(gen.prebound[1], 0)
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

    def handle_hup(self) -> None:
        """Reload: validate, start a new generation; the old one retires once it serves."""
        path = self.config.path
        try:
            config = load_config(path)
            user = process.resolve_user(config.user)
            self._prepare_run_dir(config, user)
        except (ConfigError, BootError) as e:
            problems = e.problems if isinstance(e, ConfigError) else [str(e)]
            logger.error("SIGHUP: reload of %s failed, keeping the running config: %s",
                         path, "; ".join(problems))  # fmt: skip
            return
        for warning in config.warnings:
            logger.warning("%s", warning)
        base = self.serving or self.current
        # A port whose address and configured number did not change stays bound by the
        # running workers: the new ones join it. Others are bound here first.
        same = config.listen == base.config.listen
        keep_udp = same and config.udp_port == base.config.udp_port
        keep_tcp = same and config.tcp_port == base.config.tcp_port
        try:
            socks = bind_first(config, udp=not keep_udp, tcp=not keep_tcp)
        except BootError as e:
            logger.error("SIGHUP: reload of %s failed, keeping the running config: %s",
                         path, e)  # fmt: skip
            return
        # SIGTTIN/SIGTTOU adjustments survive a reload that leaves ``workers`` as it was (an
        # operator who scaled up and then edited something else keeps the workers they added).
        # (--workers fixes the count across reloads, so it always keeps the current size.)
        latest = self.current
        same_count = config.worker_count() == latest.config.worker_count()
        size = latest.size if self.workers_override or same_count else config.worker_count()
        new = Generation(next(self.generations), config, _port(socks[0], base.udp_port),
                         _port(socks[1], base.tcp_port), size, user, socks)  # fmt: skip
        if self.current is not self.serving:
            self._abandon(self.current, "superseded by a newer reload")
        self.current = new
        number = new.number
        logger.info("SIGHUP: reloaded %s; starting worker generation %d", path, number)
        metrics = self._live("metrics")
        if metrics is not None and metrics.config is not None and (
            metrics.config.metrics != config.metrics):  # fmt: skip
            self._retire(metrics)

    # -----------------------------------------------------------------------------------
    # Spawning

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
            for sock in (gen.prebound or ()) if gen is not None else ():
                if sock is not None and sock.fileno() not in keep:
                    sock.close()
        rundir.close_in_child(self.rundir)
        self.children.clear()

    def _spawn(
        self, kind: Kind, slot: int, run: Callable[[int], None], config: Config,
        keep: Iterable[int] = (), generation: int = 0,
    ) -> Child | None:  # fmt: skip
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
        child = Child(kind, pid, read_fd, now, slot=slot, generation=generation, config=config,
                      last_beat=now)  # fmt: skip
        self.children[pid] = child
        logger.debug("started %s (pid %d)", child.name, pid)
        return child

    def _spawn_worker(self, gen: Generation, slot: int) -> None:
        socks = gen.prebound
        stats_path, parent = self.stats_path, os.getpid()

        def run(control_fd: int) -> None:
            child_worker(gen.config, slot, gen.number, gen.udp_port, gen.tcp_port, control_fd,
                         stats_path, socks, gen.user, parent)  # fmt: skip

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
            if not gen.config.rules.enabled:
                logger.info("rules disabled by the reload: stopping the rules process")
                self._retire(rules, RULES_STOP_TIMEOUT)
            return
        if not gen.config.rules.enabled or self._slot(("rules", 0)).next_start > self.clock():
            return
        if any(c.kind == "rules" for c in self.children.values()):
            return  # the old one is still removing its rules
        assert self.ports_path is not None  # made by the reload that enabled rules
        write_state(self.ports_path, {"udp_port": gen.udp_port, "tcp_port": gen.tcp_port},
                    echo=False)  # fmt: skip
        config, udp_port, tcp_port = gen.config, gen.udp_port, gen.tcp_port
        stats_path, ports_path, parent = self.stats_path, self.ports_path, os.getpid()

        def run(control_fd: int) -> None:
            child_rules(config, udp_port, tcp_port, stats_path, ports_path, control_fd, parent)

        self._spawn("rules", 0, run, config)

    def _prepare_run_dir(self, config: Config, user: Credentials | None = None) -> None:
        """The private folder for the metrics process's stats socket and the rules process's
        ports file, made once either is configured."""
        if not config.metrics.listen and not config.rules.enabled:
            return
        if self.rundir is None:
            try:
                self.rundir = rundir.RunDir()
            except OSError as e:
                raise BootError(f"cannot create a run directory: {e}") from e
            self.run_dir = self.rundir.path
            self.ports_path = os.path.join(self.run_dir, "ports.json")
        if config.metrics.listen and self.stats_path is None:
            self.stats_path = os.path.join(self.run_dir, "stats.sock")
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

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue  # not ours (e.g. when running as PID 1)
            if child.control_fd >= 0:
                if not child.eof:
                    self._read_control(child)  # a boot error written just before exiting
                os.close(child.control_fd)
                child.control_fd = -1
            self._on_exit(child, os.waitstatus_to_exitcode(status))

    def _on_exit(self, child: Child, code: int) -> None:
        how = _describe_exit(code)
        if child.stopping or self.stopping:
            # Dying of the signal we sent (a worker still booting keeps SIGTERM's default
            # action) is as expected as exiting 0.
            if code != 0 and child.stop_signal != 0 and code == -child.stop_signal:
                how = f"stopped by {signal.Signals(child.stop_signal).name}"
            level = logging.INFO if code == 0 or how.startswith("stopped") else logging.WARNING
            logger.log(level, "%s (pid %d) %s", child.name, child.pid, how)
            return
        now = self.clock()
        retry = child.ready or child.timed_out or (code < 0 and self._was_up(child))
        if code == ExitCode.BOOT_ERROR or not retry:
            # A child that fails before it is up will fail again: halt instead of looping
            # (gunicorn's WORKER_BOOT_ERROR). A stalled boot (watchdog) is retried below, and
            # so is a replacement killed by a signal while booting (the OOM killer, an
            # operator): its slot served before, so the signal is no verdict on the config.
            reason = child.boot_error or child.error or how
            if (child.kind == "worker" and self.serving is not None
                    and child.generation == self.current.number
                    and self.current is not self.serving):  # fmt: skip
                logger.error("reload failed: %s of generation %d could not start: %s; "
                             "keeping generation %d", child.name, child.generation, reason,
                             self.serving.number)  # fmt: skip
                self._abandon(self.current, "its reload failed")
                self.current = self.serving
                return
            raise HaltServer(f"{child.name} could not start: {reason}", ExitCode.BOOT_ERROR)
        if child.timed_out:
            reason = "timeout"
        elif code < 0:
            reason = "signal"
        else:
            reason = "crash" if code else "exit"
        oom = code == -signal.SIGKILL and not child.timed_out
        hint = " (perhaps out of memory?)" if oom else ""
        logger.error("%s (pid %d) %s%s", child.name, child.pid, how, hint)
        if child.kind == "worker":
            self.restarts[(child.slot, reason)] += 1
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - CRASH_WINDOW:
            self.crashes.popleft()
        if len(self.crashes) > CRASH_LIMIT:
            raise HaltServer(f"{len(self.crashes)} crashes within {CRASH_WINDOW:g}s: giving up",
                             ExitCode.CRASH_LOOP)  # fmt: skip
        state = self._slot(child.key)
        if now - child.started >= HEALTHY_AFTER:
            state.crashes = 0
        delay = min(BACKOFF_BASE * 2**state.crashes, BACKOFF_MAX)
        state.crashes += 1
        state.next_start = now + delay
        if child.kind != "worker" or child.generation == self.current.number:
            logger.info("restarting %s in %.1fs", child.name, delay)

    def _murder_stalled(self) -> None:
        """Abort workers whose loop fell silent; SIGKILL what outstays a deadline."""
        now = self.clock()
        for child in list(self.children.values()):
            if child.kill_at is not None and now >= child.kill_at:
                logger.error("%s (pid %d) did not exit in time: SIGKILL", child.name, child.pid)
                _kill(child.pid, signal.SIGKILL)
                child.kill_at = None
                continue
            if child.kind != "worker" or child.timed_out or child.stopping:
                continue  # a draining worker no longer ticks: kill_at bounds it instead
            if child.config is None:
                continue
            limit = child.config.worker_timeout
            if not child.ready:
                limit = max(limit, BOOT_TIMEOUT)
            silent = now - child.last_beat
            if silent > limit:
                logger.error("%s (pid %d) sent no heartbeat for %.1fs: aborting it",
                             child.name, child.pid, silent)  # fmt: skip
                child.timed_out = True
                _kill(child.pid, signal.SIGABRT)
                child.kill_at = now + KILL_AFTER_ABORT

    def _retire(self, child: Child, timeout: float | None = None) -> None:
        """Ask a child to stop (SIGTERM: drain and exit); SIGKILL it if it takes too long."""
        if child.stopping:
            return
        child.stopping = True
        if timeout is None:
            timeout = (child.config or self.config).graceful_timeout + STOP_GRACE
        child.kill_at = self.clock() + timeout
        child.stop_signal = signal.SIGTERM
        _kill(child.pid, signal.SIGTERM)

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
            logger.info("serving DNS on %s udp/%d tcp/%d with %d workers; acl: %s; %s",
                        gen.config.listen, gen.udp_port, gen.tcp_port, gen.size,
                        acl.describe(gen.config.acl),
                        ratelimit.describe(gen.config.ratelimit))  # fmt: skip
            return
        logger.info("worker generation %d serves: retiring generation %d", gen.number,
                    old.number)  # fmt: skip
        old.close_prebound()
        for child in self.children.values():
            if child.kind == "worker" and child.generation != gen.number:
                self._retire(child)
        rules = self._live("rules")
        if rules is not None and gen.config.rules.enabled and self.ports_path is not None:
            # New ports (if any) through the ports file, then SIGHUP: it re-reads the config
            # and reconciles, moving the DNAT without removing it.
            write_state(self.ports_path, {"udp_port": gen.udp_port, "tcp_port": gen.tcp_port},
                        echo=False)  # fmt: skip
            _kill(rules.pid, signal.SIGHUP)

    def _state(self) -> dict[str, Any] | None:
        gen = self.serving
        if gen is None:
            return None
        workers = sorted((c for c in self._workers(gen.number) if c.ready and not c.stopping),
                         key=lambda c: c.slot)  # fmt: skip
        state: dict[str, Any] = {
            "udp_port": gen.udp_port,
            "tcp_port": gen.tcp_port,
            "listen": gen.config.listen,
            "pid": os.getpid(),
            "ready": bool(workers),
            "workers": [c.pid for c in workers],
            "served": [c.served for c in workers],
            "generation": gen.number,
        }
        if self.metrics_port is not None:
            state["metrics_port"] = self.metrics_port
        return state

    def _publish(self) -> None:
        """Rewrite the state file when the workers change (echoed on stdout, fsynced), and at
        most once a second for the served counts; send the status datagram."""
        self._send_status()
        state = self._state()
        if state is None or self.stopping or state == self.published:
            return
        if self.published is None and self.config.metrics.listen and self.metrics_port is None:
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
        self.status.send(supervisor_message(
            os.getpid(), self.current.size, len(workers), sum(c.ready for c in workers),
            restarts, self.stopping, self.serving is not None and not self.stopping))  # fmt: skip

    # -----------------------------------------------------------------------------------
    # Shutdown

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
                _kill(child.pid, signal.SIGQUIT)
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
                    logger.warning("%s while stopping: killing the children now",
                                   signal.Signals(sig).name)  # fmt: skip
                    fast = True
                    for child in self.children.values():  # at once: nothing timed out
                        child.stop_signal, child.kill_at = signal.SIGKILL, None
                        _kill(child.pid, signal.SIGKILL)
            self._reap()
            self._murder_stalled()
            self._send_status()  # /health stays 200 (and /ready 503) for the whole drain
        return fast

    def _unpublish(self) -> None:
        """Leave a state file that no longer says ready (its pid is about to be gone)."""
        if self.published is None:
            return
        state = {**self.published, "ready": False, "workers": [], "served": []}
        try:
            write_state(self.state_file, state, echo=False)
        except OSError as e:
            logger.error("cannot write the state file %s: %s", self.state_file, e)

    def _cleanup(self) -> None:
        self._unpublish()
        for gen in (self.current, self.serving):
            if gen is not None:
                gen.close_prebound()
        for child in self.children.values():  # only after an error in the loop itself
            _kill(child.pid, signal.SIGKILL)
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

    def _workers(self, generation: int) -> Iterable[Child]:
        return (c for c in self.children.values()
                if c.kind == "worker" and c.generation == generation)  # fmt: skip

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


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
