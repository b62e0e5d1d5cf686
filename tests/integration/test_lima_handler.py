"""Lima's ``TestNewHandler`` (Lima's pkg/hostagent/dns/dns_test.go), ported as checks on
fastdns's config and state objects.

Lima's handler keeps ``hostToIP``, ``cnameToHost``, ``clientConfig.Servers``, ``clients`` and
``truncate``; their fastdns counterparts are ``StaticHosts.ips`` / ``.aliases`` (canonical keys:
lower case, no trailing dot), ``plan_upstreams(...).servers``, the ``Forwarder`` (UDP with TCP
retry) and the UDP reply limit of ``fastdns.server``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from support.upstream import FakeUpstream

from fastdns.config.load import build_config
from fastdns.config.schema import Config
from fastdns.dns import wire
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward.upstream import Forwarder
from fastdns.resolve.hosts import StaticHosts
from fastdns.resolve.pipeline import Pipeline
from fastdns.resolve.resolvconf import (
    ResolvConf,
    parse_resolv_conf,
    plan_upstreams,
    read_resolv_conf,
)
from fastdns.serve.udp import _reply_limit


def handler_config(
    tmp_path: Path, *, ipv6: bool, upstreams: list[str] | None, hosts: dict[str, str]
) -> Config:
    """Lima's HandlerOptions as a fastdns config: explicit upstreams become the resolv.conf."""
    resolv = tmp_path / "resolv.conf"
    if upstreams is not None:
        resolv.write_text("".join(f"nameserver {s}\n" for s in upstreams))
    return build_config(
        {
            "hostResolver": {"ipv6": ipv6, "hosts": hosts},
            "fastdns": {"resolv_conf": str(resolv), "hosts_file": str(tmp_path / "hosts")},
        },
        str(tmp_path / "fastdns.yaml"),
    )


@pytest.fixture(name="loop")
def _loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def build_handler(config: Config, loop: asyncio.AbstractEventLoop) -> Pipeline:
    stats = WorkerStats()
    forwarder = Forwarder(loop, stats, config.upstream_timeout)
    forwarder.set_plan(plan_upstreams(config, read_resolv_conf(config.resolv_conf), None))
    return Pipeline(config, loop, stats, forwarder)


def aaaa_answered_empty_at_once(handler: Pipeline) -> bool:
    """ipv6 off, as Lima: an AAAA question is NODATA at once, never forwarded (lima PR #3419)."""
    q = wire.parse_query(dns.message.make_query("elsewhere.example", "AAAA").to_wire())
    resolved = handler.answer_now(q)
    if resolved is None:
        return False
    reply = dns.message.from_wire(resolved.reply)
    return reply.rcode() == dns.rcode.NOERROR and not reply.answer


def test_n1_ipv6_upstreams_in_order_and_static_tables(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    cfg = handler_config(
        tmp_path,
        ipv6=True,
        upstreams=["8.8.4.4", "1.1.1.1", "9.9.9.9"],
        hosts={"test.local": "192.168.1.1", "alias.local": "test.local"},
    )
    handler = build_handler(cfg, loop)
    assert not aaaa_answered_empty_at_once(handler)  # ipv6 on: AAAA is forwarded
    plan = handler.forwarder.plan
    assert plan.servers == (("8.8.4.4", 53), ("1.1.1.1", 53), ("9.9.9.9", 53))
    assert plan.source == "resolv_conf"
    assert handler.static.ips["test.local"] == "192.168.1.1"
    assert handler.static.aliases["alias.local"] == "test.local"


def test_n2_no_upstreams_reads_resolv_conf(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.53\n")
    cfg = handler_config(tmp_path, ipv6=False, upstreams=None, hosts={})
    handler = build_handler(cfg, loop)
    assert aaaa_answered_empty_at_once(handler)  # ipv6 off
    assert handler.forwarder.plan.source == "resolv_conf"
    assert handler.forwarder.plan.resolv.readable
    assert handler.forwarder.plan.servers == (("127.0.0.53", 53),)


def test_n3_unreadable_resolv_conf_uses_lima_fallback(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    # Lima on Windows (and when the file cannot be read): 8.8.8.8 and 1.1.1.1
    cfg = handler_config(tmp_path, ipv6=False, upstreams=None, hosts={})
    handler = build_handler(cfg, loop)
    assert handler.forwarder.plan.source == "fallback"
    assert handler.forwarder.plan.servers == (("8.8.8.8", 53), ("1.1.1.1", 53))


def test_n4_empty_upstreams_is_no_error(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    cfg = handler_config(tmp_path, ipv6=True, upstreams=[], hosts={})
    handler = build_handler(cfg, loop)  # built without error
    assert not aaaa_answered_empty_at_once(handler)
    # Lima: empty server list, every forward an empty NOERROR; fastdns: the fallback servers
    assert handler.forwarder.plan.source == "fallback"


def test_n5_aliases_are_stored_as_single_hops(
    tmp_path: Path, loop: asyncio.AbstractEventLoop
) -> None:
    cfg = handler_config(
        tmp_path,
        ipv6=False,
        upstreams=["8.8.8.8"],
        hosts={
            "host1.local": "10.0.0.1",
            "host2.local": "10.0.0.2",
            "cname1": "host1.local",
            "cname2": "cname1",
        },
    )
    static = build_handler(cfg, loop).static
    assert static.ips["host1.local"] == "10.0.0.1"
    assert static.ips["host2.local"] == "10.0.0.2"
    assert static.aliases["cname1"] == "host1.local"
    assert static.aliases["cname2"] == "cname1"
    assert static.cycles == set()
    assert build_handler(cfg, loop).forwarder.plan.servers == (("8.8.8.8", 53),)


def test_n1_udp_then_tcp_like_lima_s_two_clients(
    tmp_path: Path, loop: asyncio.AbstractEventLoop, upstream: FakeUpstream
) -> None:
    """Lima's handler has a UDP and a TCP client; fastdns forwards over UDP and, on TC=1,
    asks the same upstream again over TCP (RFC 7766 §5) and answers in full."""
    upstream.big("big.test", 60)
    upstream.behave("big.test", truncate=True)  # TC=1 over UDP, in full over TCP
    cfg = handler_config(tmp_path, ipv6=False, upstreams=[upstream.address], hosts={})
    handler = build_handler(cfg, loop)
    q = wire.parse_query(dns.message.make_query("big.test", "A").to_wire())
    result = loop.run_until_complete(handler.forwarder.exchange(q, loop.time() + 5))
    assert result.reply is not None
    reply = dns.message.from_wire(result.reply)
    assert not reply.flags & dns.flags.TC and sum(len(r) for r in reply.answer) == 60
    assert upstream.count("big.test", "A", "udp") == 1
    assert upstream.count("big.test", "A", "tcp") == 1


def test_n6_udp_replies_are_truncated(tmp_path: Path) -> None:
    cfg = handler_config(tmp_path, ipv6=False, upstreams=["1.1.1.1"], hosts={})
    plain = wire.parse_query(dns.message.make_query("a.test", "A").to_wire())
    edns = wire.parse_query(
        dns.message.make_query("a.test", "A", use_edns=0, payload=4096).to_wire()
    )
    assert _reply_limit(cfg, plain) == 512
    assert _reply_limit(cfg, edns) == 1232  # the client's size, capped by edns_max_udp
    compat: Any = build_config({"fastdns": {"lima_compat": True}})
    assert _reply_limit(compat, edns) == 512  # Lima: always 512


def test_static_hosts_from_the_same_pairs_as_lima() -> None:
    # NewHandler builds its tables from canonical names; so does StaticHosts.from_pairs
    static = StaticHosts.from_pairs([("Test.Local.", "192.168.1.1"), ("ALIAS.local", "Test.Local")])
    assert static.ips == {"test.local": "192.168.1.1"}
    assert static.aliases == {"alias.local": "test.local"}
    assert parse_resolv_conf("nameserver 8.8.4.4\n") != ResolvConf()
