"""Differential fuzz: the C query parser and reply checks (fastdns/serve/cengine/wire.c) give
the verdicts of the Python ones (``fastdns.dns.wire``) for the same bytes: the same drop, the
same rcode, or the same Query fields and cache key; the same ``question_matches``; the same
reply header fields. Hypothesis drives dnspython-built queries and replies and their mutations
(support.fuzzing); a seeded slice of ``bench.fuzz`` (which runs a million) adds tens of
thousands of packets built and damaged without dnspython.

Skipped when the extension is not built (fastdns then runs the Python datapath only).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from support.crafted import pointer_chain
from support.fuzzing import FUZZ, exchanges, queries

from bench import fuzz
from fastdns.dns import wire

cengine = pytest.importorskip("fastdns.serve._cengine")

SLICE = 30_000  # packets per seeded run: a few seconds


def python_header(reply: bytes) -> tuple[int, int, bool] | None:
    if len(reply) < 12:
        return None
    return wire.reply_id(reply), wire.reply_rcode(reply), wire.truncated(reply)


@FUZZ
@given(data=queries())
def test_c_and_python_parse_any_bytes_alike(data: bytes) -> None:
    assert cengine.parse_query(data) == fuzz.python_verdict(data)
    assert cengine.reply_header(data) == python_header(data)


@FUZZ
@given(exchange=exchanges())
def test_c_and_python_check_replies_alike(exchange: tuple[bytes, bytes, bytes]) -> None:
    query, reply, damaged = exchange
    q = wire.parse_query(query)
    for candidate in (reply, damaged, damaged.lower(), damaged.upper()):
        assert cengine.question_matches(candidate, query) == wire.question_matches(candidate, q)
        assert cengine.reply_header(candidate) == python_header(candidate)
        # a reply is never a query: both drop it the same way (or read what is left alike)
        assert cengine.parse_query(candidate) == fuzz.python_verdict(candidate)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_seeded_slice_of_the_million_packet_run(seed: int) -> None:
    out = fuzz.run(SLICE, seed)
    assert out.packets == SLICE
    assert not out.mismatches, [(what, data.hex(), r.hex()) for what, data, r in out.mismatches]
    # the packets reach every verdict, often: a generator that lost a kind would pass blind
    for verdict in ("drop", "notimp", "formerr", "query", "query+opt"):
        assert out.mix[verdict] > SLICE // 50, out.mix


def test_corner_cases_named() -> None:
    """The rules a careless port gets wrong, one packet each (every one checked both ways)."""
    question = b"\x03www\x07EXAMPLE\x00\x00\x01\x00\x01"  # qend 29
    opt = b"\x00" + wire.RR_FIXED.pack(wire.OPT, 100, 0x00018000, 0)  # size 100, v1, DO
    a_rr = wire.RR_FIXED.pack(wire.A, wire.CLASS_IN, 0, 0)
    label63 = b"\x3f" + b"a" * 63

    def msg(flags: int = 0x0100, an: int = 0, ar: int = 0, body: bytes = question) -> bytes:
        return wire.HEADER.pack(0xABCD, flags, 1, an, 0, ar) + body

    cases = {
        "short": b"\xab\xcd\x01",
        "response": msg(flags=0x8100),
        "notimp": msg(flags=0x2900),
        "valid": msg(),
        "trailing": msg(body=question + b"\x00"),
        "opt small size, version 1, DO": msg(ar=1, body=question + opt),
        "two OPT": msg(ar=2, body=question + opt + opt),
        "OPT in the answer section is skipped": msg(an=1, body=question + opt),
        "pointer to the qname": msg(an=1, body=question + b"\xc0\x0c" + a_rr),
        "pointer to itself": msg(an=1, body=question + b"\xc0\x1d" + a_rr),
        "compressed question": msg(body=b"\xc0\x0c\x00\x01\x00\x01"),
        "254-byte name": msg(body=label63 * 3 + b"\x3d" + b"a" * 61 + b"\x00" + question[-4:]),
        "256-byte name": msg(body=label63 * 4 + b"\x00" + question[-4:]),
        "label of 63": msg(body=b"\x3f" + b"a" * 63 + b"\x00" + question[-4:]),
        "label type 0x40": msg(body=b"\x40" + b"a" * 64 + b"\x00" + question[-4:]),
        "label type 0x41": msg(body=b"\x41" + b"a" * 65 + b"\x00" + question[-4:]),
        # owners that all point at the top of one chain of pointers (support.crafted): walked
        # once, then found checked; the same FORMERR when the end is wrong
        "pointer chain": pointer_chain(question, 8000, 4000),
        "pointer chain, trailing byte": pointer_chain(question, 8000, 3999, trailing=b"\x00"),
        # labels reached past a checked offset still count: 2 + 126 * 2 fits, one more not
        "names sharing their end, 254 bytes": chained_names(126),
        "names sharing their end, 256 bytes": chained_names(127),
    }
    verdicts = {}
    for name, data in cases.items():
        got = cengine.parse_query(data)
        assert got == fuzz.python_verdict(data), name
        verdicts[name] = got[:2] if got[0] in ("drop", "rcode") else "query"
    assert verdicts["short"] == verdicts["response"] == ("drop",)
    assert verdicts["notimp"] == ("rcode", wire.NOTIMP)
    assert verdicts["trailing"] == verdicts["two OPT"] == ("rcode", wire.FORMERR)
    assert verdicts["pointer to itself"] == verdicts["compressed question"] == ("rcode", 1)
    assert verdicts["256-byte name"] == verdicts["label type 0x40"] == ("rcode", 1)
    assert verdicts["label type 0x41"] == ("rcode", 1) and verdicts["label of 63"] == "query"
    assert verdicts["OPT in the answer section is skipped"] == verdicts["254-byte name"] == "query"
    assert verdicts["pointer to the qname"] == "query"
    assert verdicts["pointer chain"] == verdicts["names sharing their end, 254 bytes"] == "query"
    assert verdicts["pointer chain, trailing byte"] == ("rcode", wire.FORMERR)
    assert verdicts["names sharing their end, 256 bytes"] == ("rcode", wire.FORMERR)
    with_opt = cengine.parse_query(cases["opt small size, version 1, DO"])
    assert with_opt[6:10] == (True, 512, True, 1)
    assert with_opt[10] == b"\x03www\x07example\x00\x00\x01\x00\x01\x01\x00"


def chained_names(count: int) -> bytes:
    """A query for ``a.`` and ``count`` answer records, each owner a label and a pointer to the
    owner before: the labels reached through the last pointer are ``count`` "b" and the "a"."""
    body = bytearray(b"\x01a\x00\x00\x01\x00\x01")
    prev = 12
    for _ in range(count + 1):
        here = 12 + len(body)
        body += b"\x01b" + bytes((0xC0 | (prev >> 8), prev & 0xFF)) + wire.RR_FIXED.pack(1, 1, 0, 0)
        prev = here
    return wire.HEADER.pack(7, 0x0100, 1, count + 1, 0, 0) + bytes(body)


def test_question_matches_wants_a_query_that_parses() -> None:
    with pytest.raises(ValueError):
        cengine.question_matches(b"\x00" * 20, b"\x00" * 3)


def test_the_seeded_stream_is_the_same_every_run() -> None:
    a = fuzz.packets(random.Random(7))
    b = fuzz.packets(random.Random(7))
    assert [next(a) for _ in range(200)] == [next(b) for _ in range(200)]
