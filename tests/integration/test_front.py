"""The UDP fast lane (fastdns.front): a repeated query form is answered with the reply made for
it this second, and every such hit is counted exactly as the full path counts it.

Driven through real loopback UDP sockets: a client socket sends, the test runs the server's
read callback (``UDPServer._on_readable``) itself, and the client reads the reply. The clock is
fake (``time.monotonic`` patched), so TTL seconds, prefetch and expiry are exact."""

from __future__ import annotations

import asyncio
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
from fastdns.resolve.cache.front import Front, FrontTable
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import ServerState, UDPServer

T0 = 5000.0
CLIENT = ("127.0.0.1", 0)


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.step = 0.0  # added after every read: a slow hit

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


class Served(UDPServer):
    """The server under test with its client socket."""

    client: socket.socket
    loop: asyncio.AbstractEventLoop

    def ask(self, data: bytes, expect_reply: bool = True) -> bytes | None:
        assert self.sock is not None
        self.client.sendto(data, self.sock.getsockname())
        self._on_readable()  # what the loop calls when the socket is readable
        try:
            return self.client.recv(65535)
        except TimeoutError:
            assert not expect_reply, "no reply sent"
            return None


@pytest.fixture(name="clock")
def _clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    return clock


def make_server(front: bool = True, **cache: Any) -> Served:
    config = build_config(
        {
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "fallback": [],
                "hosts_file": "/nonexistent",
                "cache": {"prefetch": 0, **cache},
            }
        }
    )
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    pipeline = Pipeline(config, loop, stats, Forwarder(loop, stats))
    assert pipeline.cache is not None
    if not front:
        pipeline.cache.front.capacity = 0  # every form is evicted as it is installed
    server = Served(ServerState(config, pipeline, stats))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    server.start(loop, sock)  # registers the reader; the test calls it instead of the loop
    server.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.client.bind(CLIENT)
    server.client.settimeout(0.5)
    servers.append(server)
    return server


servers: list[Served] = []


@pytest.fixture(autouse=True)
def _close_servers() -> Iterator[None]:
    yield
    while servers:
        server = servers.pop()
        server.close()
        server.client.close()
        assert server.loop is not None
        server.loop.close()


@pytest.fixture(name="server")
def _server(clock: Clock) -> Iterator[Served]:
    yield make_server()


def query(name: str = "www.example.com", qid: int = 1, edns: bool = False) -> bytes:
    return dns.message.make_query(name, "A", id=qid, use_edns=0 if edns else False).to_wire()


def store(server: Served, name: str = "www.example.com", ttl: int = 300) -> None:
    """Put an upstream's answer for ``name`` in the cache, as the forward path does."""
    msg = dns.message.from_wire(query(name))
    r = dns.message.make_response(msg)
    r.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", "192.0.2.7"))
    cache = server.state.cache
    assert cache is not None
    cache.admit(wire.parse_query(query(name)), r.to_wire(), "forward", None, time.monotonic())


def ask(server: Served, data: bytes) -> dns.message.Message:
    reply = server.ask(data)
    assert reply is not None
    return dns.message.from_wire(reply)


def fronts(server: Served) -> dict[bytes, Front]:
    return server.front


# ------------------------------------------------------------------------------ answers


def test_a_repeated_form_is_answered_from_the_fast_lane(server: Served, clock: Clock) -> None:
    store(server)
    first = server.ask(query(qid=1))  # the full path: parse, cache hit, form kept
    assert first is not None and len(fronts(server)) == 1
    f = next(iter(fronts(server).values()))
    again = server.ask(query(qid=77))
    assert f.n == 1, "not answered by the fast lane"
    assert again is not None and again[:2] == b"\x00\x4d" and again[2:] == first[2:]
    assert dns.message.from_wire(again).answer[0].ttl == 300


def test_other_flags_or_edns_are_other_forms(server: Served, clock: Clock) -> None:
    store(server)
    ask(server, query())
    plain = ask(server, query())
    with_edns = ask(server, query(edns=True))
    assert plain.edns < 0 and with_edns.edns == 0  # OPT only for the client that sent one
    assert len(fronts(server)) == 2


def test_ttl_counts_down_when_the_second_changes(server: Served, clock: Clock) -> None:
    store(server)
    clock.now = T0 + 0.2
    ask(server, query())
    clock.now = T0 + 0.9
    assert ask(server, query()).answer[0].ttl == 300
    clock.now = T0 + 1.0  # the form's reply is out of date: rendered again, kept again
    assert ask(server, query()).answer[0].ttl == 299
    clock.now = T0 + 1.5
    assert ask(server, query()).answer[0].ttl == 299
    clock.now = T0 + 299.5
    assert ask(server, query()).answer[0].ttl == 1


def test_an_expired_entry_is_not_answered_by_the_fast_lane(clock: Clock) -> None:
    server = make_server(serve_stale=0)
    store(server, ttl=2)
    ask(server, query())
    clock.now = T0 + 1.5
    assert ask(server, query()).answer[0].ttl == 1
    clock.now = T0 + 2.0
    spawned: list[Any] = []
    server.state.spawn = spawned.append  # type: ignore[method-assign]
    server.ask(query(), expect_reply=False)  # a miss now: goes to the forward path
    assert len(spawned) == 1 and not fronts(server)
    spawned[0].close()


def test_prefetch_is_not_skipped_by_the_fast_lane(clock: Clock) -> None:
    server = make_server(prefetch=1, prefetch_percent=10)
    store(server, ttl=100)  # prefetch from T0 + 90 (10 % of the TTL left)
    refreshed: list[wire.Query] = []
    cache = server.state.cache
    assert cache is not None
    cache.refresh = refreshed.append
    clock.now = T0 + 89.5
    ask(server, query())
    f = next(iter(fronts(server).values()))
    assert f.until == T0 + 90  # not the end of the second's TTL: prefetch is due then
    clock.now = T0 + 89.9
    ask(server, query())
    assert refreshed == []
    clock.now = T0 + 90.1
    ask(server, query())
    assert [q.name for q in refreshed] == ["www.example.com."]


def test_draining_empties_the_fast_lane(server: Served, clock: Clock) -> None:
    store(server)
    ask(server, query())
    server.state.draining = True
    assert server.ask(query(), expect_reply=False) is None
    assert not fronts(server)


def test_clearing_the_cache_empties_the_fast_lane(server: Served, clock: Clock) -> None:
    store(server)
    ask(server, query())
    cache = server.state.cache
    assert cache is not None
    cache.clear()  # resolv.conf or the hosts file changed
    spawned: list[Any] = []
    server.state.spawn = spawned.append  # type: ignore[method-assign]
    server.ask(query(), expect_reply=False)
    assert len(spawned) == 1
    spawned[0].close()


# ------------------------------------------------------------------------------ accounting


def traffic(server: Served, clock: Clock) -> None:
    """Hits on two names over three seconds, with and without EDNS, some slow."""
    store(server, "a.example.com")
    store(server, "b.example.com", ttl=60)
    for second in range(3):
        clock.now = T0 + second + 0.1
        for i in range(20):
            ask(server, query("a.example.com", qid=i))
            ask(server, query("b.example.com", qid=i, edns=i % 2 == 0))
        clock.step = 0.001  # hits that take a millisecond each
        ask(server, query("a.example.com"))
        clock.step = 0.0


def counted(server: Served) -> tuple[dict[Any, int], dict[Any, tuple[list[int], int]]]:
    server.state.accounting.flush_fronts()
    stats = server.state.stats
    counters = {k: v for k, v in stats.counters.items() if v}
    histograms = {k: (h.counts, h.n) for k, h in stats.histograms.items()}
    return counters, histograms


def test_fast_lane_hits_are_counted_as_the_full_path_counts_them(clock: Clock) -> None:
    fast, full = make_server(), make_server(front=False)
    traffic(fast, clock)
    clock.now = T0
    traffic(full, clock)
    assert len(fronts(fast)) == 3 and not fronts(full)
    fast_counters, fast_histograms = counted(fast)
    full_counters, full_histograms = counted(full)
    assert fast_counters == full_counters
    assert fast_counters["requests", "udp", "A"] == 3 * 41
    assert fast_counters["cache_hits", "success"] == 3 * 41
    assert fast_counters["responses", "NOERROR", "cache"] == 3 * 41
    assert fast_histograms == full_histograms
    duration = fast.state.stats.histograms["duration", "A"]
    assert duration.n == 3 * 41 and sum(duration.counts[1:]) == 3  # the slow ones
    assert counted(fast)[0] == fast_counters  # a second flush adds nothing


def test_hits_on_replaced_or_evicted_forms_are_still_counted(clock: Clock) -> None:
    server = make_server()
    cache = server.state.cache
    assert cache is not None
    cache.front.capacity = 1
    store(server, "a.example.com")
    store(server, "b.example.com")
    for name in ("a.example.com", "a.example.com", "b.example.com", "b.example.com"):
        ask(server, query(name))  # b's form evicts a's, with one fast hit on it
    clock.now = T0 + 1.5
    ask(server, query("b.example.com"))  # rendered again: replaces b's form
    cache.clear()
    counters, _ = counted(server)
    assert counters["requests", "udp", "A"] == 5 and counters["cache_hits", "success"] == 5


@pytest.mark.parametrize(("window", "prefetched"), [(120, True), (60, False)])
def test_fast_hits_make_an_entry_popular_for_prefetch(
    clock: Clock, window: int, prefetched: bool
) -> None:
    server = make_server(prefetch=5, prefetch_percent=10, prefetch_duration=window)
    refreshed: list[wire.Query] = []
    cache = server.state.cache
    assert cache is not None
    cache.refresh = refreshed.append
    store(server, ttl=100)
    for _ in range(6):
        ask(server, query())
    server.state.accounting.flush_fronts()  # a tick
    clock.now = T0 + 95  # 95 s after those hits: within a 120 s window, not a 60 s one
    ask(server, query())
    assert len(refreshed) == (1 if prefetched else 0)


# ------------------------------------------------------------------------------ the table


def test_table_retires_counted_forms_once() -> None:
    table = FrontTable(capacity=2)
    q = wire.parse_query(query())
    fs = [Front(q, None, b"", 1.0) for _ in range(4)]
    fs[0].n = 1
    table.install(b"a", fs[0])
    table.install(b"a", fs[1])  # replaces a counted form: retired
    table.install(b"b", fs[2])
    fs[2].late = 1
    table.install(b"c", fs[3])  # evicts a (fs[1], no hits: dropped), then nothing else
    assert list(table.forms) == [b"b", b"c"]
    assert list(table.counted()) == [fs[0], fs[2]]
    table.clear()
    assert list(table.counted()) == [fs[2]]
    assert list(table.counted()) == []
