"""fastdns.cache: admission, TTL arithmetic, rendering, eviction, serve-stale and prefetch,
driven by a fake clock (``now`` is passed in) and replies built with dnspython."""

from __future__ import annotations

import dataclasses
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from fastdns.config.load import build_config
from fastdns.config.schema import CacheConfig
from fastdns.dns import wire
from fastdns.errors import ConfigError
from fastdns.resolve.cache.admission import DENIAL, SUCCESS, classify
from fastdns.resolve.cache.store import PacketCache

T0 = 1000.0


def make_query(
    name: str = "www.example.com",
    rdtype: str = "A",
    *,
    qid: int = 1,
    edns: int | None = None,
    do: bool = False,
    cd: bool = False,
    rd: bool = True,
) -> dns.message.QueryMessage:
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    payload = edns if edns is not None else (1232 if do else None)
    return dns.message.make_query(
        name, rdtype, payload=payload, want_dnssec=do, id=qid, flags=flags
    )


def parse(msg: dns.message.Message) -> wire.Query:
    return wire.parse_query(msg.to_wire())


def answer(
    query: dns.message.Message,
    *rrs: str,
    rcode: int = 0,
    authority: tuple[str, ...] = (),
    tc: bool = False,
    aa: bool = False,
) -> bytes:
    """The reply a server would send ``query``; RRs are zone-file lines."""
    r = dns.message.make_response(query)
    r.set_rcode(dns.rcode.Rcode(rcode))
    for text in rrs:
        r.answer.append(dns.rrset.from_text(*_split(text)))
    for text in authority:
        r.authority.append(dns.rrset.from_text(*_split(text)))
    if tc:
        r.flags |= dns.flags.TC
    if aa:
        r.flags |= dns.flags.AA
    return r.to_wire()


def _split(text: str) -> list[Any]:
    name, ttl, rdclass, rdtype, *rdata = text.split()
    return [name, int(ttl), rdclass, rdtype, " ".join(rdata)]


SOA = "example.com. 3600 IN SOA ns.example.com. host.example.com. 1 3600 600 86400 60"


def cache(**changes: Any) -> PacketCache:
    cfg = dataclasses.replace(CacheConfig(), **changes)
    return PacketCache(cfg, counters={}, refresh=lambda q: refreshes.append(q))


refreshes: list[wire.Query] = []


@pytest.fixture(autouse=True)
def _clear_refreshes() -> None:
    refreshes.clear()


def stored(
    c: PacketCache,
    msg: dns.message.Message,
    reply: bytes,
    source: str = "forward",
    ttl: int | None = None,
    now: float = T0,
) -> bytes:
    return c.admit(parse(msg), reply, source, ttl, now)[0]


def hit(c: PacketCache, msg: dns.message.Message, now: float, tcp: bool = False) -> Any:
    reply = c.get(parse(msg), now, tcp)
    return None if reply is None else dns.message.from_wire(reply)


def ttls(m: dns.message.Message) -> list[int]:
    return [rrset.ttl for section in (m.answer, m.authority, m.additional) for rrset in section]


# ------------------------------------------------------------------------------ positive entries


def test_hit_rewrites_ttl_to_time_left() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    assert ttls(hit(c, make_query(qid=2), T0 + 0.5)) == [300]
    assert ttls(hit(c, make_query(qid=3), T0 + 1.0)) == [299]
    m = hit(c, make_query(qid=4), T0 + 299.9)
    assert ttls(m) == [1] and m.id == 4
    assert hit(c, make_query(), T0 + 300.0) is not None  # stale now (serve_stale default on)
    assert c.counters["cache_hits", "success"] == 4


def test_every_ttl_is_the_smallest_and_capped() -> None:
    c = cache(max_ttl=100, min_ttl=10)
    q = make_query()
    reply = stored(
        c,
        q,
        answer(
            q,
            "www.example.com. 5000 IN CNAME web.example.com.",
            "web.example.com. 7200 IN A 192.0.2.1",
        ),
    )
    # The capped TTL is what clients see, the first one included (CoreDNS).
    assert ttls(dns.message.from_wire(reply)) == [100, 100]
    assert ttls(hit(c, q, T0 + 40)) == [60, 60]
    q2 = make_query("low.example.com")
    stored(c, q2, answer(q2, "low.example.com. 2 IN A 192.0.2.2"))
    assert ttls(hit(c, q2, T0 + 5)) == [5]  # min_ttl 10 keeps it for 10 s


def test_each_record_keeps_its_own_ttl_counting_down() -> None:
    c = cache(max_ttl=250)
    q = make_query()
    reply = stored(
        c,
        q,
        answer(
            q,
            "www.example.com. 60 IN CNAME web.example.com.",
            "web.example.com. 300 IN A 192.0.2.1",
        ),
    )
    assert ttls(dns.message.from_wire(reply)) == [60, 250]  # upstream TTLs pass through, capped
    assert ttls(hit(c, q, T0 + 10)) == [50, 240]
    assert ttls(hit(c, q, T0 + 59.5)) == [1, 191]
    assert ttls(hit(c, q, T0 + 60)) == [30, 30]  # the entry lives as long as its shortest TTL


def test_ttl_zero_is_not_cached() -> None:
    c = cache()
    q = make_query()
    reply = answer(q, "www.example.com. 0 IN A 192.0.2.1")
    assert stored(c, q, reply) == reply
    assert len(c) == 0


def test_rendered_reply_is_the_upstream_reply_with_our_id_and_flags() -> None:
    c = cache()
    q = make_query()
    upstream = dns.message.from_wire(answer(q, "www.example.com. 300 IN A 192.0.2.1", aa=True))
    stored(c, q, upstream.to_wire())
    m = hit(c, make_query(qid=77, rd=False), T0 + 1)
    assert m.id == 77
    assert m.answer == upstream.answer
    assert not m.flags & dns.flags.AA  # a cached answer is not authoritative
    assert m.flags & dns.flags.RA and not m.flags & dns.flags.RD  # the client's RD
    assert hit(c, make_query(qid=78), T0 + 1).flags & dns.flags.RD


@pytest.mark.parametrize("edns", [None, 1232])
@pytest.mark.parametrize("do", [False, True])
def test_a_reply_stored_raw_answers_as_the_entry_it_becomes(edns: int | None, do: bool) -> None:
    """The store keeps a miss's reply as it came and builds the entry on its first hit; the
    reply sent for the miss must equal what that entry renders, byte for byte."""
    c = cache()
    q = make_query("wWw.example.com", edns=edns, do=do, qid=77)
    upstream = answer(
        q,
        "www.example.com. 300 IN A 192.0.2.1",
        authority=("example.com. 300 IN NS ns.example.com.",),
        aa=True,
    )
    first, source = c.admit(parse(q), upstream, "forward", None, T0)
    assert type(c.success[parse(q).key]) is tuple  # not built yet
    entry = c.lookup(parse(q).key)
    assert entry is not None and c.success[parse(q).key] is entry  # built, in its place
    assert first == c._render(entry, parse(q), 0, 65535) and source == "forward"
    m = dns.message.from_wire(first)
    assert m.id == 77 and str(m.question[0].name) == "wWw.example.com."
    assert not m.flags & dns.flags.AA and m.flags & dns.flags.RA
    assert (m.edns >= 0) == (edns is not None or do)


def test_client_question_case_is_kept() -> None:
    c = cache()
    q = make_query("www.example.com")
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    client = make_query("wWw.ExAmPlE.cOm", qid=9)
    raw = c.get(parse(client), T0 + 1)
    assert raw is not None
    assert raw[12 : 12 + 17] == client.to_wire()[12 : 12 + 17]  # 0x20 bits echoed exactly
    assert dns.message.from_wire(raw).question[0].name.to_text() == "wWw.ExAmPlE.cOm."


def test_do_and_cd_are_part_of_the_key() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    assert hit(c, make_query(do=True), T0) is None
    assert hit(c, make_query(cd=True), T0) is None
    assert hit(c, make_query(edns=1232), T0) is not None  # EDNS alone is not
    assert c.counters["cache_misses",] == 2
    qd = make_query(do=True)
    stored(c, qd, answer(qd, "www.example.com. 300 IN A 192.0.2.9"))
    m = hit(c, make_query(do=True), T0)
    assert m.answer[0][0].to_text() == "192.0.2.9" and m.ednsflags & dns.flags.DO


def test_opt_is_added_or_left_out_per_client() -> None:
    c = cache()
    q = make_query(edns=4096)  # the first client had EDNS; the entry is kept without OPT
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    plain = hit(c, make_query(), T0)
    assert plain.edns == -1 and len(plain.additional) == 0
    with_edns = hit(c, make_query(edns=1400), T0)
    assert with_edns.edns == 0 and with_edns.payload == 1232
    assert with_edns.answer == plain.answer


def test_unknown_edns_version_is_a_miss() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    v1 = make_query(edns=1232)
    v1.use_edns(1, payload=1232)
    assert c.get(parse(v1), T0) is None  # answer_now replies BADVERS


# ------------------------------------------------------------------------------ truncation


def test_truncates_to_the_client_udp_size_and_not_over_tcp() -> None:
    c = cache()
    q = make_query("big.example.com", edns=4096)
    rrs = [f"big.example.com. 300 IN A 198.18.0.{i}" for i in range(1, 101)]
    reply = answer(q, "big.example.com. 300 IN CNAME big.example.com.", *rrs)  # odd but legal
    assert len(reply) > 1232
    stored(c, q, reply)
    small = c.get(parse(make_query("big.example.com")), T0 + 2)
    assert small is not None and len(small) <= 512
    m = dns.message.from_wire(small)
    assert m.flags & dns.flags.TC and ttls(m) == [298]  # the CNAME RRset fits, the A set not
    mid = c.get(parse(make_query("big.example.com", edns=1232)), T0 + 3)
    assert mid is not None and len(mid) <= 1232 and dns.message.from_wire(mid).edns == 0
    assert dns.message.from_wire(mid).flags & dns.flags.TC
    full = hit(c, make_query("big.example.com"), T0 + 4, tcp=True)
    assert len(full.answer[1]) == 100 and not full.flags & dns.flags.TC
    again = c.get(parse(make_query("big.example.com")), T0 + 5)  # from the kept truncated form
    assert again is not None and ttls(dns.message.from_wire(again)) == [295]


# ------------------------------------------------------------------------------ negative entries


def test_nxdomain_cached_for_soa_minimum() -> None:
    c = cache()
    q = make_query("nope.example.com")
    stored(c, q, answer(q, rcode=3, authority=(SOA,)))
    m = hit(c, make_query("nope.example.com"), T0 + 10)
    assert m.rcode() == dns.rcode.NXDOMAIN and ttls(m) == [50]  # min(3600, 60) - 10
    assert c.counters["cache_hits", "denial"] == 1
    assert hit(c, make_query("nope.example.com"), T0 + 60 + 3600 + 1) is None  # past stale too


def test_nodata_with_soa_is_a_denial_and_capped() -> None:
    c = cache(denial_max_ttl=30)
    q = make_query("www.example.com", "AAAA")
    stored(c, q, answer(q, authority=(SOA,)))
    assert len(c.denial) == 1 and len(c.success) == 0
    assert ttls(hit(c, q, T0)) == [30]


def test_negative_without_soa_is_not_cached_unless_native_gives_a_ttl() -> None:
    c = cache()
    q = make_query("nope.example.com")
    reply = answer(q, rcode=3)
    stored(c, q, reply)
    q2 = make_query("chain.example.com")
    stored(c, q2, answer(q2, "chain.example.com. 300 IN CNAME nope.example.com."))
    assert len(c) == 0 and c.counters["cache_drops",] == 2
    stored(c, q, reply, source="native", ttl=5)
    assert ttls(hit(c, q, T0 + 1)) == [] and len(c.denial) == 1
    assert hit(c, q, T0 + 4.9) is not None
    assert hit(c, q, T0 + 5 + 3600) is None


def test_cname_chain_to_nodata_with_soa_takes_the_smaller_ttl() -> None:
    c = cache()
    q = make_query("alias.example.com", "AAAA")
    stored(c, q, answer(q, "alias.example.com. 20 IN CNAME www.example.com.", authority=(SOA,)))
    assert len(c.denial) == 1
    assert ttls(hit(c, q, T0)) == [20, 20]


def test_servfail_is_cached_briefly_and_only_from_upstreams() -> None:
    c = cache(servfail_ttl=3, serve_stale=0)
    q = make_query("broken.example.com")
    stored(c, q, answer(q, rcode=2))
    m = hit(c, q, T0 + 2.5)
    assert m.rcode() == dns.rcode.SERVFAIL
    assert hit(c, q, T0 + 3) is None
    c2 = cache(servfail_ttl=3)
    stored(c2, q, answer(q, rcode=2), source="server")  # fastdns's own "all upstreams failed"
    stored(c2, make_query("x.example.com"), answer(make_query("x.example.com"), rcode=5))
    assert len(c2) == 0
    c3 = cache(servfail_ttl=0)
    stored(c3, q, answer(q, rcode=2))
    assert len(c3) == 0


def test_tc_mismatch_and_malformed_replies_are_never_cached() -> None:
    c = cache()
    q = make_query()
    good = answer(q, "www.example.com. 300 IN A 192.0.2.1")
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1", tc=True))
    other = make_query("other.example.com")
    stored(c, q, answer(other, "other.example.com. 300 IN A 192.0.2.1"))
    stored(c, q, good[:-3])  # cut short
    stored(c, q, good + b"\x00")  # trailing garbage
    stored(c, q, b"\x00\x01\x81\x80")
    assert len(c) == 0 and c.counters["cache_drops",] == 5


def test_an_uncacheable_refresh_forgets_the_old_entry() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    stored(c, q, answer(q, rcode=3), now=T0 + 1)  # now NXDOMAIN without SOA
    assert hit(c, q, T0 + 2) is None


# ------------------------------------------------------------------------------ capacity


def test_eviction_drops_the_oldest_of_each_kind_separately() -> None:
    c = cache(capacity=3, denial_capacity=2)
    for i in range(5):
        q = make_query(f"n{i}.example.com")
        stored(c, q, answer(q, f"n{i}.example.com. 300 IN A 192.0.2.{i}"))
    for i in range(3):
        q = make_query(f"x{i}.example.com")
        stored(c, q, answer(q, rcode=3, authority=(SOA,)))
    assert len(c.success) == 3 and len(c.denial) == 2
    assert hit(c, make_query("n0.example.com"), T0) is None
    assert hit(c, make_query("n1.example.com"), T0) is None
    assert hit(c, make_query("n4.example.com"), T0) is not None
    assert hit(c, make_query("x0.example.com"), T0) is None
    assert hit(c, make_query("x2.example.com"), T0) is not None
    assert c.counters["cache_evictions", "success"] == 2
    assert c.counters["cache_evictions", "denial"] == 1
    gauges: dict[Any, float] = {}
    c.sample(gauges)
    assert gauges == {("cache_entries", "success"): 3, ("cache_entries", "denial"): 2}


def test_a_refreshed_entry_moves_to_the_young_end() -> None:
    c = cache(capacity=2)
    a, b, d = (make_query(f"{n}.example.com") for n in "abd")
    stored(c, a, answer(a, "a.example.com. 300 IN A 192.0.2.1"))
    stored(c, b, answer(b, "b.example.com. 300 IN A 192.0.2.2"))
    stored(c, a, answer(a, "a.example.com. 300 IN A 192.0.2.1"), now=T0 + 1)
    stored(c, d, answer(d, "d.example.com. 300 IN A 192.0.2.3"))
    assert hit(c, a, T0 + 2) is not None and hit(c, b, T0 + 2) is None


def test_zero_capacity_and_clear() -> None:
    c = cache(capacity=0)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    assert len(c) == 0
    c = cache()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    c.clear()
    assert hit(c, q, T0) is None


# ------------------------------------------------------------------------------ serve-stale


def test_serve_stale_window_with_one_refresh() -> None:
    c = cache(serve_stale=60, stale_ttl=30)
    c.refresh_hold = 5.0
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    assert hit(c, q, T0 + 9) is not None and refreshes == []
    m = hit(c, q, T0 + 10)
    assert ttls(m) == [30] and len(refreshes) == 1  # RFC 8767 stale TTL, refresh started
    assert ttls(hit(c, q, T0 + 12)) == [30] and len(refreshes) == 1  # one in flight
    assert hit(c, q, T0 + 16) is not None and len(refreshes) == 2  # the first one is over
    assert c.counters["cache_served_stale",] == 3
    assert hit(c, q, T0 + 10 + 60) is None  # past the window: a miss, and forgotten
    assert len(c) == 0


def test_serve_stale_off() -> None:
    c = cache(serve_stale=0)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    assert hit(c, q, T0 + 10) is None and refreshes == []


def test_failed_refresh_serves_the_stale_entry_and_waits_to_recheck() -> None:
    c = cache(serve_stale=600, stale_ttl=30)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    assert hit(c, q, T0 + 20) is not None and len(refreshes) == 1
    # The refresh comes back SERVFAIL (fastdns's own: every upstream timed out).
    reply, source = c.admit(parse(q), answer(q, rcode=2), "server", None, T0 + 24)
    m = dns.message.from_wire(reply)
    assert source == "cache" and m.rcode() == 0 and ttls(m) == [30]
    assert hit(c, q, T0 + 40) is not None and len(refreshes) == 1  # failure recheck: 30 s
    assert hit(c, q, T0 + 55) is not None and len(refreshes) == 2
    # An upstream's SERVFAIL or REFUSED does not replace it either.
    reply, source = c.admit(parse(q), answer(q, rcode=5), "forward", None, T0 + 56)
    assert source == "cache" and len(c.success) == 1


def test_verify_mode_asks_first_and_serves_stale_only_when_that_fails() -> None:
    c = cache(serve_stale=600, stale_ttl=30, stale_refresh="verify")
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    assert hit(c, q, T0 + 9) is not None
    # Expired: a miss (the caller looks it up), no background refresh, but the entry stays.
    assert hit(c, q, T0 + 20) is None and refreshes == [] and len(c.success) == 1
    assert c.counters["cache_misses",] == 1 and c.counters["cache_served_stale",] == 0
    # The lookup fails: the stale entry answers, with the stale TTL.
    reply, source = c.admit(parse(q), answer(q, rcode=2), "server", None, T0 + 22)
    m = dns.message.from_wire(reply)
    assert source == "cache" and m.rcode() == 0 and ttls(m) == [30]
    assert c.counters["cache_served_stale",] == 1
    # Within the failure recheck (30 s) it is answered at once, without asking again...
    assert ttls(hit(c, q, T0 + 40)) == [30] and refreshes == []
    # ...after it, the upstream is asked first again, and a good answer replaces it.
    assert hit(c, q, T0 + 53) is None
    reply, source = c.admit(
        parse(q), answer(q, "www.example.com. 10 IN A 192.0.2.2"), "forward", None, T0 + 54
    )
    assert source == "forward"
    assert [r.to_text() for r in hit(c, q, T0 + 55).answer[0]] == ["192.0.2.2"]


def test_verify_mode_forgets_entries_past_the_stale_window() -> None:
    c = cache(serve_stale=60, stale_refresh="verify")
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    assert hit(c, q, T0 + 10 + 60) is None and len(c) == 0
    _, source = c.admit(parse(q), answer(q, rcode=2), "server", None, T0 + 71)
    assert source == "server"  # nothing stale left to answer with


def test_stale_refresh_must_be_a_known_mode() -> None:
    with pytest.raises(ConfigError, match="stale_refresh"):
        build_config({"fastdns": {"cache": {"stale_refresh": "lazy"}}})


def test_failure_with_a_fresh_entry_keeps_it() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"))
    reply, source = c.admit(parse(q), answer(q, rcode=2), "forward", None, T0 + 95)
    assert source == "cache" and ttls(dns.message.from_wire(reply)) == [5]


# ------------------------------------------------------------------------------ prefetch


def test_prefetch_triggers_once_for_a_popular_entry_near_expiry() -> None:
    c = cache(prefetch=3, prefetch_percent=10, prefetch_duration=120)
    c.refresh_hold = 10.0
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"))
    for t in range(5):
        hit(c, q, T0 + t)  # popular, but far from expiry
    assert refreshes == []
    hit(c, q, T0 + 90)  # 10 s left = 10 % of 100
    assert len(refreshes) == 1 and c.counters["cache_prefetch",] == 1
    for t in range(91, 100):
        hit(c, q, T0 + t)
    assert len(refreshes) == 1
    # The refresh arrives: a new entry, counting hits from zero.
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"), now=T0 + 95)
    assert ttls(hit(c, q, T0 + 96)) == [99]


def test_hits_count_towards_prefetch_only_without_long_gaps() -> None:
    """CoreDNS freq: a gap longer than ``prefetch_duration`` starts the count over."""
    c = cache(prefetch=3, prefetch_percent=10, prefetch_duration=60)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"))
    for t in (0, 1, 2):
        hit(c, q, T0 + t)  # three hits, but 88 s before the next one
    hit(c, q, T0 + 90)
    assert refreshes == []  # the count started over at 1
    hit(c, q, T0 + 91)
    assert refreshes == []
    hit(c, q, T0 + 92)  # the third hit with no long gap, near expiry
    assert len(refreshes) == 1


def test_unpopular_entries_are_not_prefetched() -> None:
    c = cache(prefetch=10)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"))
    for t in range(95, 100):
        hit(c, q, T0 + t)
    assert refreshes == []
    c = cache(prefetch=0)
    stored(c, q, answer(q, "www.example.com. 100 IN A 192.0.2.1"))
    for t in range(95, 100):
        hit(c, q, T0 + t)
    assert refreshes == []


# ------------------------------------------------------------------------------ query forms


def renewed(c: PacketCache, data: bytes, now: float) -> tuple[bytes, wire.Query] | None:
    """What the UDP server does with a query's bytes before parsing them (fastdns.serve.udp)."""
    f = c.front.forms.get(data[2:])
    return None if f is None else c.renew(f, data, now)


def test_repeated_query_bytes_skip_the_parse() -> None:
    c = cache()
    q = make_query(qid=1)
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    again = make_query(qid=2).to_wire()
    assert renewed(c, again, T0) is None  # not seen as a hit yet
    assert c.get(parse(make_query(qid=2)), T0) is not None  # remembers the form
    third = make_query(qid=3).to_wire()
    hit_ = renewed(c, third, T0 + 1)
    assert hit_ is not None
    reply, q_seen = hit_
    m = dns.message.from_wire(reply)
    assert m.id == 3 and ttls(m) == [299] and q_seen.qtype == 1
    fast = renewed(c, make_query(qid=5).to_wire(), T0 + 1.5)  # same second: the inline path
    assert fast is not None and fast[0] == b"\x00\x05" + reply[2:]
    assert renewed(c, make_query(qid=4, rd=False).to_wire(), T0) is None  # other flags
    assert c.counters["cache_requests",] == c.counters["cache_hits", "success"] == 3


def test_remembered_forms_truncate_and_add_opt_like_the_full_path() -> None:
    c = cache()
    big = make_query("big.example.com", edns=4096)
    rrs = [f"big.example.com. 300 IN A 198.18.0.{i}" for i in range(1, 101)]
    stored(c, big, answer(big, *rrs))
    for client in (make_query("big.example.com"), make_query("big.example.com", edns=1400)):
        first = c.get(parse(client), T0)
        again = renewed(c, client.to_wire(), T0)
        assert first is not None and again is not None and again[0] == first
        assert dns.message.from_wire(first).flags & dns.flags.TC
    small = make_query(edns=1400)
    stored(c, small, answer(small, "www.example.com. 300 IN A 192.0.2.1"))
    for client in (make_query(), make_query(edns=1400), make_query(do=False, edns=600)):
        first = c.get(parse(client), T0)
        again = renewed(c, client.to_wire(), T0)
        assert first is not None and again is not None and again[0] == first


def test_mixed_case_forms_are_not_remembered() -> None:
    c = cache()
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 300 IN A 192.0.2.1"))
    client = make_query("wWw.example.com")
    assert c.get(parse(client), T0) is not None
    assert renewed(c, client.to_wire(), T0) is None and len(c.front) == 0


def test_a_remembered_form_goes_with_its_entry() -> None:
    c = cache(serve_stale=0)
    q = make_query()
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"))
    c.get(parse(q), T0)
    assert renewed(c, q.to_wire(), T0 + 9) is not None
    assert renewed(c, q.to_wire(), T0 + 10) is None  # expired: the full path decides
    assert len(c.front) == 0 and c.counters["cache_misses",] == 0
    assert c.get(parse(q), T0 + 10) is None and len(c) == 0
    stored(c, q, answer(q, "www.example.com. 10 IN A 192.0.2.1"), now=T0 + 20)
    c.get(parse(q), T0 + 20)
    c.clear()
    assert renewed(c, q.to_wire(), T0 + 20) is None and len(c.front) == 0


# ------------------------------------------------------------------------------ admission rules


def test_admission_edge_cases() -> None:
    cfg = CacheConfig()
    q = make_query(edns=1232)
    good = answer(q, "www.example.com. 300 IN A 192.0.2.1")
    verdict = classify(parse(q), good, cfg)
    assert verdict is not None and verdict[:2] == (SUCCESS, 300) and verdict[2] > 0  # OPT seen
    # An extended rcode in the OPT (BADVERS and such): never cached.
    r = dns.message.from_wire(good)
    r.use_edns(0, ednsflags=1 << 24, payload=1232)
    assert classify(parse(q), r.to_wire(), cfg) is None
    # A TTL with the top bit set counts as zero (RFC 2181 §8): use once, never cache.
    wire_ = bytearray(answer(make_query(), "www.example.com. 300 IN A 192.0.2.1"))
    wire_[-10:-6] = b"\xff\xff\xff\xff"
    verdict = classify(parse(make_query()), bytes(wire_), cfg)
    assert verdict is not None and verdict[1] == 0
    # Opcode other than QUERY, and a REFUSED: not cached.
    notify = bytearray(good)
    notify[2] |= 0x20
    assert classify(parse(q), bytes(notify), cfg) is None
    assert classify(parse(q), answer(q, rcode=5), cfg) is None
    # Answers of another type only (a CNAME chain) with an SOA: a denial.
    chain = answer(
        make_query(), "www.example.com. 30 IN CNAME gone.example.com.", rcode=3, authority=(SOA,)
    )
    verdict = classify(parse(make_query()), chain, cfg)
    assert verdict is not None and verdict[:2] == (DENIAL, 30)
