"""fastdns.config: lima.yaml plus the ``fastdns:`` section, validated with key paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastdns.config.load import build_config, load_config
from fastdns.config.schema import DEFAULT_FALLBACK, Config, canonical_name, instance_hostname
from fastdns.errors import ConfigError


def problems(doc: dict[str, Any], path: str = "") -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(doc, path)
    return info.value.problems


def one_problem(doc: dict[str, Any]) -> str:
    found = problems(doc)
    assert len(found) == 1, found
    return found[0]


def hosts_of(cfg: Config) -> dict[str, str]:
    return dict(cfg.hosts)


# ------------------------------------------------------------------------------ defaults


def test_empty_document_gives_the_documented_defaults() -> None:
    cfg = build_config({})
    assert cfg.enabled is True
    assert cfg.ipv6 is False
    assert cfg.dns == ()
    assert cfg.instance == ""
    assert cfg.listen == "127.0.0.1"
    assert (cfg.udp_port, cfg.tcp_port) == (0, 0)
    assert cfg.resolv_conf == "/etc/resolv.conf"
    assert cfg.hosts_file == "/etc/hosts"
    assert cfg.fallback == DEFAULT_FALLBACK == ("8.8.8.8", "1.1.1.1")
    assert cfg.upstream_timeout == 1.0
    assert cfg.deadline == 4.0 and cfg.deadline < 5.0  # under the guest's resolver timeout
    assert cfg.lima_compat is False
    assert cfg.static_ttl == 5
    assert cfg.edns_max_udp == 1232
    assert cfg.host_ip == "192.168.5.2"
    assert cfg.guest_ip == "192.168.5.15"
    # only the built-in host.lima.internal (no instance name from an unnamed document)
    assert cfg.hosts == (("host.lima.internal", "192.168.5.2"),)
    assert cfg.warnings == ()


def test_every_issue2_key_is_read() -> None:
    doc = {
        "hostResolver": {"enabled": True, "ipv6": True, "hosts": {"a.test": "10.0.0.1"}},
        "fastdns": {
            "instance": "dev",
            "listen": "::1",
            "udp_port": 5353,
            "tcp_port": 5354,
            "resolv_conf": "/x/resolv.conf",
            "hosts_file": "/x/hosts",
            "fallback": ["127.0.0.53", "fe80::1%lo"],
            "upstream_timeout": 0.5,
            "deadline": 2,
            "lima_compat": True,
            "static_ttl": 30,
            "edns_max_udp": 4096,
            "host_ip": "10.1.1.1",
            "guest_ip": "10.1.1.2",
        },
    }
    cfg = build_config(doc)
    assert cfg.ipv6 is True
    assert cfg.instance == "dev"
    assert cfg.listen == "::1"
    assert (cfg.udp_port, cfg.tcp_port) == (5353, 5354)
    assert (cfg.resolv_conf, cfg.hosts_file) == ("/x/resolv.conf", "/x/hosts")
    assert cfg.fallback == ("127.0.0.53", "fe80::1%lo")
    assert cfg.upstream_timeout == 0.5
    assert cfg.deadline == 2.0 and isinstance(cfg.deadline, float)
    assert cfg.lima_compat is True
    assert cfg.udp_payload_cap == 512  # lima_compat wins over edns_max_udp
    assert cfg.static_ttl == 30
    assert cfg.edns_max_udp == 4096
    assert hosts_of(cfg) == {
        "a.test": "10.0.0.1",
        "host.lima.internal": "10.1.1.1",
        "lima-dev": "10.1.1.2",
    }


def test_udp_payload_cap_is_edns_max_udp_without_compat() -> None:
    assert build_config({"fastdns": {"edns_max_udp": 1400}}).udp_payload_cap == 1400


def test_empty_fallback_is_allowed() -> None:
    assert build_config({"fastdns": {"fallback": []}}).fallback == ()


def test_relative_file_paths_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    cfg = build_config(
        {"fastdns": {"resolv_conf": "r.conf", "hosts_file": "sub/hosts"}},
        str(tmp_path / "x.yaml"),
    )
    assert cfg.resolv_conf == str(tmp_path / "r.conf")
    assert cfg.hosts_file == str(tmp_path / "sub" / "hosts")


# ------------------------------------------------------------------------------ rejections


def test_unknown_fastdns_keys_are_rejected_with_their_path() -> None:
    found = problems({"fastdns": {"listen_addr": "127.0.0.1", "udpport": 1}})
    assert sorted(found) == [
        "fastdns.listen_addr: unknown key (did you mean 'listen'?)",
        "fastdns.udpport: unknown key (did you mean 'udp_port'?)",
    ]


def test_unknown_keys_in_nested_fastdns_sections_are_rejected() -> None:
    assert one_problem({"fastdns": {"cache": {"size": 1}}}) == "fastdns.cache.size: unknown key"


def test_prefetch_duration_is_read_and_bounded() -> None:
    cfg = build_config({"fastdns": {"cache": {"prefetch_duration": 300}}})
    assert cfg.cache.prefetch_duration == 300
    assert build_config({}).cache.prefetch_duration == 60  # CoreDNS's default
    assert one_problem({"fastdns": {"cache": {"prefetch_duration": 0}}}) == (
        "fastdns.cache.prefetch_duration: must be between 1 and 86400, got 0"
    )


def test_all_problems_are_reported_at_once() -> None:
    found = problems(
        {
            "dns": ["1.1.1.1"],
            "hostResolver": {"ipv6": "no"},
            "fastdns": {"udp_port": -1, "listen": "localhost", "bogus": 1},
        }
    )
    paths = sorted(p.split(":", 1)[0] for p in found)
    assert paths == [
        "dns",
        "fastdns.bogus",
        "fastdns.listen",
        "fastdns.udp_port",
        "hostResolver.ipv6",
    ]


BOOL_KEYS = ["lima_compat"]
INT_KEYS = ["udp_port", "tcp_port", "static_ttl", "edns_max_udp"]
FLOAT_KEYS = ["upstream_timeout", "deadline"]
STR_KEYS = ["instance", "resolv_conf", "hosts_file"]
IP_KEYS = ["listen", "host_ip", "guest_ip"]


@pytest.mark.parametrize("key", BOOL_KEYS)
@pytest.mark.parametrize("value", ["yes please", 1, [True]])
def test_bool_keys_reject_other_types(key: str, value: object) -> None:
    msg = one_problem({"fastdns": {key: value}})
    assert msg.startswith(f"fastdns.{key}: must be true or false")


@pytest.mark.parametrize("key", INT_KEYS)
@pytest.mark.parametrize("value", ["53", 1.5, True, [1]])
def test_integer_keys_reject_other_types(key: str, value: object) -> None:
    msg = one_problem({"fastdns": {key: value}})
    assert msg.startswith(f"fastdns.{key}: must be an integer")


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["1", True, {}])
def test_number_keys_reject_other_types(key: str, value: object) -> None:
    msg = one_problem({"fastdns": {key: value}})
    assert msg.startswith(f"fastdns.{key}: must be a number")


@pytest.mark.parametrize("key", STR_KEYS)
def test_string_keys_reject_other_types(key: str) -> None:
    assert one_problem({"fastdns": {key: 5}}).startswith(f"fastdns.{key}: must be a string")


@pytest.mark.parametrize("key", IP_KEYS)
@pytest.mark.parametrize("value", ["localhost", "300.1.1.1", "1.2.3", "", 7])
def test_ip_keys_reject_bad_addresses(key: str, value: object) -> None:
    assert one_problem({"fastdns": {key: value}}).startswith(f"fastdns.{key}: ")


@pytest.mark.parametrize("key", ["udp_port", "tcp_port"])
@pytest.mark.parametrize("value", [-1, 65536, 100000])
def test_ports_out_of_range_are_rejected(key: str, value: int) -> None:
    assert one_problem({"fastdns": {key: value}}) == (
        f"fastdns.{key}: must be between 0 and 65535, got {value}"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("edns_max_udp", 511),
        ("edns_max_udp", 65536),
        ("static_ttl", -1),
        ("deadline", 0),
        ("upstream_timeout", 0),
        ("deadline", float("nan")),
    ],
)
def test_out_of_range_numbers_are_rejected(key: str, value: float) -> None:
    assert one_problem({"fastdns": {key: value}}).startswith(f"fastdns.{key}: must be between")


def test_upstream_timeout_may_not_exceed_the_deadline() -> None:
    msg = one_problem({"fastdns": {"upstream_timeout": 3, "deadline": 2}})
    assert msg.startswith("fastdns.upstream_timeout: ")


def test_fallback_must_be_a_list_of_ips() -> None:
    assert one_problem({"fastdns": {"fallback": "8.8.8.8"}}).startswith(
        "fastdns.fallback: must be a list"
    )
    assert one_problem({"fastdns": {"fallback": ["8.8.8.8", "dns.google"]}}).startswith(
        "fastdns.fallback[1]: not a valid IP address"
    )


def test_fastdns_section_must_be_a_mapping() -> None:
    assert one_problem({"fastdns": ["listen"]}) == "fastdns: must be a mapping, got list"


def test_null_fastdns_section_means_defaults() -> None:
    assert build_config({"fastdns": None}).listen == "127.0.0.1"


# ------------------------------------------------------------------------------ hostResolver, dns


@pytest.mark.parametrize("value", ["on", ["enabled"], 1])
def test_host_resolver_of_the_wrong_type_is_rejected(value: object) -> None:
    assert one_problem({"hostResolver": value}).startswith("hostResolver: must be a mapping")


@pytest.mark.parametrize("key", ["enabled", "ipv6"])
def test_host_resolver_flags_must_be_booleans(key: str) -> None:
    assert one_problem({"hostResolver": {key: "true"}}).startswith(
        f"hostResolver.{key}: must be true or false"
    )


@pytest.mark.parametrize("value", [["a", "b"], "a: 1.2.3.4"])
def test_host_resolver_hosts_must_be_a_mapping(value: object) -> None:
    assert one_problem({"hostResolver": {"hosts": value}}).startswith(
        "hostResolver.hosts: must be a mapping"
    )


@pytest.mark.parametrize("value", [None, 5, ["10.0.0.1"], ""])
def test_host_values_must_be_strings(value: object) -> None:
    assert one_problem({"hostResolver": {"hosts": {"a.test": value}}}).startswith(
        "hostResolver.hosts.a.test: "
    )


@pytest.mark.parametrize("value", ["1.2.3.400", "10.0.0", "fd00::zz", "a..b", "x" * 64 + ".test"])
def test_host_values_that_are_neither_ip_nor_name_are_rejected(value: str) -> None:
    assert one_problem({"hostResolver": {"hosts": {"a.test": value}}}).startswith(
        "hostResolver.hosts.a.test: "
    )


@pytest.mark.parametrize("key", ["a..b", "x" * 64 + ".test", ("abcdefgh." * 30) + "test"])
def test_host_keys_that_are_not_names_are_rejected(key: str) -> None:
    assert one_problem({"hostResolver": {"hosts": {key: "10.0.0.1"}}}) == (
        f"hostResolver.hosts.{key}: the key is not a valid host name"
    )


def test_host_keys_may_be_wildcards_and_idna() -> None:
    cfg = build_config(
        {"hostResolver": {"hosts": {"*.dev.test": "10.0.0.1", "bücher.test": "x.test"}}}
    )
    assert hosts_of(cfg)["*.dev.test"] == "10.0.0.1"


@pytest.mark.parametrize("value", ["1.1.1.1", {"a": 1}, 53])
def test_dns_of_the_wrong_type_is_rejected(value: object) -> None:
    msg = one_problem({"hostResolver": {"enabled": False}, "dns": value})
    assert msg.startswith("dns: must be a list")


def test_dns_entries_must_be_ips() -> None:
    msg = one_problem({"hostResolver": {"enabled": False}, "dns": ["1.1.1.1", "one.one"]})
    assert msg.startswith("dns[1]: not a valid IP address")


def test_lima_rule_enabled_with_dns_is_an_error() -> None:
    # Lima pkg/limayaml/validate.go, with its message
    msg = one_problem({"dns": ["1.1.1.1"]})
    assert msg == "dns: field `dns` must be empty when field `HostResolver.Enabled` is true"
    assert one_problem({"hostResolver": {"enabled": True}, "dns": ["1.1.1.1"]}) == msg


def test_disabled_resolver_forwards_to_dns() -> None:
    cfg = build_config({"hostResolver": {"enabled": False}, "dns": ["1.1.1.1", "fe80::1%eth0"]})
    assert cfg.enabled is False
    assert cfg.dns == ("1.1.1.1", "fe80::1%eth0")


@pytest.mark.parametrize("dns", [[], None])
def test_disabled_resolver_with_empty_dns_refuses(dns: object) -> None:
    doc: dict[str, Any] = {"hostResolver": {"enabled": False}}
    if dns is not None:
        doc["dns"] = dns
    msg = one_problem(doc)
    assert msg.startswith("dns: ") and "nothing to forward to" in msg


def test_empty_dns_with_enabled_resolver_is_fine() -> None:
    assert build_config({"dns": []}).dns == ()


# ------------------------------------------------------------------------------ hosts


def test_duplicate_keys_differing_in_case_or_dot_later_wins_with_a_warning() -> None:
    cfg = build_config(
        {
            "hostResolver": {
                "hosts": {
                    "MY.Host": "10.0.0.1",
                    "my.host": "10.0.0.2",
                    "override.": "10.0.0.3",
                    "override": "10.0.0.4",
                }
            }
        }
    )
    hosts = hosts_of(cfg)
    assert hosts["my.host"] == "10.0.0.2" and "MY.Host" not in hosts
    assert hosts["override"] == "10.0.0.4" and "override." not in hosts
    assert len(cfg.warnings) == 2
    assert cfg.warnings[0].startswith("hostResolver.hosts.my.host: ")
    assert "'MY.Host'" in cfg.warnings[0] and "later" in cfg.warnings[0]
    assert cfg.warnings[1].startswith("hostResolver.hosts.override: ")


def test_duplicate_resolution_is_by_file_order_not_by_spelling() -> None:
    cfg = build_config({"hostResolver": {"hosts": {"a.test": "10.0.0.1", "A.TEST.": "10.0.0.2"}}})
    assert hosts_of(cfg)["A.TEST."] == "10.0.0.2"


def test_builtins_override_identical_user_keys() -> None:
    cfg = build_config(
        {
            "hostResolver": {"hosts": {"Host.Lima.Internal.": "1.2.3.4", "lima-dev": "5.6.7.8"}},
            "fastdns": {"instance": "dev"},
        }
    )
    assert hosts_of(cfg) == {"host.lima.internal": "192.168.5.2", "lima-dev": "192.168.5.15"}


def test_host_ip_and_guest_ip_move_the_builtins() -> None:
    cfg = build_config({"fastdns": {"instance": "x", "host_ip": "10.0.2.2", "guest_ip": "fd00::5"}})
    assert hosts_of(cfg) == {"host.lima.internal": "10.0.2.2", "lima-x": "fd00::5"}


def test_host_aliases_and_wildcards_are_kept_in_file_order() -> None:
    cfg = build_config(
        {"hostResolver": {"hosts": {"b": "a.example", "*.wild.test": "10.0.0.9", "a": "1.1.1.1"}}}
    )
    assert [n for n, _ in cfg.hosts] == ["b", "*.wild.test", "a", "host.lima.internal"]


# ------------------------------------------------------------------------------ instance name


def test_instance_from_fastdns_instance() -> None:
    cfg = build_config({"fastdns": {"instance": "my_example.com"}}, "/x/other/lima.yaml")
    assert cfg.instance == "my_example.com"
    assert hosts_of(cfg)["lima-my-example-com"] == "192.168.5.15"


def test_instance_from_the_parent_folder_of_lima_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "my_example.com"
    folder.mkdir()
    (folder / "lima.yaml").write_text("vmType: qemu\n")
    cfg = load_config(folder / "lima.yaml")
    assert cfg.instance == "my_example.com"
    assert hosts_of(cfg)["lima-my-example-com"] == "192.168.5.15"


def test_no_instance_from_a_file_not_named_lima_yaml(tmp_path: Path) -> None:
    path = tmp_path / "fastdns.yaml"
    path.write_text("{}\n")
    cfg = load_config(path)
    assert cfg.instance == ""
    assert [n for n, _ in cfg.hosts] == ["host.lima.internal"]


@pytest.mark.parametrize(
    ("instance", "host"),
    [
        ("default", "lima-default"),
        ("my_example.com", "lima-my-example-com"),
        ("a.b_c", "lima-a-b-c"),
    ],
)
def test_instance_hostname(instance: str, host: str) -> None:
    assert instance_hostname(instance) == host


def test_canonical_name() -> None:
    assert canonical_name(" My.Host. ") == "my.host"


# ------------------------------------------------------------------------------ files


def test_lima_top_level_keys_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text(
        "vmType: qemu\narch: null\nimages:\n- location: https://example.invalid/x.img\n"
        "  arch: x86_64\ncpus: 4\nmemory: 4GiB\nmounts:\n- location: '~'\n"
        "containerd: {system: false, user: true}\nportForwards: []\n"
        "hostResolver:\n  hosts:\n    host.docker.internal: host.lima.internal\n"
        "someFutureLimaKey: {anything: [1, 2]}\n"
    )
    cfg = load_config(path)
    assert hosts_of(cfg)["host.docker.internal"] == "host.lima.internal"


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    missing = tmp_path / "missing.yaml"
    assert info.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_load_config_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("fastdns:\n  listen: [127.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (msg,) = info.value.problems
    assert msg.startswith(f"{path}: not valid YAML (line ")


def test_load_config_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: the top level must be a mapping, got list"]


def test_load_config_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path).listen == "127.0.0.1"


def test_config_is_frozen() -> None:
    cfg = build_config({})
    with pytest.raises(AttributeError):
        cfg.listen = "0.0.0.0"  # type: ignore[misc]


def test_native_nss_defaults_and_values() -> None:
    cfg = build_config({}, "")
    assert (cfg.native.nss, cfg.native.nsswitch) == ("auto", "/etc/nsswitch.conf")
    cfg = build_config({"fastdns": {"native": {"nss": "off", "nsswitch": "/tmp/ns.conf"}}}, "")
    assert (cfg.native.nss, cfg.native.nsswitch) == ("off", "/tmp/ns.conf")


@pytest.mark.parametrize(
    ("native", "needle"),
    [
        ({"nss": "yes"}, "fastdns.native.nss: must be one of auto, on, off"),
        ({"nss": True}, "fastdns.native.nss: must be a string"),
        ({"nsswitch": "nsswitch.conf"}, "fastdns.native.nsswitch: must be an absolute path"),
        ({"nsswitch": 3}, "fastdns.native.nsswitch: must be a string"),
    ],
)
def test_native_nss_bad_values(native: dict[str, Any], needle: str) -> None:
    assert needle in one_problem({"fastdns": {"native": native}})
