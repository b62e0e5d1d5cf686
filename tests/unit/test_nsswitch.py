"""The hosts: line of nsswitch.conf and the sources fastdns hands to glibc
(fastdns/resolve/native/nsswitch.py)."""

from __future__ import annotations

import pytest

from fastdns.resolve.native.nsswitch import (
    NsswitchError,
    Source,
    hosts_line,
    nss_line,
    parse_sources,
)


def test_hosts_line_first_one_comments_and_case() -> None:
    text = (
        "# hosts: mdns\n"
        "passwd: files\n"
        "  Hosts:   files myhostname dns   # trailing comment\n"
        "hosts: files\n"
    )
    assert hosts_line(text) == "files myhostname dns"


def test_hosts_line_missing() -> None:
    assert hosts_line("passwd: files\nhostsx: files\n# hosts: mdns\n") is None
    assert hosts_line("") is None


def test_parse_sources_keeps_actions_with_their_source() -> None:
    value = "files mdns4_minimal [NOTFOUND=return] dns [ !UNAVAIL=return  tryagain=continue ] x"
    assert parse_sources(value) == (
        Source("files"),
        Source("mdns4_minimal", ("[NOTFOUND=return]",)),
        Source("dns", ("[!UNAVAIL=return tryagain=continue]",)),
        Source("x"),
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("files dns", ""),
        ("files myhostname dns", "myhostname"),
        # Debian/Ubuntu with avahi: mdns4_minimal stays authoritative for .local
        ("files mdns4_minimal [NOTFOUND=return] dns", "mdns4_minimal [NOTFOUND=return]"),
        # Fedora: systemd-resolved's resolve sends DNS, so it goes with its actions
        ("files myhostname resolve [!UNAVAIL=return] dns", "myhostname"),
        ("files libvirt libvirt_guest dns mymachines", "libvirt libvirt_guest mymachines"),
        ("DNS Files myhostname", "myhostname"),
        ("", ""),
    ],
)
def test_nss_line_never_names_dns_files_or_resolve(value: str, expected: str) -> None:
    line = nss_line(value)
    assert line == expected
    assert not {"dns", "files", "resolve"} & {w.lower() for w in line.split()}


@pytest.mark.parametrize(
    "value",
    [
        "files [NOTFOUND=return",  # unclosed
        "[NOTFOUND=return] files",  # actions before any source
        "files []",
        "files [NOTFOUND]",
        "files, dns",
        "files ]",
    ],
)
def test_parse_sources_rejects_malformed_lines(value: str) -> None:
    with pytest.raises(NsswitchError):
        parse_sources(value)


def test_nss_line_without_the_sources_that_ask_resolv_conf_themselves() -> None:
    value = "files mdns4_minimal [NOTFOUND=return] dns myhostname mdns6 libvirt"
    assert nss_line(value) == "mdns4_minimal [NOTFOUND=return] myhostname mdns6 libvirt"
    assert nss_line(value, resolver_users=False) == "myhostname libvirt"
