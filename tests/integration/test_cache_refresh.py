"""The cache's refresh path (a prefetch or a stale hit) run on an event loop: a static entry is
never forwarded."""

from __future__ import annotations

import asyncio
from typing import Any

import dns.message

from fastdns.config.load import build_config
from fastdns.dns import compose, wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.routes import RouteTable
from fastdns.resolve.pipeline import Pipeline


def make_query(name: str) -> dns.message.QueryMessage:
    return dns.message.make_query(name, "A", id=1)


def parse(msg: dns.message.Message) -> wire.Query:
    return wire.parse_query(msg.to_wire())


class CountingForwarder:
    """Stands in for upstream.Forwarder: answers NXDOMAIN (no SOA) and counts the queries."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.plan = type("Plan", (), {"source": "resolv_conf"})()
        self.routes = RouteTable()  # no per-domain routes

    async def exchange(self, q: wire.Query, deadline: float, *handed_over: Any) -> Any:
        self.asked.append(q.name)
        reply = compose.error_reply(q, wire.NXDOMAIN)
        return type("Result", (), {"reply": reply})()


def test_refreshing_a_static_entry_never_forwards_it() -> None:
    config = build_config(
        {
            "hostResolver": {"hosts": {"static.test": "10.0.0.1"}},
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "fallback": [],
                "hosts_file": "/nonexistent",
            },
        }
    )
    loop = asyncio.new_event_loop()
    try:
        forwarder = CountingForwarder()
        pipeline = Pipeline(config, loop, WorkerStats(), forwarder)  # type: ignore[arg-type]
        q = parse(make_query("static.test"))
        assert pipeline.answer_now(q) is not None and pipeline.cache is not None
        assert len(pipeline.cache.success) == 1  # cached with static_ttl
        loop.run_until_complete(pipeline._refresh(q))  # what a prefetch or stale hit starts
        other = parse(make_query("elsewhere.test"))
        loop.run_until_complete(pipeline._refresh(other))
        assert forwarder.asked == ["elsewhere.test."]
        reply = pipeline.cache.get(q, pipeline.cache.clock())
        assert reply is not None
        assert dns.message.from_wire(reply).answer[0][0].to_text() == "10.0.0.1"
    finally:
        loop.close()
