"""The supervisor's restart policy and watchdog, driven with a fake clock and fake children
(no fork, no signal is really sent)."""

from __future__ import annotations

from typing import Any

import pytest

from fastdns.config.schema import Config
from fastdns.errors import ExitCode, HaltServer
from fastdns.supervise import arbiter as sup
from fastdns.supervise import children, exits, generations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="kills")
def _kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(children, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def make(clock: Clock, **config: Any) -> sup.Supervisor:
    s = sup.Supervisor(Config(**config), workers=2, clock=clock)
    s.serving = s.current
    return s


def child(s: sup.Supervisor, pid: int, slot: int = 0, **kwargs: Any) -> children.Child:
    c = children.Child(
        "worker",
        pid,
        -1,
        s.clock(),
        slot=slot,
        generation=s.current.number,
        config=s.config,
        last_beat=s.clock(),
        **kwargs,
    )
    s.children[pid] = c
    return c


def test_restart_delay_doubles_per_crash_up_to_the_cap_and_resets_when_healthy() -> None:
    clock = Clock()
    s = make(clock)
    delays = []
    for pid in range(100, 110):
        child(s, pid, ready=True)  # it was up: a crash, not a boot failure
        clock.now += 1  # short-lived: a crash
        s.crashes.clear()  # only the backoff here, not the crash-loop limit
        s._on_exit(s.children.pop(pid), 1)
        delays.append(round(s.slots[("worker", 0)].next_start - clock.now, 3))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
    child(s, 200, ready=True)
    clock.now += exits.HEALTHY_AFTER  # lived long enough: back to the first step
    s.crashes.clear()
    s._on_exit(s.children.pop(200), -9)
    assert s.slots[("worker", 0)].next_start - clock.now == pytest.approx(0.1)
    assert s.restarts[(0, "signal")] == 1 and s.restarts[(0, "crash")] == 10


def test_more_than_ten_crashes_in_a_minute_halt_with_crash_loop() -> None:
    clock = Clock()
    s = make(clock)
    for pid in range(100, 110):
        child(s, pid, ready=True)
        clock.now += 5
        s._on_exit(s.children.pop(pid), 1)
    child(s, 110, ready=True)
    with pytest.raises(HaltServer) as halt:
        s._on_exit(s.children.pop(110), 1)
    assert halt.value.exit_code == ExitCode.CRASH_LOOP


def test_crashes_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    s = make(clock)
    for pid in range(100, 130):
        child(s, pid, ready=True)
        clock.now += 7  # 30 crashes, but never more than 10 within 60 s
        s._on_exit(s.children.pop(pid), 1)  # would raise HaltServer past the limit
    assert s.restarts[(0, "crash")] == 30  # every one restarted, none halted the server
    assert 0 < len(s.crashes) <= 10  # the window holds only the recent ones


def test_a_boot_error_halts_with_the_workers_reason() -> None:
    clock = Clock()
    s = make(clock)
    c = child(s, 100, boot_error="cannot bind UDP 127.0.0.1:53: Permission denied")
    with pytest.raises(HaltServer) as halt:
        s._on_exit(s.children.pop(100), ExitCode.BOOT_ERROR)
    assert halt.value.exit_code == ExitCode.BOOT_ERROR
    assert halt.value.reason == f"{c.name} could not start: {c.boot_error}"


@pytest.mark.parametrize("kind", ["worker", "metrics", "rules"])
@pytest.mark.parametrize("code", [1, -11, 0], ids=["crash", "signal", "exit"])
def test_a_child_that_dies_before_it_is_up_is_a_boot_failure(kind: str, code: int) -> None:
    """gunicorn's WORKER_BOOT_ERROR for any failure before ready: it would fail again."""
    clock = Clock()
    s = make(clock)
    c = child(s, 100)
    c.kind = kind  # type: ignore[assignment]
    s._on_message(c, {"error": "ImportError: no module named x"})
    with pytest.raises(HaltServer) as halt:
        s._on_exit(s.children.pop(100), code)
    assert halt.value.exit_code == ExitCode.BOOT_ERROR
    assert halt.value.reason == f"{c.name} could not start: ImportError: no module named x"
    assert not s.crashes and not s.slots


@pytest.mark.parametrize("message", [{"ready": True}, {"metrics_port": 9100}])
def test_a_child_that_was_up_is_restarted(message: dict[str, Any]) -> None:
    clock = Clock()
    s = make(clock)
    c = child(s, 100)
    c.kind = "metrics"
    s._on_message(c, message)
    s._on_exit(s.children.pop(100), 1)
    assert s.slots[("metrics", 0)].next_start == pytest.approx(clock.now + exits.BACKOFF_BASE)


def test_a_worker_stalled_in_boot_is_retried_not_halted() -> None:
    clock = Clock()
    s = make(clock)
    c = child(s, 100)
    c.timed_out = True  # the watchdog aborted it (BOOT_TIMEOUT)
    s._on_exit(s.children.pop(100), -9)
    assert s.restarts[(0, "timeout")] == 1


def test_a_boot_error_in_a_reload_keeps_the_serving_generation(
    kills: list[tuple[int, int]],
) -> None:
    clock = Clock()
    s = make(clock)
    old = s.current
    s.current = generations.Generation(2, Config(), 0, 0, 2)
    child(s, 100, boot_error="no")
    sibling = child(s, 101, slot=1)
    s._on_exit(s.children.pop(100), ExitCode.BOOT_ERROR)
    assert s.current is old
    assert sibling.stopping and (101, 15) in kills


def test_an_expected_exit_is_not_a_crash() -> None:
    clock = Clock()
    s = make(clock)
    c = child(s, 100)
    c.stopping = True
    s._on_exit(s.children.pop(100), 0)
    assert not s.crashes and not s.restarts


def test_a_silent_worker_gets_sigabrt_then_sigkill(kills: list[tuple[int, int]]) -> None:
    clock = Clock()
    s = make(clock, worker_timeout=2.0)
    busy = child(s, 100, ready=True)
    silent = child(s, 101, slot=1, ready=True)
    clock.now += 1.9
    s._on_message(busy, {"ready": True, "served": 5})
    s._murder_stalled()
    assert kills == []
    clock.now += 0.2  # the silent one: 2.1 s without a beat
    s._murder_stalled()
    assert kills == [(101, 6)] and silent.timed_out
    clock.now += exits.KILL_AFTER_ABORT
    s._murder_stalled()
    assert kills == [(101, 6), (101, 9)]
    s._on_exit(s.children.pop(101), -9)
    assert s.restarts[(1, "timeout")] == 1


def test_a_booting_worker_gets_more_time_than_worker_timeout(
    kills: list[tuple[int, int]],
) -> None:
    clock = Clock()
    s = make(clock, worker_timeout=1.0)
    child(s, 100)  # not ready yet: imports, binding, c-ares setup
    clock.now += exits.BOOT_TIMEOUT - 0.5
    s._murder_stalled()
    assert kills == []
    clock.now += 1
    s._murder_stalled()
    assert kills == [(100, 6)]


@pytest.mark.parametrize("kind", ["worker", "metrics", "rules"])
def test_a_replacement_killed_by_a_signal_while_booting_is_restarted(kind: str) -> None:
    """The OOM killer or an operator's kill of a booting replacement is no boot failure when
    its slot was up before: the service stays up and the slot is restarted with backoff."""
    clock = Clock()
    s = make(clock)
    first = child(s, 100)
    first.kind = kind  # type: ignore[assignment]
    s._on_message(first, {"ready": True})
    s._on_exit(s.children.pop(100), 1)  # crashed while up: restarted
    replacement = child(s, 101)
    replacement.kind = kind  # type: ignore[assignment]
    s._on_exit(s.children.pop(101), -9)  # killed before it reported ready
    assert s.slots[(kind, 0)].crashes == 2 and len(s.crashes) == 2
    replacement = child(s, 102)
    replacement.kind = kind  # type: ignore[assignment]
    with pytest.raises(HaltServer) as halt:  # an exit of its own while booting still halts
        s._on_exit(s.children.pop(102), 1)
    assert halt.value.exit_code == ExitCode.BOOT_ERROR
