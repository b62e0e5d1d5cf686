"""fastdns.files.GraceHold: an empty or unreadable read of a config file is held for a grace
period, logged once, and acted on when it lasts (clock injected; no sleeping)."""

from __future__ import annotations

import logging

import pytest

from fastdns.system.files import FILE_GRACE, GraceHold


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def hold(clock: Clock) -> GraceHold:
    return GraceHold("/x/resolv.conf", "nameservers", grace=3.0, clock=clock)


def test_the_first_read_is_acted_on_whatever_it_is() -> None:
    clock = Clock()
    assert hold(clock).check(False) is True  # nothing to keep at start
    h = hold(clock)
    assert h.check(True) is True and not h.holding


def test_a_blank_shorter_than_the_grace_is_held(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    h = hold(clock)
    assert h.check(True)
    caplog.set_level(logging.INFO, "fastdns.system.files")
    for _ in range(3):  # polls during the blank
        assert h.check(False) is False
        assert h.holding
        clock.now += 0.9
    assert h.check(True) is True and not h.holding
    held = [r for r in caplog.records if "empty or unreadable" in r.getMessage()]
    assert len(held) == 1 and held[0].levelno == logging.WARNING  # once, not per poll
    assert "keeping its previous nameservers for up to 3s" in held[0].getMessage()
    assert sum("usable again" in r.getMessage() for r in caplog.records) == 1


def test_a_blank_that_outlasts_the_grace_is_acted_on_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    h = hold(clock)
    h.check(True)
    caplog.set_level(logging.WARNING, "fastdns.system.files")
    assert h.check(False) is False
    clock.now += 2.999
    assert h.check(False) is False
    clock.now += 0.001
    assert h.check(False) is True and not h.holding  # given up: act as before
    assert h.check(False) is True  # and later reads of the same too, without a new wait
    assert sum("still empty" in r.getMessage() for r in caplog.records) == 1
    # Usable again, then blank again: a new episode with a new grace.
    assert h.check(True) is True
    assert h.check(False) is False and h.holding


def test_the_default_grace_covers_an_in_place_rewrite_and_a_poll() -> None:
    assert 2.0 <= FILE_GRACE <= 5.0  # docs/configuration.md, "Files rewritten in place"


def test_silent_hold_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    h = GraceHold("/x/hosts", "entries", clock=clock, log=False)
    caplog.set_level(logging.DEBUG, "fastdns.system.files")
    h.check(True)
    assert h.check(False) is False
    clock.now += FILE_GRACE
    assert h.check(False) is True
    assert caplog.records == []
