"""The host's NSS sources end to end (fastdns.native.nss, docs/answering.md "The host's NSS
sources"): ``fastdns serve`` in its own mount and UTS namespace, inside the test's loopback-only
network namespace, where the test owns /etc/nsswitch.conf (``hosts: files dns myhostname``),
/etc/hosts and /etc/resolv.conf (bind mounts) and the host name. Debian's libnss-myhostname
resolves that name with no daemon; glibc's answer there (``getent`` in fastdns's own mount
namespace) is what fastdns must answer. The namespace's /etc/resolv.conf names a trap: a fake DNS
server that fastdns's NSS lookups must never reach, although the nsswitch.conf lists ``dns``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from support.metrics import scrape, total, wait_until
from support.nss import glibc_addresses, missing, nss_module, private
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

HOST = "127.0.0.1"
NSSWITCH = "hosts: files dns myhostname\n"

_WHY = "" if nss_module("myhostname") else "libnss-myhostname is not installed (scripts/install)"
_WHY = _WHY or missing()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(_WHY), reason=_WHY or "-")]


@pytest.fixture(name="trap")
def _trap(upstream_factory: Any) -> FakeUpstream:
    """The glibc-side DNS server (the namespace's /etc/resolv.conf): authoritative for test."""
    trap: FakeUpstream = upstream_factory()
    trap.add_zone("test")
    return trap


def serve(
    tmp_path: Path,
    upstream: FakeUpstream,
    trap: FakeUpstream,
    hostname: str,
    nss: str = "auto",
    **native: Any,
) -> FastDNSProcess:
    files = tmp_path / "ns"
    files.mkdir(exist_ok=True)
    (files / "nsswitch.conf").write_text(NSSWITCH)
    (files / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
    (files / "resolv.conf").write_text(f"nameserver {trap.address}\noptions timeout:1 attempts:1\n")
    resolv = tmp_path / "fastdns-resolv.conf"
    resolv.write_text(f"nameserver {upstream.address}\n")
    config = {
        "hostResolver": {"ipv6": True},
        "fastdns": {
            "resolv_conf": str(resolv),
            "metrics": {"listen": f"{HOST}:0"},
            "cache": {"enabled": False},
            # The path glibc reads too: the test's file, mounted over it in this namespace.
            "native": {"nss": nss, "nsswitch": "/etc/nsswitch.conf", **native},
        },
    }
    binds = [
        (str(files / "nsswitch.conf"), "/etc/nsswitch.conf"),
        (str(files / "hosts"), "/etc/hosts"),
        (str(files / "resolv.conf"), "/etc/resolv.conf"),
    ]
    program = private(binds, sys.executable, "-m", "fastdns")
    env = {"NSS_HOSTNAME": hostname}
    return FastDNSProcess(config, tmp_path, program=program, env=env)


def answer(fdp: FastDNSProcess, name: str, rdtype: str) -> tuple[str, set[str], set[int]]:
    reply = fdp.query(name, rdtype)
    addresses = {r.to_text() for rrset in reply.answer for r in rrset}
    ttls = {rrset.ttl for rrset in reply.answer}
    return dns.rcode.to_text(reply.rcode()), addresses, ttls


def metric(fdp: FastDNSProcess, name: str, at_least: float, **labels: str) -> float:
    port = int(fdp.state["metrics_port"])
    return wait_until(
        lambda: total(scrape(HOST, port), name, **labels),
        lambda v: v >= at_least,
        what=f"{name}{labels} >= {at_least}",
    )


@pytest.mark.parametrize("forward_first", [True, False], ids=["forwarded", "c-ares"])
def test_hostname_answered_from_myhostname_as_glibc_does(
    tmp_path: Path, upstream: FakeUpstream, trap: FakeUpstream, forward_first: bool
) -> None:
    """NXDOMAIN from DNS (raw forward first, or c-ares), then NSS: glibc's addresses."""
    name = "nsshost.test"
    with serve(tmp_path, upstream, trap, name, forward_first=forward_first) as fdp:
        rcode4, got4, ttl4 = answer(fdp, name, "A")
        rcode6, got6, ttl6 = answer(fdp, name.upper(), "AAAA")
        dig = fdp.dig("+short", name, "A").stdout.split()
        assert trap.count() == 0, trap.queries  # before the control below
        want4, want6 = glibc_addresses(fdp.pid, name)
    assert upstream.count(name, "A") >= 1  # DNS was asked first, and said NXDOMAIN
    assert want4 and want6
    assert (rcode4, got4, ttl4) == ("NOERROR", want4, {5})  # static_ttl
    assert (rcode6, got6, ttl6) == ("NOERROR", want6, {5})
    assert set(dig) == want4


def test_nss_lookups_are_counted_and_never_send_dns(
    tmp_path: Path, upstream: FakeUpstream, trap: FakeUpstream
) -> None:
    name = "nsshost.test"
    with serve(tmp_path, upstream, trap, name) as fdp:
        assert answer(fdp, name, "A")[0] == "NOERROR"
        assert answer(fdp, "missing.test", "A")[:2] == ("NXDOMAIN", set())
        metric(fdp, "fastdns_nss_lookups_total", 1, outcome="answered")
        metric(fdp, "fastdns_nss_lookups_total", 1, outcome="notfound")
        metric(fdp, "fastdns_dns_responses_total", 1, rcode="NOERROR", plugin="nss")
        assert trap.count() == 0, trap.queries
        # The control: glibc itself, in the same namespace, does send DNS for that name.
        subprocess.run(
            ["nsenter", "-t", str(fdp.pid), "-m", "getent", "ahosts", "missing.test"],
            capture_output=True,
            timeout=10,
        )
    assert trap.count("missing.test") >= 1


def test_local_names_go_to_nss_before_dns(
    tmp_path: Path, upstream: FakeUpstream, trap: FakeUpstream
) -> None:
    name = "nsshost.local"
    with serve(tmp_path, upstream, trap, name) as fdp:
        rcode, got, _ = answer(fdp, name, "A")
        want4, _ = glibc_addresses(fdp.pid, name)
    assert (rcode, got) == ("NOERROR", want4)
    assert upstream.count(name) == 0  # answered by NSS: DNS never asked (RFC 6762 §3)


def test_off_leaves_the_hostname_nxdomain(
    tmp_path: Path, upstream: FakeUpstream, trap: FakeUpstream
) -> None:
    name = "nsshost.test"
    with serve(tmp_path, upstream, trap, name, nss="off") as fdp:
        assert answer(fdp, name, "A")[:2] == ("NXDOMAIN", set())
        assert answer(fdp, name, "AAAA")[:2] == ("NXDOMAIN", set())
    assert trap.count() == 0
