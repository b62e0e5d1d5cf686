"""The client ACL matcher and its configuration (fastdns.acl, fastdns.gate; docs/exposure.md)."""

from __future__ import annotations

import pytest

from fastdns.config.load import build_config
from fastdns.errors import ConfigError
from fastdns.policy.acl import DEFAULT_ALLOW, AclConfig, NetworkSet, address, describe
from fastdns.policy.ratelimit import RateLimitConfig
from fastdns.serve.gate import DENY, PASS, Gate

DEFAULT = NetworkSet(DEFAULT_ALLOW)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.5.15",
        "100.64.0.1",
        "100.127.255.255",
        "169.254.1.1",
        "::1",
        "fd00::1",
        "fc00::53",
        "fe80::1",
        "fe80::1%eth0",
        "::ffff:10.1.2.3",
        "::ffff:127.0.0.1",
        "::ffff:192.168.0.1",
    ],
)
def test_default_allows_loopback_private_and_link_local(host: str) -> None:
    assert host in DEFAULT


@pytest.mark.parametrize(
    "host",
    [
        "198.51.100.2",
        "8.8.8.8",
        "172.32.0.1",
        "172.15.255.255",
        "100.128.0.1",
        "192.169.0.1",
        "11.0.0.1",
        "2001:db8::1",
        "::ffff:198.51.100.2",
        "::ffff:8.8.8.8",
        "::2",
        "fec0::1",
        "0.0.0.0",
        "",
        "not-an-address",
        "::ffff:999.1.1.1",
    ],
)
def test_default_refuses_the_internet(host: str) -> None:
    assert host not in DEFAULT


def test_mapped_address_is_judged_as_ipv4() -> None:
    assert address("::ffff:198.51.100.2") == (4, 0xC6336402)
    v4_only = NetworkSet(["198.51.100.0/24"])
    assert "::ffff:198.51.100.7" in v4_only
    assert "198.51.100.7" in v4_only
    # A mapped network in the config means the IPv4 network it carries.
    mapped = NetworkSet(["::ffff:203.0.113.0/120"])
    assert "203.0.113.9" in mapped and "::ffff:203.0.113.9" in mapped
    assert "203.0.114.9" not in mapped


def test_ipv6_networks_and_everything() -> None:
    s = NetworkSet(["2001:db8:1::/48"])
    assert "2001:db8:1:ffff::1" in s
    assert "2001:db8:2::1" not in s
    assert "10.0.0.1" not in s
    anyone = NetworkSet(["0.0.0.0/0", "::/0"])
    assert "198.51.100.2" in anyone and "2001:db8::1" in anyone
    assert "10.0.0.1" not in NetworkSet([])


def test_gate_caches_verdicts_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fastdns.serve.gate.CAPACITY", 8)
    gate = Gate(AclConfig(), RateLimitConfig())
    assert gate.judge("10.0.0.1") == PASS
    assert gate.judge("198.51.100.2") == DENY
    assert gate.verdicts == {"10.0.0.1": PASS, "198.51.100.2": DENY}
    assert gate.allows("127.0.0.1") and not gate.allows("::ffff:198.51.100.2")
    for i in range(100):
        gate.judge(f"10.0.1.{i}")
    assert len(gate.verdicts) <= 8


def test_gate_gives_limited_sources_their_bucket_key() -> None:
    gate = Gate(AclConfig(), RateLimitConfig(qps=10))
    a, b = gate.judge("10.0.0.1"), gate.judge("10.0.0.200")
    assert a > 0 and a == b  # one /24, one bucket
    assert gate.judge("10.0.1.1") not in (a, PASS, DENY)
    assert gate.judge("127.0.0.1") == PASS  # exempt by default
    assert gate.judge("::ffff:10.0.0.9") == a  # mapped: the same IPv4 prefix
    assert gate.judge("198.51.100.2") == DENY  # the ACL comes first


def _problems(section: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as e:
        build_config({"fastdns": section})
    return str(e.value)


def test_config_defaults() -> None:
    cfg = build_config({})
    assert cfg.acl.allow == DEFAULT_ALLOW and cfg.acl.action == "drop"
    assert not cfg.ratelimit.enabled and cfg.ratelimit.slip == 2
    assert cfg.ratelimit.ipv4_prefix == 24 and cfg.ratelimit.ipv6_prefix == 56
    assert cfg.ratelimit.max_clients == 10000
    assert cfg.ratelimit.exempt == ("127.0.0.0/8", "::1/128")
    assert describe(cfg.acl).startswith("allow 127.0.0.0/8,10.0.0.0/8,")


def test_config_accepts_cidrs_and_refuse() -> None:
    cfg = build_config(
        {
            "fastdns": {
                "acl": {"allow": ["192.0.2.0/24", "2001:db8::/32", "10.1.2.3"], "action": "refuse"}
            }
        }
    )
    assert cfg.acl.allow == ("192.0.2.0/24", "2001:db8::/32", "10.1.2.3/32")
    assert cfg.acl.action == "refuse"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8'"),
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("bogus", "'bogus'"),
        ("2001:db8::/129", "'2001:db8::/129'"),
        (42, "42"),
    ],
)
def test_bad_cidr_is_a_config_error_naming_the_value(value: object, shown: str) -> None:
    text = _problems({"acl": {"allow": ["10.0.0.0/8", value]}})
    assert "fastdns.acl.allow[1]" in text and shown in text
    text = _problems({"ratelimit": {"exempt": [value]}})
    assert "fastdns.ratelimit.exempt[0]" in text and shown in text


def test_bad_acl_and_ratelimit_values() -> None:
    assert "fastdns.acl.action" in _problems({"acl": {"action": "reject"}})
    assert "fastdns.acl.allow" in _problems({"acl": {"allow": "10.0.0.0/8"}})
    assert "fastdns.acl.nope: unknown key" in _problems({"acl": {"nope": 1}})
    assert "fastdns.ratelimit.qps" in _problems({"ratelimit": {"qps": -1}})
    assert "fastdns.ratelimit.ipv4_prefix" in _problems({"ratelimit": {"ipv4_prefix": 33}})
    assert "fastdns.ratelimit.slip" in _problems({"ratelimit": {"slip": "2"}})
    assert "fastdns.ratelimit.max_clients" in _problems({"ratelimit": {"max_clients": 0}})
