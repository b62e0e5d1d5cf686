"""Forwarding-loop detection, CoreDNS ``loop`` style, adapted to a DNAT'ed virtual address.

With the rules installed, anything that sends queries to the virtual address reaches fastdns.
If fastdns's own upstream path leads there (resolv.conf names a local stub such as
systemd-resolved, and that stub forwards to the virtual address), every forwarded query comes
back to fastdns. The rules process therefore sends one probe query for
``<nonce>.<token>.loop.fastdns.invalid. HINFO`` to each upstream after installing the rules. A
worker that receives a query under its own ``<token>.loop.fastdns.invalid.`` never forwards it
and answers with a marker HINFO record; a probe answered with the marker proves the loop.

The token is derived from the machine's boot id and fastdns's listen address and UDP port,
which every worker and the rules process of one fastdns share, so a *chain* of two fastdns
instances (A forwarding to B) is not mistaken for a loop. Pure apart from ``boot_id()``.
"""

from __future__ import annotations

import secrets
import zlib

from fastdns.dns import compose, wire

HINFO = 13
PROBE_ZONE = "loop.fastdns.invalid"  # .invalid: RFC 6761 §6.4, never resolves anywhere
MARKER_RDATA = b"\x07fastdns\x04loop"  # HINFO CPU="fastdns" OS="loop"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        # utf-8, not ascii: its codec is built in, while "ascii" is imported on first use, which
        # fails in a worker that dropped to fastdns.user when Python's own files are unreadable
        # to that user.
        with open(BOOT_ID, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def instance_token(listen: str, udp_port: int, boot: str | None = None) -> str:
    """8 hex digits shared by the processes of one fastdns instance."""
    seed = f"{boot if boot is not None else boot_id()}|{listen}|{udp_port}"
    return f"{zlib.crc32(seed.encode()):08x}"


def probe_suffix(token: str) -> bytes:
    """Lower-case wire form of ``<token>.loop.fastdns.invalid.`` (a query-name suffix)."""
    return wire.name_to_wire(f"{token}.{PROBE_ZONE}")


def is_probe(qname: bytes, suffix: bytes) -> bool:
    """Whether a wire query name is one of our probes; labels before the token are allowed."""
    name = qname.lower()
    # A suffix match on wire bytes must start at a label boundary: the byte before the token
    # label is the length of the nonce label, so check that the lengths walk to it.
    if not name.endswith(suffix) or len(name) == len(suffix):
        return False
    i, start = 0, len(name) - len(suffix)
    while i < start:
        i += name[i] + 1
    return i == start


def probe_name(token: str, nonce: str | None = None) -> str:
    return f"{nonce or secrets.token_hex(4)}.{token}.{PROBE_ZONE}."


def self_check_name(token: str) -> str:
    """The rules process's "does fastdns serve?" question (class CH, answered at once, and
    like the loop probes not counted as client traffic: ``dns.resolved.PROBE``)."""
    return f"self-check.{token}.{PROBE_ZONE}."


def probe_query(
    name: str, qid: int | None = None, qtype: int = HINFO, qclass: int = wire.CLASS_IN
) -> bytes:
    """A recursive query for ``name`` (HINFO, class IN unless told), with a random ID."""
    qid = secrets.randbelow(65536) if qid is None else qid
    return (
        wire.HEADER.pack(qid, wire.RD, 1, 0, 0, 0)
        + wire.name_to_wire(name)
        + qtype.to_bytes(2, "big")
        + qclass.to_bytes(2, "big")
    )


def marker_reply(q: wire.Query, opt_size: int = 1232) -> bytes:
    """The worker's answer to a probe: NOERROR, one HINFO ``fastdns loop`` record (TTL 0, so
    no cache in between keeps it)."""
    answer = wire.rr(wire.POINTER_TO_QNAME, HINFO, 0, MARKER_RDATA)
    return compose.build_reply(q, wire.NOERROR, [answer], opt_size=opt_size)


def is_marker(reply: bytes) -> bool:
    """Whether ``reply`` carries the marker record (i.e. a probe came back to fastdns)."""
    try:
        return any(
            r.section == 0 and r.rtype == HINFO and reply[r.rdata_offset : r.end] == MARKER_RDATA
            for r in wire.iter_records(reply)
        )
    except wire.Malformed:
        return False
