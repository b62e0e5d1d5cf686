"""``python -m bench.fuzz --packets 1000000 [--seed N]``: the differential fuzz of the C query
parser (fastdns/serve/cengine/wire.c) against the Python one (``fastdns.dns.wire``).

Every packet goes through both parsers; the verdicts must be identical: the same drop, the same
rcode, or the same fields and cache key. For each packet that parses, a reply made from it
(QR set, the name's case and bytes perturbed) goes through both ``question_matches``, and the
packet through both reply-header readers. Packets are seeded: valid queries built here (any
name, case, type, class, OPT with options and flags, records in the answer and authority
sections with compressed owners) and mutations of them (bit flips, interesting bytes, cuts,
inserts, splices of two packets, counts, compression pointers, label length bytes, labels at
the length boundaries, long names, OPT records of odd sizes, raw bytes). Standard library and
the extension only: no dnspython.

Prints packets/s and the verdict mix; exits 1 on any mismatch (the first ones printed as hex),
2 when the extension is not built. tests/fuzz/test_fuzz_cwire.py runs a slice of it in CI.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastdns.dns import wire

Verdict = tuple[Any, ...]

QTYPES = (1, 28, 16, 15, 5, 12, 33, 6, 2, 255, 65, 64, 41, 0, 251, 252, 65535)
QCLASSES = (1, 1, 1, 1, 3, 255, 254, 0, 0x4001)
SIZES = (0, 1, 511, 512, 1232, 4096, 65535)
# Bytes that mean something in a name: end, longest label, reserved label types, pointers.
INTERESTING = (0x00, 0x01, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xFF)
COUNTS = (0, 1, 2, 3, 0x7F, 0x100, 0xFFFF)
ALPHABET = b"abcxyzABCXYZ019-_\\.\x00\xff@[`{"
_FIXED = struct.Struct("!HHIH")
_HEADER = struct.Struct("!HHHHHH")


def python_verdict(data: bytes) -> Verdict:
    """``wire.parse_query``'s verdict in the form ``_cengine.parse_query`` gives it."""
    try:
        q = wire.parse_query(data)
    except wire.Malformed as e:
        return ("drop",) if e.rcode is None else ("rcode", e.rcode)
    return (
        q.id,
        q.flags,
        q.qname,
        q.qtype,
        q.qclass,
        q.qend,
        q.has_opt,
        q.udp_size,
        q.do,
        q.edns_version,
        q.key,
    )


# ------------------------------------------------------------------------------ valid queries


def random_name(rng: random.Random) -> bytes:
    """Wire labels: the root, short names, or long ones near the 255-byte limit."""
    shape = rng.random()
    if shape < 0.03:
        return b"\x00"
    out = bytearray()
    most = 250 if shape < 0.1 else rng.choice((20, 60, 120))
    while True:
        size = rng.choice((1, 2, 3, 8, 20, 63))
        if len(out) + size + 2 > most:
            break
        out.append(size)
        out += bytes(rng.choice(ALPHABET) for _ in range(size))
        if rng.random() < 0.3:
            break
    return bytes(out or b"\x01a") + b"\x00"


def random_opt(rng: random.Random) -> bytes:
    """An OPT record (RFC 6891): any size, extended rcode, version, DO, options."""
    options = b""
    for _ in range(rng.choice((0, 0, 1, 2))):
        code = rng.choice((8, 10, 12, 15, 65001))
        body = rng.randbytes(rng.choice((0, 4, 8, 24, 40)))
        options += struct.pack("!HH", code, len(body)) + body
    ttl = (rng.choice((0, 0, 1, 255)) << 24) | (rng.choice((0, 0, 0, 1, 255)) << 16)
    ttl |= rng.choice((0, 0x8000, 0xFFFF, 0x7FFF))
    return b"\x00" + _FIXED.pack(wire.OPT, rng.choice(SIZES), ttl, len(options)) + options


def random_record(rng: random.Random) -> bytes:
    """An answer/authority record, its owner often a pointer to the question name."""
    owner = rng.choice((b"\xc0\x0c", b"\xc0\x0c", b"\x00", b"\x01x\xc0\x0c", random_name(rng)))
    rdata = rng.randbytes(rng.choice((0, 4, 16)))
    return owner + _FIXED.pack(rng.choice(QTYPES), 1, rng.randrange(1 << 32), len(rdata)) + rdata


def chained_records(rng: random.Random, question: bytes) -> list[bytes]:
    """Records whose owners are labels then a pointer to a name or label of an earlier owner
    (or of the question): names that share their ends, as the parser's table of checked names
    (``wire._check_pointer_target``) meets them, some over 255 bytes in all."""
    starts = [12 + j for j in _label_offsets(question)]  # where a name can be pointed at
    at = 12 + len(question)
    records = []
    for _ in range(rng.randint(2, 12)):
        owner = bytearray()
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            size = rng.choice((1, 1, 5, 20, 63))
            starts.append(at + len(owner))
            owner += bytes((size,)) + b"c" * size
        target = rng.choice(starts[-6:] if rng.random() < 0.5 else starts)
        owner += bytes((0xC0 | (target >> 8), target & 0xFF))
        if not owner.startswith(b"\xc0"):
            starts.append(at)
        record = bytes(owner) + _FIXED.pack(rng.choice(QTYPES), 1, 0, 0)
        records.append(record)
        at += len(record)
    return records


def _label_offsets(name: bytes) -> list[int]:
    """The offsets of the labels of an uncompressed name (its root byte included)."""
    out, j = [], 0
    while j < len(name) and name[j] and name[j] < 64:
        out.append(j)
        j += name[j] + 1
    return [*out, j]


def random_query(rng: random.Random) -> bytes:
    """A query fastdns.dns.wire accepts (most of the time: a few ask for the odd corner)."""
    flags = rng.choice((0x0100, 0x0100, 0x0000, 0x0110, 0x0120, 0x0130, 0x0101))
    question = random_name(rng) + struct.pack("!HH", rng.choice(QTYPES), rng.choice(QCLASSES))
    if rng.random() < 0.1:
        records = chained_records(rng, question)
    else:
        records = [random_record(rng) for _ in range(rng.choice((0, 0, 0, 0, 1, 2)))]
    an = rng.randint(0, len(records))
    opts = [random_opt(rng) for _ in range(rng.choice((0, 1, 1, 1, 2)))]
    header = _HEADER.pack(rng.randrange(1 << 16), flags, 1, an, len(records) - an, len(opts))
    return header + question + b"".join(records) + b"".join(opts)


# ------------------------------------------------------------------------------ mutations


def _u16(data: bytearray, at: int, value: int) -> None:
    if at + 2 <= len(data):
        struct.pack_into("!H", data, at, value & 0xFFFF)


def mutate(rng: random.Random, message: bytes, other: bytes) -> bytes:
    """``message`` with one to four random mutations; ``other`` is a second packet to splice."""
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        n = len(data)
        i = rng.randrange(n) if n else 0
        kind = rng.randrange(14)
        if kind == 0 and n:
            data[i] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:
            data[i] = rng.choice(INTERESTING)
        elif kind == 2:
            del data[i:]
        elif kind == 3:
            data[i:i] = rng.randbytes(rng.randint(1, 4))
        elif kind == 4 and n:
            j = rng.randrange(n)
            data[i:i] = data[min(i, j) : max(i, j) + 1]
        elif kind == 5:
            _u16(data, rng.choice((4, 6, 8, 10)), rng.choice(COUNTS))
        elif kind == 6 and n:
            # a compression pointer to itself (a loop), forwards, backwards, into the header
            target = rng.choice((i, i + 2 + rng.randrange(64), rng.randrange(max(i, 1)), 12))
            data[i : i + 2] = bytes((0xC0 | ((target >> 8) & 0x3F), target & 0xFF))
        elif kind == 7 and n:
            data[i] = rng.choice((rng.randrange(64, 256), rng.randrange(1, 64)))
        elif kind == 8:
            name = (b"\x3f" + b"a" * 63) * 4
            data[12:12] = name[: rng.randrange(240, 260)] + b"\x00"
        elif kind == 9:
            size = rng.randrange(40)
            rdlen = (size + rng.randrange(7) - 3) & 0xFFFF
            data += b"\x00" + _FIXED.pack(41, rng.randrange(1 << 16), rng.randrange(1 << 32), rdlen)
            data += bytes(range(size))
            if n >= 12:  # one more additional record
                _u16(data, 10, int.from_bytes(data[10:12], "big") + 1)
        elif kind == 10:
            j = rng.randrange(len(other) + 1)
            data[i:] = other[j:]
        elif kind == 11 and n > 2:
            _u16(data, 2, rng.randrange(1 << 16))
        elif kind == 12:
            data[i : i + rng.randint(0, 8)] = b""
        elif kind == 13 and n > 12 and 0 < data[12] < 64:
            # the first label at a length boundary, its bytes to match: 63 is the longest
            # label, 64-191 reserved label types (RFC 1035 §4.1.4, RFC 6891 §5), 192 a pointer
            size = rng.choice((62, 63, 64, 65, 127, 128, 191, 192))
            data[12 : 13 + data[12]] = bytes((size,)) + b"b" * size
    return bytes(data)


def packets(rng: random.Random) -> Iterator[bytes]:
    """An endless seeded stream: one valid query in four, mutants and raw bytes the rest."""
    pool = [random_query(rng) for _ in range(256)]
    while True:
        pick = rng.random()
        if pick < 0.25:
            data = random_query(rng)
            pool[rng.randrange(len(pool))] = data
        elif pick < 0.97:
            data = mutate(rng, rng.choice(pool), rng.choice(pool))
        else:
            data = rng.randbytes(rng.randrange(40))
        yield data


def reply_for(rng: random.Random, query: bytes) -> bytes:
    """A reply candidate for a query: QR set, sometimes the name's case or bytes changed."""
    data = bytearray(query)
    data[2] |= 0x80
    for _ in range(rng.choice((0, 0, 1, 2))):
        i = rng.randrange(2, len(data))
        data[i] ^= rng.choice((0x20, 0x20, 0x01, 0x80))
    if rng.random() < 0.1:
        del data[rng.randrange(len(data)) :]
    return bytes(data)


# ------------------------------------------------------------------------------ the run


@dataclass
class Outcome:
    packets: int = 0
    mix: Counter[str] = field(default_factory=Counter)
    mismatches: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def verdict_name(v: Verdict) -> str:
    if v[0] == "drop":
        return "drop"
    if v[0] == "rcode":
        return {wire.FORMERR: "formerr", wire.NOTIMP: "notimp"}.get(v[1], f"rcode{v[1]}")
    return "query+opt" if v[6] else "query"


def run(count: int, seed: int, keep: int = 10) -> Outcome:
    """Feed ``count`` seeded packets to both parsers; note the mix and up to ``keep``
    mismatches as (what, packet, reply)."""
    from fastdns.serve import _cengine  # here: main reports a missing build

    rng = random.Random(seed)
    out = Outcome()
    for data in packets(rng):
        if out.packets >= count:
            break
        out.packets += 1
        c, p = _cengine.parse_query(data), python_verdict(data)
        out.mix[verdict_name(p)] += 1
        if c != p:
            out.mix["mismatch"] += 1
            if len(out.mismatches) < keep:
                out.mismatches.append(("parse_query", data, b""))
            continue
        if len(data) >= 12:
            header = (wire.reply_id(data), wire.reply_rcode(data), wire.truncated(data))
        else:
            header = None
        if _cengine.reply_header(data) != header:
            out.mix["mismatch"] += 1
            if len(out.mismatches) < keep:
                out.mismatches.append(("reply_header", data, b""))
        if len(p) > 2:
            reply = reply_for(rng, data)
            want = wire.question_matches(reply, wire.parse_query(data))
            if _cengine.question_matches(reply, data) != want:
                out.mix["mismatch"] += 1
                if len(out.mismatches) < keep:
                    out.mismatches.append(("question_matches", data, reply))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        from fastdns.serve import _cengine
    except ImportError as e:
        print(f"the extension is not built: {e}", file=sys.stderr)
        return 2
    print(f"extension: {_cengine.__file__}")
    start = time.perf_counter()
    out = run(args.packets, args.seed)
    took = time.perf_counter() - start
    print(f"{out.packets} packets, seed {args.seed}, {took:.1f} s, {out.packets / took:,.0f}/s")
    for name, number in sorted(out.mix.items(), key=lambda kv: -kv[1]):
        print(f"  {name:12} {number:9} {100 * number / max(out.packets, 1):6.2f} %")
    for what, data, reply in out.mismatches:
        print(f"MISMATCH {what}: packet {data.hex()} reply {reply.hex()}")
        if what == "parse_query":
            print(f"  C      {_cengine.parse_query(data)}\n  Python {python_verdict(data)}")
    return 1 if out.mix["mismatch"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
