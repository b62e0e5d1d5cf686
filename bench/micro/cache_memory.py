"""RSS of a worker's packet cache at N entries: ``python bench/micro/cache_memory.py [N]``.

Fills a real Pipeline's cache (the objects a worker holds) with N distinct forwarded answers
(a 2-record CNAME+A reply and a NODATA with SOA, alternately: about 70 and 90 bytes after the
question), hits each once through ``datagram_received`` (which also fills the parse-skipping
query-form map), and prints the RSS growth next to the idle process's RSS. No sockets.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import dns.message
import dns.rrset

from fastdns.config.load import build_config
from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.udp import ServerState, UDPServer

SOA = "bench.example. 3600 IN SOA ns.bench.example. host.bench.example. 1 3600 600 86400 60"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class NullTransport:
    def sendto(self, data: bytes, addr: Any) -> None:
        pass


def main(n: int) -> None:
    config = build_config(
        {
            "fastdns": {
                "resolv_conf": "/nonexistent",
                "fallback": [],
                "hosts_file": "/nonexistent",
                "cache": {"capacity": n, "denial_capacity": n, "prefetch": 0},
            }
        }
    )
    loop = asyncio.new_event_loop()
    stats = WorkerStats()
    pipeline = Pipeline(config, loop, stats, Forwarder(loop, stats))
    server = UDPServer(ServerState(config, pipeline, stats))
    server.connection_made(NullTransport())
    cache = pipeline.cache
    assert cache is not None
    # Build the wire replies first (dnspython is slow and its garbage would count).
    pairs = []
    for i in range(n):
        name = f"n{i}.bench.example."
        query = dns.message.make_query(name, "A" if i % 2 == 0 else "AAAA", id=1)
        r = dns.message.make_response(query)
        if i % 2 == 0:
            r.answer.append(dns.rrset.from_text(name, 300, "IN", "CNAME", f"h{i}.cdn.example."))
            r.answer.append(
                dns.rrset.from_text(
                    f"h{i}.cdn.example.", 300, "IN", "A", f"198.18.{i // 256 % 256}.{i % 256}"
                )
            )
        else:
            r.authority.append(dns.rrset.from_text(*SOA.split(None, 4)[:4], SOA.split(None, 4)[4]))
        pairs.append((query.to_wire(), r.to_wire()))
    gc.collect()
    before = rss_mb()
    now = time.monotonic()
    for data, reply in pairs:
        cache.admit(wire.parse_query(data), reply, "forward", None, now)
    gc.collect()
    stored = rss_mb()
    for data, _ in pairs:
        server.datagram_received(data, ("127.0.0.1", 5353))
    gc.collect()
    after = rss_mb()
    print(
        f"entries: {len(cache.success)} success + {len(cache.denial)} denial, "
        f"{len(cache.front)} remembered query forms"
    )
    print(
        f"RSS before {before:.1f} MB; cache entries +{stored - before:.1f} MB "
        f"({(stored - before) * 1048576 / n:.0f} B/entry); with query forms "
        f"+{after - before:.1f} MB ({(after - before) * 1048576 / n:.0f} B/entry)"
    )
    loop.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
