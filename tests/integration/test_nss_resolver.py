"""NssResolver (fastdns/resolve/native/nss.py) on a real event loop and thread pool, with the
getaddrinfo it calls injected: which questions it takes, the answer it writes, and each outcome
it counts (notfound, error, timeout, overload) with the pool's bound."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.name
import pytest

from fastdns.config.schema import Config
from fastdns.dns import compose, wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.native import nss
from fastdns.resolve.native.nss import NssResolver, addresses, lookup_name

V4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))
V6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%lo", 0, 0, 1))


def query(name: str, rdtype: str = "A", **kwargs: Any) -> wire.Query:
    return wire.parse_query(dns.message.make_query(name, rdtype, **kwargs).to_wire())


def run(
    getaddrinfo: Callable[..., list[tuple[Any, ...]]],
    body: Callable[[NssResolver], Any],
) -> tuple[Any, WorkerStats]:
    stats = WorkerStats()

    async def main() -> Any:
        resolver = NssResolver(Config(), asyncio.get_running_loop(), stats, getaddrinfo)
        try:
            return await body(resolver)
        finally:
            resolver.close()

    return asyncio.run(main()), stats


def test_answer_has_each_address_once_with_static_ttl() -> None:
    calls: list[tuple[Any, ...]] = []

    def gai(*args: Any) -> list[tuple[Any, ...]]:
        calls.append(args)
        return [V4, V4, V6]

    async def body(r: NssResolver) -> Any:
        return await r(query("Host.Example", "A"), r.loop.time() + 5)

    res, stats = run(gai, body)
    assert calls == [("host.example", None, socket.AF_INET, socket.SOCK_STREAM)]
    assert res is not None and res.source == "nss" and res.ttl == Config().static_ttl
    msg = dns.message.from_wire(res.reply)
    assert [(rr.ttl, [r.to_text() for r in rr]) for rr in msg.answer] == [(5, ["192.0.2.7"])]
    assert msg.question[0].name.to_text() == "Host.Example."  # the client's case
    assert stats.counters[("nss_lookups", "answered")] == 1


def test_aaaa_drops_the_scope() -> None:
    assert addresses([V4, V6], socket.AF_INET6) == [socket.inet_pton(socket.AF_INET6, "fe80::1")]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (socket.gaierror(socket.EAI_NONAME, "not known"), "notfound"),
        (socket.gaierror(socket.EAI_AGAIN, "try again"), "error"),
        (UnicodeError("label"), "error"),
    ],
)
def test_failures_keep_the_dns_answer_and_are_counted(error: Exception, outcome: str) -> None:
    def gai(*args: Any) -> list[tuple[Any, ...]]:
        raise error

    async def body(r: NssResolver) -> Any:
        return await r(query("host.example", "AAAA"), r.loop.time() + 5)

    res, stats = run(gai, body)
    assert res is None
    assert stats.counters[("nss_lookups", outcome)] == 1


def test_no_address_of_the_family_is_notfound() -> None:
    async def body(r: NssResolver) -> Any:
        return await r(query("host.example", "AAAA"), r.loop.time() + 5)

    res, stats = run(lambda *a: [V4], body)
    assert res is None and stats.counters[("nss_lookups", "notfound")] == 1


def test_deadline_and_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup past the client's deadline answers None at once (timeout) but keeps its place
    until its thread returns; with MAX_PENDING places taken, the next is not asked."""
    monkeypatch.setattr(nss, "MAX_PENDING", 2)
    release = threading.Event()
    started: list[str] = []

    def gai(name: str, *args: Any) -> list[tuple[Any, ...]]:
        started.append(name)
        release.wait(10)
        return [V4]

    async def body(r: NssResolver) -> Any:
        loop = r.loop
        first = await r(query("a.example"), loop.time() + 0.05)
        second = await r(query("b.example"), loop.time() + 0.05)
        pending = r.pending
        third = await r(query("c.example"), loop.time() + 5)
        release.set()
        limit = time.monotonic() + 5
        while r.pending and time.monotonic() < limit:
            await asyncio.sleep(0.01)
        return first, second, pending, third, r.pending

    (first, second, pending, third, after), stats = run(gai, body)
    assert (first, second, third) == (None, None, None)
    assert (pending, after) == (2, 0)
    assert started == ["a.example", "b.example"]  # c.example never reached getaddrinfo
    assert stats.counters[("nss_lookups", "timeout")] == 2
    assert stats.counters[("nss_lookups", "overload")] == 1


def test_which_questions_and_replies() -> None:
    async def body(r: NssResolver) -> Any:
        a = query("host.example")
        nx = compose.error_reply(a, wire.NXDOMAIN)
        nodata = compose.error_reply(a, wire.NOERROR)
        answer = compose.build_reply(
            a, wire.NOERROR, [wire.rr(wire.POINTER_TO_QNAME, wire.A, 5, bytes(4))]
        )
        servfail = compose.error_reply(a, wire.SERVFAIL)
        local = query("printer.LOCAL", "AAAA")
        return (
            [r.wants(a, x) for x in (nx, nodata, answer, servfail)],
            r.wants(query("host.example", "MX"), compose.error_reply(a, wire.NXDOMAIN)),
            r.wants(query("host.example", want_dnssec=True), nx),
            (r.first(local), r.wants(local, compose.error_reply(local, wire.NXDOMAIN))),
            r.first(query("printer.local", "TXT")),
            r.first(query("local.example")),
        )

    got, _ = run(lambda *a: [], body)
    assert got == ([True, True, False, False], False, False, (True, False), False, False)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Host.Example.", "host.example"),
        ("single.", "single"),
        (".", None),
        ("10.0.0.1.", None),
        ("a\\.b.example.", None),
        ("a\\032b.example.", None),
    ],
)
def test_lookup_name(name: str, text: str | None) -> None:
    qname = dns.name.from_text(name).to_wire()
    assert qname is not None
    assert lookup_name(qname) == text


def test_dnssec_questions_are_not_taken() -> None:
    q = query("host.example", want_dnssec=True)
    assert q.do and not NssResolver.applies(q)
    q = query("host.example")
    q2 = wire.parse_query(
        dns.message.make_query("host.example", "A", flags=dns.flags.RD | dns.flags.CD).to_wire()
    )
    assert NssResolver.applies(q) and not NssResolver.applies(q2)
