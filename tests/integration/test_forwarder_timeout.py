"""Forwarder UDP timeouts (a loop timer failing the upstream future): failover, cleanup, cancel.

No sockets: each upstream's UdpChannel gets a fake transport that answers or stays silent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dns.message
import dns.rrset

from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder, UdpChannel
from fastdns.resolve.resolvconf import UpstreamPlan

SILENT, ANSWERS = ("127.0.0.2", 53), ("127.0.0.3", 53)


class FakeTransport:
    def __init__(self, ch: UdpChannel, reply: bytes | None, delay: float = 0.0) -> None:
        self.ch, self.reply, self.sent, self.delay = ch, reply, 0, delay

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self.sent += 1
        if self.reply is not None:
            loop = asyncio.get_running_loop()
            loop.call_later(self.delay, self.ch.datagram_received, data[:2] + self.reply[2:])


def setup(loop: asyncio.AbstractEventLoop) -> tuple[Forwarder, wire.Query, dict[Any, Any]]:
    stats = WorkerStats()
    fwd = Forwarder(loop, stats, upstream_timeout=0.05, plan=UpstreamPlan((SILENT, ANSWERS), "dns"))
    query = dns.message.make_query("www.example.com.", "A", id=1)
    r = dns.message.make_response(query)
    r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "198.18.0.1"))
    transports = {}
    for server, reply in ((SILENT, None), (ANSWERS, r.to_wire())):
        ch = UdpChannel(stats, f"{server[0]}:{server[1]}")
        transports[server] = FakeTransport(ch, reply)
        ch.attach(transports[server].sendto)
        fwd.channels[server] = ch
    return fwd, wire.parse_query(query.to_wire()), transports


def test_timeout_fails_over_and_cleans_up() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fwd, q, transports = setup(loop)
        res = await fwd.exchange(q, loop.time() + 5.0)
        assert res.reply is not None and res.to == "127.0.0.3:53"
        assert transports[SILENT].sent == 1 and transports[ANSWERS].sent == 1
        assert not fwd.channels[SILENT].in_flight() and not fwd.channels[ANSWERS].in_flight()
        assert fwd.health[SILENT].fails == 1
        assert fwd.stats.histograms[("proxy_duration", "127.0.0.2:53", "timeout")].n == 1
        assert fwd.stats.histograms[("proxy_duration", "127.0.0.3:53", "NOERROR")].n == 1

    asyncio.run(main())


def test_cancel_forgets_the_pending_query() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fwd, q, transports = setup(loop)
        fwd.upstream_timeout = 30.0
        task = loop.create_task(fwd.exchange(q, loop.time() + 60.0))
        for _ in range(100):  # bounded: until the query is in flight on the silent upstream
            if transports[SILENT].sent:
                break
            await asyncio.sleep(0)
        assert fwd.channels[SILENT].in_flight()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert task.cancelled()
        assert not fwd.channels[SILENT].in_flight() and transports[ANSWERS].sent == 0

    asyncio.run(main())


def test_a_reply_later_than_the_attempt_timeout_still_answers() -> None:
    """The first attempt's reply comes after upstream_timeout, during the second
    attempt; it answers (its ID stayed valid), and nothing stays in flight afterwards."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fwd, q, transports = setup(loop)
        fwd.plan = UpstreamPlan((ANSWERS,), "dns")
        slow = transports[ANSWERS]
        slow.delay = 0.08  # upstream_timeout is 0.05: the second attempt is out by then
        res = await fwd.exchange(q, loop.time() + 5.0)
        assert res.reply is not None and res.to == "127.0.0.3:53"
        assert slow.sent == 2
        assert not fwd.channels[ANSWERS].in_flight()
        assert fwd.stats.histograms[("proxy_duration", "127.0.0.3:53", "timeout")].n == 1

    asyncio.run(main())
