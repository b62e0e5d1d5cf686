"""``native.forward_first`` (the default) in a real worker: A/AAAA questions that c-ares would
send as is first are forwarded raw first, and c-ares runs only when that reply has no address
and the resolv.conf's search list could still find one. The answers a client sees must be the
ones c-ares would give; what changes is who builds them (and the CPU spent).

Generated resolv.conf and hosts file, FakeUpstreams on loopback, real sockets
(``support.inproc.InProcessServer``). fastdns's own cache is off so every question reaches the
upstream; c-ares' cache is per server, so each test uses its own names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream, dead_address

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("test")
    up.add_zone("corp.test")
    up.add_zone("internal")  # svc.internal: NXDOMAIN as is
    up.add("a.test", "A", "192.0.2.1", ttl=300)
    up.add("a.test", "AAAA", "2001:db8::1", ttl=301)
    up.add("www.test", "CNAME", "a.test.", ttl=60)
    up.add("dangling.test", "CNAME", "gone.test.", ttl=60)  # a CNAME to no address
    up.add("svc.internal.corp.test", "A", "192.0.2.7", ttl=70)  # found only via search
    up.add("dangling.test.corp.test", "A", "192.0.2.8", ttl=80)
    up.add("foo.corp.test", "A", "192.0.2.9", ttl=90)
    up.add("pc.test", "A", "192.0.2.10", ttl=100)
    up.add("txt.test", "TXT", ["one", "two"], ttl=30)
    up.add("test", "MX", "10 mail.test.", ttl=40)
    up.add("_sip._udp.test", "SRV", "1 2 5060 sip.test.", ttl=70)
    up.add("svc.internal.corp.test", "TXT", ["via search"], ttl=30)
    return up


def serve(
    inproc: InProcessFactory,
    tmp_path: Path,
    *servers: str | FakeUpstream,
    search: tuple[str, ...] = ("corp.test",),
    hosts: str = "",
    lima: bool = False,
    **native: Any,
) -> InProcessServer:
    n = len(inproc.made)
    resolv = write_resolv_conf(tmp_path / f"resolv-{n}.conf", *servers, search=search)
    hosts_file = tmp_path / f"hosts-{n}"
    hosts_file.write_text("127.0.0.1 localhost\n" + hosts)
    section = {
        "resolv_conf": str(resolv),
        "hosts_file": str(hosts_file),
        "lima_compat": lima,
        "upstream_timeout": 0.4,
        "cache": {"enabled": False},
        "native": native,
    }
    return inproc({"hostResolver": {"ipv6": True}, "fastdns": section})


def ask(srv: InProcessServer, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(LOCAL, srv.udp_port, name, rdtype, **kw)


def outcomes(srv: InProcessServer) -> dict[str, int]:
    return {k[1]: v for k, v in srv.counters().items() if k[0] == "native_forward_first" and v}


def cares_lookups(srv: InProcessServer) -> int:
    return sum(
        srv.histogram_count("native_duration", t, rc)
        for t in ("A", "AAAA")
        for rc in ("NOERROR", "NXDOMAIN")
    )


def addresses(msg: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in msg.answer for r in rrset if rrset.rdtype in (1, 28)]


@pytest.mark.parametrize(("rdtype", "want"), [("A", "192.0.2.1"), ("AAAA", "2001:db8::1")])
def test_a_name_with_a_dot_is_answered_from_one_raw_forward(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, rdtype: str, want: str
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "a.test", rdtype)
    assert got.rcode() == dns.rcode.NOERROR
    assert addresses(got) == [want]
    assert got.answer[0].ttl in (300, 301)  # the upstream's own TTL
    assert up.count("a.test", rdtype) == 1  # one question upstream, none from c-ares
    assert outcomes(srv) == {"answered": 1}
    assert cares_lookups(srv) == 0
    assert srv.counter("responses", "NOERROR", "forward") == 1


@pytest.mark.parametrize(
    ("name", "rdtype", "want"),
    [
        ("txt.test", "TXT", '"one" "two"'),
        ("_sip._udp.test", "SRV", "1 2 5060 sip.test."),
        ("www.test", "CNAME", "a.test."),
    ],
)
def test_the_other_native_types_are_forwarded_first_too(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, name: str, rdtype: str, want: str
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, name, rdtype)
    assert [r.to_text() for rrset in got.answer for r in rrset] == [want]
    assert outcomes(srv) == {"answered": 1}
    assert up.count(name, rdtype) == 1


def test_a_txt_question_with_no_answer_goes_on_to_the_search_list(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "svc.internal", "TXT")
    assert [r.to_text() for rrset in got.answer for r in rrset] == ['"via search"']
    assert outcomes(srv) == {"search": 1}
    assert srv.histogram_count("native_duration", "TXT", "NOERROR") == 1


def test_the_chain_to_the_address_is_answered_as_the_upstream_gave_it(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "WwW.TeSt")  # 0x20 case: echoed as asked
    assert got.question[0].name.to_text() == "WwW.TeSt."
    assert [r.to_text().lower() for r in got.answer[0]] == ["a.test."]
    assert addresses(got) == ["192.0.2.1"]
    assert outcomes(srv) == {"answered": 1}


def test_no_address_goes_on_to_the_search_list_through_c_ares(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    """svc.internal has one dot (ndots 1): as is first, NXDOMAIN; then c-ares finds
    svc.internal.corp.test, as a program on the host would."""
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "svc.internal")
    assert got.rcode() == dns.rcode.NOERROR
    assert addresses(got) == ["192.0.2.7"]
    assert got.answer[0].name.to_text() == "svc.internal."  # under the query name
    assert outcomes(srv) == {"search": 1}
    assert cares_lookups(srv) == 1
    assert up.count("svc.internal.corp.test", "A") == 1


def test_a_cname_to_nothing_counts_as_no_address(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "dangling.test")
    assert addresses(got) == ["192.0.2.8"]  # dangling.test.corp.test, via the search list
    assert outcomes(srv) == {"search": 1}


def test_without_search_domains_the_raw_negative_answer_stands(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, search=())
    got = ask(srv, "nothere.test")
    assert got.rcode() == dns.rcode.NXDOMAIN
    assert got.authority and got.authority[0].rdtype == 6  # the upstream's SOA: cacheable
    dangling = ask(srv, "dangling.test")  # the CNAME, then nothing: NXDOMAIN for gone.test
    assert dangling.answer and not addresses(dangling)
    assert outcomes(srv) == {"negative": 2}
    assert cares_lookups(srv) == 0
    assert up.count("nothere.test", "A") == 1


def test_a_single_label_name_goes_to_c_ares_for_the_search_list(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "foo")
    assert addresses(got) == ["192.0.2.9"]
    assert outcomes(srv) == {}
    assert cares_lookups(srv) == 1
    assert up.count("foo", "A") == 0  # c-ares tried foo.corp.test first, and found it


def test_ndots_decides_which_names_are_forwarded_first(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    n = len(inproc.made)
    resolv = write_resolv_conf(
        tmp_path / f"resolv-{n}.conf", up, search=("corp.test",), options=("ndots:2",)
    )
    srv = inproc(
        {
            "hostResolver": {},
            "fastdns": {
                "resolv_conf": str(resolv),
                "hosts_file": str(tmp_path / "none"),
                "cache": {"enabled": False},
            },
        }
    )
    assert addresses(ask(srv, "pc.test")) == ["192.0.2.10"]  # one dot < 2: c-ares
    assert outcomes(srv) == {}
    assert cares_lookups(srv) == 1
    assert up.count("pc.test.corp.test", "A") == 1  # the search list went first


def test_hosts_file_localhost_and_onion_never_reach_the_upstream(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up, hosts="198.51.100.4 a.test\n")
    assert addresses(ask(srv, "a.test")) == ["198.51.100.4"]
    assert addresses(ask(srv, "box.localhost")) == ["127.0.0.1"]
    assert ask(srv, "hidden.onion").rcode() == dns.rcode.NXDOMAIN
    assert up.queries == []
    assert outcomes(srv) == {}


def test_tcp_questions_are_forwarded_first_too(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    got = query(LOCAL, srv.tcp_port, "a.test", "A", tcp=True)
    assert addresses(got) == ["192.0.2.1"]
    got = query(LOCAL, srv.tcp_port, "svc.internal", "A", tcp=True)
    assert addresses(got) == ["192.0.2.7"]
    assert outcomes(srv) == {"answered": 1, "search": 1}


def test_after_a_dead_first_server_the_second_answer_still_settles_it(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    """The fast lane times out on the dead server and hands off; the general path's reply
    from the live one is settled like any other (here: no address, so the search list)."""
    srv = serve(inproc, tmp_path, dead_address(), up)
    got = ask(srv, "svc.internal", timeout=5)
    assert addresses(got) == ["192.0.2.7"]
    assert outcomes(srv) == {"search": 1}


def test_every_upstream_failing_is_answered_once_not_asked_again(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    up.add("broken.test", "A", "192.0.2.99")
    up.behave("broken.test", rcode="SERVFAIL")
    srv = serve(inproc, tmp_path, up)
    got = ask(srv, "broken.test", timeout=5)
    assert got.rcode() == dns.rcode.SERVFAIL
    assert outcomes(srv) == {"failed": 1}
    assert cares_lookups(srv) == 0


@pytest.mark.parametrize("how", ["off", "lima_compat"])
def test_off_and_in_lima_compat_c_ares_answers_every_address_question(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, how: str
) -> None:
    srv = (
        serve(inproc, tmp_path, up, forward_first=False)
        if how == "off"
        else serve(inproc, tmp_path, up, lima=True)
    )
    got = ask(srv, "www.test")
    assert addresses(got) == ["192.0.2.1"]
    assert outcomes(srv) == {}
    assert cares_lookups(srv) == 1
    assert srv.counter("responses", "NOERROR", "native") == 1
    if how == "lima_compat":  # flattened under the query name, TTL 5 (Lima's answer)
        assert [(r.name.to_text(), r.ttl) for r in got.answer] == [("www.test.", 5)]
    else:
        assert not got.flags & dns.flags.AA
