"""The TCP slot policy (fastdns.tcpslots), the TCP config keys and the close-reason labels."""

from __future__ import annotations

import pytest

from fastdns.config.load import build_config
from fastdns.errors import ConfigError
from fastdns.metrics.definitions import TCP_CLOSE_REASONS
from fastdns.serve.tcp import CLOSE_REASONS
from fastdns.serve.tcpslots import Admission, TCPSlots


class Conn:
    def __init__(self, name: str, pending: int = 0) -> None:
        self.name, self.pending = name, pending

    def __repr__(self) -> str:
        return self.name


def busy(conn: Conn) -> bool:
    return conn.pending > 0


def filled(limit: int, per_source: int, *specs: tuple[str, str, int]) -> TCPSlots[Conn]:
    slots: TCPSlots[Conn] = TCPSlots(limit, per_source)
    for name, source, pending in specs:
        slots.add(Conn(name, pending), source)
    return slots


def by_name(slots: TCPSlots[Conn], name: str) -> Conn:
    return next(c for c in slots if c.name == name)


def test_below_the_limits_everything_is_admitted() -> None:
    slots = filled(3, 2, ("a", "10.0.0.1", 0), ("b", "10.0.0.2", 0))
    assert slots.consider("10.0.0.1", busy) == Admission(True)
    assert len(slots) == 2 and slots.count("10.0.0.1") == 1


def test_when_full_the_idlest_idle_connection_makes_room() -> None:
    slots = filled(3, 3, ("a", "s1", 1), ("b", "s2", 0), ("c", "s3", 0))
    verdict = slots.consider("s4", busy)
    assert verdict.admit and verdict.victim is by_name(slots, "b") and verdict.reason == "evicted"
    slots.touch(by_name(slots, "b"))  # b completed a query: c is the idlest now
    assert slots.consider("s4", busy).victim is by_name(slots, "c")


def test_when_every_connection_is_busy_the_new_one_is_refused() -> None:
    slots = filled(2, 2, ("a", "s1", 1), ("b", "s2", 3))
    assert slots.consider("s3", busy) == Admission(False, None, "max_connections")


def test_one_source_makes_room_among_its_own_connections() -> None:
    slots = filled(10, 2, ("a", "s1", 0), ("x", "s2", 0), ("b", "s1", 0))
    verdict = slots.consider("s1", busy)
    assert verdict.victim is by_name(slots, "a") and verdict.reason == "per_source"
    assert slots.consider("s2", busy) == Admission(True)  # another source is not limited
    by_name(slots, "a").pending = by_name(slots, "b").pending = 1
    assert slots.consider("s1", busy) == Admission(False, None, "per_source")


def test_discard_forgets_a_connection_once() -> None:
    slots = filled(3, 3, ("a", "s1", 0), ("b", "s1", 0))
    a = by_name(slots, "a")
    slots.discard(a)
    slots.discard(a)
    slots.touch(a)  # a late touch of a closed connection changes nothing
    assert list(slots) == [by_name(slots, "b")] and slots.count("s1") == 1 and a not in slots
    slots.discard(by_name(slots, "b"))
    assert len(slots) == 0 and slots.count("s1") == 0


def test_close_reasons_are_the_metric_label_values() -> None:
    assert CLOSE_REASONS == TCP_CLOSE_REASONS


def test_tcp_defaults() -> None:
    c = build_config({})
    assert (c.tcp_max_connections, c.tcp_max_connections_per_source) == (256, 64)
    assert (c.tcp_idle_timeout, c.tcp_frame_timeout) == (10.0, 2.0)
    assert c.tcp_max_write_buffer == 256 * 1024


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("tcp_max_connections_per_source", 0),
        ("tcp_max_connections_per_source", 1.5),
        ("tcp_frame_timeout", 0),
        ("tcp_frame_timeout", "2"),
        ("tcp_frame_timeout", 61),
        ("tcp_max_write_buffer", 65536),
        ("tcp_max_write_buffer", True),
        ("tcp_max_write_buffer", 2 << 30),
    ],
)
def test_bad_tcp_limits_are_config_errors(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({"fastdns": {key: value}})
    assert str(e.value).count(f"fastdns.{key}: must be") == 1, str(e.value)
