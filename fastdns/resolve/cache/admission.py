"""What the packet cache keeps, and for how long: CoreDNS ``response.Typify`` and
``cache.key`` with RFC 2308 negative TTLs. Pure functions over wire bytes.

A reply is cached as one of three kinds: a positive answer (NOERROR with a record of the asked
type), a denial (NXDOMAIN, or NODATA maybe after a CNAME chain, timed by the SOA in the
authority section: ``min(SOA TTL, SOA MINIMUM)``, RFC 2308 §5, or by a negative TTL the lookup
gives itself), or an upstream SERVFAIL (``servfail_ttl``). Everything else is not cached.
"""

from __future__ import annotations

import struct

from fastdns.config.schema import CacheConfig
from fastdns.dns import wire

_U32 = struct.Struct("!I")
_HEAD = struct.Struct("!HHHHH")  # flags, qd, an, ns, ar: the header after the ID
_RR = struct.Struct("!HHIH")  # type, class, TTL, rdlength
_NO_TTL = 1 << 32  # above any TTL

SUCCESS, DENIAL, SERVFAIL = 0, 1, 2  # kinds of entries
KIND_NAMES = ("success", "denial", "denial")  # CoreDNS counts SERVFAIL with the denials


# (kind: SUCCESS/DENIAL/SERVFAIL, life: seconds the entry lives (capped), offset of the OPT
# record (always the last one) or 0, flattened (offset after the question, TTL shown at age 0)
# pairs, as_is: the reply already shows exactly those TTLs, so storing it rewrites none). A
# plain tuple: a NamedTuple costs 0.5 us more on every miss.
Verdict = tuple[int, int, int, tuple[int, ...], bool]
# A verdict given by whoever classified the reply already (the compiled relay, admission.c:
# the same function in C), None included; False: not classified, ``classify`` it here.
Classified = Verdict | None | bool


def classify(
    q: wire.Query, reply: bytes, cfg: CacheConfig, hint: int | None = None
) -> Verdict | None:
    """How to cache ``reply`` to ``q``, or None when it must not be cached. ``hint`` is the
    negative TTL of a reply that has no SOA to give it (native and static answers).

    One pass over the records without decoding names (``wire.iter_records`` costs about
    3 us a record, and every forwarded reply comes through here).
    """
    n = len(reply)
    if n < 12:
        return None
    flags, _, an, ns, ar = _HEAD.unpack_from(reply, 2)
    if flags & (wire.TC | wire.OPCODE_MASK) or not wire.question_matches(reply, q):
        return None
    rcode = flags & wire.RCODE_MASK
    if rcode not in (wire.NOERROR, wire.NXDOMAIN, wire.SERVFAIL):
        return None
    qtype, qend = q.qtype, q.qend
    opt_start = 0
    answered = False
    min_ttl = _NO_TTL
    max_ttl = 0
    negative = _NO_TTL  # RFC 2308 §5: min(SOA TTL, SOA MINIMUM)
    found: list[int] = []  # body offset, TTL, ...
    wrapped = False  # a TTL with the top bit set, read as 0
    total = an + ns + ar
    i = qend
    for idx in range(total):
        start = i
        i = wire.name_end(reply, i, n)
        if i < 0 or i + 10 > n:
            return None
        rtype, _, ttl, rdlen = _RR.unpack_from(reply, i)
        end = i + 10 + rdlen
        if end > n:
            return None
        if rtype == wire.OPT:
            # Stripped and re-added per client: only as the last record (nothing after it
            # to shift) and without an extended rcode (BADVERS and such are not cached).
            if idx != total - 1 or idx < an + ns or ttl >> 24:
                return None
            opt_start = start
        else:
            if ttl > 0x7FFFFFFF:
                ttl = 0  # RFC 2181 §8: a TTL with the top bit set means zero
                wrapped = True
            found += (i + 4 - qend, ttl)
            if ttl < min_ttl:
                min_ttl = ttl
            if ttl > max_ttl:
                max_ttl = ttl
            if idx < an:
                if rtype == qtype or qtype == wire.ANY:
                    answered = True
            elif idx < an + ns and rtype == wire.SOA and rdlen >= 22:
                soa = min(ttl, _U32.unpack_from(reply, end - 4)[0])
                if soa < negative:
                    negative = soa
        i = end
    if i != n:
        return None
    if rcode == wire.SERVFAIL:
        if cfg.servfail_ttl <= 0:
            return None
        return SERVFAIL, cfg.servfail_ttl, opt_start, _shown(found, cfg.servfail_ttl, 0), False
    if rcode == wire.NOERROR and answered:
        life = _clamp(min_ttl, cfg.min_ttl, cfg.max_ttl)
        if life == min_ttl and max_ttl <= cfg.max_ttl:
            return SUCCESS, life, opt_start, tuple(found), not wrapped  # the upstream's TTLs
        return SUCCESS, life, opt_start, _shown(found, life, cfg.max_ttl), False
    # NXDOMAIN or NODATA (maybe after a CNAME chain): only with an SOA to time it, or a
    # negative TTL of its own from the lookup (c-ares hands no SOA over).
    if negative == _NO_TTL:
        if hint is None:
            return None
        negative = hint
    life = _clamp(min(negative, min_ttl), cfg.min_ttl, cfg.denial_max_ttl)
    return DENIAL, life, opt_start, _shown(found, life, 0), False


def _shown(found: list[int], life: int, cap: int) -> tuple[int, ...]:
    """The TTL each record shows at age 0: its own, capped at ``cap`` and never below the
    entry's lifetime (so no record expires before the entry). ``cap`` 0: all show ``life``
    (a denial's SOA shows the negative TTL, RFC 2308 §5)."""
    shown = list(found)
    for i in range(1, len(shown), 2):
        shown[i] = max(life, min(shown[i], cap)) if cap else life
    return tuple(shown)


def _clamp(ttl: int, low: int, high: int) -> int:
    return max(low, min(ttl, high))
