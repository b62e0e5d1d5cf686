"""Hand-built packets that attack the cost of a parser rather than its rules.

``pointer_chain``: a message whose first record's rdata is a chain of backward compression
pointers (each one a name that ends by pointing at the previous one, RFC 1035 §4.1.4), then
many records whose owner names all point at the top of that chain. Every rule holds: the
pointers point backwards, the names are short. A parser that follows every owner's pointer to
its end walks the whole chain once per record: O(records x hops), seconds of CPU for 64 KB.

``ReadCounter``: bytes that count how often the parser reads one of them (indexing and
slicing), so a test can bound a parser's work by the packet's length without a clock.
"""

from __future__ import annotations

import struct
from typing import Any, SupportsIndex

_FIXED = struct.Struct("!HHIH")


def pointer_chain(
    question: bytes,
    hops: int,
    records: int,
    *,
    qid: int = 0xC4A1,
    flags: int = 0x0100,
    trailing: bytes = b"",
) -> bytes:
    """A query (``flags``; QR set makes it a reply) with ``question`` (uncompressed name, type,
    class), an answer record whose rdata is a chain of ``hops`` pointers ending at a root
    label, and ``records`` more answer records owned by the top of the chain. ``trailing``
    bytes go after the last record (b"\\x00": the same packet made FORMERR, but only at the
    very end of the walk)."""
    base = 12 + len(question) + 2 + _FIXED.size  # where record 0's rdata starts
    chain = bytearray(b"\x00")  # the root label the chain ends at, at ``base``
    for k in range(hops):
        here = base + len(chain)
        prev = here - (2 if k else 1)  # the previous pointer (or the root label)
        chain += bytes((0xC0 | (prev >> 8), prev & 0xFF))
    top = base + len(chain) - 2 if hops else base
    if top > 0x3FFF:
        raise ValueError("the chain's top is beyond what a pointer can reach")
    rec0 = b"\xc0\x0c" + _FIXED.pack(1, 1, 0, len(chain)) + chain
    owner = bytes((0xC0 | (top >> 8), top & 0xFF))
    rest = (owner + _FIXED.pack(1, 1, 0, 0)) * records  # empty rdata: 12 bytes a record
    header = struct.pack("!HHHHHH", qid, flags, 1, 1 + records, 0, 0)
    packet = header + question + rec0 + rest + trailing
    if len(packet) > 0xFFFF:
        raise ValueError(f"{len(packet)} bytes: more than a DNS message can hold")
    return packet


class TooManyReads(AssertionError):
    pass


class ReadCounter(bytes):
    """``bytes`` that count their item and slice reads in ``reads`` (reads through the buffer
    protocol, ``struct.unpack_from``, are not counted: each reads a fixed few bytes), and raise
    ``TooManyReads`` past ``limit`` (so a quadratic parser fails fast instead of slowly)."""

    reads: int
    limit: int

    def __new__(cls, data: bytes, limit: int) -> ReadCounter:
        self = super().__new__(cls, data)
        self.reads = 0
        self.limit = limit
        return self

    def __getitem__(self, key: SupportsIndex | slice) -> Any:
        self.reads += 1
        if self.reads > self.limit:
            raise TooManyReads(f"more than {self.limit} reads of {len(self)} bytes")
        return super().__getitem__(key)
