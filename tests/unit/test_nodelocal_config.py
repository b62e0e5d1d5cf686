"""``fastdns.nodelocal``: its validation, its defaults for listen and ports, and the rule texts
it plans (docs/nodelocal.md)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from fastdns.config.load import build_config
from fastdns.errors import ConfigError
from fastdns.rules.nlplan import (
    filter_rules,
    plan_nodelocal,
    raw_rules,
    remove_text,
    sync_text,
)
from fastdns.rules.plan import Table, parse_save


def nodelocal(**keys: Any) -> dict[str, Any]:
    fastdns = keys.pop("fastdns", {})
    return {"fastdns": {**fastdns, "nodelocal": {"enabled": True, **keys}}}


def problems(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        build_config(doc)
    return "\n".join(e.value.problems)


def test_off_by_default_and_nothing_changes() -> None:
    cfg = build_config({})
    assert not cfg.nodelocal.enabled and not cfg.rules_process
    assert (cfg.listen, cfg.udp_port, cfg.tcp_port) == ("127.0.0.1", 0, 0)


def test_node_local_mode_listens_on_its_address_port_53() -> None:
    cfg = build_config(nodelocal())
    assert cfg.nodelocal.addresses == ("169.254.20.10",)
    assert (cfg.listen, cfg.udp_port, cfg.tcp_port) == ("169.254.20.10", 53, 53)
    assert cfg.rules_process and cfg.nodelocal.interface == "fastdns0"
    assert build_config(nodelocal(addresses=["FD00:0::10"])).listen == "fd00::10"


def test_several_addresses_are_served_listen_first() -> None:
    """node-local-dns's setup: the link-local address and the kube-dns ClusterIP, and IPv6."""
    addresses = ["169.254.20.10", "fd00::10", "10.96.0.10"]
    cfg = build_config(nodelocal(addresses=addresses))
    assert cfg.nodelocal.addresses == ("169.254.20.10", "fd00::10", "10.96.0.10")
    assert cfg.listen == "169.254.20.10" and cfg.listen_addresses == cfg.nodelocal.addresses
    cfg = build_config(nodelocal(addresses=addresses, fastdns={"listen": "10.96.0.10"}))
    assert cfg.listen == "10.96.0.10"
    assert cfg.listen_addresses == ("10.96.0.10", "169.254.20.10", "fd00::10")
    eight = [f"169.254.20.{i}" for i in range(1, 9)]
    assert build_config(nodelocal(addresses=eight)).listen_addresses == tuple(eight)
    # Outside node-local mode the workers listen on ``listen`` alone, as always.
    assert build_config({"fastdns": {"listen": "127.0.0.2"}}).listen_addresses == ("127.0.0.2",)
    off = build_config({"fastdns": {"nodelocal": {"addresses": addresses}}})
    assert off.listen_addresses == ("127.0.0.1",)


def test_set_listen_and_ports_are_kept() -> None:
    doc = nodelocal(
        addresses=["fd00::10"],
        fastdns={"listen": "fd00::10", "udp_port": 5353, "tcp_port": 0},
    )
    cfg = build_config(doc)
    assert (cfg.listen, cfg.udp_port, cfg.tcp_port) == ("fd00::10", 5353, 0)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (nodelocal(fastdns={"listen": "127.0.0.1"}), "fastdns.listen: in node-local mode"),
        (nodelocal(addresses=[]), "fastdns.nodelocal.addresses: must name at least one"),
        (nodelocal(addresses=["169.254.20.10", "10.9.0.1", "169.254.20.10"]), "addresses[2]: 169"),
        (nodelocal(addresses=["fd00::10", "FD00:0::10"]), "addresses[1]: fd00::10 twice"),
        (nodelocal(addresses=[f"169.254.20.{i}" for i in range(9)]), "at most 8 addresses"),
        (nodelocal(addresses=["169.254.20.10", "224.0.0.1"]), "addresses[1]: not an address"),
        (nodelocal(addresses=["255.255.255.255"]), "addresses[0]: not an address"),
        (nodelocal(addresses=["240.0.0.1"]), "addresses[0]: not an address"),
        (nodelocal(addresses=["::ffff:10.0.0.1"]), "addresses[0]: not an address"),
        (nodelocal(addresses=["fe80::1"]), "addresses[0]: not an address"),
        (
            nodelocal(addresses=["169.254.20.10", "fd00::10"], fastdns={"listen": "10.0.0.1"}),
            "must be one of fastdns.nodelocal.addresses (169.254.20.10, fd00::10)",
        ),
        (nodelocal(addresses=["::1"]), "addresses[0]: not an address an interface can hold"),
        (nodelocal(addresses=["0.0.0.0"]), "addresses[0]: not an address"),
        (nodelocal(addresses=["fe80::1%eth0"]), "addresses[0]: not an address"),
        (nodelocal(addresses=["nope"]), "addresses[0]"),
        (nodelocal(interface="a-much-too-long-name"), "fastdns.nodelocal.interface: not an"),
        (nodelocal(interface="a/b"), "fastdns.nodelocal.interface"),
        (nodelocal(health_port=70000), "fastdns.nodelocal.health_port"),
        (nodelocal(sync_interval=0), "fastdns.nodelocal.sync_interval"),
        (nodelocal(teardown="no"), "fastdns.nodelocal.teardown"),
        (nodelocal(bogus=1), "fastdns.nodelocal"),
        (nodelocal(fastdns={"rules": {"enabled": True}}), "fastdns.rules.enabled: node-local"),
    ],
)
def test_bad_values_are_config_errors(doc: dict[str, Any], message: str) -> None:
    assert message in problems(doc)


def plans(addresses: tuple[str, ...] = ("169.254.20.10",), **keys: Any) -> Any:
    """Plans for the given addresses, in that order."""
    cfg = build_config(nodelocal(interface="nl0", **keys))
    cfg = replace(cfg, nodelocal=replace(cfg.nodelocal, addresses=addresses))
    return plan_nodelocal(cfg, cfg.udp_port, cfg.tcp_port)


def test_rules_cover_dns_and_health_both_ways_per_family() -> None:
    by_family = plans(("169.254.20.10", "10.96.0.10", "fd00::10"))
    v4, v6 = by_family[4], by_family[6]
    assert v4.chain == "FASTDNS-NL-nl0" and v4.addresses == ("169.254.20.10", "10.96.0.10")
    assert v6.addresses == ("fd00::10",)
    raw = raw_rules(v4)
    assert "-A FASTDNS-NL-nl0 -d 169.254.20.10/32 -p udp -m udp --dport 53 -j NOTRACK" in raw
    assert "-A FASTDNS-NL-nl0 -s 10.96.0.10/32 -p tcp -m tcp --sport 8080 -j NOTRACK" in raw
    assert len(raw) == 2 * 2 * 3  # addresses x directions x (udp/53, tcp/53, tcp/8080)
    assert "-A FASTDNS-NL-nl0 -d fd00::10/128 -p tcp -m tcp --dport 53 -j ACCEPT" in (
        filter_rules(v6)
    )
    assert len(raw_rules(plans(health_port=0)[4])) == 4


def test_sync_is_idempotent_and_removal_complete() -> None:
    plan = plans()[4]
    text = sync_text(plan, Table(), Table())
    assert "*raw" in text and "*filter" in text and "-I PREROUTING 1 -j FASTDNS-NL-nl0" in text
    # What iptables-save would print after that transaction: in sync, nothing to do.
    saved = "\n".join(
        [
            "*raw",
            ":PREROUTING ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":FASTDNS-NL-nl0 - [0:0]",
            "-A PREROUTING -j FASTDNS-NL-nl0",
            "-A OUTPUT -j FASTDNS-NL-nl0",
            *raw_rules(plan),
            "COMMIT",
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FASTDNS-NL-nl0 - [0:0]",
            "-A INPUT -j FASTDNS-NL-nl0",
            "-A INPUT -m conntrack --ctstate INVALID -j DROP",
            "-A OUTPUT -j FASTDNS-NL-nl0",
            *filter_rules(plan),
            "COMMIT",
        ]
    )
    tables = parse_save(saved)
    assert sync_text(plan, tables["raw"], tables["filter"]) == ""
    gone = remove_text(plan.chain, tables["raw"], tables["filter"])
    assert "-D PREROUTING -j FASTDNS-NL-nl0" in gone and "-X FASTDNS-NL-nl0" in gone
    assert "INVALID" not in gone  # someone else's rule stays
    # notrack off: the raw chain goes, the filter chain stays.
    off = plans(notrack=False)[4]
    text = sync_text(off, tables["raw"], tables["filter"])
    assert "-X FASTDNS-NL-nl0" in text.split("*filter")[0] and "*filter" not in text
