"""The native (c-ares) path in a real worker: generated resolv.conf and hosts file, FakeUpstreams
on loopback, queries over real sockets (``support.inproc.InProcessServer``).

c-ares keeps its own query cache (fastdns cannot turn it off, see native-readme): tests that
count upstream queries use names no earlier query in the same server asked.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream, dead_address

from fastdns.dns import wire

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
LONG = bytes(range(65, 91)) * 11 + b"0123"  # 290 bytes
assert len(LONG) == 290


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("test")
    up.add_zone("corp.test")
    up.add("a.test", "A", "192.0.2.1", ttl=300)
    up.add("a.test", "AAAA", "2001:db8::1", ttl=301)
    up.add("www.test", "CNAME", "mid.test.", ttl=60)
    up.add("mid.test", "CNAME", "a.test.", ttl=120)
    up.add("txt.test", "TXT", ["one", "two"], ttl=30)
    up.add("long.test", "TXT", [LONG[:255], LONG[255:]], ttl=30)
    up.add("empty.test", "TXT", [""], ttl=30)
    up.add("test", "MX", "10 mail.test.", "20 mx2.test.", ttl=40)
    up.add("test", "NS", "ns1.test.", ttl=50)
    up.add("_sip._udp.test", "SRV", "1 2 5060 sip.test.", ttl=70)
    up.add("foo.corp.test", "A", "192.0.2.9", ttl=80)
    up.add("svc.corp.test", "TXT", ["via search"], ttl=30)
    up.add("v6only.test", "AAAA", "2001:db8::6", ttl=90)
    return up


def serve(
    inproc: InProcessFactory,
    tmp_path: Path,
    *servers: str | FakeUpstream,
    search: tuple[str, ...] = ("corp.test",),
    options: tuple[str, ...] = (),
    hosts: str = "",
    resolver: dict[str, Any] | None = None,
    **fastdns: Any,
) -> InProcessServer:
    """A worker whose resolv.conf names ``servers`` (with ``search``/``options``)."""
    n = len(inproc.made)
    resolv = write_resolv_conf(
        tmp_path / f"resolv-{n}.conf", *servers, search=search, options=options
    )
    hosts_file = tmp_path / f"hosts-{n}"
    hosts_file.write_text("127.0.0.1 localhost\n" + hosts)
    # fastdns's own cache off: these tests look at what the native path itself sends; and
    # c-ares for every A/AAAA too (native.forward_first has its own tests)
    native = {"forward_first": False, **fastdns.pop("native", {})}
    section = {
        "resolv_conf": str(resolv),
        "hosts_file": str(hosts_file),
        "cache": {"enabled": False},
        "native": native,
        **fastdns,
    }
    return inproc({"hostResolver": resolver or {}, "fastdns": section})


def ask(srv: InProcessServer, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(LOCAL, srv.udp_port, name, rdtype, **kw)


def answer_lines(msg: dns.message.Message, part: str = "answer") -> list[str]:
    out: list[str] = []
    for rrset in getattr(msg, part):
        out += rrset.to_text().splitlines()
    return out


def direct(up: FakeUpstream, name: str, rdtype: str) -> dns.message.Message:
    """What the upstream itself holds for the question."""
    return query(up.address, 53, name, rdtype)


def native_answers(srv: InProcessServer, rcode: str = "NOERROR") -> int:
    return srv.counter("responses", rcode, "native")


def fallbacks(srv: InProcessServer) -> dict[str, int]:
    return {k[1]: v for k, v in srv.counters().items() if k[0] == "native_fallback"}


def resolve_directly(srv: InProcessServer, name: str, rdtype: str) -> Any:
    """Call the pipeline's native hook itself (no static/hosts-file shortcut before it)."""
    msg = dns.message.make_query(name, rdtype, id=7)
    q = wire.parse_query(msg.to_wire())
    native = srv.worker.pipeline.native  # type: ignore[union-attr]
    fut = asyncio.run_coroutine_threadsafe(native(q, srv.loop.time() + 4.0), srv.loop)
    return fut.result(5)


# ------------------------------------------------------------------------------ record types


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("a.test", "A"),
        ("a.test", "AAAA"),
        ("www.test", "CNAME"),
        ("txt.test", "TXT"),
        ("test", "NS"),
        ("test", "MX"),
        ("_sip._udp.test", "SRV"),
    ],
)
def test_each_type_resolves_natively_as_the_upstream_holds_it(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, name: str, rdtype: str
) -> None:
    srv = serve(inproc, tmp_path, up, resolver={"ipv6": True})
    got = ask(srv, name, rdtype)
    want = direct(up, name, rdtype)
    assert got.rcode() == dns.rcode.NOERROR
    assert got.answer, got
    for rrset in want.answer:
        mine = got.find_rrset(got.answer, rrset.name, rrset.rdclass, rrset.rdtype)
        assert mine.ttl == rrset.ttl
        assert sorted(r.to_text() for r in mine) == sorted(r.to_text() for r in rrset)
    assert native_answers(srv) == 1
    assert up.count(name, rdtype) == 2  # c-ares, then our direct look


def test_txt_strings_multi_string_and_empty(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    long = list(ask(srv, "long.test", "TXT").answer[0])
    assert [r.strings for r in long] == [(LONG[:255], LONG[255:])]
    two = list(ask(srv, "txt.test", "TXT").answer[0])
    assert [r.strings for r in two] == [(b"one", b"two")]  # boundaries kept (RFC 6763 §6)
    empty = list(ask(srv, "empty.test", "TXT").answer[0])
    assert [r.strings for r in empty] == [(b"",)]  # one empty string, never zero
    assert native_answers(srv) == 3


def test_lima_compat_txt_is_joined_and_cut_at_255(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.add("parts.test", "TXT", ["a" * 200, "b" * 90], ttl=30)
    srv = serve(inproc, tmp_path, up, lima_compat=True)
    rrset = ask(srv, "parts.test", "TXT").answer[0]
    assert [r.strings for r in rrset] == [(b"a" * 200 + b"b" * 55, b"b" * 35)]  # Lima chunkify
    assert rrset.ttl == 5
    empty = list(ask(srv, "empty.test", "TXT").answer[0])
    assert [r.strings for r in empty] == [(b"",)]


def test_cname_chain_is_emitted_by_default(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    assert answer_lines(ask(srv, "WWW.test", "A")) == [
        "WWW.test. 60 IN CNAME mid.test.",
        "mid.test. 120 IN CNAME a.test.",
        "a.test. 300 IN A 192.0.2.1",
    ]


def test_lima_compat_flattens_the_chain_with_ttl_5(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima_compat=True)
    assert answer_lines(ask(srv, "www.test", "A")) == ["www.test. 5 IN A 192.0.2.1"]
    assert answer_lines(ask(srv, "test", "MX")) in (
        ["test. 5 IN MX 10 mail.test.", "test. 5 IN MX 20 mx2.test."],
        ["test. 5 IN MX 20 mx2.test.", "test. 5 IN MX 10 mail.test."],
    )
    # Lima's CNAME answer is the final name of the chain
    assert answer_lines(ask(srv, "www.test", "CNAME")) == ["www.test. 5 IN CNAME a.test."]
    assert native_answers(srv) == 3


# ------------------------------------------------------------------------------ search, hosts


def test_search_list_expands_short_names(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    assert answer_lines(ask(srv, "foo", "A")) == ["foo. 80 IN A 192.0.2.9"]
    assert up.count("foo.corp.test", "A") == 1
    assert answer_lines(ask(srv, "svc", "TXT")) == ['svc. 30 IN TXT "via search"']


@pytest.mark.parametrize(("ndots", "first"), [(1, "x.y"), (2, "x.y.corp.test")])
def test_ndots_decides_whether_the_name_or_the_search_list_goes_first(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, ndots: int, first: str
) -> None:
    up.add("x.y", "A", "192.0.2.31")
    up.add("x.y.corp.test", "A", "192.0.2.32")
    srv = serve(inproc, tmp_path, up, options=(f"ndots:{ndots}",))
    want = "192.0.2.31" if first == "x.y" else "192.0.2.32"
    assert [r.to_text() for r in ask(srv, "x.y", "A").answer[0]] == [want]
    asked = [s.qname for s in up.queries if s.qtype == "A"]
    assert asked == [first]


def test_hosts_file_names_resolve_even_when_dns_does_not_know_them(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(
        inproc, tmp_path, up, hosts="10.1.1.1 hostonly.internal\n", native={"hosts_ttl": 42}
    )
    assert answer_lines(ask(srv, "hostonly.internal")) == ["hostonly.internal. 42 IN A 10.1.1.1"]
    # c-ares itself reads the same file first: same answer, same TTL, no DNS query
    res = resolve_directly(srv, "hostonly.internal", "A")
    assert res.source == "native"
    assert answer_lines(dns.message.from_wire(res.reply)) == ["hostonly.internal. 42 IN A 10.1.1.1"]
    assert up.count("hostonly.internal") == 0


def test_a_hosts_entry_added_at_runtime_is_seen_by_c_ares_at_once(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    hosts = Path(srv.config.hosts_file)
    hosts.write_text(hosts.read_text() + "10.1.1.7 late.internal\n")
    res = resolve_directly(srv, "late.internal", "A")
    assert answer_lines(dns.message.from_wire(res.reply)) == ["late.internal. 5 IN A 10.1.1.7"]


def test_static_alias_to_a_dns_name_resolves_the_target_natively(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, resolver={"hosts": {"ext": "a.test"}})
    assert answer_lines(ask(srv, "Ext", "A")) == ["Ext. 5 IN A 192.0.2.1"]  # flattened, static TTL
    assert srv.histogram_count("native_duration", "A", "NOERROR") == 1
    assert fallbacks(srv) == {}


# ------------------------------------------------------------------------------ negatives


def test_nxdomain_and_nodata_come_back_natively_without_a_soa(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    nx = ask(srv, "nope.test", "A")
    assert nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer and not nx.authority
    nodata = ask(srv, "a.test", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and not nodata.authority
    assert native_answers(srv, "NXDOMAIN") == 1 and native_answers(srv, "NOERROR") == 1
    assert fallbacks(srv) == {}


def test_lima_compat_forwards_negatives_as_lima_does(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima_compat=True)
    nx = ask(srv, "nope.test", "A", qid=4321)
    assert nx.id == 4321 and nx.rcode() == dns.rcode.NXDOMAIN
    assert answer_lines(nx, "authority") == answer_lines(direct(up, "nope.test", "A"), "authority")
    nodata = ask(srv, "a.test", "MX")
    assert nodata.rcode() == dns.rcode.NOERROR and nodata.authority  # the upstream's SOA
    assert fallbacks(srv) == {"nxdomain": 1, "nodata": 1}


def test_a_name_with_only_ipv6_is_nodata_by_default(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    msg = ask(srv, "v6only.test", "A")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert native_answers(srv) == 1


# ------------------------------------------------------------------------------ ipv6


def test_ipv6_off_answers_aaaa_nodata_without_a_lookup(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    msg = ask(srv, "a.test", "AAAA")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert up.count(qtype="AAAA") == 0
    assert srv.histogram_count("native_duration", "AAAA", "NOERROR") == 0


def test_ipv6_on_resolves_aaaa_natively(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, resolver={"ipv6": True})
    assert answer_lines(ask(srv, "a.test", "AAAA")) == ["a.test. 301 IN AAAA 2001:db8::1"]
    assert srv.histogram_count("native_duration", "AAAA", "NOERROR") == 1


# ------------------------------------------------------------------------------ failures


def test_a_dead_first_nameserver_is_skipped(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, dead_address(), up)
    assert answer_lines(ask(srv, "a.test", "A")) == ["a.test. 300 IN A 192.0.2.1"]
    assert native_answers(srv) == 1 and fallbacks(srv) == {}


def test_a_silent_nameserver_costs_its_own_queries_only(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.behave("hang.test", drop=True)
    srv = serve(inproc, tmp_path, up, deadline=1.5, upstream_timeout=0.5, native={"timeout": 0.5})
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        hanging = pool.submit(ask, srv, "hang.test", "A", timeout=5.0)
        assert up.wait_for(1, "hang.test", "A")
        # other questions are answered while that one hangs
        assert answer_lines(ask(srv, "a.test", "A")) == ["a.test. 300 IN A 192.0.2.1"]
        assert answer_lines(ask(srv, "test", "NS")) == ["test. 50 IN NS ns1.test."]
        assert not hanging.done()
        msg = hanging.result(5.0)
        elapsed = time.monotonic() - t0
    assert msg.rcode() == dns.rcode.SERVFAIL  # native gave up, then the raw forward did
    assert elapsed < 1.5 + 1.0  # config.deadline, plus scheduling slack
    assert fallbacks(srv) == {"timeout": 1}
    assert srv.histogram_count("native_duration", "A", "timeout") == 1


def test_servfail_from_native_falls_back_to_the_raw_forward(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.behave("flaky.test", rcode="SERVFAIL", times=2)  # c-ares tries twice (attempts: 2)
    up.add("flaky.test", "A", "192.0.2.77")
    srv = serve(inproc, tmp_path, up)
    assert answer_lines(ask(srv, "flaky.test", "A")) == ["flaky.test. 300 IN A 192.0.2.77"]
    assert fallbacks(srv) == {"servfail": 1}
    assert srv.counter("responses", "NOERROR", "forward") == 1


def test_only_a_blackholed_nameserver_gives_servfail_within_the_deadline(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory
) -> None:
    hole = upstream_factory(blackhole=True)
    srv = serve(inproc, tmp_path, hole, deadline=1.0, upstream_timeout=0.4, native={"timeout": 0.4})
    t0 = time.monotonic()
    msg = ask(srv, "anything.test", "A", timeout=4.0)
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 1.0 + 1.0


# ------------------------------------------------------------------------------ reloads


def test_resolv_conf_rewrite_moves_native_lookups_to_the_new_nameserver(
    inproc: InProcessFactory, tmp_path: Path, upstream_factory: UpstreamFactory
) -> None:
    old, new = upstream_factory(), upstream_factory()
    for up, ip in ((old, "192.0.2.1"), (new, "192.0.2.2")):
        up.add_zone("test")
        up.add("w.test", "A", ip)
        up.add("slow.test", "A", ip)
    old.behave("slow.test", delay=0.5)
    srv = serve(inproc, tmp_path, old)
    assert [r.to_text() for r in ask(srv, "w.test").answer[0]] == ["192.0.2.1"]
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(ask, srv, "slow.test", "A")
        assert old.wait_for(1, "slow.test", "A")
        write_resolv_conf(Path(srv.config.resolv_conf), new)  # what a VPN client does
        srv.check_files()  # the worker's 1 s tick, now
        # the lookup in flight on the old channel still completes, natively
        assert [r.to_text() for r in slow.result(5).answer[0]] == ["192.0.2.1"]
    assert [r.to_text() for r in ask(srv, "w.test").answer[0]] == ["192.0.2.2"]
    assert new.count("w.test", "A") == 1
    assert native_answers(srv) == 3 and fallbacks(srv) == {}
    resolver = srv.worker.pipeline.native  # type: ignore[union-attr]
    assert srv.call(lambda: len(resolver.retiring)) == 0  # the old channel is closed


def test_fallback_servers_are_used_when_resolv_conf_names_none(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, fallback=[up.address])
    assert answer_lines(ask(srv, "a.test")) == ["a.test. 300 IN A 192.0.2.1"]
    assert native_answers(srv) == 1


def test_no_nameserver_at_all_turns_native_off_not_to_localhost(
    inproc: InProcessFactory, tmp_path: Path
) -> None:
    srv = serve(inproc, tmp_path, hosts="10.1.1.1 hostonly.internal\n")
    assert ask(srv, "a.test").rcode() == dns.rcode.SERVFAIL
    assert fallbacks(srv) == {"disabled": 1}
    assert answer_lines(ask(srv, "hostonly.internal")) == ["hostonly.internal. 5 IN A 10.1.1.1"]


# ------------------------------------------------------------------------------ concurrency


def test_identical_questions_in_flight_share_one_lookup(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.add("shared.test", "A", "192.0.2.50")
    up.behave("shared.test", delay=0.3)
    srv = serve(inproc, tmp_path, up)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: ask(srv, "shared.test", "A", qid=1000 + i), range(8)))
    assert sorted(m.id for m in replies) == list(range(1000, 1008))
    assert all(answer_lines(m) == ["shared.test. 300 IN A 192.0.2.50"] for m in replies)
    assert up.count("shared.test", "A") == 1
    assert srv.histogram_count("native_duration", "A", "NOERROR") == 1


def test_above_max_inflight_queries_are_forwarded_raw(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.add("slow1.test", "A", "192.0.2.51")
    up.behave("slow1.test", delay=0.4)
    srv = serve(inproc, tmp_path, up, native={"max_inflight": 1})
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(ask, srv, "slow1.test", "A")
        assert up.wait_for(1, "slow1.test", "A")
        assert answer_lines(ask(srv, "a.test")) == ["a.test. 300 IN A 192.0.2.1"]
        assert slow.result(5).answer
    assert fallbacks(srv) == {"overload": 1}
    assert srv.counter("responses", "NOERROR", "forward") == 1


def test_do_and_cd_go_to_the_raw_forward_with_their_bits(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    ask(srv, "a.test", "A", do=True)
    ask(srv, "txt.test", "TXT", cd=True)
    assert fallbacks(srv) == {"dnssec": 2}
    seen = {s.qname: s.message() for s in up.queries}
    assert seen["a.test"].ednsflags & dns.flags.DO
    assert seen["txt.test"].flags & dns.flags.CD
