"""A "guest" network namespace joined to the test's own ("host") namespace by a veth pair.

The host side is the namespace ``tests/netns-run`` made for the whole session (only ``lo``
before this); the guest namespace is held open by an ``unshare -n sleep`` child, so nothing is
registered under /run/netns and everything disappears with that child. Addresses are fixed test
ranges that exist only inside these two namespaces: the link 10.200.0.0/24 (fd00:200::/64) and
the off-link virtual DNS address 10.201.0.53 (fd00:201::53); off-link, because a guest would ARP
for an on-link one.
Every helper that sends refuses addresses outside these ranges and loopback.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import time
from collections.abc import Sequence

HOST_IP = "10.200.0.1"
GUEST_IP = "10.200.0.2"
VIRTUAL_IP = "10.201.0.53"
HOST_IF, GUEST_IF = "fdns-h", "fdns-g"
# An "outsider": another namespace on another interface of the host (docs/rules.md: the rules
# must not serve it), and a guest that runs the guest script (no default route).
OUTSIDER_HOST_IP, OUTSIDER_IP = "10.202.0.1", "10.202.0.2"
OUTSIDER_HOST_IF, OUTSIDER_IF = "fdns-oh", "fdns-og"
SCRIPT_HOST_IP, SCRIPT_GUEST_IP = "10.203.0.1", "10.203.0.2"
SCRIPT_HOST_IF, SCRIPT_GUEST_IF = "fdns-sh", "fdns-sg"
# Two avahi daemons, one on each side (tests/privileged/test_nss_mdns.py).
MDNS_HOST_IP, MDNS_PEER_IP = "10.204.0.1", "10.204.0.2"
MDNS_HOST_IF, MDNS_PEER_IF = "fdns-mh", "fdns-mp"
VIRTUAL_IP6, HOST_IP6 = "fd00:201::53", "fd00:200::1"
# Node-local mode (tests/privileged/test_nodelocal_netns.py): the node-local addresses, held by
# fastdns's interface in the test's namespace (the "node"), and the node-pod link.
NODELOCAL_IP, NODELOCAL_IP6 = "169.254.20.10", "fd00::10"
OTHER_NODELOCAL_IP = "169.254.20.11"  # a previous config's address
CLUSTER_IP = "10.96.0.10"  # a kube-dns ClusterIP, held by the node-local interface as well
NODE_IP, POD_IP, NODE_IP6, POD_IP6 = "10.204.0.1", "10.204.0.2", "fd00:204::1", "fd00:204::2"
NODE_IF, POD_IF = "fdns-node", "fdns-pod"
TEST_NETS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.200.0.0/24",
        "10.201.0.0/24",
        "10.202.0.0/24",
        "10.203.0.0/24",
        "10.204.0.0/24",
        "169.254.20.10/31",
        "10.96.0.10/32",
        "127.0.0.0/8",
        "fd00:200::/64",
        "fd00:201::/64",
        "fd00:204::/64",
        "fd00::10/128",
        "::1/128",
    )
)
NOBODY = 65534


def require_test_address(address: str) -> str:
    ip = ipaddress.ip_address(address)
    if not any(ip in net for net in TEST_NETS):
        raise ValueError(f"{address} is outside the test namespaces' ranges")
    return address


def run(*argv: str, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _netns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


class GuestLink:
    """The veth pair and the guest namespace; ``close()`` removes both.

    The defaults make the module's guest (a default route via the host, routes on the host for
    the virtual addresses); other links (the outsider, the script guest) name their own.
    """

    def __init__(
        self,
        host_if: str = HOST_IF,
        guest_if: str = GUEST_IF,
        host_ip: str = HOST_IP,
        guest_ip: str = GUEST_IP,
        *,
        first: bool = True,
        host_routes: bool = True,
        default_route: bool = True,
    ) -> None:
        if first and sorted(name for _, name in socket.if_nameindex()) != ["lo"]:
            raise RuntimeError("the host namespace must have only lo before the guest is made")
        require_test_address(host_ip)
        require_test_address(guest_ip)
        self.host_if = host_if
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "600"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while _netns_inode(self.holder.pid) == _netns_inode("self"):
            if time.monotonic() > deadline or self.holder.poll() is not None:
                self.holder.kill()
                raise RuntimeError("unshare -n did not create the guest namespace")
            time.sleep(0.01)
        self.ns = f"/proc/{self.holder.pid}/ns/net"
        try:
            run(
                "ip",
                "link",
                "add",
                host_if,
                "type",
                "veth",
                "peer",
                "name",
                guest_if,
                "netns",
                str(self.holder.pid),
            )
            run("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
            run("ip", "link", "set", host_if, "up")
            if host_routes:
                # A route to the virtual address, so local clients get as far as OUTPUT's DNAT.
                run("ip", "route", "add", f"{VIRTUAL_IP}/32", "dev", host_if)
                run("ip", "-6", "addr", "add", f"{HOST_IP6}/64", "dev", host_if, "nodad")
                run("ip", "-6", "route", "add", f"{VIRTUAL_IP6}/128", "dev", host_if)
            self.guest("ip", "link", "set", "lo", "up")
            self.guest("ip", "addr", "add", f"{guest_ip}/24", "dev", guest_if)
            self.guest("ip", "link", "set", guest_if, "up")
            if default_route:
                self.guest("ip", "route", "add", "default", "via", host_ip)
        except BaseException:
            self.close()
            raise

    def guest(
        self, *argv: str, check: bool = True, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        return run("nsenter", f"--net={self.ns}", *argv, check=check, timeout=timeout)

    def close(self) -> None:
        run("ip", "link", "del", self.host_if, check=False)
        with contextlib.suppress(OSError):
            self.holder.kill()
        self.holder.wait(5)


def dig_argv(server: str, name: str, *opts: str, port: int = 53) -> list[str]:
    require_test_address(server)
    for opt in opts:
        if opt.startswith(("@", "-f")) or opt.lstrip("+").startswith(("tr", "ns")):
            raise ValueError(f"dig option {opt!r} could send queries elsewhere")
    return ["dig", f"@{server}", "-p", str(port), "+time=2", "+tries=1", "+short", *opts, name]


def dig_env() -> dict[str, str]:
    return dict(os.environ, HOME="/nonexistent")


def answer(argv: Sequence[str], timeout: float = 10.0) -> str:
    """The ``+short`` answer of a dig command line, "" on timeout or error."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=dig_env(), check=False
    )
    if proc.returncode != 0 or "timed out" in proc.stdout or "no servers" in proc.stdout:
        return ""
    return proc.stdout.strip()


def as_nobody(argv: Sequence[str]) -> list[str]:
    """Run ``argv`` as uid/gid 65534: not fastdns's uid, so OUTPUT's DNAT applies to it."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def save(table: str = "nat", binary: str = "iptables-save") -> str:
    return run(binary, "-t", table).stdout


def route_localnet(iface: str) -> int:
    with open(f"/proc/sys/net/ipv4/conf/{iface}/route_localnet", encoding="ascii") as fh:
        return int(fh.read())


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g}s: {what or predicate}")
        time.sleep(interval)
