"""The pure parts of per-domain routes: server and suffix parsing, the fastdns.forward loader,
longest-suffix matching on wire names, merging with resolver-directory files, and the
resolver(5) file parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastdns.config.load import build_config
from fastdns.config.routes import parse_server, parse_suffix
from fastdns.config.schema import RouteConfig, RouteServer
from fastdns.dns.wire import name_to_wire
from fastdns.errors import ConfigError
from fastdns.resolve.forward.resolverdir import (
    DEFAULT_SEARCH_ORDER,
    ResolverDir,
    parse_resolver_file,
)
from fastdns.resolve.forward.routes import merge_routes
from fastdns.system.files import FILE_GRACE


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.8.0.1", RouteServer("10.8.0.1", 53)),
        ("10.8.0.1:5353", RouteServer("10.8.0.1", 5353)),
        ("fd00::1", RouteServer("fd00::1", 53)),
        ("[fd00::1]:54", RouteServer("fd00::1", 54)),
        ("fe80::1%eth0", RouteServer("fe80::1%eth0", 53)),
        ("tcp://10.96.0.10", RouteServer("10.96.0.10", 53, "tcp")),
        ("TCP://[::1]:53", RouteServer("::1", 53, "tcp")),
        ("dns://127.0.0.1:54", RouteServer("127.0.0.1", 54)),
        ("tls://9.9.9.9", RouteServer("9.9.9.9", 853, "tls")),
    ],
)
def test_server_forms(text: str, want: RouteServer) -> None:
    assert parse_server(text) == want


@pytest.mark.parametrize(
    "text",
    ["dns.corp.example", "10.0.0.1:0", "10.0.0.1:99999", "[fd00::1]x", "http://1.2.3.4", "", 53],
)
def test_bad_servers_say_why(text: object) -> None:
    assert isinstance(parse_server(text), str)


def test_suffixes_are_canonical_and_bad_ones_refused() -> None:
    assert parse_suffix("Corp.Example.") == ("corp.example", "")
    assert parse_suffix("10.in-addr.arpa") == ("10.in-addr.arpa", "")
    for bad in (".", "", "*.corp.example", "a..b", "x" * 64 + ".example", "a b", 7):
        assert parse_suffix(bad)[1], bad


def _load(forward: object) -> str:
    try:
        build_config({"fastdns": {"forward": forward}})
    except ConfigError as e:
        return str(e)
    return ""


@pytest.mark.parametrize(
    ("forward", "says"),
    [
        (
            {"domains": [{"domains": ["corp.example"], "servers": []}]},
            "servers: must be a non-empty",
        ),
        ({"domains": [{"domains": ["corp.example"]}]}, "servers: required"),
        ({"domains": [{"servers": ["10.0.0.1"]}]}, "domains: required"),
        ({"domains": [{"domains": ["*.x"], "servers": ["10.0.0.1"]}]}, "without '*.'"),
        ({"domains": [{"domains": ["x"], "servers": ["ns.x"]}]}, "not an IP address"),
        ({"domains": [{"domains": ["x"], "servers": ["tls://10.0.0.1"]}]}, "need tls_name"),
        ({"domains": [{"domains": ["x"], "servers": ["1.1.1.1"], "weight": 1}]}, "unknown key"),
        ({"domains": "corp.example"}, "must be a list of routes"),
        (
            {
                "domains": [
                    {"domains": ["x"], "servers": ["10.0.0.1"]},
                    {"domains": ["X."], "servers": ["10.0.0.2"]},
                ]
            },
            "already routed by domains[0]",
        ),
    ],
)
def test_config_errors_name_the_key(forward: object, says: str) -> None:
    message = _load(forward)
    assert "fastdns.forward.domains" in message and says in message, message


def test_config_is_read_in_order() -> None:
    cfg = build_config(
        {
            "fastdns": {
                "forward": {
                    "domains": [
                        {"domains": ["Corp.Example", "10.in-addr.arpa"], "servers": ["10.8.0.1"]},
                        {"domains": "cluster.local", "servers": "tcp://10.96.0.10"},
                    ],
                    "resolver_dir": "resolver",
                }
            }
        },
        "/etc/lima/lima.yaml",
    )
    routes = cfg.forward.domains
    assert [r.domains for r in routes] == [("corp.example", "10.in-addr.arpa"), ("cluster.local",)]
    assert routes[1].servers == (RouteServer("10.96.0.10", 53, "tcp"),)
    assert cfg.forward.resolver_dir == "/etc/lima/resolver"


def _route(*domains: str, server: str = "10.0.0.1", origin: str = "config") -> RouteConfig:
    s = parse_server(server)
    assert isinstance(s, RouteServer)
    return RouteConfig(tuple(domains), (s,), origin=origin)


def test_longest_suffix_wins_on_wire_names_whatever_the_case() -> None:
    table, _ = merge_routes(
        [_route("corp.example", server="10.0.0.1"), _route("lab.corp.example", server="10.0.0.2")],
        [],
    )

    def match(name: str) -> str | None:
        r = table.match(name_to_wire(name))
        return r.name if r is not None else None

    assert match("WwW.CoRp.ExAmPlE") == "corp.example"
    assert match("corp.example") == "corp.example"
    assert match("a.b.LAB.corp.example.") == "lab.corp.example"
    assert match("xcorp.example") is None
    assert match("example") is None
    assert match(".") is None
    assert not merge_routes([], [])[0]  # an empty table is false: callers skip the lookup


def test_explicit_routes_win_and_loops_are_left_out() -> None:
    table, warnings = merge_routes(
        [_route("corp.example", server="10.0.0.1")],
        [
            _route("corp.example", server="10.0.0.9", origin="/r/corp.example"),
            _route("vpn.example", server="127.0.0.1:5300", origin="/r/vpn.example"),
        ],
        is_self=lambda s: s == ("127.0.0.1", 5300),
    )
    assert [(r.name, r.servers) for r in table.routes] == [
        ("corp.example", (("10.0.0.1", 53),)),
        ("vpn.example", ()),  # its names get SERVFAIL: never the default upstreams
    ]
    assert any("routed by fastdns.forward.domains" in w for w in warnings)
    assert any("fastdns itself" in w for w in warnings)


def test_resolver_file_keys() -> None:
    route, order, problem = parse_resolver_file(
        "corp.example",
        "# VPN\nnameserver 10.8.0.1\nnameserver fd00::53\nport 5353\n"
        "search corp.example\nsearch_order 1\ntimeout 2\n",
    )
    assert problem == "" and order == 1 and route is not None
    assert route.domains == ("corp.example",)
    assert route.servers == (RouteServer("10.8.0.1", 5353), RouteServer("fd00::53", 5353))
    assert route.timeout == 2.0
    route, order, _ = parse_resolver_file("x", "domain Dev.Example.\nnameserver 10.0.0.1\n")
    assert route is not None and route.domains == ("dev.example",)
    assert order == DEFAULT_SEARCH_ORDER


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("corp.example", "", "no nameserver"),
        ("corp.example", "nameserver vpn.corp\n", "not an IP address"),
        ("corp.example", "nameserver 10.0.0.1:53\n", "port line"),
        ("corp.example", "nameserver 10.0.0.1\nport 0\n", "bad port"),
        ("corp.example", "nameserver 10.0.0.1\nport x\n", "must be a number"),
        ("corp.example", "nameserver 10.0.0.1\ntimeout never\n", "timeout"),
        ("bad name", "nameserver 10.0.0.1\n", "domain"),
    ],
)
def test_bad_resolver_files_say_why(name: str, text: str, says: str) -> None:
    route, _, problem = parse_resolver_file(name, text)
    assert route is None and says in problem, problem


def test_resolver_dir_follows_files_and_holds_one_rewritten_in_place(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [0.0]
    rdir = ResolverDir(str(tmp_path), clock=lambda: now[0])
    assert not rdir.refresh() and rdir.routes == ()
    (tmp_path / "corp.example").write_text("nameserver 10.8.0.1\n")
    (tmp_path / ".corp.example.swp").write_text("nameserver 10.9.9.9\n")
    (tmp_path / "junk.example").write_text("nameserver nowhere\n")
    assert rdir.refresh()
    assert [r.domains for r in rdir.routes] == [("corp.example",)]
    assert not rdir.refresh()  # nothing changed: nothing read again
    # Truncated by a writer in the middle of an in-place rewrite: the route holds...
    (tmp_path / "corp.example").write_text("")
    assert not rdir.refresh() and rdir.holding
    now[0] = FILE_GRACE + 0.1  # ...until the grace is over
    assert rdir.refresh() and rdir.routes == () and not rdir.holding
    (tmp_path / "corp.example").write_text("nameserver 10.8.0.2\n")
    assert rdir.refresh() and rdir.routes[0].servers == (RouteServer("10.8.0.2", 53),)
    (tmp_path / "corp.example").unlink()
    assert rdir.refresh() and rdir.routes == ()
    warned = [r.getMessage() for r in caplog.records if "junk.example" in r.getMessage()]
    assert len(warned) == 1 and "not an IP address" in warned[0]


def test_resolver_dir_lowest_search_order_wins(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("domain corp.example\nnameserver 10.0.0.1\nsearch_order 5\n")
    (tmp_path / "b").write_text("domain corp.example\nnameserver 10.0.0.2\nsearch_order 1\n")
    rdir = ResolverDir(str(tmp_path))
    rdir.refresh()
    assert [r.servers[0].host for r in rdir.routes] == ["10.0.0.2"]
