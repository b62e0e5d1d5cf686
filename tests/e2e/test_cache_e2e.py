"""The packet cache end to end: ``fastdns serve`` in front of a FakeUpstream on 127.0.0.x:53.

One server per module with prefetch and serve-stale on; each test uses names of its own, so
that query counts at the upstream belong to that test alone.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from support.clients import make_query
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

CACHE = {"prefetch": 3, "prefetch_percent": 50, "serve_stale": 3600, "stale_ttl": 30}
# One upstream: a dead one fails fast (two attempts of 0.3 s, 1.5 s at most per query).
FAST = {"upstream_timeout": 0.3, "deadline": 1.5, "native": {"enabled": False}, "cache": CACHE}


@pytest.fixture(name="upstream", scope="module")
def _upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("cache.test", soa_minimum=40, soa_ttl=3600)
    return up


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory({"fastdns": FAST}, upstreams=[upstream])
    return server


def a_of(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == 1]


def ttl_of(reply: dns.message.Message) -> int:
    return min(rrset.ttl for rrset in (*reply.answer, *reply.authority))


def wait_out_ttl(ttl: float, since: float) -> None:
    """Sleep until ``ttl`` seconds (plus a margin) after ``since``, the moment the test had the
    reply in hand (fastdns stored it earlier). Expiry is a clock condition that only time makes
    true; polling with queries instead would count as cache hits and could start a prefetch,
    which changes the upstream counts these tests check. TTLs are whole seconds, 1 at least."""
    time.sleep(max(0.0, since + ttl + 0.15 - time.monotonic()))


def mixed_case(name: str, bits: int) -> str:
    """``name`` with letter k upper-cased when bit k of ``bits`` is set (a 0x20 pattern)."""
    return "".join(c.upper() if (bits >> k) & 1 else c for k, c in enumerate(name))


def test_second_query_comes_from_the_cache(server: FastDNSProcess, upstream: FakeUpstream) -> None:
    upstream.add("hit.cache.test", "A", "192.0.2.1", ttl=300)
    first = server.query("hit.cache.test", qid=100)
    second = server.query("HiT.cAcHe.TeSt", qid=200)
    assert a_of(first) == a_of(second) == ["192.0.2.1"]
    assert second.id == 200 and second.question[0].name.to_text() == "HiT.cAcHe.TeSt."
    assert upstream.count("hit.cache.test") == 1
    over_tcp = server.query("hit.cache.test", tcp=True)
    assert a_of(over_tcp) == ["192.0.2.1"] and upstream.count("hit.cache.test") == 1


def test_ttl_counts_down(server: FastDNSProcess, upstream: FakeUpstream) -> None:
    upstream.add("ttl.cache.test", "A", "192.0.2.2", ttl=100)
    seen = [ttl_of(server.query("ttl.cache.test"))]
    assert seen[0] == 100
    deadline = time.monotonic() + 5
    while seen[-1] == 100 and time.monotonic() < deadline:
        time.sleep(0.05)
        seen.append(ttl_of(server.query("ttl.cache.test")))
    assert seen[-1] == 99
    assert upstream.count("ttl.cache.test") == 1


def test_negative_answers_are_cached_for_the_soa_minimum(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    first = server.query("nothing.cache.test")
    again = server.query("nothing.cache.test", tcp=True)
    for reply in (first, again):
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert 39 <= ttl_of(reply) <= 40  # min(SOA TTL 3600, MINIMUM 40), RFC 2308 §5
    nodata = [server.query("ttl.cache.test", "TXT") for _ in range(2)]
    assert all(r.rcode() == dns.rcode.NOERROR and not r.answer for r in nodata)
    assert upstream.count("nothing.cache.test") == 1
    assert upstream.count("ttl.cache.test", "TXT") == 1


def test_do_bit_is_part_of_the_key(server: FastDNSProcess, upstream: FakeUpstream) -> None:
    upstream.add("do.cache.test", "A", "192.0.2.3", ttl=300)
    server.query("do.cache.test")
    server.query("do.cache.test", do=True)
    server.query("do.cache.test", do=True)
    server.query("do.cache.test", edns=1232)  # EDNS without DO: the plain entry
    assert upstream.count("do.cache.test") == 2


def test_big_answers_are_truncated_per_client(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    upstream.big("big.cache.test", 60)
    full = server.query("big.cache.test", tcp=True)
    assert len(full.answer[0]) == 60
    asked = upstream.count("big.cache.test")  # UDP, then TCP after the upstream's TC
    plain = server.query("big.cache.test")  # no EDNS: 512 bytes at most
    assert plain.flags & dns.flags.TC
    edns = server.query("big.cache.test", edns=4096)  # our 1232 cap still holds 60 A records
    assert not edns.flags & dns.flags.TC and len(edns.answer[0]) == 60
    assert upstream.count("big.cache.test") == asked


def test_concurrent_identical_questions_share_one_upstream_query(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    upstream.add("herd.cache.test", "A", "192.0.2.4", ttl=300)
    # Everyone arrives while the first waits (within the 0.3 s upstream timeout).
    upstream.behave("herd.cache.test", delay=0.2)
    n = 40
    socks = []
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3.0)
            socks.append(s)
            # Each client its own ID, its own 0x20 case, half of them with EDNS.
            q = make_query(
                mixed_case("herd.cache.test", i), qid=1000 + i, edns=1232 if i % 2 else None
            )
            s.sendto(q.to_wire(), (server.address, server.udp_port))
        for i, s in enumerate(socks):
            reply = dns.message.from_wire(s.recv(65535))
            assert reply.id == 1000 + i
            assert reply.question[0].name.to_text() == mixed_case("herd.cache.test", i) + "."
            assert a_of(reply) == ["192.0.2.4"]
            assert (reply.edns == 0) == bool(i % 2)
    finally:
        for s in socks:
            s.close()
    assert upstream.count("herd.cache.test") == 1


def test_stale_answer_while_the_upstream_is_dead(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    upstream.add("stale.cache.test", "A", "192.0.2.5", ttl=1)
    assert a_of(server.query("stale.cache.test")) == ["192.0.2.5"]
    stored = time.monotonic()
    upstream.behave("stale.cache.test", drop=True)
    wait_out_ttl(1, stored)  # the entry is expired after it
    first = server.query("stale.cache.test")
    assert first.rcode() == dns.rcode.NOERROR and a_of(first) == ["192.0.2.5"]
    assert ttl_of(first) == 30  # RFC 8767 stale answer TTL
    # The background refresh reaches the dead upstream and fails; clients meanwhile, and
    # after it, still get the stale answer, and no second refresh starts (failure recheck).
    assert upstream.wait_for(2, "stale.cache.test", timeout=3)
    end = time.monotonic() + 2.0  # longer than the refresh's 1.5 s deadline
    while time.monotonic() < end:
        reply = server.query("stale.cache.test")
        assert reply.rcode() == dns.rcode.NOERROR and a_of(reply) == ["192.0.2.5"]
        time.sleep(0.1)
    attempts = upstream.count("stale.cache.test") - 1
    assert 1 <= attempts <= 3  # one refresh (the forwarder may try the upstream twice)
    upstream.behave("stale.cache.test")  # back to normal for whoever comes next


def test_verify_mode_asks_the_upstream_before_answering_stale(
    fastdns_factory: Any, upstream: FakeUpstream
) -> None:
    """``stale_refresh: verify`` (CoreDNS serve_stale verify): an expired entry is looked up
    first; it is answered stale only when that lookup fails, and then for the 30 s failure
    recheck without asking again."""
    fast = {**FAST, "cache": {**CACHE, "stale_refresh": "verify"}}
    server = fastdns_factory({"fastdns": fast}, upstreams=[upstream])
    name = "verify.cache.test"
    upstream.add(name, "A", "192.0.2.6", ttl=1)
    assert a_of(server.query(name)) == ["192.0.2.6"]
    wait_out_ttl(1, time.monotonic())
    upstream.remove(name)
    upstream.add(name, "A", "192.0.2.7", ttl=1)
    assert a_of(server.query(name)) == ["192.0.2.7"]  # asked first: the new answer
    assert upstream.count(name) == 2
    wait_out_ttl(1, time.monotonic())
    upstream.behave(name, drop=True)
    asked = upstream.count(name)
    stale = server.query(name, timeout=3)  # waits for the lookup to fail (<= 1.5 s)
    assert stale.rcode() == dns.rcode.NOERROR and a_of(stale) == ["192.0.2.7"]
    assert ttl_of(stale) == 30
    assert upstream.count(name) > asked  # it did ask
    asked = upstream.count(name)
    for _ in range(3):  # within the failure recheck: at once, and the upstream is left alone
        assert a_of(server.query(name, timeout=0.5)) == ["192.0.2.7"]
    assert upstream.count(name) == asked
    upstream.behave(name)


def test_prefetch_refreshes_a_popular_entry_before_it_expires(
    server: FastDNSProcess, upstream: FakeUpstream
) -> None:
    upstream.add("pop.cache.test", "A", "192.0.2.6", ttl=4)
    assert ttl_of(server.query("pop.cache.test")) == 4
    stored = time.monotonic()
    ttls = []
    # Popular (3 hits) and half its TTL gone: one prefetch, well before the 4 s are up.
    while upstream.count("pop.cache.test") < 2 and time.monotonic() < stored + 3.5:
        reply = server.query("pop.cache.test")
        assert a_of(reply) == ["192.0.2.6"]
        ttls.append(ttl_of(reply))
        time.sleep(0.1)
    first, second = [s.at for s in upstream.queries if s.qname == "pop.cache.test"][:2]
    # The lower bound is the behaviour: no prefetch before half the TTL is gone. It holds by
    # construction (fastdns stores the entry after ``first`` reached the upstream, and the
    # prefetch comes from a hit at least 2 s after storing: store.py's prefetch_at), so it
    # cannot fail on a slow machine; only the upper bound, the TTL itself, is a timing margin.
    assert 1.9 <= second - first < 4.0
    assert all(1 <= t <= 4 for t in ttls)  # never stale, never above the TTL
    # The refreshed entry starts over: its TTL is back near 4, with no further upstream query.
    assert upstream.wait_for(2, "pop.cache.test", timeout=1)
    deadline = time.monotonic() + 1
    while ttl_of(server.query("pop.cache.test")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ttl_of(server.query("pop.cache.test")) >= 3
    assert upstream.count("pop.cache.test") == 2
