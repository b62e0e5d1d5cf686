"""CPU per cache hit through the real ``UDPServer._on_readable``, without system calls.

    .venv/bin/python bench/micro/gate_cost.py [--ratelimit QPS] [--source ADDR]

The server's socket is replaced by one whose ``recvfrom`` hands out the same query from
``--source`` BATCH times per wakeup (then ``BlockingIOError``) and whose ``sendto`` does
nothing, so the figure is the Python work of the fast lane alone (the ACL verdict lookup and,
with ``--ratelimit``, the token bucket included): the syscalls, several microseconds, would
hide differences of tens of nanoseconds. Prints the median of ROUNDS rounds, in us per hit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.micro.test_hotpath import QUERY, reply_wire
from fastdns.config.load import build_config
from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import BATCH, ServerState, UDPServer

ROUNDS, WAKEUPS = 30, 200


class FakeSocket:
    def __init__(self, addr: tuple[Any, ...]) -> None:
        self.item = (QUERY, addr)
        self.left = 0

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if self.left:
            self.left -= 1
            return self.item
        raise BlockingIOError

    def sendto(self, data: bytes, addr: Any) -> int:
        return len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratelimit", type=float, default=0.0)
    ap.add_argument("--source", default="127.0.0.1")
    args = ap.parse_args()
    section: dict[str, Any] = {
        "resolv_conf": "/nonexistent",
        "fallback": [],
        "hosts_file": "/nonexistent",
        "workers": 1,
    }
    if args.ratelimit:
        section["ratelimit"] = {"qps": args.ratelimit, "exempt": []}
    config = build_config({"fastdns": section})
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    server = UDPServer(
        ServerState(config, Pipeline(config, loop, stats, Forwarder(loop, stats)), stats)
    )
    cache = server.state.cache
    assert cache is not None
    cache.put(wire.parse_query(QUERY), reply_wire(QUERY), "forward", None, time.monotonic())
    addr = (args.source, 5353) if ":" not in args.source else (args.source, 5353, 0, 0)
    server.datagram_received(QUERY, addr)  # the full path once: the form is kept
    sock = FakeSocket(addr)
    server.sock = sock  # type: ignore[assignment]
    server.sendto = sock.sendto
    per_hit = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        for _ in range(WAKEUPS):
            sock.left = BATCH
            server._on_readable()
        per_hit.append((time.perf_counter() - t0) / (WAKEUPS * BATCH) * 1e6)
    server.state.accounting.flush_fronts()
    hits = server.state.stats.counters.get(("cache_hits", "success"), 0)
    print(
        f"{statistics.median(per_hit):.3f} us per hit (min {min(per_hit):.3f}); hits counted {hits}"
    )


if __name__ == "__main__":
    main()
