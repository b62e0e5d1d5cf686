"""fastdns.config on misspelt and duplicate keys: a warning (with "did you mean" and the file's
line) where fastdns would otherwise silently drop what the user meant, and file:line on
errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fastdns.cli import main
from fastdns.config.load import build_config, load_config
from fastdns.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, text: str) -> tuple[Path, tuple[str, ...]]:
    path = tmp_path / "lima.yaml"
    path.write_text(text)
    return path, load_config(path).warnings


def test_a_misspelt_host_resolver_section_is_a_warning_with_its_line(tmp_path: Path) -> None:
    path, warnings = load(tmp_path, "vmType: qemu\nhostResolvr:\n  hosts:\n    a.test: 10.0.0.1\n")
    assert warnings == (
        f"{path}:2: hostResolvr: not a key fastdns reads (did you mean 'hostResolver'?); ignored",
    )


@pytest.mark.parametrize(
    ("key", "meant"), [("DNS", "dns"), ("fastdsn", "fastdns"), ("hostresolver", "hostResolver")]
)
def test_top_level_keys_close_to_ours_are_warned_about(
    tmp_path: Path, key: str, meant: str
) -> None:
    _, warnings = load(tmp_path, f"{key}: {{}}\n")
    assert len(warnings) == 1 and f"(did you mean '{meant}'?)" in warnings[0], warnings


def test_lima_keys_fastdns_does_not_read_are_not_warned_about(tmp_path: Path) -> None:
    # env, os and disk are within edit distance 2 of dns, and are Lima's own.
    text = "env: {A: b}\nos: Linux\ndisk: 10GiB\nvmType: vz\nssh: {localPort: 0}\nuser: {}\n"
    assert load(tmp_path, text)[1] == ()
    assert load_config(REPO / "deploy/examples/lima.yaml").warnings == ()


def test_unknown_keys_inside_host_resolver_are_warned_about(tmp_path: Path) -> None:
    text = "hostResolver:\n  enabled: true\n  hots:\n    a.test: 1.2.3.4\n"
    path, warnings = load(tmp_path, text)
    assert warnings == (
        f"{path}:3: hostResolver.hots: not a key fastdns reads (did you mean 'hosts'?); ignored",
    )


def test_duplicate_keys_are_warned_about_with_both_lines(tmp_path: Path) -> None:
    text = (
        "hostResolver:\n  hosts:\n    a.test: 10.0.0.1\n    b.test: 10.0.0.2\n"
        "    a.test: 10.0.0.3\n"
    )
    path = tmp_path / "lima.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.warnings == (
        f"{path}:5: hostResolver.hosts.a.test: duplicate key (first on line 3); the later one wins",
    )
    assert dict(cfg.hosts)["a.test"] == "10.0.0.3"


def test_the_same_key_in_two_mappings_is_not_a_duplicate(tmp_path: Path) -> None:
    text = "fastdns:\n  cache: {enabled: true}\n  native: {enabled: true}\n"
    assert load(tmp_path, text)[1] == ()


def test_errors_in_the_fastdns_section_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text(
        "vmType: qemu\nfastdns:\n  workers: 2\n  udp_port: seventy\n  cache:\n    capacity: -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == [
        f"{path}:4: fastdns.udp_port: must be an integer, got str 'seventy'",
        f"{path}:6: fastdns.cache.capacity: must be between 0 and 1e+07, got -1",
    ]


def test_unknown_fastdns_keys_stay_errors_and_suggest_the_key(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text("fastdns:\n  worker: 2\n  cache:\n    capacty: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == [
        f"{path}:2: fastdns.worker: unknown key (did you mean 'workers'?)",
        f"{path}:4: fastdns.cache.capacty: unknown key (did you mean 'capacity'?)",
    ]
    with pytest.raises(ConfigError) as info:
        build_config({"fastdns": {"colour": "blue"}})
    assert info.value.problems == ["fastdns.colour: unknown key"]  # nothing close: no guess


def test_serve_logs_the_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text("hostResolver:\n  hots: {}\n")
    monkeypatch.setattr("fastdns.cli.cmd_serve", lambda *args: 0)  # load, warn, not serve
    monkeypatch.setattr("fastdns.cli.configure_logging", lambda *args: None)
    with caplog.at_level(logging.WARNING, logger="fastdns"):
        assert main(["serve", str(path)]) == 0
    assert f"{path}:2: hostResolver.hots: not a key fastdns reads (did you mean 'hosts'?)" in (
        caplog.text
    )
