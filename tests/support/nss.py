"""Private mount (and UTS) namespaces for the NSS tests: the test's own files bind-mounted over
/etc/nsswitch.conf, /etc/hosts, /etc/resolv.conf (and avahi's socket directory), seen by the
program started there and by ``getent`` run in the same namespace (``glibc_addresses``)."""

from __future__ import annotations

import glob
import shutil
import subprocess
from collections.abc import Sequence

# Mounts each SRC over DST (pairs before "--"), sets the host name when $NSS_HOSTNAME is set,
# then runs the rest. A directory DST that does not exist yet is made first: /run is a tmpfs,
# and without an init system nothing makes /run/avahi-daemon on a fresh machine (an empty
# directory, as avahi's package makes it at boot).
_SETUP = """set -e
while [ "$1" != "--" ]; do
    if [ -d "$1" ] && [ ! -e "$2" ]; then mkdir -p "$2"; fi
    mount --bind "$1" "$2"; shift 2
done
shift
if [ -n "${NSS_HOSTNAME:-}" ]; then hostname "$NSS_HOSTNAME"; fi
exec "$@"
"""


def private(binds: Sequence[tuple[str, str]], *command: str) -> list[str]:
    """argv running ``command`` in new mount and UTS namespaces with ``binds`` (src, dst)."""
    argv = ["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", _SETUP, "nss-ns"]
    for src, dst in binds:
        argv += [src, dst]
    return [*argv, "--", *command]


def nss_module(name: str) -> bool:
    """True when glibc can load ``libnss_<name>.so.2``."""
    return bool(
        glob.glob(f"/lib/*/libnss_{name}.so.2") + glob.glob(f"/usr/lib/*/libnss_{name}.so.2")
    )


def missing(*tools: str) -> str:
    """Why private namespaces cannot be used here ("" when they can)."""
    for tool in ("unshare", "nsenter", "mount", "getent", "hostname", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is missing"
    probe = subprocess.run(
        ["unshare", "-m", "-u", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return "no mount/UTS namespace here: " + probe.stderr.decode(errors="replace").strip()
    return ""


def glibc_addresses(pid: int, name: str, timeout: float = 10.0) -> tuple[set[str], set[str]]:
    """(IPv4, IPv6) addresses glibc's ``getent ahosts`` gives for ``name`` in the mount and UTS
    namespaces of ``pid`` (empty sets when it finds none)."""
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "getent", "ahosts", name],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    ).stdout
    found = {line.split()[0] for line in out.splitlines() if line.strip()}
    return {a for a in found if ":" not in a}, {a for a in found if ":" in a}
