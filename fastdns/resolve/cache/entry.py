"""How the packet cache (``fastdns.resolve.cache.store``) holds one reply: a ``Raw`` tuple as
it came, made into an ``Entry`` (a rendering template with its TTL offsets) on its first hit.

Runs in: workers. Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import final

_U32 = struct.Struct("!I")

STALE = -1  # Form.stamp of a body that holds the stale TTL


class Form:
    """One rendering template: 4 headers (by the client's RD bit and OPT), the body after the
    question without OPT, and where its TTLs sit with the TTL each shows at age 0."""

    __slots__ = ("body", "heads", "size", "stamp", "ttls")

    body: bytearray
    heads: tuple[bytes, ...]  # index: client RD | client OPT << 1
    size: int  # rendered length without OPT
    stamp: int  # the age (whole seconds) the body's TTLs are written for, or STALE
    ttls: tuple[int, ...]  # flattened (body offset, TTL at age 0) pairs


@final  # ``type(e) is Entry`` tells it from a ``Raw`` tuple, for mypy too (PacketCache.lookup)
class Entry(Form):
    """One cached reply; it lives ``ttl`` seconds from ``stored`` (then maybe stale)."""

    __slots__ = (
        "hits",
        "kind",
        "last_hit",
        "next_refresh",
        "opt",
        "prefetch_at",
        "stored",
        "trunc",
        "ttl",
    )

    hits: int  # hits with no gap longer than prefetch_duration between them (CoreDNS freq)
    last_hit: float
    kind: int  # SUCCESS, DENIAL or SERVFAIL
    next_refresh: float  # no background refresh before this time (one in flight at most)
    opt: bytes  # our OPT record for clients that sent one (DO echoed: DO is in the key)
    prefetch_at: float  # prefetch when hit at or after this time (inf: never)
    stored: float
    trunc: dict[int, Form] | None  # truncated renderings by byte budget
    ttl: int


def retime(form: Form, stamp: int, stale_ttl: int) -> None:
    body, ttls = form.body, form.ttls
    pack_into = _U32.pack_into
    if stamp == STALE:
        for i in range(0, len(ttls), 2):
            pack_into(body, ttls[i], stale_ttl)
    else:
        for i in range(0, len(ttls), 2):
            pack_into(body, ttls[i], ttls[i + 1] - stamp)
    form.stamp = stamp


# A reply stored as it came, made into an Entry on its first hit (PacketCache.lookup): kind,
# life, stored, reply, question end, OPT offset, TTL offsets, DO. A tuple: the store is on
# every miss, and a cold name is usually never asked again.
Raw = tuple[int, int, float, bytes, int, int, tuple[int, ...], bool]
