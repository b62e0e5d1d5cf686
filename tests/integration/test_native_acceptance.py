"""Native lookups and record building as Lima's host agent does them (docs/answering.md,
"Native resolution"; docs/lima-differences.md), against a real worker whose native path (c-ares)
asks a FakeUpstream.

Lima's "native" is the host's resolver library; here it is c-ares reading a generated
resolv.conf, and the results are records on the FakeUpstream. Lima's behaviour is checked with
``lima_compat: true``; the default behaviour is checked next to it where it differs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream, Seen

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
LONG = "1234567890" * 29  # 290 characters, as in Lima's dns_test.go


def ordered(*rrsets: tuple[str, str, int, list[str]]) -> Any:
    """A FakeUpstream handler answering these RRsets in exactly this order (no shuffling)."""
    table: dict[tuple[str, int], list[dns.rrset.RRset]] = {}
    for name, rdtype, ttl, values in rrsets:
        rtype = dns.rdatatype.from_text(rdtype)
        rrset = dns.rrset.RRset(dns.name.from_text(name), dns.rdataclass.IN, rtype)
        for v in values:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, rtype, v), ttl)
        table.setdefault((name.rstrip(".").lower(), rtype), []).append(rrset)

    def handler(msg: dns.message.Message, seen: Seen) -> bytes | None:
        q = msg.question[0]
        found = table.get((q.name.to_text().rstrip(".").lower(), q.rdtype))
        if found is None:
            return None
        response = dns.message.make_response(msg, recursion_available=True)
        response.answer.extend(found)
        return response.to_wire(want_shuffle=False)

    return handler


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("test")
    up.handler = ordered(
        ("n.test", "A", 300, ["1.2.3.4", "5.6.7.8"]),
        ("n.test", "AAAA", 300, ["2001:db8::1"]),
        ("multiplerecords.test", "TXT", 60, ['"record 1"', '"record 2"']),
    )
    up.add("v6.test", "AAAA", "2001:db8::6")
    up.add("onerecord.test", "TXT", ["My txt record"], ttl=60)
    up.add("multistringrecord.test", "TXT", [LONG[:255], LONG[255:]], ttl=60)
    up.add("empty.test", "TXT", [""], ttl=60)
    up.add("mx.test", "MX", "10 mail.test.", ttl=60)
    up.add("ns.test", "NS", "ns1.test.", ttl=60)
    up.add("_x._tcp.test", "SRV", "1 2 3 target.test.", ttl=60)
    up.add("plain.test", "A", "192.0.2.1", ttl=300)
    up.add("alias.test", "CNAME", "plain.test.", ttl=60)
    return up


def serve(
    inproc: InProcessFactory,
    tmp_path: Path,
    up: FakeUpstream,
    *,
    lima: bool,
    ipv6: bool = False,
    **fastdns: Any,
) -> InProcessServer:
    resolv = write_resolv_conf(tmp_path / f"resolv-{len(inproc.made)}.conf", up)
    # fastdns's own cache off: these tests look at what the native path itself sends; and
    # c-ares for every A/AAAA too (native.forward_first has its own tests)
    native = {"forward_first": False, **fastdns.pop("native", {})}
    section = {
        "resolv_conf": str(resolv),
        "lima_compat": lima,
        "cache": {"enabled": False},
        "native": native,
        **fastdns,
    }
    return inproc({"hostResolver": {"ipv6": ipv6}, "fastdns": section})


def lines(msg: dns.message.Message, part: str = "answer") -> list[str]:
    out: list[str] = []
    for rrset in getattr(msg, part):
        out += rrset.to_text().splitlines()
    return out


def ask(srv: InProcessServer, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(LOCAL, srv.udp_port, name, rdtype, **kw)


def fallbacks(srv: InProcessServer) -> dict[str, int]:
    return {k[1]: v for k, v in srv.counters().items() if k[0] == "native_fallback"}


# ------------------------------------------------------------- A and AAAA


@pytest.mark.parametrize(("lima", "ttl"), [(True, 5), (False, 300)])
def test_16_addresses_in_resolver_order(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, lima: bool, ttl: int
) -> None:
    srv = serve(inproc, tmp_path, up, lima=lima)
    assert lines(ask(srv, "n.test", "A")) == [
        f"n.test. {ttl} IN A 1.2.3.4",
        f"n.test. {ttl} IN A 5.6.7.8",
    ]
    aaaa = ask(srv, "n.test", "AAAA")  # ipv6: false
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer
    assert up.count("n.test", "AAAA") == 0  # no native call


def test_16_ipv6_on_gives_one_aaaa(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=True, ipv6=True)
    assert lines(ask(srv, "n.test", "AAAA")) == ["n.test. 5 IN AAAA 2001:db8::1"]


# ---------------------------------------------------------- negative answers


def test_17_native_nxdomain_is_forwarded_and_returned_unchanged(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=True)
    got = ask(srv, "missing.test", "A", qid=0xBEEF)
    want = query(up.address, 53, "missing.test", "A")
    assert got.id == 0xBEEF
    assert got.rcode() == want.rcode() == dns.rcode.NXDOMAIN
    assert lines(got, "authority") == lines(want, "authority") != []
    assert fallbacks(srv) == {"nxdomain": 1}


def test_17b_default_answers_nxdomain_natively(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=False)
    got = ask(srv, "missing.test", "A")
    assert got.rcode() == dns.rcode.NXDOMAIN and not got.authority
    assert srv.counter("responses", "NXDOMAIN", "native") == 1


def test_18_only_ipv6_for_an_a_query_is_forwarded(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=True)
    got = ask(srv, "v6.test", "A")
    assert got.rcode() == dns.rcode.NOERROR and not got.answer and got.authority  # upstream's
    assert fallbacks(srv) == {"nodata": 1}
    assert srv.counter("responses", "NOERROR", "forward") == 1


# ---------------------------------------------------------------------- TXT


def test_19_txt_records(inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream) -> None:
    srv = serve(inproc, tmp_path, up, lima=True)
    multi = ask(srv, "multistringrecord.test", "TXT").answer[0]
    assert [r.strings for r in multi] == [(LONG[:255].encode(), LONG[255:].encode())]
    assert lines(ask(srv, "multiplerecords.test", "TXT")) == [
        'multiplerecords.test. 5 IN TXT "record 1"',
        'multiplerecords.test. 5 IN TXT "record 2"',
    ]
    assert lines(ask(srv, "onerecord.test", "TXT")) == ['onerecord.test. 5 IN TXT "My txt record"']
    # B: an empty TXT string is one "" string, never zero strings
    assert [r.strings for r in ask(srv, "empty.test", "TXT").answer[0]] == [(b"",)]


# ------------------------------------------------------------- MX, NS, SRV


@pytest.mark.parametrize(
    ("name", "rdtype", "rdata"),
    [
        ("mx.test", "MX", "10 mail.test."),
        ("ns.test", "NS", "ns1.test."),
        ("_x._tcp.test", "SRV", "1 2 3 target.test."),
    ],
)
def test_20_mx_ns_srv_are_copied(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, name: str, rdtype: str, rdata: str
) -> None:
    srv = serve(inproc, tmp_path, up, lima=True)
    got = lines(ask(srv, name.upper(), rdtype))
    # owner: the query's case; rdata names may carry it too (the upstream compresses against
    # the question, and names compare case-insensitively)
    assert [line.lower() for line in got] == [f"{name}. 5 in {rdtype.lower()} {rdata}"]
    assert got[0].startswith(name.upper() + ". 5 IN")


def test_20_an_error_means_forward(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.behave("mx.test", qtype="MX", rcode="REFUSED", times=2)  # c-ares: attempts 2
    srv = serve(inproc, tmp_path, up, lima=True)
    assert lines(ask(srv, "mx.test", "MX")) == ["mx.test. 60 IN MX 10 mail.test."]  # raw
    assert fallbacks(srv) == {"refused": 1}


# -------------------------------------------------------------------- CNAME


def test_21_cname_query_for_a_name_without_cname_is_forwarded(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=True)
    got = ask(srv, "plain.test", "CNAME")
    assert got.rcode() == dns.rcode.NOERROR and not got.answer and got.authority
    assert fallbacks(srv) == {"nodata": 1}
    # and a real alias is answered natively with the final name
    assert lines(ask(srv, "alias.test", "CNAME")) == ["alias.test. 5 IN CNAME plain.test."]


def test_21b_default_answers_nodata_natively(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, lima=False)
    got = ask(srv, "plain.test", "CNAME")
    assert got.rcode() == dns.rcode.NOERROR and not got.answer
    assert fallbacks(srv) == {}


# ------------------------------------------------------------- other types


@pytest.mark.parametrize("rdtype", ["PTR", "SOA", "CAA", "HTTPS", "DS", "DNSKEY", "ANY"])
def test_22_other_types_are_forwarded_raw_with_edns_options(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, rdtype: str
) -> None:
    srv = serve(inproc, tmp_path, up, lima=False)
    cookie = dns.edns.CookieOption(b"\x01\x02\x03\x04\x05\x06\x07\x08", b"")
    msg = dns.message.make_query(
        "plain.test", rdtype, use_edns=0, want_dnssec=True, options=[cookie]
    )
    dns.query.udp(msg, LOCAL, timeout=2, port=srv.udp_port)
    seen = [s.message() for s in up.queries if s.qtype == rdtype]
    assert len(seen) == 1
    assert seen[0].ednsflags & dns.flags.DO
    assert any(isinstance(o, dns.edns.CookieOption) for o in seen[0].options)
    assert fallbacks(srv) == {"unsupported_type": 1}


# ------------------------------------------------------------ reply header


def test_23_local_replies_ra_question_opt_and_class(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    # No packet cache: the second query must reach the native path too, not be a cache hit.
    srv = serve(inproc, tmp_path, up, lima=False, cache={"enabled": False})
    with_opt = ask(srv, "PlAiN.TeSt", "A", edns=1232)
    assert with_opt.flags & dns.flags.RA
    assert with_opt.question[0].name.to_text() == "PlAiN.TeSt."  # echoed exactly (0x20)
    assert with_opt.edns == 0
    without = ask(srv, "plain.test", "A")
    assert without.edns == -1
    chaos = ask(srv, "plain.test", "A", rdclass="CH")
    assert chaos.rcode() in (dns.rcode.REFUSED, dns.rcode.NOTIMP)
    assert srv.counter("responses", "NOERROR", "native") == 2


# ---------------------------------------------------------------- TTLs


@pytest.mark.parametrize(("lima", "a_ttl", "cname_ttl"), [(False, 300, 60), (True, 5, None)])
def test_24_ttls_pass_through_unless_lima_compat(
    inproc: InProcessFactory,
    tmp_path: Path,
    up: FakeUpstream,
    lima: bool,
    a_ttl: int,
    cname_ttl: int | None,
) -> None:
    srv = serve(inproc, tmp_path, up, lima=lima)
    want = [f"alias.test. {cname_ttl} IN CNAME plain.test."] if cname_ttl is not None else []
    owner = "plain.test." if cname_ttl is not None else "alias.test."
    want.append(f"{owner} {a_ttl} IN A 192.0.2.1")
    assert lines(ask(srv, "alias.test", "A")) == want


# -------------------------------------------------------- hanging lookups


def test_45_a_hanging_lookup_does_not_stall_others(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.behave("printer.local", drop=True)  # an mDNS-ish miss that never comes back
    srv = serve(
        inproc,
        tmp_path,
        up,
        lima=False,
        deadline=2.0,
        upstream_timeout=0.5,
        native={"timeout": 1.0},
    )
    with ThreadPoolExecutor(1) as pool:
        t0 = time.monotonic()
        hanging = pool.submit(ask, srv, "printer.local", "A", timeout=6.0)
        assert up.wait_for(1, "printer.local", "A")
        for name in ("plain.test", "mx.test"):
            assert ask(srv, name, "A").rcode() in (dns.rcode.NOERROR,)
        assert not hanging.done()
        got = hanging.result(6.0)
    assert got.rcode() in (dns.rcode.SERVFAIL, dns.rcode.NXDOMAIN)
    assert time.monotonic() - t0 < 2.0 + 1.0  # the configured deadline, plus slack
    assert fallbacks(srv) == {"timeout": 1}
