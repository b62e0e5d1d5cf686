"""fastdns.hosts: Lima's static hosts (exact, wildcard, alias, PTR) and the hosts(5) file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from fastdns.dns import wire
from fastdns.resolve.hosts import NODATA, SERVFAIL, HostsFile, StaticAnswer, StaticHosts
from fastdns.system.files import FILE_GRACE, GraceHold

A, AAAA, CNAME, PTR, TXT, MX = wire.A, wire.AAAA, wire.CNAME, wire.PTR, wire.TXT, wire.MX


def a(ip: str) -> StaticAnswer:
    return StaticAnswer("answer", (wire.rdata_address(ip),))


def cname(target: str) -> StaticAnswer:
    return StaticAnswer("answer", ((CNAME, wire.name_to_wire(target)),))


def ptr(*names: str) -> StaticAnswer:
    return StaticAnswer("answer", tuple((PTR, wire.name_to_wire(n)) for n in names))


LIMA = StaticHosts.from_pairs(
    [
        ("MY.DOMAIN.COM", "192.168.0.23"),
        ("host.lima.internal", "10.10.0.34"),
        ("my.host", "host.lima.internal"),
        ("default", "my.domain.com"),
        ("cycle1.example.com", "cycle2.example.com"),
        ("cycle2.example.com", "cycle1.example.com"),
        ("self.example.com", "self.example.com"),
    ]
)


def test_exact_names_are_case_insensitive_canonical_keys() -> None:
    assert LIMA.ips["my.domain.com"] == "192.168.0.23"
    assert LIMA.lookup("my.domain.com", A, False) == a("192.168.0.23")


def test_not_static_is_none() -> None:
    assert LIMA.lookup("other.domain.com", A, False) is None
    assert LIMA.lookup("domain.com", A, False) is None  # parent of a static name
    assert LIMA.lookup("x.my.domain.com", A, False) is None  # child of a static name


def test_alias_a_query_needs_the_target_resolved_elsewhere_or_flattens() -> None:
    # my.host -> host.lima.internal (static IP): flattened to the IP
    assert LIMA.lookup("my.host", A, False) == a("10.10.0.34")
    assert LIMA.lookup("default", A, False) == a("192.168.0.23")


def test_cname_query_answers_the_final_target() -> None:
    assert LIMA.lookup("my.host", CNAME, False) == cname("host.lima.internal")
    assert LIMA.lookup("default", CNAME, False) == cname("my.domain.com")
    chain = StaticHosts.from_pairs([("a", "b"), ("b", "c"), ("c", "10.0.0.1")])
    assert chain.lookup("a", CNAME, False) == cname("c")
    assert chain.lookup("b", CNAME, False) == cname("c")
    assert chain.lookup("a", A, False) == a("10.0.0.1")


def test_no_self_cname_for_a_plain_static_host() -> None:
    # Lima bf5d66dc; fastdns answers NODATA locally instead of forwarding
    assert LIMA.lookup("my.domain.com", CNAME, False) == NODATA


def test_cycles_are_servfail_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastdns.resolve.hosts"):
        h = StaticHosts.from_pairs([("x", "y"), ("y", "x"), ("s", "s"), ("ok", "1.2.3.4")])
    assert h.cycles == {"x", "y", "s"}
    assert sum("alias cycle" in r.getMessage() for r in caplog.records) == 3
    for name in ("x", "y", "s"):
        for qtype in (A, CNAME, TXT):
            assert h.lookup(name, qtype, False) == SERVFAIL
    assert LIMA.lookup("cycle1.example.com", CNAME, False) == SERVFAIL
    assert LIMA.lookup("self.example.com", CNAME, False) == SERVFAIL


def test_alias_to_a_name_that_is_not_static() -> None:
    h = StaticHosts.from_pairs([("ext", "Example.ORG."), ("via", "ext")])
    assert h.lookup("ext", A, False) == StaticAnswer("alias", target="example.org")
    assert h.lookup("via", A, False) == StaticAnswer("alias", target="example.org")
    assert h.lookup("ext", AAAA, True) == StaticAnswer("alias", target="example.org")
    assert h.lookup("ext", CNAME, False) == cname("example.org")
    assert h.lookup("ext", TXT, False) == NODATA


def test_other_types_of_a_static_name_are_nodata() -> None:
    for qtype in (TXT, MX, wire.SOA, PTR, wire.SRV, wire.HTTPS, wire.ANY):
        assert LIMA.lookup("host.lima.internal", qtype, True) == NODATA


def test_ipv4_entry_and_aaaa_is_nodata() -> None:
    assert LIMA.lookup("host.lima.internal", AAAA, True) == NODATA
    assert LIMA.lookup("host.lima.internal", AAAA, False) == NODATA


def test_ipv6_entry() -> None:
    h = StaticHosts.from_pairs([("v6only", "fd00::1")])
    assert h.lookup("v6only", A, False) == NODATA
    assert h.lookup("v6only", A, True) == NODATA
    assert h.lookup("v6only", AAAA, False) == NODATA
    assert h.lookup("v6only", AAAA, True) == a("fd00::1")


def test_wildcards() -> None:
    h = StaticHosts.from_pairs(
        [
            ("*.test.internal", "10.0.0.9"),
            ("exact.test.internal", "10.0.0.1"),
            ("*.deep.test.internal", "10.0.0.7"),
            ("*.alias.test", "exact.test.internal"),
        ]
    )
    assert h.lookup("a.test.internal", A, False) == a("10.0.0.9")
    assert h.lookup("a.b.test.internal", A, False) == a("10.0.0.9")
    assert h.lookup("test.internal", A, False) is None  # *.x does not match x
    assert h.lookup("exact.test.internal", A, False) == a("10.0.0.1")  # exact beats wildcard
    assert h.lookup("x.deep.test.internal", A, False) == a("10.0.0.7")  # most specific wins
    assert h.lookup("x.alias.test", A, False) == a("10.0.0.1")
    assert h.lookup("x.alias.test", CNAME, False) == cname("exact.test.internal")
    assert h.lookup("a.test.internal", TXT, False) == NODATA
    assert len(h) == 4


def test_ptr_for_static_ips() -> None:
    h = StaticHosts.from_pairs(
        [
            ("host.lima.internal", "192.168.5.2"),
            ("gw", "192.168.5.2"),
            ("v6", "fd00::1"),
            ("*.wild", "10.9.9.9"),
        ]
    )
    assert h.lookup("2.5.168.192.in-addr.arpa", PTR, False) == ptr("host.lima.internal", "gw")
    v6 = wire.reverse_name("fd00::1").rstrip(".")
    assert h.lookup(v6, PTR, False) == ptr("v6")
    assert h.lookup("9.9.9.10.in-addr.arpa", PTR, False) is None  # wildcards have no PTR
    assert h.lookup("3.5.168.192.in-addr.arpa", PTR, False) is None


def test_later_pair_wins() -> None:
    h = StaticHosts.from_pairs([("a", "10.0.0.1"), ("A.", "10.0.0.2")])
    assert h.lookup("a", A, False) == a("10.0.0.2")


# ------------------------------------------------------------------------------ hosts file


def write(path: Path, text: str) -> None:
    path.write_text(text)


def test_hosts_file_semantics(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write(
        path,
        "# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost\n"
        "10.0.0.1 Box.Local box # trailing comment\n10.0.0.2 box\n"
        "not-an-ip name\n10.0.0.3\n   \nfe80::1%lo linklocal\n",
    )
    h = HostsFile(str(path))
    assert h.refresh() is True
    assert h.lookup("box", A, False) == StaticAnswer(
        "answer", (wire.rdata_address("10.0.0.1"), wire.rdata_address("10.0.0.2"))
    )
    assert h.lookup("box.local", A, False) == a("10.0.0.1")
    assert h.lookup("localhost", A, False) == a("127.0.0.1")
    assert h.lookup("localhost", AAAA, True) == a("::1")
    assert h.lookup("localhost", AAAA, False) is None
    assert h.lookup("ip6-localhost", A, False) is None  # other family only: on to DNS
    assert h.lookup("linklocal", AAAA, True) == a("fe80::1")
    assert h.lookup("name", A, False) is None
    assert h.lookup("box", TXT, False) is None  # the hosts file knows addresses only
    assert h.lookup("1.0.0.10.in-addr.arpa", PTR, False) == ptr("box.local", "box")
    assert h.lookup("9.0.0.10.in-addr.arpa", PTR, False) is None


def test_hosts_file_reload_on_change(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write(path, "10.0.0.1 a\n")
    h = HostsFile(str(path))
    assert h.refresh() is True
    assert h.refresh() is False  # unchanged
    write(path, "10.0.0.2 a b\n")  # different size
    assert h.refresh() is True
    assert h.lookup("b", A, False) == a("10.0.0.2")
    st = path.stat()
    write(path, "10.0.0.3 a b\n")  # same size: only the mtime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert h.refresh() is True
    assert h.lookup("a", A, False) == a("10.0.0.3")


def test_missing_hosts_file_is_empty_and_not_reloaded_every_time(tmp_path: Path) -> None:
    now = [0.0]
    missing = str(tmp_path / "none")
    h = HostsFile(missing, hold=GraceHold(missing, "entries", clock=lambda: now[0]))
    h.refresh()
    assert h.lookup("localhost", A, False) is None
    # Every refresh reports a reload to the worker, which logs it and runs the reload hooks
    # (cache flush): a missing file must not look changed on every tick.
    assert h.refresh() is False
    assert h.refresh() is False
    write(tmp_path / "none", "10.0.0.1 late\n")
    assert h.refresh() is True
    assert h.lookup("late", A, False) == a("10.0.0.1")
    (tmp_path / "none").unlink()
    # Held for the grace (fastdns.files): no reload, the entries stay, until it runs out.
    assert h.refresh() is False
    assert h.lookup("late", A, False) == a("10.0.0.1")
    now[0] += FILE_GRACE
    assert h.refresh() is True
    assert h.lookup("late", A, False) is None
    assert h.refresh() is False


def test_hosts_file_rewritten_in_place(tmp_path: Path) -> None:
    """Truncated, then written again with the same entries: never empty, never a reload."""
    path = tmp_path / "hosts"
    write(path, "10.0.0.1 a\n")
    now = [0.0]
    h = HostsFile(str(path), hold=GraceHold(str(path), "entries", clock=lambda: now[0]))
    assert h.refresh() is True
    path.write_text("")  # in place: same inode
    assert h.refresh() is False
    assert h.lookup("a", A, False) == a("10.0.0.1")
    now[0] += 1.0
    assert h.refresh() is False  # still held: read again although the stamp is the same
    path.write_text("10.0.0.1   a  # again\n")
    assert h.refresh() is False  # the same entries: nothing for the worker to do
    assert h.lookup("a", A, False) == a("10.0.0.1")
    path.write_text("10.0.0.2 a\n")
    assert h.refresh() is True  # a real change is one at once
    assert h.lookup("a", A, False) == a("10.0.0.2")


def test_hosts_file_names_that_cannot_be_encoded_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    write(path, "10.0.0.1 a..b good\n10.0.0.2 " + "x" * 64 + "\n10.0.0.3 bücher.example\n")
    h = HostsFile(str(path))
    h.refresh()
    # PTR answers are encoded at query time: a bad name there raised in the datagram callback
    assert h.lookup("1.0.0.10.in-addr.arpa", PTR, False) == ptr("good")
    assert h.lookup("2.0.0.10.in-addr.arpa", PTR, False) is None
    assert h.lookup("3.0.0.10.in-addr.arpa", PTR, False) == ptr("xn--bcher-kva.example")
    assert h.lookup("good", A, False) == a("10.0.0.1")


def test_static_ptr_skips_names_that_cannot_be_encoded() -> None:
    h = StaticHosts.from_pairs([("a..b", "10.0.0.5"), ("ok", "10.0.0.5")])
    assert h.lookup("5.0.0.10.in-addr.arpa", PTR, False) == ptr("ok")
