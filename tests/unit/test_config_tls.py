"""``fastdns.forward.tls``: DNS over TLS to the default upstreams (docs/tls.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastdns.config.load import build_config
from fastdns.errors import ConfigError


def tls(**keys: Any) -> dict[str, Any]:
    return {"fastdns": {"forward": {"tls": keys}}}


def problems(doc: dict[str, Any], path: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(doc, path)
    return info.value.problems


def test_off_by_default_and_verifying_when_on() -> None:
    d = build_config({}).forward.tls
    assert (d.enabled, d.port, d.tls_name, d.ca_file, d.verify) == (False, 853, "", "", True)
    on = build_config(tls(enabled=True, tls_name="dns.example.")).forward.tls
    assert (on.enabled, on.tls_name, on.verify) == (True, "dns.example", True)


def test_enabled_without_a_name_is_refused_unless_verification_is_explicitly_off() -> None:
    (problem,) = problems(tls(enabled=True))
    assert problem.startswith("fastdns.forward.tls.tls_name: required")
    assert "verify: false" in problem
    assert build_config(tls(enabled=True, verify=False)).forward.tls.verify is False


@pytest.mark.parametrize(
    ("keys", "path"),
    [
        ({"port": 0}, "port"),
        ({"port": "853"}, "port"),
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"tls_name": "bad name!"}, "tls_name"),
        ({"tls_name": "a..b"}, "tls_name"),
        ({"verify": "no"}, "verify"),
        ({"sni": "x"}, "sni"),
    ],
)
def test_bad_values_name_their_key(keys: dict[str, Any], path: str) -> None:
    found = problems(tls(**{"enabled": True, "tls_name": "dns.example", **keys}))
    assert any(p.startswith(f"fastdns.forward.tls.{path}: ") for p in found), found


def test_ca_file_is_relative_to_the_config_and_must_hold_certificates(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    found = problems(
        tls(enabled=True, tls_name="dns.example", ca_file="junk.pem"), str(tmp_path / "l.yaml")
    )
    assert len(found) == 1 and found[0].startswith("fastdns.forward.tls.ca_file: cannot load")
    assert str(tmp_path / "junk.pem") in found[0]
    found = problems(tls(enabled=True, tls_name="dns.example", ca_file=str(tmp_path / "none")))
    assert found[0].startswith("fastdns.forward.tls.ca_file: cannot load")
