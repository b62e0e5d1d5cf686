"""mDNS through the host's NSS sources (fastdns.native.nss, docs/answering.md "The host's NSS
sources"): two avahi daemons, one in the test's namespace and one in a peer namespace across a
veth pair (support.netns.GuestLink), each in its own mount namespace with its own socket
directory. fastdns runs in a private mount namespace whose nsswitch.conf is Debian's
``hosts: files mdns4_minimal [NOTFOUND=return] dns`` and whose /run/avahi-daemon is the local
daemon's: a ``.local`` name the peer publishes is answered from NSS, before DNS, as glibc's
``getent`` gives it there; a ``.local`` name nobody has goes on to DNS within the deadline."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from support.metrics import scrape, total, wait_until
from support.netns import MDNS_HOST_IF, MDNS_HOST_IP, MDNS_PEER_IF, MDNS_PEER_IP, GuestLink
from support.nss import glibc_addresses, missing, nss_module, private
from support.server import FastDNSProcess
from support.upstream import FakeUpstream
from support.upstream.seen import Seen

HOST = "127.0.0.1"
PEER = "fastdns-peer.local"
NSSWITCH = "hosts: files mdns4_minimal [NOTFOUND=return] dns\n"
AVAHI_CONF = """[server]
host-name={name}
use-ipv4=yes
use-ipv6=no
allow-interfaces={iface}
enable-dbus=no
[publish]
publish-hinfo=no
publish-workstation=no
"""
AVAHI = ("avahi-daemon", "--no-drop-root", "--no-chroot", "--no-rlimits", "--no-proc-title")

_WHY = "" if nss_module("mdns4_minimal") else "libnss-mdns is not installed (scripts/install)"
_WHY = _WHY or missing("avahi-daemon", "ip")
pytestmark = [pytest.mark.privileged, pytest.mark.skipif(bool(_WHY), reason=_WHY or "-")]


def avahi(tmp_path: Path, who: str, iface: str, netns: str | None) -> subprocess.Popen[bytes]:
    """avahi-daemon publishing ``fastdns-<who>.local`` on ``iface``, its socket directory
    ``tmp_path/avahi-<who>`` mounted over /run/avahi-daemon in its own mount namespace."""
    run_dir = tmp_path / f"avahi-{who}"
    run_dir.mkdir()
    conf = tmp_path / f"avahi-{who}.conf"
    conf.write_text(AVAHI_CONF.format(name=f"fastdns-{who}", iface=iface))
    argv = private([(str(run_dir), "/run/avahi-daemon")], *AVAHI, "-f", str(conf))
    if netns is not None:
        argv = ["nsenter", f"--net={netns}", *argv]
    log = open(tmp_path / f"avahi-{who}.log", "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while not (run_dir / "socket").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"avahi-daemon ({who}) did not start: {conf}")
        time.sleep(0.05)
    return proc


@pytest.fixture(name="avahi_dir")
def _avahi_dir(tmp_path: Path) -> Iterator[Path]:
    """Both daemons up; the local one's socket directory."""
    link = GuestLink(
        MDNS_HOST_IF,
        MDNS_PEER_IF,
        MDNS_HOST_IP,
        MDNS_PEER_IP,
        first=False,
        host_routes=False,
        default_route=False,
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(avahi(tmp_path, "peer", MDNS_PEER_IF, link.ns))
        procs.append(avahi(tmp_path, "host", MDNS_HOST_IF, None))
        yield tmp_path / "avahi-host"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        link.close()


def after(up: FakeUpstream, since: float) -> list[Seen]:
    """The queries ``up`` received after ``since`` (its log may be appended after a reply)."""
    return [q for q in up.queries if q.at > since]


def serve(
    tmp_path: Path, avahi_dir: Path, upstream: FakeUpstream, trap: FakeUpstream, nss: str
) -> FastDNSProcess:
    files = tmp_path / f"ns-{nss}"
    files.mkdir()
    (files / "nsswitch.conf").write_text(NSSWITCH)
    (files / "hosts").write_text("127.0.0.1 localhost\n")
    (files / "resolv.conf").write_text(f"nameserver {trap.address}\noptions timeout:1 attempts:1\n")
    resolv = tmp_path / f"fastdns-resolv-{nss}.conf"
    resolv.write_text(f"nameserver {upstream.address}\n")
    binds = [
        (str(files / "nsswitch.conf"), "/etc/nsswitch.conf"),
        (str(files / "hosts"), "/etc/hosts"),
        (str(files / "resolv.conf"), "/etc/resolv.conf"),
        (str(avahi_dir), "/run/avahi-daemon"),
    ]
    config: dict[str, Any] = {
        "fastdns": {
            "resolv_conf": str(resolv),
            "metrics": {"listen": f"{HOST}:0"},
            "cache": {"enabled": False},
            "deadline": 2.0,
            "native": {"nsswitch": "/etc/nsswitch.conf", "timeout": 0.5, "nss": nss},
        },
    }
    program = private(binds, sys.executable, "-m", "fastdns")
    return FastDNSProcess(config, tmp_path, program=program)


def test_local_name_from_avahi_before_dns(
    tmp_path: Path, avahi_dir: Path, upstream_factory: Any
) -> None:
    upstream: FakeUpstream = upstream_factory()
    upstream.add_zone("local")  # a unicast .local zone: NXDOMAIN for everything
    trap: FakeUpstream = upstream_factory()  # the namespace's /etc/resolv.conf
    with serve(tmp_path, avahi_dir, upstream, trap, "on") as fdp:
        # avahi probes and announces for a second or two before the name resolves.
        want = wait_until(
            lambda: glibc_addresses(fdp.pid, PEER)[0], bool, timeout=15, what=f"glibc: {PEER}"
        )
        since = time.monotonic()  # (getent asked the trap too: the control)
        reply = fdp.query(PEER, "A")
        t0 = time.monotonic()
        missing_reply = fdp.query("nobody-has-this.local", "A", timeout=5)
        elapsed = time.monotonic() - t0
        port = int(fdp.state["metrics_port"])
        samples = wait_until(
            lambda: scrape(HOST, port),
            lambda s: total(s, "fastdns_nss_lookups_total") >= 2,
            what="two NSS lookups counted",
        )
    assert want == {MDNS_PEER_IP}
    assert dns.rcode.to_text(reply.rcode()) == "NOERROR"
    assert {r.to_text() for rrset in reply.answer for r in rrset} == want
    assert upstream.count(PEER) == 0  # NSS first for .local (RFC 6762 §3)
    assert total(samples, "fastdns_nss_lookups_total", outcome="answered") == 1
    # Nobody publishes it: NSS gives up or runs out of native.timeout, then DNS answers.
    assert dns.rcode.to_text(missing_reply.rcode()) == "NXDOMAIN"
    assert upstream.count("nobody-has-this.local", "A") == 1
    assert elapsed < 2.0 + 1.0, elapsed  # within fastdns.deadline (and a scheduling margin)
    # Never glibc's dns source: what reaches the namespace's resolv.conf servers is nss-mdns's
    # own unicast SOA heuristic (docs/answering.md), never a name that was asked.
    seen = after(trap, since)
    assert seen and {(q.qname, q.qtype) for q in seen} == {("local", "SOA")}, seen


def test_auto_skips_mdns_when_upstreams_are_not_resolv_conf(
    tmp_path: Path, avahi_dir: Path, upstream_factory: Any
) -> None:
    """nss: auto with fastdns.resolv_conf other than /etc/resolv.conf: the mdns sources, which
    would ask /etc/resolv.conf's servers for local. SOA, are not used; DNS answers."""
    upstream: FakeUpstream = upstream_factory()
    upstream.add_zone("local")
    trap: FakeUpstream = upstream_factory()
    with serve(tmp_path, avahi_dir, upstream, trap, "auto") as fdp:
        wait_until(
            lambda: glibc_addresses(fdp.pid, PEER)[0], bool, timeout=15, what=f"glibc: {PEER}"
        )
        since = time.monotonic()  # (getent asked the trap too: the control)
        reply = fdp.query(PEER, "A")
        stderr = fdp.stderr
    assert dns.rcode.to_text(reply.rcode()) == "NXDOMAIN"
    assert upstream.count(PEER, "A") == 1
    assert not after(trap, since)
    assert "not using the mdns sources" in stderr
