"""Byte-level DNS: constants, parse a query's header and single question, names, records.

Nothing here does I/O, and the hot-path functions (``parse_query``, ``set_id``) never build a
full message object: a dnspython parse costs 20-120 us, the whole per-query budget is about
12 us (bench/). Replies are built and patched in ``fastdns.dns.compose``.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from fastdns.errors import FastDNSError

HEADER = struct.Struct("!HHHHHH")
_TYPE_CLASS = struct.Struct("!HH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")

# RFC 1035 / IANA codes
A, NS, CNAME, SOA, PTR, HINFO, MX, TXT, AAAA, SRV, OPT = 1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 41
DS, RRSIG, NSEC, DNSKEY, NSEC3, SVCB, HTTPS, IXFR, AXFR, ANY, CAA = (
    43,
    46,
    47,
    48,
    50,
    64,
    65,
    251,
    252,
    255,
    257,
)
CLASS_IN, CLASS_CH, CLASS_ANY = 1, 3, 255
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # RFC 6891 extended rcode

QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
OPCODE_MASK, OPCODE_QUERY = 0x7800, 0
RCODE_MASK = 0x000F
DO_BIT = 0x8000  # in the OPT TTL field

MAX_NAME = 255
MIN_UDP = 512

TYPE_NAMES = {
    A: "A",
    NS: "NS",
    CNAME: "CNAME",
    SOA: "SOA",
    PTR: "PTR",
    HINFO: "HINFO",
    MX: "MX",
    TXT: "TXT",
    AAAA: "AAAA",
    SRV: "SRV",
    OPT: "OPT",
    DS: "DS",
    RRSIG: "RRSIG",
    NSEC: "NSEC",
    DNSKEY: "DNSKEY",
    NSEC3: "NSEC3",
    SVCB: "SVCB",
    HTTPS: "HTTPS",
    IXFR: "IXFR",
    AXFR: "AXFR",
    ANY: "ANY",
    CAA: "CAA",
}
RCODE_NAMES = {
    NOERROR: "NOERROR",
    FORMERR: "FORMERR",
    SERVFAIL: "SERVFAIL",
    NXDOMAIN: "NXDOMAIN",
    NOTIMP: "NOTIMP",
    REFUSED: "REFUSED",
    BADVERS: "BADVERS",
}


class Malformed(FastDNSError):
    """A packet that cannot be served; ``rcode`` is None when no reply is possible (drop)."""

    def __init__(self, rcode: int | None, why: str) -> None:
        super().__init__(why)
        self.rcode = rcode


class Query:
    """The header and the one question of a client query, read without a full parse."""

    __slots__ = (
        "do",
        "edns_version",
        "flags",
        "has_opt",
        "id",
        "key",
        "qclass",
        "qend",
        "qname",
        "qtype",
        "udp_size",
        "wire",
    )

    wire: bytes
    id: int
    flags: int
    qname: bytes  # wire-format name exactly as asked (case kept)
    qtype: int
    qclass: int
    qend: int  # offset just past the question
    key: bytes  # lower-cased qname + qtype + qclass + DO/CD: the cache / coalescing key
    has_opt: bool
    udp_size: int  # client's advertised UDP payload size (512 without OPT)
    do: bool
    edns_version: int

    @property
    def question(self) -> bytes:
        """The question section bytes exactly as the client sent them."""
        return self.wire[12 : self.qend]

    @property
    def name(self) -> str:
        """The query name as text, case kept, with a trailing dot."""
        return name_to_text(self.qname)

    @property
    def rd(self) -> bool:
        return bool(self.flags & RD)

    @property
    def cd(self) -> bool:
        return bool(self.flags & CD)


def skip_name(buf: bytes, i: int, n: int, checked: dict[int, int] | None = None) -> int:
    """Return the offset after a (possibly compressed) name at ``i``; raise on any damage.

    ``checked``: the names already checked in this packet (``_check_pointer_target``), shared
    by every call on the same ``buf`` so that a chain of pointers many names point into is
    walked once, not once per name.
    """
    total = 0
    while True:
        if i >= n:
            raise Malformed(FORMERR, "name runs past the end")
        length = buf[i]
        if length == 0:
            return i + 1
        kind = length & 0xC0
        if kind == 0xC0:
            if i + 2 > n:
                raise Malformed(FORMERR, "cut compression pointer")
            target = ((length & 0x3F) << 8) | buf[i + 1]
            if target >= i:
                # Pointers must point backwards (RFC 1035 §4.1.4 "prior occurrence"); this
                # rules out loops and pointers past the end in one check.
                raise Malformed(FORMERR, "forward or looping compression pointer")
            _check_pointer_target(buf, target, n, {} if checked is None else checked)
            return i + 2
        if kind:
            raise Malformed(FORMERR, "bad label type")
        total += length + 1
        if total > MAX_NAME:
            raise Malformed(FORMERR, "name longer than 255 bytes")
        i += length + 1


def _check_pointer_target(buf: bytes, i: int, n: int, checked: dict[int, int]) -> None:
    """Follow a compressed name from ``i`` to its end, checking every hop moves backwards.

    ``checked`` maps offsets whose name was found sound to the label bytes from there to the
    name's end. The walk stops at the first such offset and adds its bytes: the verdict is the
    one a walk to the end would give (nothing after a checked offset can fail but the length,
    which only grows), and every offset of a packet is walked once, so the work of all the
    names of a packet is bounded by its length, not by names x hops. On success the offsets of
    this walk join ``checked`` (a sound walk visits each offset once: any repeat is a loop).
    """
    total = 0
    path: list[tuple[int, int]] = []  # (offset, label bytes before it in this walk)
    while True:
        known = checked.get(i)
        if known is not None:
            total += known
            if total > MAX_NAME:
                raise Malformed(FORMERR, "name longer than 255 bytes")
            break
        if i >= n:
            raise Malformed(FORMERR, "pointer past the end")
        length = buf[i]
        path.append((i, total))
        if length == 0:
            break
        if length & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed(FORMERR, "cut compression pointer")
            target = ((length & 0x3F) << 8) | buf[i + 1]
            if target >= i:
                raise Malformed(FORMERR, "compression pointer loop")
            i = target
            continue
        if length & 0xC0:
            raise Malformed(FORMERR, "bad label type")
        total += length + 1
        if total > MAX_NAME:
            raise Malformed(FORMERR, "name longer than 255 bytes")
        i += length + 1
    for offset, before in path:
        checked[offset] = total - before


def parse_query(buf: bytes) -> Query:
    """Read the header, the single question and any OPT record of a query.

    Raises ``Malformed`` with the rcode to answer (or None: drop). QR=1 packets and packets
    shorter than a header are dropped; a bad opcode is NOTIMP; anything else broken is FORMERR.
    """
    n = len(buf)
    if n < 12:
        raise Malformed(None, "shorter than a DNS header")
    qid, flags, qd, an, ns, ar = HEADER.unpack_from(buf)
    if flags & QR:
        raise Malformed(None, "QR set: a response, not a query")
    if flags & OPCODE_MASK != OPCODE_QUERY:
        raise Malformed(NOTIMP, "opcode not QUERY")
    if qd != 1:
        raise Malformed(FORMERR, "QDCOUNT is not 1")
    # The question name: no compression allowed (only the header precedes it).
    i = 12
    while True:
        if i >= n:
            raise Malformed(FORMERR, "question cut short")
        length = buf[i]
        if length == 0:
            break
        if length > 63:
            raise Malformed(FORMERR, "compressed or bad label in the question")
        i += length + 1
        if i - 12 > MAX_NAME - 1:
            raise Malformed(FORMERR, "name longer than 255 bytes")
    name_end = i + 1
    qend = name_end + 4
    if qend > n:
        raise Malformed(FORMERR, "question cut short")
    qtype, qclass = _TYPE_CLASS.unpack_from(buf, name_end)
    q = Query()
    q.wire = buf
    q.id = qid
    q.flags = flags
    q.qname = buf[12:name_end]
    q.qtype = qtype
    q.qclass = qclass
    q.qend = qend
    q.has_opt = False
    q.udp_size = MIN_UDP
    q.do = False
    q.edns_version = 0
    if an or ns or ar:
        _read_records(buf, qend, n, an + ns, ar, q)
    elif qend != n:
        raise Malformed(FORMERR, "trailing bytes after the question")
    q.key = b"".join(
        (
            q.qname.lower(),
            buf[name_end:qend],
            b"\x01" if q.do else b"\x00",
            b"\x01" if flags & CD else b"\x00",
        )
    )
    return q


def _read_records(buf: bytes, i: int, n: int, skip: int, ar: int, q: Query) -> None:
    """Skip answer/authority records and read the additional section, looking for OPT."""
    checked: dict[int, int] = {}  # skip_name: the names of this packet already walked
    for idx in range(skip + ar):
        i = skip_name(buf, i, n, checked)
        if i + 10 > n:
            raise Malformed(FORMERR, "record cut short")
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(buf, i)
        i += 10 + rdlen
        if i > n:
            raise Malformed(FORMERR, "rdata runs past the end")
        if rtype == OPT and idx >= skip:
            if q.has_opt:
                raise Malformed(FORMERR, "more than one OPT record")  # RFC 6891 §6.1.1
            q.has_opt = True
            q.udp_size = max(MIN_UDP, rclass)
            q.edns_version = (ttl >> 16) & 0xFF
            q.do = bool(ttl & DO_BIT)
    if i != n:
        raise Malformed(FORMERR, "trailing bytes after the records")


# ---------------------------------------------------------------------------- names and RRs


def name_to_wire(name: str) -> bytes:
    """Encode a text name (``a.b.`` or ``a.b``) as uncompressed wire labels."""
    name = name.rstrip(".")
    if not name:
        return b"\x00"
    out = bytearray()
    for label in name.split("."):
        raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise ValueError(f"name too long: {name!r}")
    return bytes(out)


def name_to_text(wire_name: bytes) -> str:
    """Decode uncompressed wire labels to text with a trailing dot (escapes are not applied)."""
    labels = []
    i = 0
    while wire_name[i]:
        length = wire_name[i]
        labels.append(wire_name[i + 1 : i + 1 + length].decode("ascii", "backslashreplace"))
        i += length + 1
    return ".".join(labels) + "."


def read_name(buf: bytes, i: int) -> tuple[bytes, int]:
    """Decode a possibly compressed name at ``i``: (lower-cased uncompressed wire, next offset)."""
    out = bytearray()
    end = -1
    hops = 0
    n = len(buf)
    while True:
        if i >= n:
            raise Malformed(FORMERR, "name runs past the end")
        length = buf[i]
        if length == 0:
            out.append(0)
            if end < 0:
                end = i + 1
            return bytes(out).lower(), end
        if length & 0xC0 == 0xC0:
            if i + 2 > n:
                raise Malformed(FORMERR, "cut compression pointer")
            if end < 0:
                end = i + 2
            hops += 1
            target = ((length & 0x3F) << 8) | buf[i + 1]
            if hops > 64 or target >= i:
                raise Malformed(FORMERR, "compression pointer loop")
            i = target
            continue
        if length & 0xC0:
            raise Malformed(FORMERR, "bad label type")
        out += buf[i : i + length + 1]
        if len(out) > MAX_NAME:
            raise Malformed(FORMERR, "name longer than 255 bytes")
        i += length + 1


POINTER_TO_QNAME = b"\xc0\x0c"  # the question name always sits at offset 12


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = CLASS_IN) -> bytes:
    """Encode one RR; ``owner`` is wire bytes (often POINTER_TO_QNAME to keep the query case)."""
    return owner + RR_FIXED.pack(rtype, rclass, ttl & 0xFFFFFFFF, len(rdata)) + rdata


def rdata_address(ip: str) -> tuple[int, bytes]:
    """(A or AAAA, packed address) for an IP literal."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    return (A if addr.version == 4 else AAAA), addr.packed


def rdata_txt(strings: Iterable[bytes]) -> bytes:
    """TXT rdata: each string as a length-prefixed chunk (RFC 1035 §3.3.14), kept as given."""
    out = bytearray()
    for s in strings:
        if len(s) > 255:
            raise ValueError("TXT string longer than 255 bytes")
        out.append(len(s))
        out += s
    return bytes(out)


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address, lower case, trailing dot."""
    return ipaddress.ip_address(ip.split("%", 1)[0]).reverse_pointer + "."


# ---------------------------------------------------------------------------- reply handling


def reply_id(buf: bytes) -> int:
    return int.from_bytes(buf[:2], "big")


def set_id(buf: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + buf[2:]


def reply_rcode(buf: bytes) -> int:
    return buf[3] & RCODE_MASK


def truncated(buf: bytes) -> bool:
    """The TC bit of a reply's header (RFC 1035 §4.1.1): retry over TCP (RFC 7766 §5)."""
    return bool(buf[2] & 0x02)  # TC is the low bit of the flags' high byte (``TC`` above)


# Rcodes after which a forwarder asks the next upstream and never this one again for the
# same query (RFC 1035 §4.1.1: the server failed, or refused us).
FAILOVER_RCODES = frozenset((SERVFAIL, REFUSED))


def name_end(buf: bytes, i: int, n: int) -> int:
    """Where the (possibly compressed) name at ``i`` ends, or -1 when it runs past ``n`` or
    has a bad label type. Only its end: what pointers point at is not followed (the callers
    walk records of replies they pass on as they came)."""
    while i < n:
        length = buf[i]
        if length == 0:
            return i + 1
        if length >= 0xC0:
            return i + 2
        if length > 63:
            return -1
        i += length + 1
    return -1


def question_matches(reply: bytes, q: Query) -> bool:
    """True when ``reply`` is a response with exactly one question equal to ``q``'s, ignoring
    case (RFC 4343). The question must be uncompressed, as every server sends it."""
    if len(reply) < q.qend or not reply[2] & 0x80:
        return False
    if reply[4:6] != b"\x00\x01":
        return False
    # Type and class compare exactly: a case fold would equate qtype 0x0041 with 0x0061.
    end = q.qend - 4
    return (
        reply[end : q.qend] == q.wire[end : q.qend]
        and reply[12:end].lower() == q.wire[12:end].lower()
    )


class Record(NamedTuple):
    section: int  # 0 answer, 1 authority, 2 additional
    start: int
    end: int
    owner: bytes  # lower-cased uncompressed wire
    rtype: int
    rclass: int
    ttl_offset: int
    ttl: int
    rdata_offset: int


def iter_records(buf: bytes) -> Iterator[Record]:
    """Walk every RR of a reply (after the question); raise ``Malformed`` on damage."""
    if len(buf) < 12:
        raise Malformed(None, "short reply")
    _, _, qd, an, ns, ar = HEADER.unpack_from(buf)
    n = len(buf)
    i = 12
    checked: dict[int, int] = {}  # skip_name: the names of this packet already walked
    for _ in range(qd):
        i = skip_name(buf, i, n, checked) + 4
        if i > n:
            raise Malformed(FORMERR, "question cut short")
    counts = (an, ns, ar)
    for section in range(3):
        for _ in range(counts[section]):
            owner, j = read_name(buf, i)
            if j + 10 > n:
                raise Malformed(FORMERR, "record cut short")
            rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(buf, j)
            end = j + 10 + rdlen
            if end > n:
                raise Malformed(FORMERR, "rdata runs past the end")
            yield Record(section, i, end, owner, rtype, rclass, j + 4, ttl, j + 10)
            i = end
    if i != n:
        raise Malformed(FORMERR, "trailing bytes after the records")
