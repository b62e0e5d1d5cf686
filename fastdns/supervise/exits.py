"""When a child exits or stalls: reaping, the restart backoff, the crash-loop halt, and the
watchdog that aborts a worker whose heartbeat stopped.

Runs in: the supervisor. ``ChildExits`` is part of ``arbiter.Supervisor``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter, deque
from collections.abc import Callable

from fastdns.errors import ExitCode, HaltServer
from fastdns.supervise import children
from fastdns.supervise.children import Child, SlotState
from fastdns.supervise.generations import Generation

logger = logging.getLogger("fastdns.supervise.arbiter")

BACKOFF_BASE = 0.1  # first restart delay of a slot; doubles per crash ...
BACKOFF_MAX = 10.0  # ... up to this
HEALTHY_AFTER = 30.0  # a child that lived this long resets its slot's backoff
CRASH_LIMIT = 10  # more crashes than this within CRASH_WINDOW halt the service
CRASH_WINDOW = 60.0
BOOT_TIMEOUT = 10.0  # least time a new worker gets to send its first heartbeat
KILL_AFTER_ABORT = 1.0  # a stalled worker still alive this long after SIGABRT gets SIGKILL


class ChildExits:
    """The supervisor's reaping half."""

    # Set by Supervisor.__init__ (arbiter.py).
    clock: Callable[[], float]
    children: dict[int, Child]
    slots: dict[tuple[str, int], SlotState]
    crashes: deque[float]
    restarts: Counter[tuple[int, str]]
    current: Generation
    serving: Generation | None
    stopping: bool
    # Methods of Supervisor (arbiter.py) and Generations (generations.py).
    _read_control: Callable[[Child], None]
    _was_up: Callable[[Child], bool]
    _slot: Callable[[tuple[str, int]], SlotState]
    _abandon: Callable[[Generation, str], None]

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
            if (
                child.kind == "worker"
                and self.serving is not None
                and child.generation == self.current.number
                and self.current is not self.serving
            ):
                logger.error(
                    "reload failed: %s of generation %d could not start: %s; keeping generation %d",
                    child.name,
                    child.generation,
                    reason,
                    self.serving.number,
                )
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
            raise HaltServer(
                f"{len(self.crashes)} crashes within {CRASH_WINDOW:g}s: giving up",
                ExitCode.CRASH_LOOP,
            )
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
                children.kill(child.pid, signal.SIGKILL)
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
                logger.error(
                    "%s (pid %d) sent no heartbeat for %.1fs: aborting it",
                    child.name,
                    child.pid,
                    silent,
                )
                child.timed_out = True
                children.kill(child.pid, signal.SIGABRT)
                child.kill_at = now + KILL_AFTER_ABORT


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
