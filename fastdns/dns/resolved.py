"""What every answer source returns: a reply and who produced it.

Shared by the resolution sources (``fastdns.resolve``) and the serving layer
(``fastdns.serve``), so it lives below both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Resolved:
    """A reply and who produced it: static, hosts, cache, native, forward, fallback, server
    or ``PROBE``."""

    reply: bytes
    source: str
    # How long fastdns's own cache may keep a reply that cannot say so itself: native
    # NXDOMAIN/NODATA carry no SOA (pycares hands none over), so native.negative_ttl. None:
    # read the TTLs in the reply.
    ttl: int | None = None


# The source of replies to fastdns's own probes (loopguard): sent, never counted as client
# queries (``Accounting.record``); a loop probe that came back is in loop_probes_total.
PROBE = "probe"
