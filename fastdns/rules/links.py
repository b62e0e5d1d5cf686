"""The node-local interface (docs/nodelocal.md): a ``dummy`` interface holding the node-local
addresses, or an empty bridge where the kernel has no ``dummy`` driver (a bridge with no ports
holds local addresses just as well: packets to them are delivered locally).

Through iproute2's ``ip`` rather than pyroute2 or raw rtnetlink: ``ip`` is on every node and
in the image (deploy/kubernetes/Containerfile), adds no Python dependency, and its messages
("Unknown device type", "Operation not permitted") are what an operator can act on; creating
links with attributes nested in IFLA_LINKINFO by hand is more code than the whole module.
Only an interface of kind ``dummy`` or a bridge without ports is ever changed or deleted: a
misconfigured ``interface: eth0`` is an error, never a flushed uplink.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

from fastdns.errors import FastDNSError

IP_TIMEOUT = 5.0  # seconds; ip answers at once
KINDS = ("dummy", "bridge")


class LinkError(FastDNSError):
    """The interface cannot be made, changed or removed (the message says why)."""


@dataclass(slots=True)
class LinkState:
    """What ``ensure`` found and did."""

    kind: str  # dummy | bridge
    created: bool = False
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("ip")
    if binary is None:
        raise LinkError("the ip command (iproute2) is not installed")
    try:
        return subprocess.run(
            [binary, *argv], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise LinkError(f"ip {' '.join(argv)} did not finish within {IP_TIMEOUT:g}s") from e
    except OSError as e:
        raise LinkError(f"cannot run ip: {e.strerror or e}") from e


def _check(proc: subprocess.CompletedProcess[str], what: str) -> str:
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise LinkError(f"{what}: {why[0] if why else f'exit status {proc.returncode}'}")
    return proc.stdout


def _json(text: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(text or "[]")
    except ValueError as e:
        raise LinkError(f"unreadable ip -j output: {e}") from e
    return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []


def link_kind(name: str) -> str | None:
    """``dummy``, ``bridge``, another kind ("" = a plain device), or None when absent."""
    proc = _ip("-j", "-d", "link", "show", "dev", name)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr:
            return None
        _check(proc, f"cannot look at interface {name}")
    for link in _json(proc.stdout):
        info = link.get("linkinfo") or {}
        return str(info.get("info_kind", "")) if isinstance(info, dict) else ""
    return None


def _ports(name: str) -> list[str]:
    out = _check(_ip("-j", "link", "show", "master", name), f"cannot list {name}'s ports")
    return [str(link.get("ifname")) for link in _json(out)]


def addresses(name: str) -> list[str]:
    """The interface's addresses, except IPv6 link-local ones (the kernel adds those)."""
    out = _check(_ip("-j", "addr", "show", "dev", name), f"cannot list {name}'s addresses")
    found = []
    for link in _json(out):
        for info in link.get("addr_info") or []:
            local = info.get("local") if isinstance(info, dict) else None
            if isinstance(local, str):
                ip = ipaddress.ip_address(local)
                if not (ip.version == 6 and ip.is_link_local):
                    found.append(ip.compressed)
    return found


def _prefix(address: str) -> str:
    return f"{address}/{32 if ipaddress.ip_address(address).version == 4 else 128}"


def owned_kind(name: str) -> str | None:
    """The kind of ``name`` when fastdns may manage it, None when it does not exist;
    ``LinkError`` for any other interface of that name."""
    kind = link_kind(name)
    if kind is None:
        return None
    if kind not in KINDS or (kind == "bridge" and _ports(name)):
        what = f"a {kind} interface" if kind else "a network device"
        raise LinkError(
            f"{name} exists and is {what}{' with ports' if kind == 'bridge' else ''}: "
            "fastdns only manages a dummy interface or an empty bridge of its own; set "
            "fastdns.nodelocal.interface to an unused name"
        )
    return kind


def ensure(name: str, wanted: tuple[str, ...]) -> LinkState:
    """Make ``name`` exist, be up and hold exactly ``wanted`` (IPv6 without duplicate address
    detection: a tentative address cannot be used at once)."""
    kind = owned_kind(name)
    state = LinkState(kind or "")
    if kind is None:
        made = _ip("link", "add", name, "type", "dummy")
        state.kind = "dummy"
        if made.returncode != 0:
            # No dummy driver (this kernel says "Unknown device type"): an empty bridge.
            first = (made.stderr or "").strip()
            bridge = _ip("link", "add", name, "type", "bridge")
            _check(bridge, f"cannot create {name} (dummy: {first or 'failed'}; bridge)")
            state.kind = "bridge"
        state.created = True
    have = addresses(name)
    for addr in wanted:
        if addr not in have:
            argv = ["addr", "add", _prefix(addr), "dev", name]
            if ":" in addr:
                argv.append("nodad")
            _check(_ip(*argv), f"cannot add {addr} to {name}")
            state.added.append(addr)
    for addr in have:
        if addr not in wanted:
            _check(_ip("addr", "del", _prefix(addr), "dev", name), f"cannot remove {addr}")
            state.removed.append(addr)
    _check(_ip("link", "set", name, "up"), f"cannot bring {name} up")
    return state


def remove(name: str) -> bool:
    """Delete ``name`` if it is fastdns's kind of interface; whether it was there."""
    if owned_kind(name) is None:
        return False
    proc = _ip("link", "del", name)
    if proc.returncode != 0 and "does not exist" not in proc.stderr:
        _check(proc, f"cannot delete {name}")
    return True
