"""Micro-benchmarks of the per-query hot path (pytest-benchmark; reported, never asserted).

    python -m pytest bench/micro -q          # the table; --benchmark-disable: a smoke run

Question parse, cache hit render, TTL rewrite, truncation, cache admission (the miss path's
extra cost) and a whole cache hit through ``UDPServer.datagram_received`` with a null
transport, by the fast lane (a repeated query form) and by the full path: compare means
between commits, on a quiet machine. Bounded rounds keep the file to a few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rrset
import pytest

from fastdns.config.load import build_config
from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.cache.entry import STALE, retime
from fastdns.resolve.cache.store import PacketCache
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import ServerState, UDPServer

ROUNDS, ITERATIONS = 20, 2000
ADDR = ("127.0.0.1", 5353)
NAME = "www.example.com."


def query_wire(name: str = NAME, edns: int | None = None) -> bytes:
    return dns.message.make_query(
        name, "A", payload=edns, use_edns=0 if edns else False, id=0x1234
    ).to_wire()


def reply_wire(query: bytes, n: int = 1) -> bytes:
    """An upstream's answer: ``n`` A records (n > 1: a CNAME first, as CDNs answer)."""
    r = dns.message.make_response(dns.message.from_wire(query))
    if n > 1:
        r.answer.append(dns.rrset.from_text(NAME, 300, "IN", "CNAME", "edge.example.net."))
    owner = "edge.example.net." if n > 1 else NAME
    addrs = [f"198.18.{i // 256}.{i % 256}" for i in range(1, n + 1)]
    r.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", *addrs))
    return r.to_wire()


def run(benchmark: Any, fn: Any) -> None:
    benchmark.group = "hotpath"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)


QUERY = query_wire()
QUERY_EDNS = query_wire(edns=1232)


def filled_cache(q: wire.Query, reply: bytes) -> PacketCache:
    cache = PacketCache(CacheConfig(prefetch=0), counters=WorkerStats().counters)
    cache.put(q, reply, "forward", None, time.monotonic())
    return cache


# ------------------------------------------------------------------------------ pieces


def test_parse_query(benchmark: Any) -> None:
    run(benchmark, lambda: wire.parse_query(QUERY))


def test_parse_query_with_edns(benchmark: Any) -> None:
    run(benchmark, lambda: wire.parse_query(QUERY_EDNS))


def test_cache_hit_render(benchmark: Any) -> None:
    """``PacketCache.get`` on a fresh hit: lookup, counters, one join (TTLs already current)."""
    q = wire.parse_query(QUERY)
    cache = filled_cache(q, reply_wire(QUERY))
    now = time.monotonic()
    run(benchmark, lambda: cache.get(q, now))
    assert cache.get(q, now) is not None


def test_ttl_rewrite(benchmark: Any) -> None:
    """Rewriting the TTLs of a 5-record entry in place (once a second per entry at most)."""
    q = wire.parse_query(QUERY)
    cache = filled_cache(q, reply_wire(QUERY, 4))
    entry = cache.lookup(q.key)
    assert entry is not None
    stamps = itertools.cycle((1, STALE))
    run(benchmark, lambda: retime(entry, next(stamps), 30))


def test_truncation(benchmark: Any) -> None:
    """``compose.truncate`` of a 60-record answer to 512 bytes (what an uncached reply costs)."""
    big = reply_wire(QUERY, 60)
    benchmark.group = "hotpath"
    benchmark.pedantic(lambda: compose.truncate(big, 512), rounds=ROUNDS, iterations=100)


def test_cache_hit_truncated(benchmark: Any) -> None:
    """A cache hit on that answer for a client without EDNS: the kept truncated form."""
    q = wire.parse_query(QUERY)
    cache = filled_cache(q, reply_wire(QUERY, 60))
    now = time.monotonic()
    reply = cache.get(q, now)
    assert reply is not None and len(reply) <= 512
    run(benchmark, lambda: cache.get(q, now))


def test_cache_admission(benchmark: Any) -> None:
    """``PacketCache.admit`` of a 2-record forwarded reply: what a miss pays on top."""
    q = wire.parse_query(QUERY)
    reply = reply_wire(QUERY, 2)
    cache = PacketCache(CacheConfig(), counters=WorkerStats().counters)
    now = time.monotonic()
    run(benchmark, lambda: cache.admit(q, reply, "forward", None, now))


# ------------------------------------------------------------------------------ whole path


class NullTransport:
    def sendto(self, data: bytes, addr: Any) -> None:
        pass


@pytest.fixture(name="server")
def _server() -> Iterator[UDPServer]:
    config = build_config(
        {"fastdns": {"resolv_conf": "/nonexistent", "fallback": [], "hosts_file": "/nonexistent"}}
    )
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    pipeline = Pipeline(config, loop, stats, Forwarder(loop, stats))
    server = UDPServer(ServerState(config, pipeline, stats))
    server.connection_made(NullTransport())  # type: ignore[arg-type]
    yield server
    loop.close()


def test_udp_cache_hit_fast_lane(benchmark: Any, server: UDPServer) -> None:
    """A repeated query form read from a real loopback socket and answered by the fast lane
    (fastdns.front): recvfrom, one lookup, one join, sendto; one datagram per round, so the
    two system calls are in the figure. Counts are folded later, per tick."""
    cache = server.state.cache
    assert cache is not None
    cache.put(wire.parse_query(QUERY), reply_wire(QUERY), "forward", None, time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    server.start(asyncio.new_event_loop(), sock)
    to = sock.getsockname()

    def one_query() -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                client.recv(512)
        client.sendto(QUERY, to)

    server.datagram_received(QUERY, ADDR)  # the full path once: the form is kept
    benchmark.group = "hotpath"
    benchmark.pedantic(server._on_readable, setup=one_query, rounds=ROUNDS * 100, warmup_rounds=10)
    server.state.accounting.flush_fronts()
    assert server.state.stats.counters["cache_hits", "success"] >= 2  # 2: --benchmark-disable
    assert server.loop is not None
    loop = server.loop
    server.close()
    loop.close()
    client.close()


def test_udp_cache_hit_full_path(benchmark: Any, server: UDPServer) -> None:
    """One cache hit without the fast lane: parse, lookup, render, send, record."""
    cache = server.state.cache
    assert cache is not None
    cache.front.capacity = 0  # no form is kept
    cache.put(wire.parse_query(QUERY), reply_wire(QUERY), "forward", None, time.monotonic())
    run(benchmark, lambda: server.datagram_received(QUERY, ADDR))
    assert server.state.stats.counters["cache_hits", "success"] >= 1


def test_udp_cache_hit_full_path_edns(benchmark: Any, server: UDPServer) -> None:
    cache = server.state.cache
    assert cache is not None
    cache.front.capacity = 0
    q = wire.parse_query(QUERY_EDNS)
    cache.put(q, reply_wire(QUERY_EDNS), "forward", None, time.monotonic())
    run(benchmark, lambda: server.datagram_received(QUERY_EDNS, ADDR))
    assert server.state.stats.counters["cache_hits", "success"] >= 1
