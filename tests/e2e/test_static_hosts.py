"""Static hosts and aliases (docs/answering.md) against ``fastdns serve``."""

from __future__ import annotations

import struct
import time
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from support.clients import raw_udp
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

HOSTS = {
    "MY.DOMAIN.COM": "192.168.0.23",
    "my.host": "host.lima.internal",
    "default": "my.domain.com",
    "a": "b",
    "b": "c",
    "c": "10.0.0.1",
    "ext": "example.org",
    "ext2": "www.example.org",  # a CNAME upstream
    "extnx": "missing.example.org",
    "x": "y",
    "y": "x",
    "s": "s",
    "v6only": "fd00::1",
    "local.example.dev": "10.0.0.1",
    "*.test.internal": "10.0.0.9",
    "exact.test.internal": "10.0.0.8",
    "host.lima.internal": "1.2.3.4",  # overridden by the built-in
    "lima-my-example-com": "9.9.9.9",  # overridden by the built-in
    "Dup.Example": "10.1.1.1",
    "dup.example.": "10.1.1.2",  # later in file order: wins, with a warning
    "b" * 46 + ".example.dev": "10.0.0.46",  # a label of length 46: the byte "." on the wire
}


@pytest.fixture(name="upstream", scope="module")
def _upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("example.org")
    up.add_zone("example.dev")
    up.add("example.org", "A", "192.0.2.80", "192.0.2.81", ttl=3600)
    up.add("example.org", "AAAA", "2001:db8::80", ttl=3600)
    up.add("www.example.org", "CNAME", "example.org.")
    up.add("other.example.dev", "A", "192.0.2.7")
    up.add("nonstatic.example.dev", "AAAA", "2001:db8::7")
    return up


def config(ipv6: bool) -> dict[str, Any]:
    return {
        "hostResolver": {"ipv6": ipv6, "hosts": HOSTS},
        "fastdns": {"instance": "my_example.com"},
    }


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory(config(False), upstreams=[upstream])
    return server


@pytest.fixture(name="server6", scope="module")
def _server6(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory(config(True), upstreams=[upstream])
    return server


def rrs(reply: dns.message.Message) -> list[str]:
    return [rr.to_text() for rr in reply.answer]


def texts(reply: dns.message.Message) -> list[str]:
    return [line for rrset in reply.answer for line in rrset.to_text().splitlines()]


def assert_nodata(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


TRANSPORTS = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


@TRANSPORTS
def test_case1_exact_name_lower_case(
    server: FastDNSProcess, upstream: FakeUpstream, tcp: bool
) -> None:
    reply = server.query("my.domain.com", "A", tcp=tcp)
    assert texts(reply) == ["my.domain.com. 5 IN A 192.168.0.23"]
    assert reply.rcode() == dns.rcode.NOERROR
    assert upstream.count("my.domain.com") == 0


@TRANSPORTS
def test_case2_query_case_is_kept(server: FastDNSProcess, tcp: bool) -> None:
    reply = server.query("My.Domain.Com", "A", tcp=tcp)
    assert texts(reply) == ["My.Domain.Com. 5 IN A 192.168.0.23"]
    assert str(reply.question[0].name) == "My.Domain.Com."


def test_case3_alias_cname(server: FastDNSProcess) -> None:
    assert texts(server.query("my.host", "CNAME")) == ["my.host. 5 IN CNAME host.lima.internal."]
    assert texts(server.query("MY.HOST", "CNAME")) == ["MY.HOST. 5 IN CNAME host.lima.internal."]


def test_case4_alias_to_a_differently_cased_key(server: FastDNSProcess) -> None:
    assert texts(server.query("default", "CNAME")) == ["default. 5 IN CNAME my.domain.com."]


def test_case5_chain_cname_is_the_final_target_and_a_is_flattened(server: FastDNSProcess) -> None:
    assert texts(server.query("a", "CNAME")) == ["a. 5 IN CNAME c."]
    reply = server.query("a", "A")
    assert texts(reply) == ["a. 5 IN A 10.0.0.1"]  # no CNAME RR
    assert all(rrset.rdtype == dns.rdatatype.A for rrset in reply.answer)


@TRANSPORTS
def test_case6_alias_to_a_name_resolved_elsewhere(
    server: FastDNSProcess, upstream: FakeUpstream, tcp: bool
) -> None:
    reply = server.query("ext", "A", tcp=tcp)
    assert sorted(texts(reply)) == ["ext. 5 IN A 192.0.2.80", "ext. 5 IN A 192.0.2.81"]
    assert upstream.count("example.org", "A") >= 1
    assert upstream.count("ext") == 0


def test_case6_alias_through_an_upstream_cname_is_flattened(server: FastDNSProcess) -> None:
    reply = server.query("ext2", "A")
    assert sorted(texts(reply)) == ["ext2. 5 IN A 192.0.2.80", "ext2. 5 IN A 192.0.2.81"]


def test_case6_alias_to_a_missing_name_is_nxdomain(server: FastDNSProcess) -> None:
    reply = server.query("extnx", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN and reply.answer == []
    assert str(reply.question[0].name) == "extnx."


def test_case6_alias_query_case_and_rd_kept(server: FastDNSProcess) -> None:
    reply = server.query("EXT", "A", qid=4242)
    assert reply.id == 4242
    assert {rrset.name.to_text() for rrset in reply.answer} == {"EXT."}


@pytest.mark.parametrize(
    ("name", "rdtype"), [("x", "CNAME"), ("x", "A"), ("y", "A"), ("s", "A"), ("s", "CNAME")]
)
def test_case7_cycles_answer_servfail_fast(
    server: FastDNSProcess, upstream: FakeUpstream, name: str, rdtype: str
) -> None:
    started = time.monotonic()
    reply = server.query(name, rdtype)
    assert time.monotonic() - started < 1.0
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert upstream.count(name) == 0


def test_case7_cycles_are_warned_about_at_load(server: FastDNSProcess) -> None:
    assert "hostResolver.hosts.x: alias cycle" in server.stderr
    assert "hostResolver.hosts.s: alias cycle" in server.stderr


@TRANSPORTS
def test_case8_cname_of_a_plain_static_host_is_nodata_locally(
    server: FastDNSProcess, upstream: FakeUpstream, tcp: bool
) -> None:
    assert_nodata(server.query("My.Domain.Com", "CNAME", tcp=tcp))
    assert upstream.count("my.domain.com") == 0


def test_case9_builtins_override_user_keys(server: FastDNSProcess) -> None:
    assert texts(server.query("host.lima.internal", "A")) == [
        "host.lima.internal. 5 IN A 192.168.5.2"
    ]
    assert texts(server.query("lima-my-example-com", "A")) == [
        "lima-my-example-com. 5 IN A 192.168.5.15"
    ]


def test_case10_duplicate_keys_later_wins_with_a_warning(server: FastDNSProcess) -> None:
    for _ in range(3):  # deterministic, not map order
        assert texts(server.query("dup.example", "A")) == ["dup.example. 5 IN A 10.1.1.2"]
    assert "hostResolver.hosts.dup.example.: duplicates 'Dup.Example'" in server.stderr


def test_case11_ipv6_entry_with_ipv6_off(server: FastDNSProcess, upstream: FakeUpstream) -> None:
    assert_nodata(server.query("v6only", "A"))
    assert_nodata(server.query("v6only", "AAAA"))
    assert upstream.count("v6only") == 0


def test_case11_ipv6_entry_with_ipv6_on(server6: FastDNSProcess) -> None:
    assert texts(server6.query("v6only", "AAAA")) == ["v6only. 5 IN AAAA fd00::1"]
    assert_nodata(server6.query("v6only", "A"))


@pytest.mark.parametrize("rdtype", ["AAAA", "TXT", "MX", "SOA", "PTR", "SRV", "HTTPS", "NS"])
def test_case12_other_types_of_a_static_name_are_nodata(
    server6: FastDNSProcess, upstream: FakeUpstream, rdtype: str
) -> None:
    assert_nodata(server6.query("host.lima.internal", rdtype))
    assert upstream.count("host.lima.internal") == 0


@TRANSPORTS
def test_case13_siblings_are_not_hijacked(
    server: FastDNSProcess, upstream: FakeUpstream, tcp: bool
) -> None:
    reply = server.query("other.example.dev", "A", tcp=tcp)
    assert texts(reply) == ["other.example.dev. 300 IN A 192.0.2.7"]
    assert upstream.count("other.example.dev", "A") >= 1
    # and a name under the static one is not static either
    reply = server.query("sub.local.example.dev", "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN


def test_case14_wildcards(server: FastDNSProcess, upstream: FakeUpstream) -> None:
    assert texts(server.query("a.test.internal", "A")) == ["a.test.internal. 5 IN A 10.0.0.9"]
    assert texts(server.query("A.B.Test.Internal", "A")) == ["A.B.Test.Internal. 5 IN A 10.0.0.9"]
    assert texts(server.query("exact.test.internal", "A")) == [
        "exact.test.internal. 5 IN A 10.0.0.8"
    ]
    assert_nodata(server.query("a.test.internal", "TXT"))
    upstream.clear()
    server.query("test.internal", "A")  # *.x does not match x: forwarded
    assert upstream.count("test.internal", "A") >= 1


@TRANSPORTS
def test_case15_ptr_for_static_ips(server: FastDNSProcess, tcp: bool) -> None:
    reply = server.query("2.5.168.192.in-addr.arpa", "PTR", tcp=tcp)
    assert texts(reply) == ["2.5.168.192.in-addr.arpa. 5 IN PTR host.lima.internal."]
    reply = server.query("15.5.168.192.IN-ADDR.ARPA", "PTR")
    assert texts(reply) == ["15.5.168.192.IN-ADDR.ARPA. 5 IN PTR lima-my-example-com."]


def test_aaaa_with_ipv6_off_is_nodata_for_every_name(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    # Lima PR #3419: AAAA is answered empty at once, no lookup at all
    assert_nodata(server.query("nonstatic.example.dev", "AAAA"))
    assert_nodata(server.query("ext", "AAAA"))
    assert upstream.count("nonstatic.example.dev") == 0


def test_aaaa_alias_with_ipv6_on_is_flattened(server6: FastDNSProcess) -> None:
    assert texts(server6.query("ext", "AAAA")) == ["ext. 5 IN AAAA 2001:db8::80"]


def test_static_reply_flags(server: FastDNSProcess) -> None:
    reply = server.query("my.domain.com", "A", rd=False)
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.RD  # copied from the query
    assert not reply.flags & dns.flags.AA
    assert reply.edns == -1  # no OPT in the query, none in the reply
    reply = server.query("my.domain.com", "A", edns=1232, do=True)
    assert reply.edns == 0 and reply.ednsflags & dns.flags.DO


def test_dig_against_static_names(server: FastDNSProcess) -> None:
    out = server.dig("+short", "my.domain.com")
    assert out.stdout.split() == ["192.168.0.23"]
    out = server.dig("+short", "My.Host", "CNAME", tcp=True)
    assert out.stdout.split() == ["host.lima.internal."]
    out = server.dig("-x", "192.168.5.2", "+short")
    assert out.stdout.split() == ["host.lima.internal."]


def test_a_label_holding_a_dot_is_not_a_static_name(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    # one label "my.domain" then "com": not the three-label static name my.domain.com
    wire = (
        struct.pack("!HHHHHH", 0x5151, 0x0100, 1, 0, 0, 0)
        + b"\x09my.domain\x03com\x00\x00\x01\x00\x01"
    )
    raw = raw_udp(server.address, server.udp_port, wire)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert "192.168.0.23" not in reply.to_text()
    assert reply.question[0].name.labels[0] == b"my.domain"  # echoed as asked


def test_a_46_byte_label_is_still_matched(server: FastDNSProcess) -> None:
    name = "b" * 46 + ".example.dev"
    assert texts(server.query(name, "A")) == [f"{name}. 5 IN A 10.0.0.46"]


# ------------------------------------------------------------------------------ alias -> hosts file


@pytest.fixture(name="filealias", scope="module")
def _filealias(mod_fastdns_factory: Any, upstream: FakeUpstream, mod_tmp: Any) -> FastDNSProcess:
    """Two workers; static aliases whose targets only the hosts file knows.
    The upstream has no such names: asking it gets NXDOMAIN."""
    hosts = mod_tmp / "alias-hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n10.7.7.7 hostsfile.test\nfd00::77 hostsfile.test\n"
        "10.7.7.8 second.test\n"
    )
    aliases = {
        "alias.test": "hostsfile.test",
        "alias2.test": "second.test",
        "alias6.test": "hostsfile.test",
    }
    server: FastDNSProcess = mod_fastdns_factory(
        {
            "hostResolver": {"ipv6": True, "hosts": aliases},
            "fastdns": {"workers": 2, "hosts_file": str(hosts)},
        },
        upstreams=[upstream],
    )
    return server


def test_alias_to_a_hosts_file_name_does_not_poison_the_target(
    filealias: FastDNSProcess, upstream: FakeUpstream
) -> None:
    """One query for the alias used to cache the upstream's NXDOMAIN under the target's own key
    (the alias's lookup skipped the hosts file): then the hosts-file name got NXDOMAIN."""
    for _ in range(8):  # fresh source ports: both workers see the alias
        assert texts(filealias.query("alias.test", "A")) == ["alias.test. 5 IN A 10.7.7.7"]
    for _ in range(8):
        reply = filealias.query("hostsfile.test", "A")
        assert reply.rcode() == dns.rcode.NOERROR
        assert texts(reply) == ["hostsfile.test. 5 IN A 10.7.7.7"]
    assert upstream.count("hostsfile.test") == 0


def test_alias_to_a_hosts_file_name_asked_after_the_target(
    filealias: FastDNSProcess, upstream: FakeUpstream
) -> None:
    for _ in range(8):
        assert texts(filealias.query("second.test", "A")) == ["second.test. 5 IN A 10.7.7.8"]
    for _ in range(8):
        assert texts(filealias.query("alias2.test", "A")) == ["alias2.test. 5 IN A 10.7.7.8"]
    for _ in range(8):
        assert texts(filealias.query("second.test", "A")) == ["second.test. 5 IN A 10.7.7.8"]
    assert upstream.count("second.test") == 0


def test_alias_to_a_hosts_file_name_aaaa(filealias: FastDNSProcess, upstream: FakeUpstream) -> None:
    for _ in range(8):
        assert texts(filealias.query("alias6.test", "AAAA")) == ["alias6.test. 5 IN AAAA fd00::77"]
    for _ in range(8):
        assert texts(filealias.query("hostsfile.test", "AAAA")) == [
            "hostsfile.test. 5 IN AAAA fd00::77"
        ]
    assert upstream.count("hostsfile.test") == 0
