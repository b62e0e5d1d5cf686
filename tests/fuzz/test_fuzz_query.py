"""Fuzz: what the UDP and TCP servers do with the bytes of a client query (fastdns.server
``UDPServer._full`` / ``TCPServer._handle``): ``wire.parse_query``, the reply to a packet that
does not parse (``header_only_reply``), the cache key and fast-lane form, error replies built
for a parsed query, and a cache hit rendered for it.

The only exception allowed out of ``parse_query`` is ``wire.Malformed`` with rcode None (drop),
FORMERR or NOTIMP; whatever parses must agree with dnspython where dnspython reads it too.
"""

from __future__ import annotations

import random

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import FUZZ, queries, reply_to, valid_queries

from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.resolve.cache.store import PacketCache

ALLOWED_RCODES = (None, wire.FORMERR, wire.NOTIMP)


def parse(data: bytes) -> wire.Query | wire.Malformed:
    try:
        return wire.parse_query(data)
    except wire.Malformed as e:
        assert e.rcode in ALLOWED_RCODES, e
        return e


def dnspython(data: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return None


@FUZZ
@given(data=valid_queries())
def test_a_valid_query_parses_as_dnspython_reads_it(data: bytes) -> None:
    msg = dns.message.from_wire(data)
    q = wire.parse_query(data)
    question = msg.question[0]
    assert q.id == msg.id
    assert q.qname == question.name.to_wire()  # byte for byte: case kept (0x20)
    assert q.qtype == question.rdtype and q.qclass == question.rdclass
    assert q.question == data[12 : q.qend]
    assert q.has_opt == (msg.edns >= 0)
    if msg.edns >= 0:
        assert q.udp_size == max(512, msg.payload)
        assert q.do == bool(msg.ednsflags & dns.flags.DO)
    assert q.cd == bool(msg.flags & dns.flags.CD)
    assert q.key == (
        question.name.to_wire().lower() + data[q.qend - 4 : q.qend] + bytes((q.do, q.cd))
    )


@FUZZ
@given(data=queries())
def test_any_bytes_parse_or_raise_malformed(data: bytes) -> None:
    got = parse(data)
    if isinstance(got, wire.Malformed):
        reply = compose.header_only_reply(data, got.rcode) if got.rcode is not None else None
        if reply is not None:  # what the server sends back for a packet it cannot serve
            msg = dns.message.from_wire(reply)
            assert msg.id == int.from_bytes(data[:2], "big")
            assert msg.rcode() == got.rcode and msg.flags & dns.flags.QR
            assert not msg.question
        return
    q = got
    assert len(q.qname) <= wire.MAX_NAME and q.qname.endswith(b"\x00")
    assert q.qend <= len(data) and q.question == data[12 : q.qend]
    assert not data[2] & 0x80 and (data[2] >> 3) & 0xF == 0  # a QUERY, not a response
    assert wire.name_to_text(q.qname).endswith(".")
    msg = dnspython(data)
    if msg is not None:  # dnspython is stricter about rdata; where it reads it, we agree
        assert len(msg.question) == 1
        assert msg.question[0].name.to_wire() == q.qname
        assert (msg.question[0].rdtype, msg.question[0].rdclass) == (q.qtype, q.qclass)
    # every reply the server can build for it is a valid DNS message echoing the question
    rcodes = (wire.NOERROR, wire.SERVFAIL, wire.REFUSED) + ((wire.BADVERS,) if q.has_opt else ())
    for rcode in rcodes:
        reply = compose.error_reply(q, rcode)
        assert reply[:2] == data[:2] and reply[12 : q.qend] == q.question
        out = dnspython(reply)
        if msg is not None:
            assert out is not None and out.rcode() == rcode


@FUZZ
@given(a=queries(), b=queries())
def test_the_cache_key_is_the_question_folded(a: bytes, b: bytes) -> None:
    """Two queries share a cache key (and so a cached reply) iff they ask the same question
    (name up to ASCII case, type, class) with the same DO and CD bits; the fast lane's form
    (the bytes after the ID) is only ever shared by equal bytes."""
    qa, qb = parse(a), parse(b)
    if isinstance(qa, wire.Malformed) or isinstance(qb, wire.Malformed):
        return
    same = (qa.qname.lower(), qa.qtype, qa.qclass, qa.do, qa.cd) == (
        qb.qname.lower(),
        qb.qtype,
        qb.qclass,
        qb.do,
        qb.cd,
    )
    assert (qa.key == qb.key) == same


@FUZZ
@given(data=queries(), seed=st.integers(0, 2**32 - 1))
def test_a_cache_hit_for_any_query_is_its_answer(data: bytes, seed: int) -> None:
    """Store a reply under a parsed query's key, then serve it back (UDP at the client's size,
    TCP, stale): the reply carries the client's ID and exact question, and is no bigger than
    the client's UDP limit."""
    q = parse(data)
    if isinstance(q, wire.Malformed) or q.qclass != wire.CLASS_IN or q.edns_version:
        return
    # an upstream's reply to the same question (a clean query asked on the client's behalf)
    clean = wire.HEADER.pack(0, q.flags & (wire.RD | wire.CD), 1, 0, 0, int(q.has_opt)) + (
        q.question + (compose.opt_record(q.udp_size, q.do) if q.has_opt else b"")
    )
    try:
        upstream = reply_to(clean, random.Random(seed))
    except (dns.exception.DNSException, ValueError):
        return  # dnspython will not build this question (e.g. an OPT qtype)
    cache = PacketCache(CacheConfig())
    cache.admit(q, upstream, "forward", None, 1000.0)
    for now, tcp in ((1000.5, False), (1001.0, True), (1000.0 + 90000, False)):
        reply = cache.get(q, now, tcp=tcp)
        if reply is None:
            continue
        assert reply[:2] == data[:2] and reply[12 : q.qend] == q.question
        limit = 65535 if tcp else (min(q.udp_size, 1232) if q.has_opt else 512)
        assert len(reply) <= limit
        assert dnspython(reply) is not None or dnspython(upstream) is None
