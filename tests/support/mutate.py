"""Damage for DNS messages: the mutations the fuzz tests (hypothesis) and the flood (a seeded
``random.Random``, for millions of packets) apply to valid messages built with dnspython.

A mutation is a small tuple ``(kind, position, argument)``; ``apply`` performs a list of them.
Hypothesis draws the tuples (so it can shrink them); the flood draws them from ``random_ops``.
Positions are taken modulo the message length, so any tuple applies to any message.
"""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype

Op = tuple[str, int, int]

KINDS = ("flip", "set", "cut", "insert", "dup", "count", "pointer", "label", "longname", "opt")
# Bytes that mean something in a name: end, longest label, reserved label types, pointers.
INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xFF)
COUNTS = (0, 1, 2, 3, 0x7F, 0x100, 0xFFFF)
QTYPES = (
    "A",
    "AAAA",
    "TXT",
    "MX",
    "CNAME",
    "PTR",
    "SRV",
    "SOA",
    "NS",
    "ANY",
    "HTTPS",
    41,
    0,
    65535,
)


def _u16(data: bytearray, at: int, value: int) -> None:
    if at + 2 <= len(data):
        struct.pack_into("!H", data, at, value & 0xFFFF)


def apply(message: bytes, ops: list[Op]) -> bytes:
    """``message`` with every op of ``ops`` applied in turn."""
    data = bytearray(message)
    for kind, pos, arg in ops:
        n = len(data)
        i = pos % n if n else 0
        if kind == "flip" and n:
            data[i] ^= 1 << (arg % 8)
        elif kind == "set" and n:
            data[i] = INTERESTING[arg % len(INTERESTING)]
        elif kind == "cut":
            del data[i:]
        elif kind == "insert":
            data[i:i] = arg.to_bytes(4, "big")[: 1 + pos % 4]
        elif kind == "dup" and n:
            j = arg % n
            lo, hi = min(i, j), max(i, j)
            data[i:i] = data[lo : hi + 1]
        elif kind == "count":  # QDCOUNT, ANCOUNT, NSCOUNT or ARCOUNT
            _u16(data, 4 + 2 * (pos % 4), COUNTS[arg % len(COUNTS)])
        elif kind == "pointer" and n:
            # a compression pointer to itself (a loop), forwards, or backwards into the header
            target = (i, i + 2 + arg % 64, arg % 12)[pos % 3]
            data[i : i + 2] = bytes((0xC0 | ((target >> 8) & 0x3F), target & 0xFF))
        elif kind == "label" and n:
            data[i] = 64 + arg % 128  # a label length over 63: a reserved label type
        elif kind == "longname":
            # replace the question name with one of 250-320 bytes
            name = (b"\x3f" + b"a" * 63) * 4 + b"\x00"
            data[12:12] = name[: 250 + arg % 70] + b"\x00"
        elif kind == "opt":
            # an OPT record of odd size (rdlength off by a few, options cut) at the end
            size = arg % 40
            rdata = bytes(range(size))
            rdlen = (size + (pos % 7) - 3) & 0xFFFF
            data += (
                b"\x00"
                + struct.pack("!HHIH", 41, arg & 0xFFFF, (arg * 7919) & 0xFFFFFFFF, rdlen)
                + rdata
            )
            if n >= 12:
                _u16(data, 10, struct.unpack_from("!H", data, 10)[0] + 1)
    return bytes(data)


def random_ops(rng: random.Random, most: int = 4) -> list[Op]:
    return [
        (rng.choice(KINDS), rng.randrange(1 << 16), rng.randrange(1 << 32))
        for _ in range(rng.randint(1, most))
    ]


def random_option(rng: random.Random, most: int) -> dns.edns.Option:
    """An EDNS option: a cookie (8 or 24 bytes), padding or an unknown one of up to ``most``."""
    code = rng.choice((10, 12, 65001))
    size = rng.choice((8, 24)) if code == 10 else rng.randrange(most + 1)
    return dns.edns.GenericOption(code, bytes(size))


def random_name(rng: random.Random, zone: str = "fuzz.test") -> str:
    """A name under ``zone`` with random case (0x20) and label lengths 1-63."""
    labels = []
    for _ in range(rng.randint(1, 3)):
        size = rng.choice((1, 3, 8, 63))
        labels.append("".join(rng.choice("abcXYZ019-_") for _ in range(size)))
    return ".".join([*labels, zone])


def random_query(rng: random.Random, name: str | None = None) -> bytes:
    """A valid query: any name, type, EDNS or not, DO or not, CD or not, with options or not."""
    q = dns.message.make_query(
        name or random_name(rng),
        rng.choice(QTYPES),
        want_dnssec=rng.random() < 0.3,
        use_edns=0 if rng.random() < 0.6 else None,
        payload=rng.choice((512, 1232, 4096, 65535)),
        id=rng.randrange(1 << 16),
    )
    if rng.random() < 0.2:
        q.flags |= dns.flags.CD
    if q.edns >= 0 and rng.random() < 0.3:
        q.use_edns(0, q.ednsflags, q.payload, options=[random_option(rng, 40)])
    return q.to_wire()
