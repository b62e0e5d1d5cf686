"""fastdns.answers: wire replies rebuilt from c-ares results (pycares' own result dataclasses)."""

from __future__ import annotations

from socket import AF_INET, AF_INET6  # constants only: no socket is opened

import dns.message
import dns.rcode
import dns.rdatatype
import pycares
import pytest

from fastdns.dns import answers, wire
from fastdns.dns.answers import AnswerStyle, Unusable
from fastdns.resolve.native.cares import TXTStrings

DEFAULT = AnswerStyle()
LIMA = AnswerStyle(lima_compat=True)


def q(name: str = "Host.Test", rdtype: str = "A", *, edns: bool = False) -> wire.Query:
    msg = dns.message.make_query(name, rdtype, id=0x4242, use_edns=0 if edns else False)
    return wire.parse_query(msg.to_wire())


def parsed(reply: bytes) -> dns.message.Message:
    return dns.message.from_wire(reply)


def lines(msg: dns.message.Message, part: str = "answer") -> list[str]:
    out: list[str] = []
    for rrset in getattr(msg, part):
        out += rrset.to_text().splitlines()
    return out


def node(ip: str, ttl: int = 300) -> pycares.AddrInfoNode:
    family = AF_INET6 if ":" in ip else AF_INET
    addr = (ip.encode(), 0, 0, 0) if family == AF_INET6 else (ip.encode(), 0)
    return pycares.AddrInfoNode(ttl=ttl, flags=0, family=family, socktype=0, protocol=0, addr=addr)


def gai(
    *nodes: pycares.AddrInfoNode, cnames: tuple[tuple[str, str, int], ...] = ()
) -> pycares.AddrInfoResult:
    return pycares.AddrInfoResult(
        cnames=[pycares.AddrInfoCname(ttl=t, alias=a, name=n) for a, n, t in cnames],
        nodes=list(nodes),
    )


def rec(name: str, rtype: int, data: object, ttl: int = 30) -> pycares.DNSRecord:
    return pycares.DNSRecord(name=name, type=rtype, record_class=1, ttl=ttl, data=data)


def result(
    *answer: pycares.DNSRecord, authority: tuple[pycares.DNSRecord, ...] = ()
) -> pycares.DNSResult:
    return pycares.DNSResult(answer=list(answer), authority=list(authority), additional=[])


# ------------------------------------------------------------------------------ names, TXT


def test_txt_strings_resplit_at_255_and_keep_an_empty_string() -> None:
    assert answers.txt_strings(b"x" * 290) == [b"x" * 255, b"x" * 35]
    assert answers.txt_strings(b"x" * 255) == [b"x" * 255]
    assert answers.txt_strings(b"") == [b""]


def test_text_to_wire_reads_c_ares_escapes() -> None:
    assert answers.text_to_wire("a.b") == b"\x01a\x01b\x00"
    assert answers.text_to_wire(r"a\.b.c") == b"\x03a.b\x01c\x00"
    assert answers.text_to_wire(r"a\032b.c") == b"\x03a b\x01c\x00"
    assert answers.text_to_wire("") == b"\x00"
    with pytest.raises(Unusable):
        answers.text_to_wire("a..b")


def test_cname_chain_orders_and_deduplicates_hops() -> None:
    # AF_UNSPEC lists hops twice; the order given may not be the chain's
    hops = [("b.test", "c.test", 20), ("a.test", "b.test", 10), ("b.test", "c.test", 20)]
    res = gai(node("192.0.2.1"), cnames=tuple(hops))
    chain = answers.cname_chain(res.cnames)
    assert [(h.alias, h.target, h.ttl) for h in chain] == [
        ("a.test", "b.test", 10),
        ("b.test", "c.test", 20),
    ]


def test_cname_chain_survives_a_loop() -> None:
    res = gai(node("192.0.2.1"), cnames=(("a", "b", 1), ("b", "a", 1)))
    assert len(answers.cname_chain(res.cnames)) == 2


# ------------------------------------------------------------------------------ A / AAAA


def test_addresses_keep_resolver_order_and_query_case() -> None:
    res = gai(node("1.2.3.4", 300), node("2001:db8::1", 300), node("5.6.7.8", 200))
    reply = answers.address_reply(q(), res, DEFAULT, local=False)
    assert reply is not None
    msg = parsed(reply)
    assert msg.id == 0x4242 and msg.flags & 0x0080  # RA set on local replies
    assert lines(msg) == ["Host.Test. 200 IN A 1.2.3.4", "Host.Test. 200 IN A 5.6.7.8"]


def test_aaaa_takes_only_ipv6_nodes() -> None:
    res = gai(node("1.2.3.4"), node("2001:db8::1", 301))
    reply = answers.address_reply(q(rdtype="AAAA"), res, DEFAULT, local=False)
    assert reply is not None
    assert lines(parsed(reply)) == ["Host.Test. 301 IN AAAA 2001:db8::1"]


def test_no_address_of_the_family_is_none() -> None:
    res = gai(node("2001:db8::1"))
    assert answers.address_reply(q(), res, DEFAULT, local=False) is None  # Lima forwards then


def test_cname_chain_is_emitted_before_the_addresses() -> None:
    res = gai(
        node("192.0.2.1", 300),
        node("192.0.2.1", 300),
        cnames=(("host.test", "mid.test", 60), ("mid.test", "end.test", 120)),
    )
    reply = answers.address_reply(q(), res, DEFAULT, local=False)
    assert reply is not None
    assert lines(parsed(reply)) == [
        "Host.Test. 60 IN CNAME mid.test.",
        "mid.test. 120 IN CNAME end.test.",
        "end.test. 300 IN A 192.0.2.1",  # duplicates dropped
    ]


def test_lima_compat_flattens_the_chain_with_ttl_5() -> None:
    res = gai(node("192.0.2.1", 300), cnames=(("host.test", "end.test", 60),))
    reply = answers.address_reply(q(), res, LIMA, local=False)
    assert reply is not None
    assert lines(parsed(reply)) == ["Host.Test. 5 IN A 192.0.2.1"]
    assert answers.flattened_ttl(res, wire.A) == 60  # min over the chain


def test_hosts_file_answers_get_the_configured_ttl() -> None:
    res = gai(node("10.1.1.1", 0))
    reply = answers.address_reply(q(), res, AnswerStyle(local_ttl=42), local=True)
    assert reply is not None
    assert lines(parsed(reply)) == ["Host.Test. 42 IN A 10.1.1.1"]


def test_local_replies_echo_opt() -> None:
    reply = answers.address_reply(q(edns=True), gai(node("10.0.0.1")), DEFAULT, local=False)
    assert reply is not None
    assert parsed(reply).edns == 0


# ------------------------------------------------------------------------------ search()


def test_txt_records_keep_order_and_resplit_long_strings() -> None:
    res = result(
        rec("host.test", wire.TXT, pycares.TXTRecordData(data=b"y" * 290)),
        rec("host.test", wire.TXT, pycares.TXTRecordData(data=b"")),
    )
    reply = answers.records_reply(q(rdtype="TXT"), res, DEFAULT)
    assert reply is not None
    rrs = list(parsed(reply).answer[0])
    assert [r.strings for r in rrs] == [(b"y" * 255, b"y" * 35), (b"",)]


def test_txt_strings_as_received_when_the_parser_kept_them() -> None:
    data = TXTStrings(data=b"key=avalue=b", strings=(b"key=a", b"value=b"))
    res = result(rec("host.test", wire.TXT, data))
    reply = answers.records_reply(q(rdtype="TXT"), res, DEFAULT)
    assert reply is not None
    assert [r.strings for r in parsed(reply).answer[0]] == [(b"key=a", b"value=b")]
    reply = answers.records_reply(q(rdtype="TXT"), res, LIMA)
    assert reply is not None
    assert [r.strings for r in parsed(reply).answer[0]] == [(b"key=avalue=b",)]


def test_records_found_through_the_search_list_go_under_the_query_name() -> None:
    res = result(
        rec("foo.corp.test", wire.MX, pycares.MXRecordData(priority=10, exchange="mx.corp.test"))
    )
    reply = answers.records_reply(q("foo", "MX"), res, DEFAULT)
    assert reply is not None
    assert lines(parsed(reply)) == ["foo. 30 IN MX 10 mx.corp.test."]


def test_srv_ns_and_cname_rdata() -> None:
    srv = result(
        rec(
            "_sip._udp.test",
            wire.SRV,
            pycares.SRVRecordData(priority=1, weight=2, port=5060, target="sip.test"),
        )
    )
    reply = answers.records_reply(q("_sip._udp.test", "SRV"), srv, DEFAULT)
    assert reply is not None
    assert lines(parsed(reply)) == ["_sip._udp.test. 30 IN SRV 1 2 5060 sip.test."]
    ns = result(rec("test", wire.NS, pycares.NSRecordData(nsdname="ns1.test"), ttl=7))
    reply = answers.records_reply(q("test", "NS"), ns, DEFAULT)
    assert reply is not None
    assert lines(parsed(reply)) == ["test. 7 IN NS ns1.test."]
    cn = result(rec("www.test", wire.CNAME, pycares.CNAMERecordData(cname="web.test")))
    reply = answers.records_reply(q("www.test", "CNAME"), cn, DEFAULT)
    assert reply is not None
    assert lines(parsed(reply)) == ["www.test. 30 IN CNAME web.test."]


def test_a_chain_ending_in_nodata_keeps_the_chain_and_the_soa() -> None:
    soa = pycares.SOARecordData(
        mname="ns.test", rname="hostmaster.test", serial=1, refresh=2, retry=3, expire=4, minimum=60
    )
    res = result(
        rec("a.test", wire.CNAME, pycares.CNAMERecordData(cname="b.test"), ttl=60),
        authority=(rec("test", wire.SOA, soa, ttl=60),),
    )
    reply = answers.records_reply(q("a.test", "TXT"), res, DEFAULT)
    assert reply is not None
    msg = parsed(reply)
    assert msg.rcode() == dns.rcode.NOERROR
    assert lines(msg) == ["a.test. 60 IN CNAME b.test."]
    assert lines(msg, "authority") == ["test. 60 IN SOA ns.test. hostmaster.test. 1 2 3 4 60"]


def test_lima_compat_records_flattened_ttl_5_empty_hosts_skipped() -> None:
    res = result(
        rec("a.test", wire.CNAME, pycares.CNAMERecordData(cname="b.test")),
        rec("b.test", wire.MX, pycares.MXRecordData(priority=0, exchange="")),  # null MX
        rec("b.test", wire.MX, pycares.MXRecordData(priority=10, exchange="mx.test")),
    )
    reply = answers.records_reply(q("a.test", "MX"), res, LIMA)
    assert reply is not None
    assert lines(parsed(reply)) == ["a.test. 5 IN MX 10 mx.test."]
    only_empty = result(rec("a.test", wire.NS, pycares.NSRecordData(nsdname="")))
    assert answers.records_reply(q("a.test", "NS"), only_empty, LIMA) is None


def test_default_keeps_a_null_mx() -> None:
    res = result(rec("a.test", wire.MX, pycares.MXRecordData(priority=0, exchange="")))
    reply = answers.records_reply(q("a.test", "MX"), res, DEFAULT)
    assert reply is not None
    assert lines(parsed(reply)) == ["a.test. 30 IN MX 0 ."]  # RFC 7505


def test_canonical_cname_is_the_end_of_the_chain() -> None:
    res = gai(node("192.0.2.1"), cnames=(("a.test", "b.test", 60), ("b.test", "c.test", 60)))
    reply = answers.canonical_cname_reply(q("a.test", "CNAME"), res, LIMA)
    assert reply is not None
    assert lines(parsed(reply)) == ["a.test. 5 IN CNAME c.test."]
    assert answers.canonical_cname_reply(q("a.test", "CNAME"), gai(node("1.1.1.1")), LIMA) is None


def test_negative_replies_have_no_soa() -> None:
    msg = parsed(answers.negative_reply(q(), wire.NXDOMAIN, DEFAULT))
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert not msg.answer and not msg.authority
    assert msg.question[0].rdtype == dns.rdatatype.A
