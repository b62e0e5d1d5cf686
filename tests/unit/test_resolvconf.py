"""fastdns.resolvconf: resolv.conf parsing and the choice of upstream servers."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from fastdns.config.load import build_config
from fastdns.resolve.resolvconf import (
    FileWatch,
    ResolvConf,
    loops_back,
    parse_resolv_conf,
    plan_upstreams,
    read_resolv_conf,
    same_plan,
)


def cfg(**fastdns: Any) -> Any:
    return build_config({"fastdns": fastdns})


def test_parse_nameservers_in_order_with_ipv6_and_scope() -> None:
    rc = parse_resolv_conf(
        "# generated\nnameserver 10.0.0.1\nnameserver   fe80::1%eth0  # link-local\n"
        "nameserver 2001:db8::53\n; comment\nnameserver 10.0.0.1\n"
    )
    assert rc.nameservers == ("10.0.0.1", "fe80::1%eth0", "2001:db8::53", "10.0.0.1")
    assert rc.readable


def test_parse_ignores_bad_nameservers_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastdns.resolve.resolvconf"):
        rc = parse_resolv_conf(
            "nameserver dns.example\nnameserver\nnameserver 10.0.0.300\nnameserver 10.0.0.2\n"
        )
    assert rc.nameservers == ("10.0.0.2",)
    assert len(caplog.records) == 2


def test_parse_search_domain_and_options() -> None:
    rc = parse_resolv_conf(
        "domain corp.example\nsearch a.example. b.example\n"
        "options ndots:3 timeout:2 attempts:4 rotate edns0 ndots:bad\nfoo bar\n"
    )
    assert rc.search == ("a.example", "b.example")  # the last of search/domain wins
    assert (rc.ndots, rc.timeout, rc.attempts, rc.rotate) == (3, 2.0, 4, True)
    assert parse_resolv_conf("search x\ndomain y.example\n").search == ("y.example",)


def test_parse_clamps_options() -> None:
    rc = parse_resolv_conf("options ndots:99 timeout:0 attempts:0\n")
    assert (rc.ndots, rc.timeout, rc.attempts) == (15, 0.1, 1)
    assert parse_resolv_conf("options attempts:50").attempts == 5


def test_parse_empty() -> None:
    assert parse_resolv_conf("") == ResolvConf()


def test_read_missing_file_is_unreadable(tmp_path: Path) -> None:
    rc = read_resolv_conf(str(tmp_path / "missing"))
    assert not rc.readable and rc.nameservers == ()


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\n")
    assert read_resolv_conf(str(path)).nameservers == ("127.0.0.53",)


# ------------------------------------------------------------------------------ plan_upstreams


def test_plan_uses_resolv_conf_first() -> None:
    plan = plan_upstreams(cfg(), parse_resolv_conf("nameserver 10.0.0.1\nnameserver ::1\n"), 5353)
    assert plan.servers == (("10.0.0.1", 53), ("::1", 53))
    assert plan.source == "resolv_conf"


def test_plan_uses_dns_when_the_resolver_is_disabled() -> None:
    c = build_config({"hostResolver": {"enabled": False}, "dns": ["10.1.1.1", "10.1.1.2"]})
    plan = plan_upstreams(c, parse_resolv_conf("nameserver 10.0.0.1\n"), 5353)
    assert plan.servers == (("10.1.1.1", 53), ("10.1.1.2", 53))
    assert plan.source == "dns"


@pytest.mark.parametrize("text", ["", "search x\n", "nameserver bogus\n", None])
def test_plan_falls_back_without_a_usable_nameserver(text: str | None) -> None:
    rc = ResolvConf(readable=False) if text is None else parse_resolv_conf(text)
    plan = plan_upstreams(cfg(fallback=["10.9.9.9", "10.9.9.8"]), rc, 5353)
    assert plan.servers == (("10.9.9.9", 53), ("10.9.9.8", 53))
    assert plan.source == "fallback"


def test_plan_default_fallback_is_lima_s() -> None:
    plan = plan_upstreams(cfg(), ResolvConf(readable=False), 5353)
    assert [h for h, _ in plan.servers] == ["8.8.8.8", "1.1.1.1"]


def test_plan_with_nothing_is_none() -> None:
    plan = plan_upstreams(cfg(fallback=[]), parse_resolv_conf(""), 5353)
    assert plan.servers == () and plan.source == "none"


def test_plan_skips_fastdns_itself() -> None:
    rc = parse_resolv_conf("nameserver 127.0.0.1\nnameserver 10.0.0.1\n")
    plan = plan_upstreams(cfg(listen="127.0.0.1"), rc, 53)
    assert plan.servers == (("10.0.0.1", 53),)
    # on another port, 127.0.0.1:53 is someone else
    plan = plan_upstreams(cfg(listen="127.0.0.1"), rc, 5353)
    assert plan.servers == (("127.0.0.1", 53), ("10.0.0.1", 53))


def test_plan_skips_itself_in_ipv6_spelling() -> None:
    rc = parse_resolv_conf("nameserver 0:0:0:0:0:0:0:1\nnameserver 10.0.0.1\n")
    assert plan_upstreams(cfg(listen="::1"), rc, 53).servers == (("10.0.0.1", 53),)


def test_plan_and_routes_skip_every_node_local_address() -> None:
    """A node-local fastdns holding the kube-dns ClusterIP (docs/nodelocal.md) is that
    address: a nameserver or a route naming it would loop."""
    config = cfg(nodelocal={"enabled": True, "addresses": ["169.254.20.10", "10.96.0.10"]})
    rc = parse_resolv_conf("nameserver 10.96.0.10\nnameserver 169.254.20.10\nnameserver 10.0.0.1\n")
    assert plan_upstreams(config, rc, 53).servers == (("10.0.0.1", 53),)
    assert loops_back(config, ("10.96.0.10", 53), 53)
    assert not loops_back(config, ("10.96.0.11", 53), 53)


def test_plan_only_itself_falls_back() -> None:
    rc = parse_resolv_conf("nameserver 127.0.0.1\n")
    plan = plan_upstreams(cfg(listen="127.0.0.1", fallback=["10.9.9.9"]), rc, 53)
    assert plan.servers == (("10.9.9.9", 53),) and plan.source == "fallback"


def test_plan_keeps_the_resolv_conf_it_came_from() -> None:
    rc = parse_resolv_conf("nameserver 10.0.0.1\noptions attempts:3\n")
    assert plan_upstreams(cfg(), rc, 5353).resolv.attempts == 3


# ------------------------------------------------------------------------------ FileWatch


def test_same_plan_ignores_a_rewrite_with_the_same_contents() -> None:
    """What decides whether a resolv.conf change flushes the cache and replaces the c-ares
    channel (fastdns.worker.Worker.replan)."""
    text = "nameserver 10.0.0.1\nsearch corp.example\noptions ndots:2\n"
    a = plan_upstreams(cfg(), parse_resolv_conf(text), None)
    assert same_plan(a, plan_upstreams(cfg(), parse_resolv_conf("# again\n" + text), None))
    for other in (
        "nameserver 10.0.0.2\nsearch corp.example\noptions ndots:2\n",
        "nameserver 10.0.0.1\nsearch other.example\noptions ndots:2\n",
        "nameserver 10.0.0.1\nsearch corp.example\n",
    ):
        assert not same_plan(a, plan_upstreams(cfg(), parse_resolv_conf(other), None))
    assert not same_plan(a, plan_upstreams(cfg(), ResolvConf(readable=False), None))


def test_file_watch(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 10.0.0.1\n")
    w = FileWatch(str(path))
    assert not w.changed()
    tmp = tmp_path / "new"
    tmp.write_text("nameserver 10.0.0.2\n")  # same size, new inode: an atomic rewrite
    os.replace(tmp, path)
    assert w.changed()
    assert not w.changed()
    path.unlink()
    assert w.changed()
    assert not w.changed()
    path.write_text("x")
    assert w.changed()


@pytest.mark.parametrize(
    ("listen", "skipped"),
    [
        ("0.0.0.0", ["127.0.0.1", "127.0.0.53", "0.0.0.0"]),
        ("::", ["127.0.0.1", "127.0.0.53", "0.0.0.0", "::1"]),
        ("127.0.0.1", ["127.0.0.1"]),
    ],
)
def test_plan_skips_loopback_when_listening_on_a_wildcard(listen: str, skipped: list[str]) -> None:
    servers = ["127.0.0.1", "127.0.0.53", "0.0.0.0", "::1", "10.0.0.1"]
    rc = parse_resolv_conf("".join(f"nameserver {s}\n" for s in servers))
    plan = plan_upstreams(cfg(listen=listen), rc, 53)
    assert [h for h, _ in plan.servers] == [s for s in servers if s not in skipped]
    assert len(plan_upstreams(cfg(listen=listen), rc, 5353).servers) == len(servers)


def test_options_out_of_range_or_not_finite_are_ignored_or_clamped() -> None:
    # Found by tests/fuzz: "ndots:-1" gave ndots -1 and "timeout:nan" a NaN timeout, both
    # handed to c-ares (fastdns.native.channel_options). glibc clamps and ignores the same.
    rc = parse_resolv_conf("options ndots:-1 timeout:nan attempts:-3\n")
    assert (rc.ndots, rc.timeout, rc.attempts) == (0, 5.0, 1)
    assert parse_resolv_conf("options timeout:inf timeout:1e400\n").timeout == 5.0


def test_an_ipv4_nameserver_with_a_scope_is_ignored() -> None:
    # Found by tests/fuzz: only IPv6 addresses have zones (RFC 4007); glibc ignores the line.
    rc = parse_resolv_conf("nameserver 1.2.3.4%eth0\nnameserver fe80::1%lo\n")
    assert rc.nameservers == ("fe80::1%lo",)


def test_search_root_gives_no_empty_domain() -> None:
    # Found by tests/fuzz: "search ." gave the domain "" (then handed to c-ares as a search
    # domain); the root adds nothing to a search list.
    assert parse_resolv_conf("search . example.com.\n").search == ("example.com",)
    assert parse_resolv_conf("domain .\n").search == ()
