"""The search list walked in Python when one of its candidate names is routed.

c-ares expands a name with resolv.conf's search list itself and sends every candidate to
resolv.conf's servers (the default upstreams). With ``search corp.example`` and a route for
``corp.example`` (a VPN), ``wiki`` would reach the default upstreams as ``wiki.corp.example``,
which a per-domain route promises never to do (docs/routing.md). So when a candidate of a
query falls under a route, the native path walks the candidates here instead: in c-ares'
order (resolv(5): the name as is first when it has at least ``ndots`` dots, else last), each
one forwarded raw to its route's servers, or to the default upstreams when it is not routed,
stopping where c-ares stops. The reply that ends the walk is read into the shape c-ares hands
over (``AddrResult`` like a ``getaddrinfo`` result, ``SearchResult`` like a ``search()``
one), so ``fastdns.dns.answers`` writes the client's answer exactly as for a c-ares answer.

Queries with no routed candidate (and every query when no route is configured) never come
here: c-ares runs as before.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import pycares

from fastdns.dns import compose, wire
from fastdns.resolve.forward.routes import Route, RouteTable

E = pycares.errno

Outcome = tuple[Any, int | None]  # as cares.Outcome: (result or None, c-ares status or None)
Candidate = tuple[bytes, Route | None]  # a wire name, and its route (None: default upstreams)
# Forward one candidate question raw: (wire name, qtype, route, deadline) -> reply, or None
# when every server failed.
Ask = Callable[[bytes, int, Route | None, float], Awaitable[bytes | None]]

EDNS_SIZE = 1232  # what c-ares advertises (ARES_FLAG_EDNS, its default udp_max_queries size)
_MAX_HOPS = 64  # compression pointers followed in one name (as fastdns.dns.wire.read_name)
_SPECIAL = (b"localhost", b"onion")  # c-ares answers these without DNS (RFC 6761, RFC 7686)
_STATUS = {wire.REFUSED: E.ARES_EREFUSED, wire.SERVFAIL: E.ARES_ESERVFAIL}


# ------------------------------------------------------------------------------ candidates


def search_domains(search: Sequence[str]) -> tuple[bytes, ...]:
    """The search domains as wire names (a domain that is no valid name is left out: c-ares
    could not append it either)."""
    out = []
    for d in search:
        try:
            out.append(wire.name_to_wire(d))
        except (ValueError, UnicodeError):
            continue
    return tuple(out)


def candidates(qname: bytes, domains: Sequence[bytes], ndots: int) -> list[bytes]:
    """The names c-ares tries for ``qname`` (wire, no escapes inside labels), in its order:
    as is first when the name has at least ``ndots`` dots, then each search domain appended,
    then as is when not tried first (c-ares ``ares_search_name_list``; resolv(5)). A candidate
    longer than 255 bytes is left out."""
    labels, i = 0, 0
    while qname[i]:
        i += qname[i] + 1
        labels += 1
    stem = qname[:-1]
    expanded = [stem + d for d in domains if len(stem) + len(d) <= wire.MAX_NAME]
    if labels - 1 >= ndots:
        return [qname, *expanded]
    return [*expanded, qname]


def routed_candidates(
    qname: bytes, domains: Sequence[bytes], ndots: int, routes: RouteTable
) -> list[Candidate] | None:
    """Each candidate with its route, when at least one is routed; else None (c-ares asks
    them all of the default upstreams, as before). Not for ``localhost`` and ``.onion``,
    which c-ares answers without DNS."""
    if not domains:
        return None  # only the name as is, which the pipeline already found unrouted
    last = qname
    i = 0
    while qname[i]:
        last = qname[i + 1 : i + 1 + qname[i]]
        i += qname[i] + 1
    if last.lower() in _SPECIAL:
        return None
    out = [(name, routes.match(name)) for name in candidates(qname, domains, ndots)]
    return out if any(route is not None for _, route in out) else None


def question(name: bytes, qtype: int) -> bytes:
    """A query for ``name`` as c-ares sends one: RD, one question, an OPT record."""
    return b"".join(
        (
            wire.HEADER.pack(0, wire.RD, 1, 0, 0, 1),
            name,
            qtype.to_bytes(2, "big"),
            wire.CLASS_IN.to_bytes(2, "big"),
            compose.opt_record(EDNS_SIZE, False),
        )
    )


# ------------------------------------------------------------------------------ the walk


async def walk(
    cands: Sequence[Candidate], qtype: int, address: bool, ask: Ask, deadline: float
) -> Outcome:
    """Ask each candidate in turn until one settles the lookup, as c-ares would.

    ``address``: the rules of c-ares ``getaddrinfo`` (``qtype`` A or AAAA): an address of that
    type ends the walk, NXDOMAIN or NODATA goes on, anything else stops with its status.
    Otherwise those of ``search()``: any answer record ends it, NXDOMAIN, NODATA or SERVFAIL
    go on. Having run out of candidates: ENODATA when one was NODATA, else ENOTFOUND (or the
    as-is name's SERVFAIL, for ``search()``). A candidate no server answered stops the walk
    with ETIMEOUT (the raw forward of the query takes over, as after a c-ares timeout).
    """
    nodata = False
    last = E.ARES_ENOTFOUND
    for name, route in cands:
        reply = await ask(name, qtype, route, deadline)
        if reply is None:
            return None, E.ARES_ETIMEOUT
        rcode = wire.reply_rcode(reply)
        try:
            if address:
                if rcode == wire.NOERROR:
                    found = addrinfo(reply, qtype)
                    if found.nodes:
                        return found, None
                    nodata = True
                    continue
                if rcode != wire.NXDOMAIN:
                    return None, _STATUS.get(rcode, E.ARES_EBADRESP)
                continue
            if rcode == wire.NOERROR and reply[6:8] != b"\x00\x00":
                return search_result(reply), None
            if rcode == wire.NOERROR:
                nodata = True
            elif rcode in (wire.NXDOMAIN, wire.SERVFAIL):
                last = E.ARES_ENOTFOUND if rcode == wire.NXDOMAIN else E.ARES_ESERVFAIL
            else:
                return None, _STATUS.get(rcode, E.ARES_EBADRESP)
        except (wire.Malformed, ValueError, IndexError, struct.error):
            return None, E.ARES_EBADRESP
    return None, E.ARES_ENODATA if nodata else last


# ------------------------------------------------------------------------------ results


class Cname(NamedTuple):  # pycares AddrInfoCname
    ttl: int
    alias: str
    name: str


class Node(NamedTuple):  # pycares AddrInfoNode, the fields fastdns.dns.answers reads
    ttl: int
    family: int
    addr: tuple[str, int]


class AddrResult(NamedTuple):  # pycares AddrInfoResult
    cnames: list[Cname]
    nodes: list[Node]


class Record(NamedTuple):  # pycares DNSRecord
    name: str
    type: int
    record_class: int
    ttl: int
    data: Any


class SearchResult(NamedTuple):  # pycares DNSResult
    answer: list[Record]
    authority: list[Record]


class Data(NamedTuple):
    """The rdata fields pycares gives for the types the native path writes."""

    addr: str = ""
    cname: str = ""
    nsdname: str = ""
    exchange: str = ""
    target: str = ""
    priority: int = 0
    weight: int = 0
    port: int = 0
    data: bytes = b""
    strings: tuple[bytes, ...] = ()
    mname: str = ""
    rname: str = ""
    serial: int = 0
    refresh: int = 0
    retry: int = 0
    expire: int = 0
    minimum: int = 0


def addrinfo(reply: bytes, qtype: int) -> AddrResult:
    """What c-ares ``getaddrinfo`` reads from a NOERROR reply (``ares_parse_into_addrinfo``):
    one pass over the answer section from the question name, a CNAME owned by the current name
    moving it on to its target, the addresses of ``qtype`` owned by the current name."""
    at = _name(reply, 12)[0].lower()
    family = socket.AF_INET if qtype == wire.A else socket.AF_INET6
    cnames: list[Cname] = []
    nodes: list[Node] = []
    for r in wire.iter_records(reply):
        if r.section or r.rclass != wire.CLASS_IN:
            continue
        owner = _name(reply, r.start)[0]
        if owner.lower() != at:
            continue
        if r.rtype == wire.CNAME:
            target = _name(reply, r.rdata_offset)[0]
            cnames.append(Cname(r.ttl, owner, target))
            at = target.lower()
        elif r.rtype == qtype:
            ip = socket.inet_ntop(family, reply[r.rdata_offset : r.end])
            nodes.append(Node(r.ttl, family, (ip, 0)))
    return AddrResult(cnames, nodes)


def search_result(reply: bytes) -> SearchResult:
    """What c-ares ``search()`` hands over: the answer and authority records, with the rdata
    of the types fastdns writes read into pycares' fields (other types: ``data`` None)."""
    answer: list[Record] = []
    authority: list[Record] = []
    for r in wire.iter_records(reply):
        if r.section > 1:
            continue
        rec = Record(_name(reply, r.start)[0], r.rtype, r.rclass, r.ttl, _rdata(reply, r.rtype, r))
        (answer if r.section == 0 else authority).append(rec)
    return SearchResult(answer, authority)


def _rdata(buf: bytes, rtype: int, r: wire.Record) -> Data | None:
    i, end = r.rdata_offset, r.end
    if rtype == wire.A:
        return Data(addr=socket.inet_ntop(socket.AF_INET, buf[i:end]))
    if rtype == wire.AAAA:
        return Data(addr=socket.inet_ntop(socket.AF_INET6, buf[i:end]))
    if rtype == wire.CNAME:
        return Data(cname=_name(buf, i)[0])
    if rtype == wire.NS:
        return Data(nsdname=_name(buf, i)[0])
    if rtype == wire.MX:
        return Data(priority=int.from_bytes(buf[i : i + 2], "big"), exchange=_name(buf, i + 2)[0])
    if rtype == wire.SRV:
        prio, weight, port = struct.unpack_from("!HHH", buf, i)
        return Data(priority=prio, weight=weight, port=port, target=_name(buf, i + 6)[0])
    if rtype == wire.TXT:
        strings = []
        while i < end:
            n = buf[i]
            if i + 1 + n > end:
                raise wire.Malformed(wire.FORMERR, "TXT string runs past its record")
            strings.append(buf[i + 1 : i + 1 + n])
            i += 1 + n
        return Data(data=b"".join(strings), strings=tuple(strings))
    if rtype == wire.SOA:
        mname, j = _name(buf, i)
        rname, j = _name(buf, j)
        serial, refresh, retry, expire, minimum = struct.unpack_from("!IIIII", buf, j)
        return Data(
            mname=mname,
            rname=rname,
            serial=serial,
            refresh=refresh,
            retry=retry,
            expire=expire,
            minimum=minimum,
        )
    return None


def _name(buf: bytes, i: int) -> tuple[str, int]:
    """The (possibly compressed) name at ``i`` as c-ares prints it: case kept, no final dot,
    ``.`` and ``\\`` inside a label escaped with ``\\``, other bytes outside printable ASCII as
    ``\\DDD`` (``fastdns.dns.answers.text_to_wire`` reads them back); and the offset after it."""
    labels: list[str] = []
    end = -1
    hops = 0
    n = len(buf)
    while True:
        if i >= n:
            raise wire.Malformed(wire.FORMERR, "name runs past the end")
        length = buf[i]
        if length == 0:
            return ".".join(labels), end if end >= 0 else i + 1
        if length & 0xC0 == 0xC0:
            if i + 2 > n:
                raise wire.Malformed(wire.FORMERR, "cut compression pointer")
            if end < 0:
                end = i + 2
            hops += 1
            target = ((length & 0x3F) << 8) | buf[i + 1]
            if hops > _MAX_HOPS or target >= i:
                raise wire.Malformed(wire.FORMERR, "compression pointer loop")
            i = target
            continue
        if length & 0xC0 or i + 1 + length > n:
            raise wire.Malformed(wire.FORMERR, "bad label")
        labels.append("".join(_char(b) for b in buf[i + 1 : i + 1 + length]))
        i += length + 1


def _char(b: int) -> str:
    if b in (0x2E, 0x5C):  # "." and "\\"
        return "\\" + chr(b)
    if 0x21 <= b <= 0x7E:
        return chr(b)
    return f"\\{b:03d}"
