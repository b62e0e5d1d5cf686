"""``FakeUpstream``: a scriptable DNS server on 127.0.0.x that stands in for the internet.

fastdns reads its upstreams from a resolv.conf, which has no port syntax, so each fake sits on
port 53 of its own loopback address (``next_address()``). It answers over UDP and TCP from one
background thread (``selectors`` plus a timer heap, so a delayed reply never holds up another),
from records added with ``add``/``add_zone``, and misbehaves on request (``behave``). Sockets are
bound in ``__init__``, before the thread starts, so a query sent right after construction is
never lost (dnspython ``tests/nanonameserver.py`` does the same).

    with FakeUpstream(next_address()) as up:
        up.add_zone("test", soa_minimum=60)
        up.add("www.test", "CNAME", "web.test")
        up.add("web.test", "A", "192.0.2.1", "192.0.2.2", ttl=300)
        up.behave("slow.test", delay=0.5)
        ...
        assert up.count("www.test", "A") == 1

Parts: ``server`` (the class, its sockets and serving thread), ``tcp`` (one TCP connection),
``zone`` (records and how a question is answered), ``behaviour`` (``behave`` rules),
``replies`` (reply datagrams, size limits, spoofs), ``seen`` (the recorded query),
``addresses`` (loopback addresses).
"""

from __future__ import annotations

from .addresses import dead_address, next_address
from .behaviour import Spoof
from .seen import Handler, Seen, Transport
from .server import FakeUpstream
from .zone import RecordValue

__all__ = [
    "FakeUpstream",
    "Handler",
    "RecordValue",
    "Seen",
    "Spoof",
    "Transport",
    "dead_address",
    "next_address",
]
