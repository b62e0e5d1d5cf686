"""Micro-benchmark of the raw forward path's asyncio cost (pytest-benchmark; reported only).

    python -m pytest bench/micro/test_forward.py -q

``Forwarder.exchange`` over a fake UDP transport that answers on the next loop iteration: no
sockets, so what is measured is the Python and asyncio work per forwarded query (the task,
the upstream future, its timeout, the ID table, the question check). Each benchmark round
runs a batch of sequential exchanges on one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rrset
import pytest

from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder, UdpChannel
from fastdns.resolve.resolvconf import UpstreamPlan

ROUNDS, BATCH = 20, 500
SERVER = ("127.0.0.2", 53)


class EchoTransport:
    """Answers every query with a prepared reply carrying the query's ID, one tick later."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ch: UdpChannel, reply: bytes) -> None:
        self.loop, self.ch, self.reply = loop, ch, reply

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.loop.call_soon(self.ch.datagram_received, data[:2] + self.reply[2:])


@pytest.fixture(name="forward")
def _forward() -> Iterator[tuple[asyncio.AbstractEventLoop, Forwarder, wire.Query]]:
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    fwd = Forwarder(loop, stats, plan=UpstreamPlan((SERVER,), "dns"))
    query = dns.message.make_query("www.example.com.", "A", id=1)
    r = dns.message.make_response(query)
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "198.18.0.1"))
    ch = UdpChannel(stats, "127.0.0.2:53")
    ch.attach(EchoTransport(loop, ch, r.to_wire()).sendto)
    fwd.channels[SERVER] = ch
    yield loop, fwd, wire.parse_query(query.to_wire())
    loop.close()


def test_forward_exchange(benchmark: Any, forward: Any) -> None:
    loop, fwd, q = forward

    async def batch() -> None:
        for _ in range(BATCH):
            deadline = loop.time() + 5.0
            res = await loop.create_task(fwd.exchange(q, deadline))  # one Task per query
            assert res.reply is not None

    benchmark.group = "forward"
    benchmark.extra_info["queries_per_round"] = BATCH
    benchmark.pedantic(lambda: loop.run_until_complete(batch()), rounds=ROUNDS, warmup_rounds=1)
