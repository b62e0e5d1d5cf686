"""Wire answers rebuilt from c-ares results (pycares 5), for the native path.

Pure functions: no pycares import, no I/O. The results are read by attribute, so tests can
pass pycares' own dataclasses or simple stand-ins:

- ``getaddrinfo`` -> ``.cnames`` [(ttl, alias, name)] and ``.nodes`` [(ttl, family, addr)];
- ``search`` -> ``.answer`` / ``.authority`` [(name, type, record_class, ttl, data)].

Two styles. The default is faithful DNS: CNAMEs met on the way are emitted before the records
they lead to, every record keeps its own TTL from DNS. ``lima_compat`` is what Lima's
hostagent sends: the chain flattened onto the query name, TTL 5, empty hosts skipped.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from fastdns.dns import compose, wire
from fastdns.errors import FastDNSError

LIMA_TTL = 5  # every locally built answer in Lima's hostagent (pkg/hostagent/dns/dns.go)
TXT_CHUNK = 255  # RFC 1035 §3.3: a <character-string> holds at most 255 bytes
_MAX_CHAIN = 16  # CNAME hops followed when ordering a chain (c-ares gives up earlier)
_SOA_NUMBERS = struct.Struct("!IIIII")


@dataclass(frozen=True, slots=True)
class AnswerStyle:
    """How native answers are written."""

    lima_compat: bool = False  # flatten chains, TTL 5, skip empty hosts (Lima)
    local_ttl: int = 5  # hosts-file answers: c-ares reports TTL 0 for them
    opt_size: int = 1232  # our EDNS payload size, when the query had OPT


class Unusable(FastDNSError, ValueError):  # still a ValueError to the name parsing around it
    """c-ares returned something that cannot be written as a DNS answer (forward instead)."""


# ------------------------------------------------------------------------------- names


def text_to_wire(name: str) -> bytes:
    """A name as c-ares prints it (no final dot, ``\\.`` and ``\\DDD`` escapes) in wire form."""
    if "\\" not in name:
        try:
            return wire.name_to_wire(name)
        except (ValueError, UnicodeError) as e:
            raise Unusable(str(e)) from e
    labels: list[bytes] = []
    label = bytearray()
    i, n = 0, len(name)
    while i < n:
        c = name[i]
        if c == "\\" and i + 1 < n:
            if name[i + 1 : i + 4].isdigit() and len(name[i + 1 : i + 4]) == 3:
                label.append(int(name[i + 1 : i + 4]) & 0xFF)
                i += 4
            else:
                label += name[i + 1].encode("latin-1", "replace")
                i += 2
            continue
        if c == ".":
            labels.append(bytes(label))
            label = bytearray()
        else:
            label += c.encode("latin-1", "replace")
        i += 1
    if label:
        labels.append(bytes(label))
    out = bytearray()
    for raw in labels:
        if not 0 < len(raw) <= 63:
            raise Unusable(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > wire.MAX_NAME:
        raise Unusable(f"name too long: {name!r}")
    return bytes(out)


def _canonical(name: str) -> str:
    return name.rstrip(".").lower()


def _is_empty_host(name: str) -> bool:
    return name in ("", ".")


# ------------------------------------------------------------------------------- rdata


def txt_strings(data: bytes) -> list[bytes]:
    """A TXT record's joined data cut into <=255-byte strings (Lima's chunkify). An empty TXT
    stays one empty string, never zero strings (Lima sends zero, which is malformed: RFC 1035
    §3.3.14 needs at least one)."""
    if not data:
        return [b""]
    return [data[i : i + TXT_CHUNK] for i in range(0, len(data), TXT_CHUNK)]


def encode_rdata(rtype: int, data: Any, *, keep_strings: bool = True) -> bytes:
    """Wire rdata for one pycares record payload of the types the native path asks for.

    TXT: the strings as received when the payload carries them (``cares.TXTStrings``) and
    ``keep_strings``; otherwise the joined data cut at 255 bytes, as Lima does (chunkify).
    """
    try:
        if rtype in (wire.A, wire.AAAA):
            return ipaddress.ip_address(data.addr).packed
        if rtype == wire.CNAME:
            return text_to_wire(data.cname)
        if rtype == wire.NS:
            return text_to_wire(data.nsdname)
        if rtype == wire.MX:
            return struct.pack("!H", data.priority) + text_to_wire(data.exchange)
        if rtype == wire.SRV:
            return struct.pack("!HHH", data.priority, data.weight, data.port) + text_to_wire(
                data.target
            )
        if rtype == wire.TXT:
            strings = getattr(data, "strings", None) if keep_strings else None
            return wire.rdata_txt(strings or txt_strings(data.data))
        if rtype == wire.SOA:
            return (
                text_to_wire(data.mname)
                + text_to_wire(data.rname)
                + _SOA_NUMBERS.pack(
                    data.serial, data.refresh, data.retry, data.expire, data.minimum
                )
            )
    except (AttributeError, TypeError, ValueError, struct.error) as e:
        raise Unusable(f"cannot encode type {rtype}: {e}") from e
    raise Unusable(f"type {rtype} is not built natively")


def _host_of(rtype: int, data: Any) -> str | None:
    """The host name a record points at, for Lima's "skip empty hosts" rule."""
    if rtype == wire.MX:
        return str(data.exchange)
    if rtype == wire.NS:
        return str(data.nsdname)
    if rtype == wire.SRV:
        return str(data.target)
    return None


# ------------------------------------------------------------------------------- chains


@dataclass(frozen=True, slots=True)
class Hop:
    alias: str
    target: str
    ttl: int


def cname_chain(cnames: Iterable[Any]) -> list[Hop]:
    """The CNAME hops of a getaddrinfo result, in chain order, duplicates removed.

    With several sub-queries (search domains, A and AAAA) c-ares lists a hop more than once;
    the chain starts at the alias that no other hop points to.
    """
    by_alias: dict[str, Hop] = {}
    for c in cnames:
        key = _canonical(c.alias)
        if key not in by_alias:
            by_alias[key] = Hop(c.alias, c.name, int(c.ttl))
    if not by_alias:
        return []
    targets = {_canonical(h.target) for h in by_alias.values()}
    start = next((k for k in by_alias if k not in targets), next(iter(by_alias)))
    chain: list[Hop] = []
    at = start
    seen: set[str] = set()
    while at in by_alias and at not in seen and len(chain) < _MAX_CHAIN:
        seen.add(at)
        hop = by_alias[at]
        chain.append(hop)
        at = _canonical(hop.target)
    return chain


# ------------------------------------------------------------------------------- replies


def _family_of(qtype: int) -> int:
    return socket.AF_INET if qtype == wire.A else socket.AF_INET6


def _node_ip(node: Any) -> str:
    ip = node.addr[0]
    return ip.decode("ascii") if isinstance(ip, bytes) else str(ip)


def address_reply(q: wire.Query, result: Any, style: AnswerStyle, *, local: bool) -> bytes | None:
    """The A or AAAA reply for a getaddrinfo result; None when it holds no address of the
    asked family (Lima forwards the query then; docs/answering.md, "How answers are written").

    ``local``: the addresses came from the hosts file (or RFC 6761 localhost), whose TTL 0
    from c-ares is replaced by ``style.local_ttl``.
    """
    family = _family_of(q.qtype)
    nodes = [n for n in result.nodes if n.family == family]
    rdatas: list[bytes] = []
    try:
        for n in nodes:
            packed = socket.inet_pton(family, _node_ip(n).split("%", 1)[0])
            if packed not in rdatas:
                rdatas.append(packed)
    except (OSError, ValueError) as e:
        raise Unusable(str(e)) from e
    if not rdatas:
        return None
    chain = [] if local else cname_chain(result.cnames)
    if style.lima_compat:
        # Lima: owner = query name, no CNAME RRs, TTL 5 (f215cb9f).
        return _reply(
            q, [wire.rr(wire.POINTER_TO_QNAME, q.qtype, LIMA_TTL, r) for r in rdatas], style
        )
    # One RRset, one TTL (RFC 2181 §5.2): the smallest of the addresses'.
    ttl = style.local_ttl if local else min(int(n.ttl) for n in nodes)
    answers: list[bytes] = []
    owner = wire.POINTER_TO_QNAME
    for hop in chain:
        answers.append(wire.rr(owner, wire.CNAME, hop.ttl, text_to_wire(hop.target)))
        owner = text_to_wire(hop.target)
    answers += [wire.rr(owner, q.qtype, ttl, r) for r in rdatas]
    return _reply(q, answers, style)


def flattened_ttl(result: Any, qtype: int) -> int:
    """The smallest TTL over the chain and the addresses: how long a flattened answer holds."""
    family = _family_of(qtype)
    ttls = [int(n.ttl) for n in result.nodes if n.family == family]
    ttls += [int(c.ttl) for c in result.cnames]
    return min(ttls) if ttls else 0


def canonical_cname_reply(q: wire.Query, result: Any, style: AnswerStyle) -> bytes | None:
    """Lima's CNAME answer: ``q CNAME <final name of the chain>``, TTL 5; None when the name
    has no CNAME (Lima forwards the query then, docs/lima-differences.md)."""
    chain = cname_chain(result.cnames)
    if not chain:
        return None
    final = chain[-1].target
    if _canonical(final) == _canonical(wire.name_to_text(q.qname)):
        return None
    rr = wire.rr(wire.POINTER_TO_QNAME, wire.CNAME, LIMA_TTL, text_to_wire(final))
    return _reply(q, [rr], style)


def records_reply(q: wire.Query, result: Any, style: AnswerStyle) -> bytes | None:
    """The reply for a ``search()`` result (CNAME, TXT, NS, MX, SRV).

    Default: the answer section as received, CNAME hops included; records owned by the name
    c-ares found (the query name, or its search-list expansion) are written under the query
    name; when no record of the asked type is there (a chain that ends in NODATA) the SOA
    c-ares handed over goes to the authority section. ``lima_compat``: only records of the
    asked type, under the query name, TTL 5, empty hosts skipped; None when nothing is left
    (Lima forwards then).
    """
    answer = [r for r in result.answer if r.record_class == wire.CLASS_IN]
    if not answer:
        return None
    wanted = [r for r in answer if r.type == q.qtype]
    if style.lima_compat:
        rrs = []
        for r in wanted:
            host = _host_of(r.type, r.data)
            if host is not None and _is_empty_host(host):
                continue
            rdata = encode_rdata(r.type, r.data, keep_strings=False)  # Lima: joined, re-cut
            rrs.append(wire.rr(wire.POINTER_TO_QNAME, r.type, LIMA_TTL, rdata))
        return _reply(q, rrs, style) if rrs else None
    found = _canonical(answer[0].name)

    def owner(name: str) -> bytes:
        return wire.POINTER_TO_QNAME if _canonical(name) == found else text_to_wire(name)

    rrs = [
        wire.rr(owner(r.name), r.type, int(r.ttl), encode_rdata(r.type, r.data))
        for r in answer
        if r.type in (wire.CNAME, q.qtype)
    ]
    authority: list[bytes] = []
    if not wanted:
        authority = [
            wire.rr(text_to_wire(r.name), wire.SOA, int(r.ttl), encode_rdata(wire.SOA, r.data))
            for r in result.authority
            if r.type == wire.SOA and r.record_class == wire.CLASS_IN
        ]
    return compose.build_reply(q, wire.NOERROR, rrs, authority=authority, opt_size=style.opt_size)


def negative_reply(q: wire.Query, rcode: int, style: AnswerStyle) -> bytes:
    """NXDOMAIN or NODATA from the native path: no SOA, because pycares hands none over and a
    made-up one would name a zone we do not know (RFC 2308 §5: not cached downstream)."""
    return compose.error_reply(q, rcode, style.opt_size)


def _reply(q: wire.Query, answers: Sequence[bytes], style: AnswerStyle) -> bytes:
    return compose.build_reply(q, wire.NOERROR, answers, opt_size=style.opt_size)
