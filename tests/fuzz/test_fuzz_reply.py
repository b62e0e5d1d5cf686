"""Fuzz: what a worker does with the bytes of an upstream reply, in the order it does it.

``PortSocket.received`` (length, ``reply_id``, ``question_matches``), then the relay's
flag reads, ``PacketCache.admit`` (``admission.classify``: the record walk and TTL offsets, the
cache store and first render), ``splice`` (client ID and question case), and ``truncate`` to
the client's UDP size; beside them the other walkers of reply bytes (``has_answer``,
``iter_records``, ``min_ttl``, ``match_opt``). Replies are valid dnspython replies, the same
mutated (bit flips, cuts, inserted or duplicated bytes, counts, compression pointer loops,
label lengths over 63, long names, odd OPT records), or garbage after a matching question.

Only ``wire.Malformed`` may come out, and only where the server catches it (``truncate``,
``iter_records``); whatever reaches a client parses with dnspython when the upstream's reply
did, and fits the client's limit.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import FUZZ, exchanges

from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.cache.admission import classify
from fastdns.resolve.cache.store import PacketCache
from fastdns.resolve.forward.upstream import UdpChannel


class Waiter:
    def __init__(self) -> None:
        self.result: bytes | None = None

    def done(self) -> bool:
        return self.result is not None

    def set_result(self, data: bytes) -> None:
        self.result = data

    def set_exception(self, exc: BaseException) -> None:
        raise AssertionError(f"no exception expected: {exc!r}")


def dnspython(data: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return None


def received(q: wire.Query, data: bytes) -> bytes | None:
    """What the upstream socket hands on for ``data`` arriving to ``q`` (sent with the ID the
    socket chose rewritten into it: ``set_id``), or None when it drops it (short, unmatched,
    mismatched)."""
    channel = UdpChannel(WorkerStats(), "127.0.0.53:53")
    channel.attach(lambda _: None)
    sock = channel.pick(0.0)
    waiter = Waiter()
    uid = sock.track(waiter, q)
    sock.received(wire.set_id(data, uid) if len(data) >= 2 else data)
    return waiter.result


def rrsets(msg: dns.message.Message) -> list[tuple[str, int, list[str]]]:
    return [
        (rrset.name.to_text().lower(), rrset.rdtype, sorted(r.to_text() for r in rrset))
        for section in (msg.answer, msg.authority)
        for rrset in section
    ]


@FUZZ
@given(exchange=exchanges(), limit=st.sampled_from((512, 1232, 4096)))
def test_any_upstream_reply_is_handled_or_refused(
    exchange: tuple[bytes, bytes, bytes], limit: int
) -> None:
    query, _, data = exchange
    q = wire.parse_query(query)
    # the pure walkers never raise anything but Malformed, whatever the bytes
    assert isinstance(compose.has_answer(data, q.qend, q.qtype), bool)
    for walk in (lambda: list(wire.iter_records(data)), lambda: compose.min_ttl(data)):
        try:
            walk()
        except wire.Malformed:
            pass
    if len(data) >= 12:
        assert len(compose.match_opt(data, q, 1232)) >= 12
    got = received(q, data)
    if got is None:
        assert len(data) < 12 or not wire.question_matches(wire.set_id(data, 0x1234), q)
        return
    original = dnspython(got)
    if original is not None:  # question_matches agrees with dnspython's reading
        assert original.flags & dns.flags.QR and len(original.question) == 1
        question = original.question[0]
        assert question.name.to_wire().lower() == q.qname.lower()
        assert (question.rdtype, question.rdclass) == (q.qtype, q.qclass)
        if original.rcode() == dns.rcode.NOERROR:
            answers = {rrset.rdtype for rrset in original.answer}
            assert compose.has_answer(got, q.qend, q.qtype) == (q.qtype in answers)
    verdict = classify(q, got, CacheConfig())
    if verdict is not None:  # the TTL offsets point at TTL fields of the reply's body
        _, life, opt_start, ttls, as_is = verdict
        assert life >= 0 and (opt_start == 0 or q.qend <= opt_start < len(got))
        for i in range(0, len(ttls), 2):
            at = q.qend + ttls[i]
            assert at + 4 <= len(got)
            if as_is:
                assert int.from_bytes(got[at : at + 4], "big") == ttls[i + 1]
    # the store, the first render, a later hit and a stale one
    cache = PacketCache(CacheConfig())
    sent, _ = cache.admit(q, got, "forward", None, 100.0)
    replies = [sent]
    for now in (101.0, 100.0 + 86400 * 30):
        hit = cache.get(q, now)
        if hit is not None:
            replies.append(hit)
    for reply in replies:
        out = compose.splice(reply, q.id, q.question, q.rd) if reply is got else reply
        assert out[:2] == query[:2] and out[12 : q.qend] == q.question
        assert len(out) == len(reply)
        if len(out) > limit:
            try:
                out = compose.truncate(out, limit)
            except wire.Malformed:
                assert original is None, "dnspython reads a reply truncate refuses"
                continue  # the server answers SERVFAIL (UDPServer.send_answer)
            assert len(out) <= limit, (len(out), limit)
        msg = dnspython(out)
        if original is not None:
            assert msg is not None, out
            assert msg.id == q.id and msg.question[0].name.to_wire() == q.qname
            if not msg.flags & dns.flags.TC:
                assert {r[:2] for r in rrsets(msg)} == {r[:2] for r in rrsets(original)}


@FUZZ
@given(exchange=exchanges(), limit=st.integers(300, 4096))
def test_truncate_keeps_a_parseable_prefix_within_the_limit(
    exchange: tuple[bytes, bytes, bytes], limit: int
) -> None:
    query, reply, _ = exchange
    q = wire.parse_query(query)
    cut = compose.truncate(compose.splice(reply, q.id, q.question, q.rd), limit)
    assert len(cut) <= max(limit, len(query) + 11)
    msg = dns.message.from_wire(cut)
    original = dns.message.from_wire(reply)
    assert msg.id == q.id and msg.question[0].name.to_wire() == q.qname
    assert (msg.edns >= 0) == (original.edns >= 0)
    kept = rrsets(msg)
    full = rrsets(original)
    assert kept == full[: len(kept)]  # whole RRsets, a prefix
    if len(kept) < len(full):
        assert msg.flags & dns.flags.TC
