"""The work of fastdns.dns.wire's name walkers is bounded by the packet's length, whatever the
compression pointers in it: counted as reads of the packet's bytes (support.crafted), not
timed. A parser that follows every owner name's pointers to their end reads a chain of
pointers once per record (O(records x hops)); RFC 1035 §4.1.4 lets every name point at one.
"""

from __future__ import annotations

import struct

import pytest
from support.crafted import ReadCounter, pointer_chain

from fastdns.dns import compose, wire

QUESTION = b"\x05chain\x03ptr\x04test\x00\x00\x01\x00\x01"
PER_BYTE = 4  # reads of each byte the walkers may make (a sound packet takes about 1)


def counted(data: bytes) -> ReadCounter:
    return ReadCounter(data, limit=PER_BYTE * len(data))


@pytest.mark.parametrize(
    ("hops", "records", "trailing"),
    [(2000, 1000, b""), (2000, 1000, b"\x00"), (30, 1000, b""), (1, 1000, b"")],
    ids=["long-chain", "long-chain-formerr-at-the-end", "short-chain", "one-hop"],
)
def test_parse_query_reads_a_pointer_chain_once(hops: int, records: int, trailing: bytes) -> None:
    data = counted(pointer_chain(QUESTION, hops, records, trailing=trailing))
    if trailing:
        with pytest.raises(wire.Malformed) as info:
            wire.parse_query(data)
        assert info.value.rcode == wire.FORMERR
    else:
        q = wire.parse_query(data)
        assert (q.qname, q.qtype) == (QUESTION[:-4], wire.A)


def test_a_chain_of_names_over_255_bytes_is_still_formerr() -> None:
    """Names that each add a label to the one before: the walk from a new name stops where an
    earlier one was checked, and must still count the labels beyond it (RFC 1035 §3.1)."""
    body = bytearray(b"\x01a\x00\x00\x01\x00\x01")
    prev = 12  # each owner: one label, then a pointer to the previous owner
    for k in range(200):
        here = 12 + len(body)
        body += b"\x01b" + struct.pack("!H", 0xC000 | prev) + wire.RR_FIXED.pack(1, 1, 0, 0)
        prev = here
        packet = wire.HEADER.pack(1, 0x0100, 1, k + 1, 0, 0) + bytes(body)
        # the labels reached through owner k's pointer: k of "b" and the qname's "a"
        if 2 * k + 2 > wire.MAX_NAME:
            with pytest.raises(wire.Malformed) as info:
                wire.parse_query(packet)
            assert str(info.value) == "name longer than 255 bytes"
        else:
            wire.parse_query(packet)


def chained_questions(count: int, answers: bytes = b"", an: int = 0) -> bytes:
    """A reply with ``count`` questions, each name a pointer to the one before."""
    body = bytearray(QUESTION)
    prev = 12
    for _ in range(count - 1):
        here = 12 + len(body)
        body += struct.pack("!H", 0xC000 | prev) + QUESTION[-4:]
        prev = here
    return wire.HEADER.pack(1, 0x8180, count, an, 0, 0) + bytes(body) + answers


def test_iter_records_reads_chained_questions_once() -> None:
    data = counted(chained_questions(2500))
    assert list(wire.iter_records(data)) == []


def test_truncate_reads_chained_questions_once() -> None:
    answers = wire.rr(b"\xc0\x0c", wire.A, 60, b"\x01\x02\x03\x04") * 100
    data = counted(chained_questions(2500, answers, 100))
    out = compose.truncate(data, 512)
    # the questions alone are over the limit: every answer dropped, TC set (RFC 2181 §9)
    assert out[2] & 0x02 and wire.HEADER.unpack_from(out)[3] == 0
