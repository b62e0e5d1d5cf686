"""A flood of hostile packets against the real ``fastdns serve`` with 2 workers: 20,000 random
and mutated UDP datagrams and 1,000 TCP streams (random bytes, cut frames, lying lengths,
valid frames with garbage, resets mid-frame), a valid query every 100 datagrams whose answer
must be the FakeUpstream's. At the end no worker was replaced, each worker's RSS is bounded,
and the server still answers. The same flood with a million packets: ``python -m bench.flood``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import dns.rcode
import pytest
from support import procfs
from support.flood import NAMES, ZONE, Flood, address_of, name_of
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UDP_PACKETS = 20_000
TCP_STREAMS = 1_000
BUDGET = 60.0  # seconds for the whole flood
RSS_LIMIT_KB = 200 * 1024  # generous: a worker idles at about 40 MB


def rss_kb(pid: int) -> int:
    return int(procfs.status_field(pid, "VmRSS").split()[0])


@pytest.fixture(name="upstream", scope="module")
def _upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone(ZONE)
    up.add_zone("fuzz.test")  # the names of the mutated queries: NXDOMAIN, at once
    for i in range(NAMES):
        up.add(name_of(i), "A", address_of(i))
    return up


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, upstream: FakeUpstream) -> Iterator[FastDNSProcess]:
    server: FastDNSProcess = mod_fastdns_factory(
        {"fastdns": {"workers": 2, "upstream_timeout": 0.3, "deadline": 1.0}},
        upstreams=[upstream],
    )
    yield server
    assert server.proc.poll() is None, server.stderr
    assert "Traceback" not in server.stderr, server.stderr


def test_a_flood_of_hostile_packets_breaks_nothing(server: FastDNSProcess) -> None:
    workers = list(server.state["workers"])
    assert len(workers) == 2
    peak = {pid: rss_kb(pid) for pid in workers}

    def sample(_: int) -> None:
        for pid in workers:
            peak[pid] = max(peak[pid], rss_kb(pid))

    flood = Flood(server.address, server.udp_port, server.tcp_port, seed=12)
    t0 = time.monotonic()
    try:
        tally = flood.run(UDP_PACKETS + UDP_PACKETS // 99, TCP_STREAMS, budget=BUDGET, tick=sample)
    finally:
        flood.close()
    elapsed = time.monotonic() - t0
    sample(0)
    print(f"flood: {tally} in {elapsed:.1f}s, peak RSS {peak} kB")
    assert not tally.failures, tally.failures
    assert tally.udp_packets >= UDP_PACKETS and tally.tcp_streams >= TCP_STREAMS
    assert tally.valid_ok == tally.valid_sent >= UDP_PACKETS // 100
    assert server.read_state()["workers"] == workers  # none died, none was replaced
    for pid in workers:
        assert peak[pid] < RSS_LIMIT_KB, (pid, peak[pid])
    assert server.query(name_of(7), "A").rcode() == dns.rcode.NOERROR
    assert server.query(name_of(8), "A", tcp=True).rcode() == dns.rcode.NOERROR
