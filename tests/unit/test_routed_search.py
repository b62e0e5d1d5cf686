"""fastdns.resolve.native.routedsearch without sockets: the candidates in c-ares' order, which
of them are routed, replies read into c-ares' shapes, and the walk's stopping rules."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import dns.message
import dns.rrset
import pycares
import pytest

from fastdns.config.schema import RouteConfig, RouteServer
from fastdns.dns import answers, wire
from fastdns.resolve.forward.routes import Route, merge_routes
from fastdns.resolve.native import routedsearch as rs

E = pycares.errno


def w(name: str) -> bytes:
    return wire.name_to_wire(name)


def texts(names: list[bytes]) -> list[str]:
    return [wire.name_to_text(n) for n in names]


DOMAINS = rs.search_domains(["corp.example", "home.test"])


@pytest.mark.parametrize(
    ("name", "ndots", "expected"),
    [
        ("wiki", 1, ["wiki.corp.example.", "wiki.home.test.", "wiki."]),
        ("host.lab", 1, ["host.lab.", "host.lab.corp.example.", "host.lab.home.test."]),
        ("host.lab", 2, ["host.lab.corp.example.", "host.lab.home.test.", "host.lab."]),
        ("wiki", 0, ["wiki.", "wiki.corp.example.", "wiki.home.test."]),
    ],
)
def test_candidates_follow_resolv_conf_order_and_ndots(
    name: str, ndots: int, expected: list[str]
) -> None:
    assert texts(rs.candidates(w(name), DOMAINS, ndots)) == expected


def table() -> object:
    cfg = RouteConfig(
        domains=("corp.example",),
        servers=(RouteServer("127.0.0.21", 53, "udp"),),
        origin="config",
    )
    return merge_routes([cfg], [])[0]


def test_only_queries_with_a_routed_candidate_are_walked() -> None:
    routes = table()
    got = rs.routed_candidates(w("Wiki"), DOMAINS, 1, routes)  # type: ignore[arg-type]
    assert got is not None
    assert [(wire.name_to_text(n), r is not None) for n, r in got] == [
        ("Wiki.corp.example.", True),  # the client's case is kept
        ("Wiki.home.test.", False),
        ("Wiki.", False),
    ]
    home = rs.search_domains(["home.test"])
    assert rs.routed_candidates(w("wiki"), home, 1, routes) is None  # type: ignore[arg-type]
    assert rs.routed_candidates(w("wiki"), (), 1, routes) is None  # type: ignore[arg-type]
    for special in ("localhost", "a.localhost", "x.onion"):
        assert rs.routed_candidates(w(special), DOMAINS, 1, routes) is None  # type: ignore[arg-type]


def reply(name: str, qtype: str, *records: str, rcode: int = 0) -> bytes:
    q = dns.message.make_query(name, qtype)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for text in records:
        owner, ttl, rtype, rdata = text.split(" ", 3)
        r.answer.append(dns.rrset.from_text(owner, int(ttl), "IN", rtype, rdata))
    return r.to_wire()  # compressed names, as servers send them


def query(name: str, qtype: int) -> wire.Query:
    return wire.parse_query(rs.question(w(name), qtype))


def test_an_address_reply_is_read_as_getaddrinfo_and_written_under_the_query_name() -> None:
    raw = reply(
        "wiki.corp.example.",
        "A",
        "wiki.corp.example. 60 CNAME Web.corp.example.",
        "Web.corp.example. 30 A 10.0.0.21",
        "other.example. 30 A 10.9.9.9",  # not on the chain: ignored, as c-ares does
    )
    found = rs.addrinfo(raw, wire.A)
    assert found.cnames == [rs.Cname(60, "wiki.corp.example", "Web.corp.example")]
    assert [(n.ttl, n.addr[0]) for n in found.nodes] == [(30, "10.0.0.21")]
    out = answers.address_reply(query("wiki", wire.A), found, answers.AnswerStyle(), local=False)
    assert out is not None
    msg = dns.message.from_wire(out)
    assert [r.to_text() for r in msg.answer] == [
        "wiki. 60 IN CNAME Web.corp.example.",
        "Web.corp.example. 30 IN A 10.0.0.21",
    ]


def test_a_records_reply_keeps_txt_strings_mx_srv_and_escapes() -> None:
    raw = reply(
        "docs.corp.example.",
        "TXT",
        'docs.corp.example. 60 TXT "v=1" "" "a b"',
    )
    out = answers.records_reply(
        query("docs", wire.TXT), rs.search_result(raw), answers.AnswerStyle()
    )
    assert out is not None
    assert [r.to_text() for r in dns.message.from_wire(out).answer] == [
        'docs. 60 IN TXT "v=1" "" "a b"'
    ]
    raw = reply("m.corp.example.", "MX", "m.corp.example. 60 MX 10 mail\\.x.corp.example.")
    out = answers.records_reply(query("m", wire.MX), rs.search_result(raw), answers.AnswerStyle())
    assert out is not None
    assert [r.to_text() for r in dns.message.from_wire(out).answer] == [
        "m. 60 IN MX 10 mail\\.x.corp.example."
    ]
    raw = reply(
        "_s._tcp.corp.example.", "SRV", "_s._tcp.corp.example. 60 SRV 1 2 443 t.corp.example."
    )
    found = rs.search_result(raw)
    assert (
        found.answer[0].data[5:8] == (1, 2, 443) and found.answer[0].data.target == "t.corp.example"
    )


def finish(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (its ``ask`` answers at once), without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the walk waited for something")


def run_walk(
    replies: dict[str, bytes | None], qtype: int, address: bool
) -> tuple[object, list[str]]:
    asked: list[str] = []

    async def ask(name: bytes, t: int, route: Route | None, deadline: float) -> bytes | None:
        text = wire.name_to_text(name)
        asked.append(text)
        return replies[text]

    cands = [(w(n), None) for n in replies]
    result, status = finish(rs.walk(cands, qtype, address, ask, 0.0))
    return (status if result is None else "found"), asked


NX = 3


def test_getaddrinfo_rules_go_on_after_nxdomain_and_nodata_and_stop_on_servfail() -> None:
    a = "a.corp.example."
    b = "a.home.test."
    found = reply(b, "A", f"{b} 60 A 192.0.2.1")
    assert run_walk({a: reply(a, "A", rcode=NX), b: found}, wire.A, True) == ("found", [a, b])
    assert run_walk({a: reply(a, "A"), b: reply(b, "A", rcode=NX)}, wire.A, True) == (
        E.ARES_ENODATA,
        [a, b],
    )
    assert run_walk({a: reply(a, "A", rcode=NX), b: reply(b, "A", rcode=NX)}, wire.A, True)[0] == (
        E.ARES_ENOTFOUND
    )
    assert run_walk({a: reply(a, "A", rcode=2), b: found}, wire.A, True) == (E.ARES_ESERVFAIL, [a])
    assert run_walk({a: None, b: found}, wire.A, True) == (E.ARES_ETIMEOUT, [a])


def test_search_rules_go_on_after_servfail_and_stop_on_refused() -> None:
    a = "t.corp.example."
    b = "t.home.test."
    found = reply(b, "TXT", f'{b} 60 TXT "x"')
    assert run_walk({a: reply(a, "TXT", rcode=2), b: found}, wire.TXT, False) == ("found", [a, b])
    assert run_walk({a: reply(a, "TXT", rcode=5), b: found}, wire.TXT, False) == (
        E.ARES_EREFUSED,
        [a],
    )
    assert run_walk({a: reply(a, "TXT"), b: reply(b, "TXT", rcode=NX)}, wire.TXT, False)[0] == (
        E.ARES_ENODATA
    )
    # A reply cut inside its record: c-ares' EBADRESP, the walk stops (raw forward next).
    assert run_walk({a: found[:-2], b: found}, wire.TXT, False) == (E.ARES_EBADRESP, [a])
