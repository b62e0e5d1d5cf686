"""Building a fake upstream's reply datagrams: the size limit and TC (RFC 1035 §4.2.1), forced
rcodes, truncation and the spoofed replies of a behaviour."""

from __future__ import annotations

import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset

from .behaviour import Behaviour
from .seen import Handler, Seen, Transport
from .zone import Zone


def replies(
    query: dns.message.Message,
    seen: Seen,
    b: Behaviour,
    transport: Transport,
    *,
    zone: Zone,
    max_udp: int,
    handler: Handler | None,
) -> list[bytes]:
    """Every datagram (or TCP message) to send for ``query``, in order."""
    if query.opcode() != dns.opcode.QUERY:
        return [error(query, dns.rcode.NOTIMP, max_udp)]
    limit = 65535
    if transport == "udp":
        limit = min(max(512, query.payload), max_udp) if query.edns >= 0 else 512
    custom = handler(query, seen) if handler is not None else None
    if isinstance(custom, bytes):
        return [custom]
    response = custom if custom is not None else _response(query, b.rcode, zone, max_udp)
    if b.truncate and transport == "udp":
        _strip(response)
        response.flags |= dns.flags.TC
    correct = _render(response, limit)
    out: list[bytes] = []
    if b.wrong_id:
        out.append(struct.pack("!H", (query.id + 1) & 0xFFFF) + correct[2:])
    if b.wrong_question:
        q = query.question[0]
        response.question = [
            dns.rrset.RRset(dns.name.from_text("wrong", q.name), q.rdclass, q.rdtype)
        ]
        out.append(_render(response, limit))
    if "only" not in (b.wrong_id, b.wrong_question):
        out.append(correct)
    return out


def error(query: dns.message.Message, rcode: dns.rcode.Rcode, max_udp: int) -> bytes:
    response = dns.message.make_response(query, recursion_available=True, our_payload=max_udp)
    response.set_rcode(rcode)
    return response.to_wire(max_size=65535)


def _response(
    query: dns.message.Message, forced: dns.rcode.Rcode | None, zone: Zone, max_udp: int
) -> dns.message.Message:
    response = dns.message.make_response(query, recursion_available=True, our_payload=max_udp)
    if query.edns >= 0:
        response.want_dnssec(bool(query.ednsflags & dns.flags.DO))  # RFC 3225 §3
    zone.fill(response, forced)
    return response


def _strip(response: dns.message.Message) -> None:
    response.answer.clear()
    response.authority.clear()
    response.additional.clear()


def _render(response: dns.message.Message, limit: int) -> bytes:
    """Wire form; if it exceeds ``limit``, an empty reply with TC=1 (RFC 1035 §4.2.1).

    Records go out in the order they were added: dnspython shuffles RRsets by default, which
    made tests of record order (Lima's "record 1", "record 2") flaky.
    """
    try:
        wire = response.to_wire(max_size=65535, want_shuffle=False)
    except dns.exception.TooBig:
        wire = b""
    if wire and len(wire) <= limit:
        return wire
    _strip(response)
    response.flags |= dns.flags.TC
    return response.to_wire(max_size=65535, want_shuffle=False)
