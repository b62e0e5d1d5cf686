"""What stats recording costs on the per-query path (pytest-benchmark; reported, not asserted).

Three numbers: ``ServerState.record`` alone, and the whole UDP ``datagram_received`` path for
a static answer (parse, answer, build, send to a null transport) with recording on and off.
Bounded rounds keep this to well under a second; compare the means in the benchmark table.

    python -m pytest bench/micro/test_stats_overhead.py -q   # (moved from tests/unit: it
                                                             # measures, it proves nothing)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import pytest

from fastdns.config.load import build_config
from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import ServerState, UDPServer

ROUNDS, ITERATIONS = 20, 2000
ADDR = ("127.0.0.1", 5353)


class NullTransport:
    def sendto(self, data: bytes, addr: Any) -> None:
        pass


@pytest.fixture(name="server")
def _server() -> Iterator[UDPServer]:
    config = build_config(
        {
            "hostResolver": {"hosts": {"static.test": "10.0.0.1"}},
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "fallback": [],
                "hosts_file": "/nonexistent",
                # the static path itself, not a cache hit
                "cache": {"enabled": False},
            },
        }
    )
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    pipeline = Pipeline(config, loop, stats, Forwarder(loop, stats))
    server = UDPServer(ServerState(config, pipeline, stats))
    server.connection_made(NullTransport())
    yield server
    loop.close()


QUERY = dns.message.make_query("static.test", "A", use_edns=0).to_wire()


def run(benchmark: Any, fn: Any) -> None:
    benchmark.group = "stats-overhead"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)


def test_record_alone(benchmark: Any, server: UDPServer) -> None:
    state = server.state
    q = wire.parse_query(QUERY)
    res = state.pipeline.answer_now(q)
    assert res is not None
    t0 = time.monotonic()
    run(benchmark, lambda: state.accounting.record("udp", q, res, len(QUERY), t0))
    assert state.stats.counters["requests", "udp", "A"] >= 1  # once with --benchmark-disable


def test_udp_static_path_with_stats(benchmark: Any, server: UDPServer) -> None:
    run(benchmark, lambda: server.datagram_received(QUERY, ADDR))
    assert server.state.stats.counters["requests", "udp", "A"] >= 1  # once with --benchmark-disable


def test_udp_static_path_without_stats(benchmark: Any, server: UDPServer) -> None:
    server.state.accounting.record = lambda *args: None  # type: ignore[method-assign]
    run(benchmark, lambda: server.datagram_received(QUERY, ADDR))
