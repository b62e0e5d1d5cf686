"""The forwarding state machine (fastdns/resolve/forward/attempts.py), pure: every transition.

Each case is a script of events and the step expected after each: (event, expected), where an
event is ("start",), ("reply", seq, rcode, tc), ("error", seq), ("timeout",) at a given time,
and the expectation is (step, server, seq) or (step,) for WAIT and GIVE_UP, with ``until``
checked where it matters.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastdns.dns import wire
from fastdns.resolve.forward.attempts import (
    DONE,
    DOWN_FOR,
    GIVE_UP,
    MAX_FAILS,
    TCP,
    UDP,
    WAIT,
    Attempts,
    Health,
    order_servers,
)

A, B, C = ("127.0.0.2", 53), ("127.0.0.3", 53), ("127.0.0.4", 53)
OK, SF, REF, NX = wire.NOERROR, wire.SERVFAIL, wire.REFUSED, wire.NXDOMAIN
T, DL = 1.0, 10.0  # upstream_timeout, deadline (the clock starts at 0)


def run(m: Attempts, script: list[tuple[float, tuple[Any, ...], tuple[Any, ...]]]) -> None:
    for i, (now, event, want) in enumerate(script):
        kind = event[0]
        if kind == "start":
            step = m.start(now)
        elif kind == "reply":
            step = m.on_reply(event[1], event[2], event[3], now)
        elif kind == "error":
            step = m.on_error(event[1], now)
        else:
            step = m.on_timeout(now)
        got: tuple[Any, ...] = (step,) if step in (WAIT, GIVE_UP) else (step, m.server, m.seq)
        assert got == want[: len(got)], f"step {i}: {event} -> {got}, want {want}"
        assert m.step == step
        if len(want) > len(got):
            assert m.until == pytest.approx(want[-1]), f"step {i}: until {m.until}"


CASES: dict[str, tuple[tuple[tuple[str, int], ...], int, list[Any]]] = {
    "first server answers": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0, T)),
            (0.1, ("reply", 0, OK, False), (DONE, A, 0)),
        ],
    ),
    "NXDOMAIN is an answer": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, NX, False), (DONE, A, 0)),
        ],
    ),
    "timeout: next server, then the next round": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0, T)),
            (1.0, ("timeout",), (UDP, B, 1, 2.0)),
            (2.0, ("timeout",), (UDP, A, 2, 3.0)),
            (3.0, ("timeout",), (UDP, B, 3)),
            (4.0, ("timeout",), (WAIT, DL)),  # late replies may still come until the deadline
            (DL, ("timeout",), (GIVE_UP,)),
        ],
    ),
    "a late reply after a timeout answers": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (UDP, B, 1)),
            (1.5, ("reply", 0, OK, False), (DONE, A, 0)),
        ],
    ),
    "a late reply answers while waiting for late replies": (
        (A,),
        1,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (WAIT, DL)),
            (5.0, ("reply", 0, OK, False), (DONE, A, 0)),
        ],
    ),
    "SERVFAIL: next server, never asked again": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, SF, False), (UDP, B, 1, 1.1)),
            (1.1, ("timeout",), (UDP, B, 2)),  # round 2 skips A
            (2.1, ("timeout",), (WAIT, DL)),
        ],
    ),
    "REFUSED everywhere: give up without waiting": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, REF, False), (UDP, B, 1)),
            (0.2, ("reply", 1, REF, False), (GIVE_UP,)),
        ],
    ),
    "a late SERVFAIL: keep waiting for the current attempt": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (UDP, B, 1, 2.0)),
            (1.2, ("reply", 0, SF, False), (WAIT, 2.0)),
            (2.0, ("timeout",), (UDP, B, 2)),  # round 2: A refused
        ],
    ),
    "socket error: next server, asked again next round": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.0, ("error", 0), (UDP, B, 1)),
            (0.1, ("error", 1), (UDP, A, 2)),
            (0.2, ("error", 2), (UDP, B, 3)),
            (0.3, ("error", 3), (GIVE_UP,)),  # nothing outstanding: no wait
        ],
    ),
    "a late error: keep waiting": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (UDP, B, 1, 2.0)),
            (1.5, ("error", 0), (WAIT, 2.0)),
        ],
    ),
    "TC: the same server over TCP": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, OK, True), (TCP, A, 1, DL)),
            (0.2, ("reply", 1, OK, False), (DONE, A, 1)),
        ],
    ),
    "TC then TCP fails: next server over UDP": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, OK, True), (TCP, A, 1)),
            (0.5, ("error", 1), (UDP, B, 2, 1.5)),
        ],
    ),
    "TC then TCP SERVFAIL: that server is done": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (0.1, ("reply", 0, OK, True), (TCP, A, 1)),
            (0.2, ("reply", 1, SF, False), (UDP, B, 2)),
            (1.2, ("timeout",), (UDP, B, 3)),
        ],
    ),
    "a late TC whose TCP fails: back to the current attempt": (
        (A, B),
        2,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (UDP, B, 1, 2.0)),
            (1.1, ("reply", 0, OK, True), (TCP, A, 2)),
            (1.3, ("error", 2), (WAIT, 2.0)),
            (1.4, ("reply", 1, OK, False), (DONE, B, 1)),
        ],
    ),
    "the attempt's wait ends at the deadline": (
        (A, B),
        2,
        [
            (DL - 0.5, ("start",), (UDP, A, 0, DL)),
            (DL, ("timeout",), (GIVE_UP,)),  # under a millisecond left
        ],
    ),
    "no server": (
        (),
        2,
        [
            (0.0, ("start",), (GIVE_UP,)),
        ],
    ),
    "attempts 1: one round": (
        (A, B),
        1,
        [
            (0.0, ("start",), (UDP, A, 0)),
            (1.0, ("timeout",), (UDP, B, 1)),
            (2.0, ("timeout",), (WAIT, DL)),
        ],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_transitions(name: str) -> None:
    servers, rounds, script = CASES[name]
    run(Attempts(servers, {}, rounds, T, DL), script)


def test_down_servers_are_asked_last_and_the_order_is_taken_per_round() -> None:
    health = {A: Health(MAX_FAILS, 0.0)}
    m = Attempts((A, B, C), health, 2, T, DL)
    run(
        m,
        [
            (0.0, ("start",), (UDP, B, 0)),
            (1.0, ("timeout",), (UDP, C, 1)),
            (2.0, ("timeout",), (UDP, A, 2)),
        ],
    )
    health.clear()  # A answered another query meanwhile: first again in round 2
    run(m, [(3.0, ("timeout",), (UDP, A, 3)), (4.0, ("timeout",), (UDP, B, 4))])


def test_order_servers() -> None:
    assert order_servers((A, B), {}, 0.0) == [A, B]
    assert order_servers((A, B), {A: Health(MAX_FAILS - 1, 0.0)}, 0.0) == [A, B]
    assert order_servers((A, B, C), {A: Health(MAX_FAILS, 0.0)}, 1.0) == [B, C, A]
    assert order_servers((A, B), {A: Health(MAX_FAILS, 0.0)}, DOWN_FOR) == [A, B]  # up again
