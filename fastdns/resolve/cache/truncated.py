"""A cache entry cut to a client's UDP size (``fastdns.resolve.cache.store``): at an RRset
boundary, TC set when answer or authority data is dropped (``compose.truncate``), kept per
size on the entry (a few per entry: clients' UDP sizes are few).

Runs in: workers. Pure: no I/O.
"""

from __future__ import annotations

import struct

from fastdns.dns import compose, wire
from fastdns.resolve.cache.entry import Entry, Form
from fastdns.resolve.cache.heads import Heads

_HEAD = struct.Struct("!HHHHH")  # flags, qd, an, ns, ar: the header after the ID
MAX_TRUNCATED_FORMS = 4  # truncated renderings kept per entry (client UDP sizes seen)


def truncated_form(e: Entry, q: wire.Query, budget: int, heads: Heads) -> Form:
    """The entry cut to ``budget`` bytes (OPT aside), kept on the entry per budget."""
    trunc = e.trunc
    if trunc is None:
        trunc = e.trunc = {}
    form = trunc.get(budget)
    if form is not None:
        return form
    msg = b"".join((b"\x00\x00", e.heads[1], q.wire[12 : q.qend], e.body))
    try:
        cut = compose.truncate(msg, budget)
    except wire.Malformed:  # a name the upstream compressed badly: send the header only
        cut = (
            msg[:2]
            + _HEAD.pack(_HEAD.unpack_from(msg, 2)[0] | wire.TC, 1, 0, 0, 0)
            + (msg[12 : q.qend])
        )
    flags, _, an, ns, ar = _HEAD.unpack_from(cut, 2)
    form = Form()
    form.heads = heads.of(flags, an, ns, ar)
    form.body = bytearray(cut[q.qend :])
    # The cut body is a prefix of the entry's body: its TTLs are the first ones.
    n = len(form.body)
    form.ttls = tuple(
        v for i in range(0, len(e.ttls), 2) if e.ttls[i] < n for v in e.ttls[i : i + 2]
    )
    form.stamp = e.stamp
    form.size = len(cut)
    if len(trunc) < MAX_TRUNCATED_FORMS:
        trunc[budget] = form
    return form
