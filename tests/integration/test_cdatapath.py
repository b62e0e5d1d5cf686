"""The compiled datapath (fastdns/serve/cdatapath.py) over a real cache and gate: the same
queries are answered and counted exactly as on the Python datapath.

Real loopback sockets and the real clock (the engine reads CLOCK_MONOTONIC itself): the test
sends from a client socket and runs the engine's read callback, as the loop would."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rrset
import pytest

from fastdns.config.load import build_config
from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import ServerState, UDPServer

cdatapath = pytest.importorskip("fastdns.serve.cdatapath")


class Side:
    """One datapath under test, its socket, its client."""

    def __init__(self, compiled: bool, **fastdns: Any) -> None:
        config = build_config(
            {
                "fastdns": {
                    "resolv_conf": "/nonexistent",
                    "fallback": [],
                    "hosts_file": "/nonexistent",
                    **fastdns,
                }
            }
        )
        self.loop = asyncio.new_event_loop()
        self.stats = WorkerStats()
        pipeline = Pipeline(config, self.loop, self.stats, Forwarder(self.loop, self.stats))
        self.state = ServerState(config, pipeline, self.stats)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.compiled = compiled
        self.spawned: list[Any] = []
        self.state.spawn = self.spawned.append  # type: ignore[method-assign]
        if compiled:
            self.path: Any = cdatapath.CDatapath(self.state, 64)
            self.path.start(self.loop, self.sock)
            self.read = self.path.engine.on_readable
        else:
            self.udp = UDPServer(self.state)
            self.udp.start(self.loop, self.sock)
            self.read = self.udp._on_readable
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(0.5)

    def ask(self, data: bytes) -> bytes | None:
        self.client.sendto(data, self.sock.getsockname())
        assert select.select([self.sock], [], [], 2)[0]
        self.read()
        if not select.select([self.client], [], [], 0.05)[0]:
            return None
        return self.client.recv(65535)

    def fold(self) -> None:
        if self.compiled:
            self.path.fold()
        else:
            self.state.accounting.flush_fronts()

    def close(self) -> None:
        if self.compiled:
            self.path.close()
        else:
            self.udp.close()
        for coro in self.spawned:
            coro.close()
        self.client.close()
        self.loop.close()


@pytest.fixture(name="sides")
def _sides() -> Iterator[list[Side]]:
    made: list[Side] = []
    yield made
    for side in made:
        side.close()


def query(name: str = "www.example.com", qid: int = 1, edns: bool = False) -> bytes:
    return dns.message.make_query(name, "A", id=qid, use_edns=0 if edns else False).to_wire()


def store(
    side: Side, name: str = "www.example.com", ttl: int = 300, at: float | None = None
) -> None:
    msg = dns.message.from_wire(query(name))
    r = dns.message.make_response(msg)
    r.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", "192.0.2.7"))
    cache = side.state.cache
    assert cache is not None
    now = time.monotonic() if at is None else at
    cache.admit(wire.parse_query(query(name)), r.to_wire(), "forward", None, now)


def answer_ttl(reply: bytes | None) -> int:
    assert reply is not None
    return int(dns.message.from_wire(reply).answer[0].ttl)


def wait_until(t: float) -> None:
    while time.monotonic() < t:  # bounded by t itself
        time.sleep(min(0.05, max(0.0, t - time.monotonic())))


def counted(side: Side) -> tuple[dict[Any, int], dict[Any, tuple[int, float]]]:
    side.fold()
    counters = {k: v for k, v in side.stats.counters.items() if v and k[0] != "datapath_batches"}
    counters = {k: v for k, v in counters.items() if k[0] not in ("datapath_datagrams",)}
    counters = {k: v for k, v in counters.items() if k[0] != "datapath_send_batches"}
    sizes = {k: (h.n, h.total) for k, h in side.stats.histograms.items() if k[0] != "duration"}
    durations = {k: (h.n, 0.0) for k, h in side.stats.histograms.items() if k[0] == "duration"}
    return counters, {**sizes, **durations}


def test_hits_are_answered_in_c_and_counted_as_on_the_python_datapath(
    sides: list[Side],
) -> None:
    python, compiled = Side(False), Side(True)
    sides += [python, compiled]
    for side in sides:
        store(side, "a.example.com")
        store(side, "b.example.com", ttl=60)
        for i in range(200):
            for name, edns in (("a.example.com", False), ("b.example.com", i % 2 == 0)):
                reply = side.ask(query(name, qid=i, edns=edns))
                assert reply is not None and reply[:2] == i.to_bytes(2, "big")
                assert dns.message.from_wire(reply).answer[0].name.to_text() == name + "."
    answered_in_c = compiled.path.engine.counters()["answered"]
    assert answered_in_c > 300, "the compiled datapath did not answer the repeats itself"
    assert counted(compiled) == counted(python)
    stats = compiled.stats.counters
    assert stats[("datapath_datagrams", "compiled")] == answered_in_c
    assert stats[("datapath_datagrams", "python")] == 400 - answered_in_c
    assert stats[("datapath_batches",)] == 400


def test_hits_on_dropped_forms_are_still_counted(sides: list[Side]) -> None:
    side = Side(True)
    sides.append(side)
    store(side)
    for i in range(5):
        assert side.ask(query(qid=i)) is not None
    cache = side.state.cache
    assert cache is not None
    cache.front.clear()  # (resolv.conf changed): C's hits not folded yet
    cache.clear()
    counters, _ = counted(side)
    assert counters[("requests", "udp", "A")] == 5
    assert counters[("responses", "NOERROR", "cache")] == 5


def test_a_denied_source_is_never_answered_in_c(sides: list[Side]) -> None:
    side = Side(True, acl={"allow": ["10.0.0.0/8"], "action": "refuse"})
    sides.append(side)
    store(side)
    front = wire.parse_query(query())
    engine = side.path.engine
    # a ready form for this query, installed directly: only the gate keeps it from C
    engine.install(front.wire[2:], b"\x81\x80" + bytes(10), time.monotonic() + 30, object())
    for i in range(3):
        reply = side.ask(query(qid=i))
        assert reply is not None and reply[3] & 0xF == wire.REFUSED
    assert engine.counters()["answered"] == 0 and engine.counters()["sources"] == 0
    assert side.stats.counters[("acl_blocked", "udp", "refuse")] == 3


def test_a_rate_limited_source_is_never_answered_in_c(sides: list[Side]) -> None:
    side = Side(True, workers=1, ratelimit={"qps": 2, "burst": 2, "exempt": [], "slip": 0})
    sides.append(side)
    store(side)
    answered = [side.ask(query(qid=i)) is not None for i in range(6)]
    assert answered[0] and not all(answered)  # the limiter, in Python, on every datagram
    assert side.path.engine.counters()["answered"] == 0
    assert side.stats.counters[("ratelimited", "drop")] >= 3


def test_draining_and_clear_empty_the_engine_too(sides: list[Side]) -> None:
    side = Side(True)
    sides.append(side)
    store(side)
    side.ask(query())
    engine = side.path.engine
    assert engine.counters()["forms"] == 1
    side.path.clear()
    assert engine.counters()["forms"] == 0
    side.ask(query())
    assert engine.counters()["forms"] == 1
    side.path.drain(stop_reading=True)
    assert engine.counters()["forms"] == 0
    assert side.ask(query(qid=9)) is None  # draining: nothing new is taken


def test_the_gate_emptied_empties_the_passing_set(sides: list[Side]) -> None:
    side = Side(True)
    sides.append(side)
    gate, engine = side.state.gate, side.path.engine
    for i in range(4096):
        gate.judge(f"127.0.{i >> 8}.{i & 255}")
    assert engine.counters()["sources"] == 4096
    gate.judge("127.1.0.1")  # full: the gate's verdicts start again, and C's set with them
    assert engine.counters()["sources"] == 1 and len(gate.verdicts) == 1


def test_close_counts_what_was_not_folded_and_is_idempotent(sides: list[Side]) -> None:
    side = Side(True)
    store(side)
    for i in range(4):
        side.ask(query(qid=i))
    side.path.close()
    side.path.close()
    counters, _ = counted(side)  # the last report folds after close
    assert counters[("requests", "udp", "A")] == 4
    side.client.close()
    side.loop.close()


# ------------------------------------------------------------------------------ TTL countdown


def test_a_hit_seconds_after_install_counts_its_ttls_down_in_c(sides: list[Side]) -> None:
    """The engine writes TTL - age into the form's reply: no trip to Python each second, and
    the same bytes and counts as the Python datapath."""
    python, compiled = Side(False), Side(True)
    sides += [python, compiled]
    stored = time.monotonic() - 0.8  # age 0 now; age 2 from stored + 2
    for side in sides:
        store(side, at=stored)
        assert answer_ttl(side.ask(query(qid=1))) == 300  # the form, installed at age 0
    engine = compiled.path.engine
    before = engine.counters()
    wait_until(stored + 2.02)
    replies = [side.ask(query(qid=2)) for side in sides]
    assert replies[0] == replies[1] and answer_ttl(replies[1]) == 298
    after = engine.counters()
    assert after["answered"] == before["answered"] + 1, "not answered in C"
    assert after["upcalls"] == before["upcalls"]
    assert counted(compiled) == counted(python)


def test_a_form_past_expiry_goes_up(sides: list[Side]) -> None:
    side = Side(True, cache={"prefetch": 0})
    sides.append(side)
    stored = time.monotonic() - 0.9
    store(side, ttl=2, at=stored)
    cache = side.state.cache
    assert cache is not None
    cache.refresh = [].append  # serve-stale's refresh: Python's, not looked at here
    assert answer_ttl(side.ask(query(qid=1))) == 2
    engine = side.path.engine
    wait_until(stored + 1.02)
    assert answer_ttl(side.ask(query(qid=2))) == 1  # counted down in C
    before = engine.counters()
    wait_until(stored + 2.02)
    side.ask(query(qid=3))  # expired: Python decides (serve-stale)
    after = engine.counters()
    assert after["answered"] == before["answered"] and after["upcalls"] == before["upcalls"] + 1


def test_a_form_goes_up_when_prefetch_is_due(sides: list[Side]) -> None:
    side = Side(True, cache={"prefetch": 1, "prefetch_percent": 50})
    sides.append(side)
    stored = time.monotonic() - 0.5
    store(side, ttl=4, at=stored)  # prefetch from stored + 2
    refreshed: list[Any] = []
    cache = side.state.cache
    assert cache is not None
    cache.refresh = refreshed.append
    assert answer_ttl(side.ask(query(qid=1))) == 4
    wait_until(stored + 1.02)
    assert answer_ttl(side.ask(query(qid=2))) == 3
    assert side.path.engine.counters()["upcalls"] == 1
    wait_until(stored + 2.02)
    assert answer_ttl(side.ask(query(qid=3))) == 2  # answered by Python, which prefetches
    assert side.path.engine.counters()["upcalls"] == 2 and len(refreshed) == 1
