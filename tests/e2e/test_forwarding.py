"""Forwarding and failure (docs/answering.md, "Forwarding") and the hosts file, against
``fastdns serve`` with FakeUpstreams on 127.0.0.x:53.

Each scenario has its own module-scoped server with a fixed upstream layout; tests use names of
their own so they do not see each other's query-log entries or behaviours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from support.clients import raw_udp
from support.fixtures import ResolvConfWriter
from support.server import FastDNSProcess, write_resolv_conf
from support.upstream import FakeUpstream, dead_address

pytestmark = pytest.mark.e2e

# The native (c-ares) path and the cache are off here so these tests see the raw forward path
# alone (and every query reaches the upstream).
FAST = {
    "upstream_timeout": 0.3,
    "deadline": 1.5,
    "native": {"enabled": False},
    "cache": {"enabled": False},
}


def zone(up: FakeUpstream, marker: str) -> FakeUpstream:
    """``*.fwd.test`` names answer ``A marker`` so a test can tell which upstream answered."""
    up.add_zone("fwd.test")
    names = (
        "order servfail refused spoof-id spoof-q spoof-id2 spoof-q2 tc tc-tcp edns fresh1 "
        "fresh2 fresh3 fresh4 fresh5 dead blackhole fallback rewrite disabled v6 many"
    )
    for name in names.split():
        up.add(f"{name}.fwd.test", "A", marker)
    up.big("big.fwd.test", 60)
    return up


def a_of(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == 1]


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


# ------------------------------------------------------------------------------ two good upstreams


@pytest.fixture(name="pair", scope="module")
def _pair(mod_upstream_factory: Any) -> tuple[FakeUpstream, FakeUpstream]:
    return zone(mod_upstream_factory(), "192.0.2.1"), zone(mod_upstream_factory(), "192.0.2.2")


@pytest.fixture(name="hosts_path", scope="module")
def _hosts_path(mod_tmp: Path) -> Path:
    path = mod_tmp / "hosts"
    path.write_text(
        "127.0.0.1 localhost\n10.20.30.40 FileHost.example filehost\n"
        "10.20.30.99 bad..name good.name\n"  # a name no query can carry, beside a good one
    )
    return path


@pytest.fixture(name="server", scope="module")
def _server(
    mod_fastdns_factory: Any, pair: tuple[FakeUpstream, FakeUpstream], hosts_path: Path
) -> FastDNSProcess:
    config = {"hostResolver": {"ipv6": True}, "fastdns": {**FAST, "hosts_file": str(hosts_path)}}
    server: FastDNSProcess = mod_fastdns_factory(config, upstreams=list(pair))
    return server


def test_case25_first_server_in_resolv_conf_order_answers(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, second = pair
    for _ in range(3):
        assert a_of(server.query("order.fwd.test")) == ["192.0.2.1"]
    assert first.count("order.fwd.test") == 3
    assert second.count("order.fwd.test") == 0


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_case30_servfail_and_refused_move_on_to_the_next_server(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream], rcode: str
) -> None:
    first, second = pair
    name = f"{rcode.lower()}.fwd.test"
    first.behave(name, rcode=rcode)
    reply = server.query(name)
    assert reply.rcode() == dns.rcode.NOERROR
    assert a_of(reply) == ["192.0.2.2"]
    assert first.count(name) == 1 and second.count(name) == 1


def test_every_server_servfail_gives_servfail(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    for up in pair:
        up.behave("many.fwd.test", rcode="SERVFAIL")
    started = time.monotonic()
    assert server.query("many.fwd.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.0  # no waiting: both answered


def test_nxdomain_passes_through_with_its_sections(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    reply = server.query("Missing.Fwd.Test", "A", qid=999)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.id == 999
    assert str(reply.question[0].name) == "Missing.Fwd.Test."
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    assert pair[1].count("missing.fwd.test") == 0  # NXDOMAIN is an answer: no failover


def test_case34_tc_from_udp_upstream_is_retried_over_tcp(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = pair
    first.behave("tc.fwd.test", truncate=True)
    reply = server.query("tc.fwd.test", edns=1232)
    assert not reply.flags & dns.flags.TC
    assert a_of(reply) == ["192.0.2.1"]
    assert first.count("tc.fwd.test", transport="udp") == 1
    assert first.count("tc.fwd.test", transport="tcp") == 1


def test_case34_tcp_client_gets_the_full_answer_of_a_tc_upstream(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = pair
    first.behave("tc-tcp.fwd.test", truncate=True)
    reply = server.query("tc-tcp.fwd.test", tcp=True)
    assert not reply.flags & dns.flags.TC and a_of(reply) == ["192.0.2.1"]
    assert first.count("tc-tcp.fwd.test", transport="tcp") == 1


def test_edns_options_and_do_bit_go_upstream_unchanged(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = pair
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8)))
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    q = dns.message.make_query(
        "EdNs.fwd.test", "A", use_edns=0, payload=1400, want_dnssec=True, options=[cookie, ecs]
    )
    q.flags |= dns.flags.CD
    sent = q.to_wire()
    reply = raw_udp(server.address, server.udp_port, sent)
    assert reply is not None
    r = dns.message.from_wire(reply)
    assert r.id == q.id and a_of(r) == ["192.0.2.1"]
    assert r.edns == 0 and r.ednsflags & dns.flags.DO
    (seen,) = [s for s in first.queries if s.qname == "EdNs.fwd.test"]
    assert seen.raw_bytes[2:] == sent[2:]  # flags, question case, OPT, options: byte for byte
    m = seen.message()
    assert m.ednsflags & dns.flags.DO and m.payload == 1400
    assert [o.otype for o in m.options] == [dns.edns.OptionType.COOKIE, dns.edns.OptionType.ECS]


def test_upstream_sees_a_fresh_id(
    server: FastDNSProcess, pair: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = pair
    for i in range(1, 6):
        server.query(f"fresh{i}.fwd.test", qid=0x4242)
    ids = [s.qid for s in first.queries if s.qname.startswith("fresh")]
    assert len(ids) == 5
    assert sum(qid != 0x4242 for qid in ids) >= 4  # random 16-bit IDs (RFC 5452 §9.2)
    assert len(set(ids)) >= 4


def test_hosts_file_entries_are_answered(server: FastDNSProcess, pair: Any) -> None:
    reply = server.query("filehost.example", "A")
    assert [rr.to_text() for rr in reply.answer] == ["filehost.example. 5 IN A 10.20.30.40"]
    reply = server.query("FILEHOST.EXAMPLE", "A", tcp=True)
    assert a_of(reply) == ["10.20.30.40"]
    reply = server.query("40.30.20.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rd in reply.answer[0]] == ["filehost.example.", "filehost."]
    assert pair[0].count("filehost.example") == 0


def test_hosts_file_with_a_bad_name_still_answers_ptr(server: FastDNSProcess) -> None:
    reply = server.query("99.30.20.10.in-addr.arpa", "PTR", timeout=1.0)
    assert [rd.to_text() for rd in reply.answer[0]] == ["good.name."]
    assert "Traceback" not in server.stderr


def test_hosts_file_edits_are_picked_up(fastdns_factory: Any, tmp_path: Path) -> None:
    # A server and hosts file of its own: the edit must not reach the tests above.
    hosts_path = tmp_path / "hosts"
    hosts_path.write_text("127.0.0.1 localhost\n10.20.30.40 FileHost.example filehost\n")
    server = fastdns_factory({"fastdns": {**FAST, "hosts_file": str(hosts_path)}})
    assert a_of(server.query("filehost.example", "A")) == ["10.20.30.40"]
    assert not a_of(server.query("edited.example", "A"))
    tmp = hosts_path.with_name("hosts.new")
    tmp.write_text("127.0.0.1 localhost\n10.20.30.41 filehost.example edited.example\n")
    tmp.replace(hosts_path)
    assert wait_until(lambda: a_of(server.query("edited.example", "A")) == ["10.20.30.41"], 3.0)
    assert a_of(server.query("filehost.example", "A")) == ["10.20.30.41"]


# ------------------------------------------------------------------------------ spoofed replies


# Function-scoped: a spoof that is the only reply makes ``bad`` time out, after which fastdns
# tries it after ``good`` for a while (upstream health ordering). A server of its own per test
# keeps each test's outcome independent of which spoof tests ran before it.
@pytest.fixture(name="spoofer")
def _spoofer(upstream_factory: Any) -> tuple[FakeUpstream, FakeUpstream]:
    return zone(upstream_factory(), "192.0.2.66"), zone(upstream_factory(), "192.0.2.2")


@pytest.fixture(name="spoofed")
def _spoofed(fastdns_factory: Any, spoofer: tuple[FakeUpstream, FakeUpstream]) -> FastDNSProcess:
    server: FastDNSProcess = fastdns_factory({"fastdns": FAST}, upstreams=list(spoofer))
    return server


@pytest.mark.parametrize(
    ("knob", "name"), [("wrong_id", "spoof-id2"), ("wrong_question", "spoof-q2")]
)
def test_the_correct_reply_after_a_spoof_is_taken(
    spoofed: FastDNSProcess, spoofer: tuple[FakeUpstream, FakeUpstream], knob: str, name: str
) -> None:
    bad, good = spoofer
    bad.behave(f"{name}.fwd.test", **{knob: "then-correct"})
    reply = spoofed.query(f"{name}.fwd.test")
    assert a_of(reply) == ["192.0.2.66"]
    assert good.count(f"{name}.fwd.test") == 0


@pytest.mark.parametrize(
    ("knob", "name"), [("wrong_id", "spoof-id"), ("wrong_question", "spoof-q")]
)
def test_reply_with_wrong_id_or_question_is_ignored(
    spoofed: FastDNSProcess, spoofer: tuple[FakeUpstream, FakeUpstream], knob: str, name: str
) -> None:
    bad, _ = spoofer
    bad.behave(f"{name}.fwd.test", **{knob: "only"})
    reply = spoofed.query(f"{name}.fwd.test")
    assert a_of(reply) == ["192.0.2.2"]  # the spoof was never taken; the next server answered
    assert bad.count(f"{name}.fwd.test") >= 1


# ------------------------------------------------------------------------------ dead servers


@pytest.fixture(name="dead_first", scope="module")
def _dead_first(mod_fastdns_factory: Any, mod_upstream_factory: Any) -> FastDNSProcess:
    hole = mod_upstream_factory(blackhole=True)
    good = zone(mod_upstream_factory(), "192.0.2.3")
    server: FastDNSProcess = mod_fastdns_factory(
        {"fastdns": FAST}, upstreams=[dead_address(), hole, good]
    )
    return server


def test_case25_dead_first_servers_mean_the_next_one_answers(dead_first: FastDNSProcess) -> None:
    started = time.monotonic()
    reply = dead_first.query("dead.fwd.test", timeout=3.0)
    assert a_of(reply) == ["192.0.2.3"]
    assert time.monotonic() - started < 1.2  # unreachable: at once; blackhole: one timeout
    for _ in range(3):  # and again (the dead ones are tried after the healthy one by now)
        assert a_of(dead_first.query("blackhole.fwd.test")) == ["192.0.2.3"]


@pytest.fixture(name="all_dead", scope="module")
def _all_dead(mod_fastdns_factory: Any, mod_upstream_factory: Any) -> FastDNSProcess:
    hole = mod_upstream_factory(blackhole=True)
    hole2 = mod_upstream_factory(blackhole=True)
    server: FastDNSProcess = mod_fastdns_factory(
        {"fastdns": {**FAST, "upstream_timeout": 0.25, "deadline": 1.0}},
        upstreams=[hole, dead_address(), hole2],
    )
    return server


def test_case27_all_upstreams_dead_is_servfail_within_the_deadline(
    all_dead: FastDNSProcess,
) -> None:
    def ask(tcp: bool) -> tuple[dns.message.Message, float]:
        started = time.monotonic()
        reply = all_dead.query(f"x{int(tcp)}.fwd.test", tcp=tcp, timeout=3.0)
        return reply, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:  # UDP and TCP clients at once: one wait, not two
        results = list(pool.map(ask, (False, True)))
    for reply, elapsed in results:
        assert reply.rcode() == dns.rcode.SERVFAIL  # Lima: empty NOERROR (a bug)
        assert reply.answer == []
        assert elapsed < 1.0 + 0.5  # deadline 1.0 s, plus slack for a busy machine


# ------------------------------------------------------------------------------ resolv.conf


def test_case28_no_nameservers_uses_the_fallback_servers(
    mod_fastdns_factory: Any, mod_upstream_factory: Any, mod_tmp: Path
) -> None:
    up = zone(mod_upstream_factory(), "192.0.2.4")
    empty = write_resolv_conf(mod_tmp / "empty-resolv.conf", search=["corp.example"])
    server = mod_fastdns_factory(
        {"fastdns": {**FAST, "resolv_conf": str(empty), "fallback": [up.address]}}
    )
    assert a_of(server.query("fallback.fwd.test")) == ["192.0.2.4"]
    assert "no usable nameserver: using the fallback servers" in server.stderr


def test_case26_unreadable_resolv_conf_uses_the_fallback_servers(
    mod_fastdns_factory: Any, mod_upstream_factory: Any, mod_tmp: Path
) -> None:
    up = zone(mod_upstream_factory(), "192.0.2.5")
    server = mod_fastdns_factory(
        {
            "fastdns": {
                **FAST,
                "resolv_conf": str(mod_tmp / "missing.conf"),
                "fallback": [dead_address(), up.address],
            }
        }
    )
    assert a_of(server.query("fallback.fwd.test")) == ["192.0.2.5"]


def test_case28_no_nameservers_and_no_fallback_is_servfail_and_one_warning(
    mod_fastdns_factory: Any, mod_tmp: Path
) -> None:
    empty = write_resolv_conf(mod_tmp / "empty2-resolv.conf")
    server = mod_fastdns_factory({"fastdns": {**FAST, "resolv_conf": str(empty)}})
    started = time.monotonic()
    for _ in range(3):
        assert server.query("none.fwd.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1.0
    assert server.stderr.count("no usable nameserver and no fallback") == 1


def test_case29_resolv_conf_rewrite_is_picked_up(
    mod_fastdns_factory: Any, mod_upstream_factory: Any, mod_resolv_conf: ResolvConfWriter
) -> None:
    before = zone(mod_upstream_factory(), "192.0.2.10")
    after = zone(mod_upstream_factory(), "192.0.2.11")
    path = mod_resolv_conf(before, name="vpn-resolv.conf")
    server = mod_fastdns_factory({"fastdns": {**FAST, "resolv_conf": str(path)}})
    assert a_of(server.query("rewrite.fwd.test")) == ["192.0.2.10"]
    mod_resolv_conf(after, name="vpn-resolv.conf")  # atomic rename, as a VPN client does
    changed = time.monotonic()
    assert wait_until(lambda: a_of(server.query("rewrite.fwd.test")) == ["192.0.2.11"], 4.0)
    assert time.monotonic() - changed < 2.5  # "within ~2 s" of the change
    assert "upstream nameservers from" in server.stderr


def test_resolv_conf_self_address_is_skipped(
    mod_fastdns_factory: Any, mod_upstream_factory: Any, mod_tmp: Path
) -> None:
    up = zone(mod_upstream_factory(), "192.0.2.12")
    path = write_resolv_conf(mod_tmp / "self-resolv.conf", "127.0.0.9", up)
    server = mod_fastdns_factory(
        {"fastdns": {**FAST, "resolv_conf": str(path), "listen": "127.0.0.9", "udp_port": 53}}
    )
    assert a_of(server.query("order.fwd.test", timeout=3.0)) == ["192.0.2.12"]
    listed = server.stderr.split("upstream nameservers from", 1)[1].splitlines()[0]
    servers = [s.strip() for s in listed.split(": ", 1)[1].split(",")]
    assert "127.0.0.9" not in servers and up.address in servers


def test_ipv6_upstream_with_scope(
    mod_fastdns_factory: Any, mod_upstream_factory: Any, mod_tmp: Path
) -> None:
    zone(mod_upstream_factory("::1"), "192.0.2.13")
    path = mod_tmp / "v6-resolv.conf"
    path.write_text("nameserver ::1%lo\n")
    server = mod_fastdns_factory({"fastdns": {**FAST, "resolv_conf": str(path)}})
    assert a_of(server.query("v6.fwd.test")) == ["192.0.2.13"]
    assert a_of(server.query("v6.fwd.test", tcp=True)) == ["192.0.2.13"]


def test_disabled_resolver_forwards_to_dns_and_says_so(
    mod_fastdns_factory: Any, mod_upstream_factory: Any
) -> None:
    up = zone(mod_upstream_factory(), "192.0.2.14")
    up.add("disabled.fwd.test", "AAAA", "2001:db8::14")
    up.add("host.lima.internal", "A", "192.0.2.15")
    server = mod_fastdns_factory(
        {
            "hostResolver": {"enabled": False, "hosts": {"static.fwd.test": "10.0.0.1"}},
            "dns": [up.address],
            "fastdns": FAST,
        }
    )
    assert a_of(server.query("disabled.fwd.test")) == ["192.0.2.14"]
    assert "hostResolver is disabled: forwarding every query to the dns: servers" in server.stderr
    # "forwards everything": AAAA (ipv6 is off), static names and the built-ins too, as the
    # guest would ask the dns: servers directly
    reply = server.query("disabled.fwd.test", "AAAA")
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["2001:db8::14"]
    assert a_of(server.query("host.lima.internal")) == ["192.0.2.15"]
    assert server.query("static.fwd.test").rcode() == dns.rcode.NXDOMAIN
    assert up.count("static.fwd.test") == 1


@pytest.fixture(name="raw_up", scope="module")
def _raw_up(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("raw.test")
    up.add("raw.test", "CAA", '0 issue "ca.example"')
    return up


@pytest.fixture(name="native_on", scope="module")
def _native_on(mod_fastdns_factory: Any, raw_up: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory(
        {"fastdns": {"upstream_timeout": 0.3, "cache": {"enabled": False}}}, upstreams=[raw_up]
    )
    return server


@pytest.mark.parametrize("rdtype", ["CAA", "HTTPS", "SOA", "DS"])
def test_case22_other_types_go_upstream_raw_with_native_on(
    native_on: FastDNSProcess, raw_up: FakeUpstream, rdtype: str
) -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(8)))
    q = dns.message.make_query("Raw.Test", rdtype, use_edns=0, want_dnssec=True, options=[cookie])
    sent = q.to_wire()
    raw = raw_udp(native_on.address, native_on.udp_port, sent)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert reply.id == q.id and reply.rcode() == dns.rcode.NOERROR
    (seen,) = [s for s in raw_up.queries if s.qtype == rdtype]
    assert seen.raw_bytes[2:] == sent[2:]
