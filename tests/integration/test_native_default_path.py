"""The default path: native (c-ares) answers go through fastdns's packet cache, which is on by
default (the other native tests turn it off to see what c-ares sends), and ``native.negative_ttl``
decides how long a native NXDOMAIN stays in it (no SOA comes with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream

pytestmark = pytest.mark.integration


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("test")
    up.add("a.test", "A", "192.0.2.1", ttl=300)
    return up


def serve(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream, **native: Any
) -> InProcessServer:
    """Default config (packet cache on); only forward_first off, so c-ares answers a.test."""
    resolv = write_resolv_conf(tmp_path / f"resolv-{len(inproc.made)}.conf", up)
    hosts = tmp_path / f"hosts-{len(inproc.made)}"
    hosts.write_text("127.0.0.1 localhost\n")
    return inproc(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "hosts_file": str(hosts),
                "native": {"forward_first": False, **native},
            }
        }
    )


def ask(srv: InProcessServer, name: str) -> dns.message.Message:
    return query("127.0.0.1", srv.udp_port, name, "A")


def by(srv: InProcessServer, rcode: str) -> dict[str, int]:
    """Responses with ``rcode`` by who answered (native, cache, ...)."""
    return {k[2]: v for k, v in srv.counters().items() if k[:2] == ("responses", rcode)}


def test_a_native_answer_is_cached_and_served_from_the_cache(
    inproc: InProcessFactory, tmp_path: Path, up: FakeUpstream
) -> None:
    srv = serve(inproc, tmp_path, up)
    first, second = ask(srv, "a.test"), ask(srv, "a.test")
    for reply in (first, second):
        assert reply.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for r in reply.answer[0]] == ["192.0.2.1"]
        assert 0 < reply.answer[0].ttl <= 300
    assert by(srv, "NOERROR") == {"native": 1, "cache": 1}
    assert up.count("a.test", "A") == 1


@pytest.mark.parametrize(("negative_ttl", "second_from"), [(30, "cache"), (0, "native")])
def test_native_negative_ttl_decides_whether_an_nxdomain_is_cached(
    inproc: InProcessFactory,
    tmp_path: Path,
    up: FakeUpstream,
    negative_ttl: int,
    second_from: str,
) -> None:
    srv = serve(inproc, tmp_path, up, negative_ttl=negative_ttl)
    assert ask(srv, "nx.test").rcode() == dns.rcode.NXDOMAIN
    assert ask(srv, "nx.test").rcode() == dns.rcode.NXDOMAIN
    assert by(srv, "NXDOMAIN") == (
        {"native": 1, second_from: 1} if second_from == "cache" else {"native": 2}
    )
