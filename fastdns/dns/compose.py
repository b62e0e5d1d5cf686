"""Replies: built for a query, patched from a stored one, fitted to a UDP size.

Nothing here does I/O. ``splice`` and ``truncate`` are on the hot path and never build a full
message object (parsing is ``fastdns.dns.wire``).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastdns.dns.wire import (
    AA,
    CD,
    DO_BIT,
    FORMERR,
    HEADER,
    NOERROR,
    OPCODE_MASK,
    OPT,
    QR,
    RA,
    RCODE_MASK,
    RD,
    RR_FIXED,
    TC,
    U16,
    Malformed,
    Query,
    iter_records,
    name_end,
    read_name,
    reply_id,
    skip_name,
)


def header_only_reply(buf: bytes, rcode: int) -> bytes | None:
    """A reply for a packet we could not parse: echo ID and opcode, no question."""
    if len(buf) < 12:
        return None
    flags = U16.unpack_from(buf, 2)[0]
    rflags = QR | (flags & (OPCODE_MASK | RD)) | RA | (rcode & RCODE_MASK)
    return HEADER.pack(U16.unpack_from(buf, 0)[0], rflags, 0, 0, 0, 0)


def opt_record(udp_size: int, do: bool, ext_rcode: int = 0) -> bytes:
    """Our OPT pseudo-RR: root owner, our payload size, version 0, DO echoed (RFC 3225)."""
    ttl = ((ext_rcode >> 4) << 24) | (DO_BIT if do else 0)
    return b"\x00" + RR_FIXED.pack(OPT, udp_size, ttl, 0)


def build_reply(
    q: Query,
    rcode: int = NOERROR,
    answers: Iterable[bytes] = (),
    *,
    authority: Iterable[bytes] = (),
    aa: bool = False,
    opt_size: int = 1232,
) -> bytes:
    """A reply to ``q`` carrying ready-encoded RRs; the question is echoed byte for byte."""
    ans = list(answers)
    auth = list(authority)
    flags = QR | (q.flags & (OPCODE_MASK | RD | CD)) | RA | (rcode & RCODE_MASK)
    if aa:
        flags |= AA
    parts = [HEADER.pack(q.id, flags, 1, len(ans), len(auth), 1 if q.has_opt else 0), q.question]
    parts += ans
    parts += auth
    if q.has_opt:
        parts.append(opt_record(opt_size, q.do, rcode if rcode > 15 else 0))
    return b"".join(parts)


def error_reply(q: Query, rcode: int, opt_size: int = 1232) -> bytes:
    return build_reply(q, rcode, opt_size=opt_size)


def splice(reply: bytes, qid: int, question: bytes, rd: bool | None = None) -> bytes:
    """Patch the client's ID and its exact question bytes (0x20 case) into a stored reply.

    RA is always set: fastdns offers recursion even when the upstream that answered (an
    authoritative-only server) did not. With ``rd``, RD is set to the client's (a coalesced or
    cached reply may come from a query with another RD bit).
    """
    b2 = reply[2] if rd is None else (reply[2] & 0xFE) | (1 if rd else 0)
    flags = bytes((b2, reply[3] | (RA & 0xFF)))
    return b"".join(
        (qid.to_bytes(2, "big"), flags, reply[4:12], question, reply[12 + len(question) :])
    )


def match_opt(reply: bytes, q: Query, opt_size: int) -> bytes:
    """``reply`` with an OPT record iff ``q`` had one (RFC 6891 §7), for a reply that was made
    for another query with the same question (coalesced or cached)."""
    if len(reply) < 12:
        return reply
    try:
        records = list(iter_records(reply))
    except Malformed:
        return reply
    opt = [r for r in records if r.rtype == OPT]
    if q.has_opt and not opt:
        ar = U16.unpack_from(reply, 10)[0]
        return reply[:10] + U16.pack(ar + 1) + reply[12:] + opt_record(opt_size, q.do)
    if not q.has_opt and opt and opt[-1] is records[-1]:
        # OPT is last (as every server sends it): cut it off. Elsewhere cutting it would move
        # the names after it that compression pointers may target; leave such a reply alone.
        ar = U16.unpack_from(reply, 10)[0]
        return reply[:10] + U16.pack(ar - 1) + reply[12 : opt[-1].start]
    return reply


def has_answer(reply: bytes, qend: int, qtype: int) -> bool:
    """True when ``reply`` (a NOERROR response whose one question ends at ``qend``) has an
    answer record of ``qtype``: an address, not only a CNAME on the way to none. False for any
    other reply, damaged ones included."""
    n = len(reply)
    if n < 12 or reply[3] & RCODE_MASK:
        return False
    i = qend
    for _ in range((reply[6] << 8) | reply[7]):
        i = name_end(reply, i, n)
        if i < 0 or i + 10 > n:
            return False
        if (reply[i] << 8) | reply[i + 1] == qtype:
            return True
        i += 10 + ((reply[i + 8] << 8) | reply[i + 9])
    return False


def truncate(reply: bytes, limit: int) -> bytes:
    """Fit ``reply`` into ``limit`` bytes for UDP by dropping whole RRsets, setting TC.

    Keeps a prefix of the records (compression pointers only point backwards, so a prefix stays
    valid) cut at an RRset boundary, then re-appends the OPT record. TC is set when answer or
    authority data was dropped (RFC 2181 §9); dropping only additional data does not set it.

    One pass that skips names without decoding them: records of an RRset nearly always carry
    the same owner bytes (one pointer), and only owners whose bytes differ are decoded to
    compare (about 30 us for 60 records, against 110 us decoding every owner).
    """
    n = len(reply)
    if n <= limit:
        return reply
    _, flags, qd, an, ns, ar = HEADER.unpack_from(reply)
    i = 12
    checked: dict[int, int] = {}  # skip_name: the names of this reply already walked
    for _ in range(qd):
        i = skip_name(reply, i, n, checked) + 4
    qend = i
    # (start, owner end, end, section, rtype) of every record but OPT
    body: list[tuple[int, int, int, int, int]] = []
    opt = b""
    opt_start = opt_fixed = 0
    for idx in range(an + ns + ar):
        start = i
        i = name_end(reply, i, n)
        if i < 0:
            raise Malformed(FORMERR, "bad owner name")
        if i + 10 > n:
            raise Malformed(FORMERR, "record cut short")
        rtype = (reply[i] << 8) | reply[i + 1]
        end = i + 10 + ((reply[i + 8] << 8) | reply[i + 9])
        if end > n:
            raise Malformed(FORMERR, "rdata runs past the end")
        if rtype == OPT:
            opt, opt_start, opt_fixed = reply[start:end], start, i + 8
        else:
            body.append((start, i, end, 0 if idx < an else 1 if idx < an + ns else 2, rtype))
        i = end
    if i != n:
        raise Malformed(FORMERR, "trailing bytes after the records")
    if opt and qend + len(opt) > limit:
        # Options (padding, RFC 7830; a cookie) too big for even the minimal response, which is
        # header, question and OPT (RFC 6891 §7): keep the OPT, without its options, at the end.
        opt = reply[opt_start:opt_fixed] + b"\x00\x00"
        opt_start = n
    budget = limit - qend - len(opt)
    keep = 0  # number of records kept, always an RRset boundary
    k = 0
    while k < len(body):
        first = body[k]
        owner = reply[first[0] : first[1]]
        j = k + 1
        while j < len(body):  # the RRset starting at k
            r = body[j]
            if r[3] != first[3] or r[4] != first[4]:
                break
            if reply[r[0] : r[1]] != owner and (
                read_name(reply, r[0])[0] != read_name(reply, first[0])[0]
            ):
                break
            j += 1
        span = body[j - 1][2] - body[0][0]
        if body[0][0] < opt_start < body[j - 1][2]:
            span -= len(opt)  # an OPT among the kept records is counted in ``budget``
        if span > budget:
            break
        keep = k = j
    tc = any(r[3] < 2 for r in body[keep:])
    counts = [0, 0, 0]
    for r in body[:keep]:
        counts[r[3]] += 1
    if opt:
        counts[2] += 1
    end = body[keep - 1][2] if keep else qend
    header = HEADER.pack(reply_id(reply), flags | TC if tc else flags, qd, *counts)
    if opt and opt_start < end:
        # OPT need not be the last record (RFC 6891): when the kept prefix already holds it,
        # appending it again would duplicate it and overrun ``limit``.
        return header + reply[12:end]
    return header + reply[12:end] + opt


def min_ttl(reply: bytes) -> int | None:
    """Smallest TTL over answer and authority records (None if there are none)."""
    ttls = [r.ttl for r in iter_records(reply) if r.section < 2 and r.rtype != OPT]
    return min(ttls) if ttls else None
