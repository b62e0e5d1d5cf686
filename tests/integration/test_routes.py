"""Per-domain forwarding routes (docs/routing.md) in a real worker: FakeUpstreams on
127.0.0.x, queries over real sockets, each upstream's query log counted.

The default upstream (resolv.conf) answers every name with 192.0.2.99; a route's servers
answer with their own marker, so the answer says who gave it, and the default upstream's log
says whether a routed name ever reached it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream, dead_address

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
DEFAULT = "192.0.2.99"


def fake(factory: UpstreamFactory, marker: str, *zones: str, **kw: Any) -> FakeUpstream:
    """An upstream answering A ``marker`` for every name under ``zones`` (PTR too)."""
    up = factory(**kw)
    up.handler = _answer_all(marker)
    for z in zones:
        up.add_zone(z)
    return up


def _answer_all(marker: str) -> Any:
    def handler(msg: dns.message.Message, seen: Any) -> dns.message.Message:
        reply = dns.message.make_response(msg)
        q = msg.question[0]
        rdtype = "PTR" if q.rdtype == 12 else "A"
        value = f"{marker.replace('.', '-')}.ptr.test." if rdtype == "PTR" else marker
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, value))
        return reply

    return handler


def serve(
    inproc: InProcessFactory,
    tmp_path: Path,
    default: FakeUpstream,
    routes: list[dict[str, Any]],
    search: tuple[str, ...] = (),
    resolver_dir: str = "",
    options: tuple[str, ...] = (),
    **fastdns: Any,
) -> InProcessServer:
    resolv = write_resolv_conf(
        tmp_path / f"resolv-{len(inproc.made)}.conf", default, search=search, options=options
    )
    section = {
        "resolv_conf": str(resolv),
        "native": {"enabled": False},
        "upstream_timeout": 0.3,
        "deadline": 2.0,
        "forward": {"domains": routes, "resolver_dir": resolver_dir},
        **fastdns,
    }
    return inproc({"fastdns": section})


def ask(srv: InProcessServer, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    port = srv.tcp_port if kw.get("tcp") else srv.udp_port
    return query(LOCAL, port, name, rdtype, **kw)


def answer_of(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


@pytest.fixture(name="two")
def _two(upstream_factory: UpstreamFactory) -> tuple[FakeUpstream, FakeUpstream]:
    """(corp: the route's server, default: resolv.conf's)."""
    return fake(upstream_factory, "10.0.0.21"), fake(upstream_factory, DEFAULT)


def test_longest_suffix_wins_case_insensitively_and_case_is_kept_on_the_wire(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory, two: Any
) -> None:
    corp, default = two
    lab = fake(upstream_factory, "10.0.0.23")
    srv = serve(
        inproc,
        tmp_path,
        default,
        [
            {"domains": ["corp.example"], "servers": [corp.address]},
            {"domains": ["Lab.Corp.Example."], "servers": [lab.address]},
        ],
    )
    assert answer_of(ask(srv, "wWw.CoRp.ExAmPlE")) == ["10.0.0.21"]
    assert answer_of(ask(srv, "host.LAB.corp.example")) == ["10.0.0.23"]
    assert answer_of(ask(srv, "corp.example")) == ["10.0.0.21"]  # the suffix itself
    assert answer_of(ask(srv, "xcorp.example")) == [DEFAULT]  # a whole label, not a string
    assert answer_of(ask(srv, "example")) == [DEFAULT]
    # 0x20: the route's server saw the name exactly as the client wrote it.
    assert [s.qname for s in corp.queries] == ["wWw.CoRp.ExAmPlE", "corp.example"]
    assert [s.qname for s in lab.queries] == ["host.LAB.corp.example"]
    assert default.count("wWw.CoRp.ExAmPlE") == 0 and default.count("host.lab.corp.example") == 0
    assert srv.counter("route_requests", "corp.example") == 2


def test_routed_names_never_reach_the_default_upstream_on_any_path(
    inproc: InProcessFactory, tmp_path: Path, two: Any
) -> None:
    """Many distinct routed names over UDP (the forward fast lane) and TCP (the general
    path), PTR and A: the default upstream's log never shows one."""
    corp, default = two
    srv = serve(
        inproc, tmp_path, default, [{"domains": ["corp.example"], "servers": [corp.address]}]
    )
    ask(srv, "warm.other.test")  # the general path opens the default's sockets; lane after
    for i in range(60):
        assert answer_of(ask(srv, f"n{i}.corp.example")) == ["10.0.0.21"]
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: ask(srv, f"p{i}.corp.example"), range(40)))
    assert all(answer_of(r) == ["10.0.0.21"] for r in replies)
    for i in range(10):
        assert answer_of(ask(srv, f"t{i}.corp.example", "TXT", tcp=True)) == ["10.0.0.21"]
    assert srv.counter("forward_fast_lane", "answered") >= 60  # the lane took routed names
    assert not [s.qname for s in default.queries if "corp" in s.qname.lower()]
    assert corp.count() == 110


def test_reverse_zones_route(inproc: InProcessFactory, tmp_path: Path, two: Any) -> None:
    corp, default = two
    srv = serve(
        inproc, tmp_path, default, [{"domains": ["10.in-addr.arpa"], "servers": [corp.address]}]
    )
    reply = ask(srv, "5.4.3.10.in-addr.arpa", "PTR")
    assert answer_of(reply) == ["10-0-0-21.ptr.test."]
    assert answer_of(ask(srv, "5.4.3.11.in-addr.arpa", "PTR")) == ["192-0-2-99.ptr.test."]
    assert default.count("5.4.3.10.in-addr.arpa") == 0


def test_unrouted_names_still_take_the_host_resolver_path(
    inproc: InProcessFactory, tmp_path: Path, two: Any
) -> None:
    """With the native (c-ares) path on: a short name goes through the search list (c-ares,
    to the default upstream); a routed name goes to its route only, never through c-ares."""
    corp, default = two
    srv = serve(
        inproc,
        tmp_path,
        default,
        [{"domains": ["corp.example"], "servers": [corp.address]}],
        search=("home.test",),
        native={"enabled": True},
    )
    assert answer_of(ask(srv, "printer")) == [DEFAULT]
    assert default.count("printer.home.test") == 1  # the search list: the host's resolver
    assert answer_of(ask(srv, "wiki.corp.example")) == ["10.0.0.21"]
    assert default.count("wiki.corp.example") == 0
    assert corp.count("wiki.corp.example") == 1  # asked once: no c-ares retry behind it


def test_tcp_route_uses_one_pooled_connection_for_many_queries(
    inproc: InProcessFactory, tmp_path: Path, two: Any
) -> None:
    corp, default = two
    srv = serve(
        inproc,
        tmp_path,
        default,
        [{"domains": ["cluster.local"], "servers": [f"tcp://{corp.address}"]}],
    )
    for i in range(30):
        reply = ask(srv, f"s{i}.svc.cluster.local")
        assert answer_of(reply) == ["10.0.0.21"], reply
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: ask(srv, f"c{i}.svc.cluster.local"), range(40)))
    assert all(answer_of(r) == ["10.0.0.21"] for r in replies)
    seen = corp.queries
    assert len(seen) == 70 and {s.transport for s in seen} == {"tcp"}
    assert len({s.src for s in seen}) == 1  # one connection, one source port, all 70
    assert default.count() == 0


def test_failover_inside_a_route(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory, two: Any
) -> None:
    corp, default = two
    failing = upstream_factory(outside_rcode="SERVFAIL")
    srv = serve(
        inproc,
        tmp_path,
        default,
        [
            {"domains": ["corp.example"], "servers": [dead_address(), corp.address]},
            {"domains": ["lab.example"], "servers": [failing.address, f"tcp://{corp.address}"]},
        ],
    )
    assert answer_of(ask(srv, "a.corp.example")) == ["10.0.0.21"]
    assert answer_of(ask(srv, "b.lab.example")) == ["10.0.0.21"]
    assert failing.count("b.lab.example") == 1
    assert corp.count("b.lab.example", transport="tcp") == 1
    assert default.count() == 0


def test_servfail_within_the_deadline_when_every_server_of_the_route_is_dead(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory, two: Any
) -> None:
    _corp, default = two
    silent = upstream_factory(blackhole=True)
    srv = serve(
        inproc,
        tmp_path,
        default,
        [
            {
                "domains": ["corp.example"],
                "servers": [dead_address(), silent.address, f"tcp://{dead_address()}"],
            }
        ],
        deadline=1.0,
    )
    t0 = time.monotonic()
    reply = ask(srv, "gone.corp.example", timeout=3.0)
    took = time.monotonic() - t0
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert took < 1.0 + 0.5  # deadline 1.0 s, plus scheduling slack on a loaded machine
    assert default.count() == 0
    assert srv.counter("route_failures", "corp.example") == 1


def write(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def wait_answer(srv: InProcessServer, name: str, want: list[str], within: float = 2.0) -> None:
    """Ask ``name`` until the answer is ``want`` (no cache: each ask is fresh); bounded."""
    end = time.monotonic() + within
    got: list[str] = []
    while time.monotonic() < end:
        got = answer_of(ask(srv, name))
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name}: still {got} after {within}s, want {want}")


def test_resolver_dir_files_added_changed_and_removed_are_followed(
    inproc: InProcessFactory,
    tmp_path: Path,
    upstream_factory: UpstreamFactory,
    two: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    corp, default = two
    other = fake(upstream_factory, "10.0.0.24")
    rdir = tmp_path / "resolver"
    rdir.mkdir()
    (rdir / "bad.example").write_text("# no nameserver at all\n")
    srv = serve(inproc, tmp_path, default, [], resolver_dir=str(rdir))
    # The worker's own tick checks the directory every second: no help from the test.
    assert answer_of(ask(srv, "h.vpn.example")) == [DEFAULT]
    write(rdir / "vpn.example", f"nameserver {corp.address}\n")
    wait_answer(srv, "h.vpn.example", ["10.0.0.21"])
    write(rdir / "vpn.example", f"# changed\nnameserver {other.address}\ntimeout 1\n")
    wait_answer(srv, "h.vpn.example", ["10.0.0.24"])
    (rdir / "vpn.example").unlink()
    wait_answer(srv, "h.vpn.example", [DEFAULT])
    assert answer_of(ask(srv, "h.bad.example")) == [DEFAULT]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warned if "bad.example" in w and "no nameserver" in w]
    assert len([w for w in warned if "bad.example" in w]) == 1  # once, not every tick


def test_resolver_dir_explicit_config_wins(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory, two: Any
) -> None:
    corp, default = two
    other = fake(upstream_factory, "10.0.0.24")
    rdir = tmp_path / "resolver"
    rdir.mkdir()
    (rdir / "corp.example").write_text(f"nameserver {other.address}\n")
    (rdir / "b").write_text(f"domain dev.example\nnameserver {other.address}\n")
    srv = serve(
        inproc,
        tmp_path,
        default,
        [{"domains": ["corp.example"], "servers": [corp.address]}],
        resolver_dir=str(rdir),
    )
    assert answer_of(ask(srv, "x.corp.example")) == ["10.0.0.21"]
    assert answer_of(ask(srv, "x.dev.example")) == ["10.0.0.24"]
    assert other.count("x.corp.example") == 0


# ------------------------------------------------------------------ search-list expansion


@pytest.fixture(name="split")
def _split(upstream_factory: UpstreamFactory) -> tuple[FakeUpstream, FakeUpstream]:
    """(corp: the route's server, authoritative for corp.example; home: resolv.conf's server,
    which knows a few names and says NXDOMAIN to the rest, and would answer a leaked
    ``*.corp.example`` with 192.0.2.99)."""
    corp = upstream_factory()
    corp.add_zone("corp.example")
    corp.add("wiki.corp.example", "A", "10.0.0.21")
    corp.add("docs.corp.example", "TXT", ["v=1", "routed"])
    corp.add("host.lab.corp.example", "A", "10.0.0.22")
    home = upstream_factory(outside_rcode="NXDOMAIN")
    home.add_zone("home.test")
    home.add("printer.home.test", "A", "192.0.2.7")
    home.add("gone.home.test", "A", "192.0.2.8")
    home.add("host.lab", "A", "192.0.2.9")
    for leak in ("wiki", "docs", "gone", "nothing", "host.lab"):
        home.add(f"{leak}.corp.example", "A", DEFAULT)
    return corp, home


def search_server(
    inproc: InProcessFactory,
    tmp_path: Path,
    split: Any,
    search: tuple[str, ...],
    **kw: Any,
) -> InProcessServer:
    corp, home = split
    return serve(
        inproc,
        tmp_path,
        home,
        [{"domains": ["corp.example"], "servers": [corp.address]}],
        search=search,
        native={"enabled": True},
        cache={"enabled": False},
        **kw,
    )


def owners(reply: dns.message.Message) -> list[str]:
    return [rrset.name.to_text() for rrset in reply.answer]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_search_candidate_under_a_route_goes_to_the_route_only(
    inproc: InProcessFactory, tmp_path: Path, split: Any, tcp: bool
) -> None:
    """``search corp.example`` (a VPN's domain) and a route for corp.example: ``wiki`` is
    looked up as ``wiki.corp.example`` at the route's server, never at resolv.conf's, and
    answered as any search expansion is: the records under the name asked."""
    corp, home = split
    srv = search_server(inproc, tmp_path, split, ("corp.example",))
    reply = ask(srv, "wiki", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert answer_of(reply) == ["10.0.0.21"]
    assert owners(reply) == ["wiki."]
    assert reply.answer[0].ttl == 300
    txt = ask(srv, "docs", "TXT", tcp=tcp)
    assert answer_of(txt) == ['"v=1" "routed"'] and owners(txt) == ["docs."]
    assert home.count("wiki.corp.example") == 0
    assert home.count("docs.corp.example") == 0
    assert corp.count("wiki.corp.example") == 1
    assert corp.count("docs.corp.example") == 1
    # The same shape as an unrouted expansion (c-ares, the default upstream).
    srv2 = search_server(inproc, tmp_path, split, ("home.test",))
    unrouted = ask(srv2, "printer", tcp=tcp)
    assert owners(unrouted) == ["printer."] and answer_of(unrouted) == ["192.0.2.7"]
    assert unrouted.flags == reply.flags and not unrouted.authority and not reply.authority


def test_search_goes_on_past_a_routed_candidate_that_does_not_exist(
    inproc: InProcessFactory, tmp_path: Path, split: Any
) -> None:
    """resolv(5) order: each search domain in turn, then the name as is; NXDOMAIN from the
    route's server moves on to the next candidate, as the host's resolver does."""
    corp, home = split
    srv = search_server(inproc, tmp_path, split, ("corp.example", "home.test"))
    reply = ask(srv, "gone")
    assert answer_of(reply) == ["192.0.2.8"] and owners(reply) == ["gone."]
    assert corp.count("gone.corp.example") == 1
    assert home.count("gone.corp.example") == 0
    assert home.count("gone.home.test") == 1
    # Nothing anywhere: every candidate in order, then NXDOMAIN (no SOA, as c-ares answers).
    reply = ask(srv, "nothing")
    assert reply.rcode() == dns.rcode.NXDOMAIN and not reply.answer
    assert [s.qname.lower() for s in corp.queries if "nothing" in s.qname] == [
        "nothing.corp.example"
    ]
    assert [s.qname.lower() for s in home.queries if "nothing" in s.qname] == [
        "nothing.home.test",
        "nothing",
    ]


@pytest.mark.parametrize("ndots", [1, 2])
def test_ndots_decides_whether_the_routed_candidate_comes_first(
    inproc: InProcessFactory, tmp_path: Path, split: Any, ndots: int
) -> None:
    """``host.lab`` has one dot: with ndots:1 it is asked as is first (forwarded first, at
    resolv.conf's server, which knows it); with ndots:2 the search list comes first, and its
    candidate under the route is asked there only."""
    corp, home = split
    srv = search_server(inproc, tmp_path, split, ("corp.example",), options=(f"ndots:{ndots}",))
    reply = ask(srv, "host.lab")
    assert answer_of(reply) == (["192.0.2.9"] if ndots == 1 else ["10.0.0.22"])
    assert owners(reply) == ["host.lab."]
    assert home.count("host.lab.corp.example") == 0
    # as is first (ndots 1) found it: the route is not asked; search first (ndots 2): it is.
    assert corp.count("host.lab.corp.example") == (0 if ndots == 1 else 1)
    home.remove("host.lab")  # now only the routed candidate exists
    before = corp.count("host.lab.corp.example")
    # UDP: with ndots:1 the fast lane forwards ``host.lab`` first, then the search list;
    # TCP: the general path. No cache: each is looked up afresh.
    for tcp in (False, True):
        reply = ask(srv, "host.lab", "A", tcp=tcp)
        assert answer_of(reply) == ["10.0.0.22"] and owners(reply) == ["host.lab."]
    assert corp.count("host.lab.corp.example") == before + 2
    assert home.count("host.lab.corp.example") == 0
    if ndots == 1:
        assert srv.counter("native_forward_first", "search") == 2


def test_a_routed_candidate_whose_servers_are_dead_never_falls_back_to_the_default(
    inproc: InProcessFactory, tmp_path: Path, split: Any
) -> None:
    """The route's only server refuses (ICMP): the lookup ends as a c-ares failure would,
    and the name asked (``wiki``, not routed) is forwarded raw; ``wiki.corp.example`` never
    reaches resolv.conf's server."""
    _corp, home = split
    srv = serve(
        inproc,
        tmp_path,
        home,
        [{"domains": ["corp.example"], "servers": [dead_address()]}],
        search=("corp.example",),
        native={"enabled": True},
    )
    reply = ask(srv, "wiki", timeout=3.0)
    assert reply.rcode() == dns.rcode.NXDOMAIN  # resolv.conf's server on ``wiki`` as is
    assert home.count("wiki.corp.example") == 0
    assert home.count("wiki") == 1
    assert srv.counter("route_failures", "corp.example") == 1
