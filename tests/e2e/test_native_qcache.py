"""c-ares' own query cache is off: fastdns's cache (bounded by ``cache.capacity``) is the only one
on the native path (docs/answering.md, "c-ares' own cache: off"). With c-ares' cache on, every
distinct name the native path resolved stayed in the worker up to its TTL (capped at 3600 s),
whatever the cache settings said: 200,000 names with TTL 300 grew a worker from 27 to 261 MB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from support.server import FastDNSProcess, write_resolv_conf
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture(name="up", scope="module")
def _up(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("test")
    up.add("a.test", "A", "192.0.2.1", ttl=300)
    up.add("host.corp.test", "A", "192.0.2.2", ttl=300)
    up.add("t.test", "TXT", ["x"], ttl=300)
    return up


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, mod_tmp: Path, up: FakeUpstream) -> FastDNSProcess:
    """fastdns's cache off, so every query reaches the native path; forward_first off, so
    every native-type query goes through c-ares."""
    resolv = write_resolv_conf(mod_tmp / "qcache-resolv.conf", up, search=["corp.test"])
    config = {
        "fastdns": {
            "resolv_conf": str(resolv),
            "cache": {"enabled": False},
            "native": {"forward_first": False},
        }
    }
    server: FastDNSProcess = mod_fastdns_factory(config)
    return server


@pytest.mark.parametrize(
    ("name", "rdtype", "asked"),
    [
        ("a.test", "A", "a.test"),
        ("t.test", "TXT", "t.test"),
        ("host", "A", "host.corp.test"),  # a search-list name
    ],
)
def test_cares_does_not_answer_a_repeated_question_from_its_own_cache(
    server: FastDNSProcess, up: FakeUpstream, name: str, rdtype: str, asked: str
) -> None:
    before = up.count(asked, rdtype)
    for _ in range(3):
        reply = server.query(name, rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
    assert up.count(asked, rdtype) - before == 3
