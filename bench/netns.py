"""Run the bench inside its own network namespace that has only loopback.

The host's resolv.conf names an address that must never see a packet; in a fresh namespace
there is no interface but ``lo`` and so no route anywhere else, whatever a server's config says.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

MARK = "FASTDNS_BENCH_NETNS"  # set on re-exec, so a failed isolation cannot loop


def interfaces() -> list[str]:
    """Interfaces of *this process's* namespace (unlike /sys/class/net, which is the mounter's)."""
    return sorted(name for _, name in socket.if_nameindex())


def isolated() -> bool:
    return interfaces() == ["lo"]


def reexec_isolated(argv: list[str], module: str = "bench") -> None:
    """Replace this process with ``unshare --net python -m MODULE ARGV`` (does not return)."""
    if os.environ.get(MARK):
        raise SystemExit(f"bench: still not isolated after unshare (interfaces: {interfaces()})")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("bench: unshare not found (apt-get install -y util-linux)")
    flags = ["--net"] if os.geteuid() == 0 else ["--map-root-user", "--net"]
    os.environ[MARK] = "1"
    os.chdir(Path(__file__).resolve().parent.parent)  # so "-m bench" finds this package
    os.execv(unshare, [unshare, *flags, "--", sys.executable, "-m", module, *argv])


def bring_up_loopback() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    if not isolated():  # belt and braces: re-check after touching links
        raise SystemExit(f"bench: unexpected interfaces in the namespace: {interfaces()}")
