"""The headers the packet cache (``fastdns.resolve.cache.store``) answers with: four per
reply (by the client's RD bit and whether it sent OPT), interned, since most replies share a
few (flags, counts) combinations.

Runs in: workers. Pure: no I/O.
"""

from __future__ import annotations

import struct

from fastdns.dns import wire

_HEAD = struct.Struct("!HHHHH")  # flags, qd, an, ns, ar: the header after the ID
MAX_INTERNED_HEADS = 4096  # distinct (flags, counts) headers shared between entries


class Heads:
    """Header tuples by (flags, counts), at most ``MAX_INTERNED_HEADS`` of them kept."""

    def __init__(self) -> None:
        self._interned: dict[bytes, tuple[bytes, ...]] = {}

    def cached(self, reply: bytes, opt_start: int, do: bool) -> tuple[bytes, ...]:
        """The headers the cache answers ``reply`` with (OPT counted apart, added per client).

        A cache answers for itself: not authoritative; RA always (fastdns recurses for its
        clients); AD only for DO queries (RFC 6840 §5.8), and DO is part of the key."""
        flags, _, an, ns, ar = _HEAD.unpack_from(reply, 2)
        flags = (flags & ~(wire.AA | wire.TC)) | wire.RA
        if not do:
            flags &= ~wire.AD
        return self.of(flags, an, ns, ar - (1 if opt_start else 0))

    def of(self, flags: int, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
        """The four headers for these flags and counts (without OPT): index RD | OPT << 1."""
        base = _HEAD.pack(flags, 1, an, ns, ar)
        heads = self._interned.get(base)
        if heads is None:
            flags &= ~wire.RD
            heads = (
                _HEAD.pack(flags, 1, an, ns, ar),
                _HEAD.pack(flags | wire.RD, 1, an, ns, ar),
                _HEAD.pack(flags, 1, an, ns, ar + 1),
                _HEAD.pack(flags | wire.RD, 1, an, ns, ar + 1),
            )
            if len(self._interned) < MAX_INTERNED_HEADS:
                self._interned[base] = heads
        return heads
