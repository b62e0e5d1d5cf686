"""fastdns.native / fastdns.cares without sockets: names, channel options, the pycares
string-option workaround."""

from __future__ import annotations

from pathlib import Path

import pycares
import pytest

from fastdns.config.load import build_config
from fastdns.dns import wire
from fastdns.resolve.native.cares import make_channel
from fastdns.resolve.native.resolver import channel_options, lookup_name, server_csv_entries
from fastdns.resolve.resolvconf import parse_resolv_conf, plan_upstreams


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo.", "foo"),
        ("Foo.Corp.Test.", "Foo.Corp.Test"),
        ("_sip._udp.test.", "_sip._udp.test"),
        (".", None),
        ("1.2.3.4.", None),  # c-ares would echo an IP literal back
        ("1.2.3.4.example.", "1.2.3.4.example"),
    ],
)
def test_lookup_name(name: str, expected: str | None) -> None:
    assert lookup_name(wire.name_to_wire(name)) == expected


@pytest.mark.parametrize("label", [b"a.b", b"a b", b"a\\b", b"caf\xc3\xa9", b"x\x00"])
def test_lookup_name_refuses_labels_c_ares_cannot_take(label: bytes) -> None:
    qname = bytes([len(label)]) + label + b"\x04test\x00"
    assert lookup_name(qname) is None


def test_channel_options_follow_the_plan(tmp_path: Path) -> None:
    resolv = parse_resolv_conf(
        "nameserver 127.0.0.53\nsearch corp.test other.test\n"
        "options ndots:2 attempts:3 timeout:5 rotate\n"
    )
    cfg = build_config(
        {
            "fastdns": {
                "resolv_conf": str(tmp_path / "r"),
                "fallback": [],
                "native": {"timeout": 1.0},
            }
        }
    )
    plan = plan_upstreams(cfg, resolv, 5353)
    opts = channel_options(cfg, plan)
    assert opts["domains"] == ["corp.test", "other.test"]
    assert opts["ndots"] == 2 and opts["tries"] == 3 and opts["rotate"] is True
    assert opts["timeout"] == 0.5  # half the native deadline: room for a second server
    assert opts["flags"] & pycares.ARES_FLAG_EDNS  # passing flags would turn EDNS off
    assert opts["resolvconf_path"] == str(tmp_path / "r")
    assert server_csv_entries(plan) == ["127.0.0.53:53"]


def test_server_entries_bracket_ipv6() -> None:
    cfg = build_config({"fastdns": {"fallback": []}})
    plan = plan_upstreams(cfg, parse_resolv_conf("nameserver ::1\nnameserver fe80::1%lo\n"), 0)
    assert server_csv_entries(plan) == ["[::1]:53", "[fe80::1%lo]:53"]


def test_make_channel_really_reads_resolvconf_path(tmp_path: Path) -> None:
    """pycares 5.2.1 frees the path buffer before c-ares reads it; make_channel keeps it."""
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.77\nsearch corp.test\n")
    for _ in range(50):
        ch = make_channel(resolvconf_path=str(path), lookups="fb", sock_state_cb=lambda *a: None)
        try:
            assert ch.servers == ["127.0.0.77:53"]
        finally:
            ch.close()
