"""Who may query: the client access list (docs/exposure.md, closed by default), without sockets.

fastdns answers only sources in ``acl.allow``; by default loopback plus the private,
shared-address and link-local ranges (dnsdist's default ACL), so a Lima guest, a pod or a LAN
client works out of the box and the internet gets nothing, even with ``listen: 0.0.0.0``. Other
sources are dropped (``acl.action: drop``) or answered REFUSED (``refuse``). docs/exposure.md.

Addresses are matched as integers: the text ``recvfrom`` gives (``"10.0.0.1"``,
``"fe80::1%eth0"``, ``"::ffff:198.51.100.2"`` from a dual-stack socket) becomes
``(version, int)``, an IPv4-mapped IPv6 address is judged as the IPv4 address it carries
(RFC 4291 §2.5.5.2), and each network is a ``(base, mask)`` pair.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

AclAction = Literal["drop", "refuse"]
ACL_ACTIONS: tuple[AclAction, ...] = ("drop", "refuse")

# dnsdist's default ACL (dnsdist.cc setACL defaults): loopback, RFC 1918, RFC 6598 shared
# address space (CGNAT, some VM bridges), link-local, RFC 4193 unique local, IPv6 link-local.
DEFAULT_ALLOW: tuple[str, ...] = (
    "127.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
)

_MAPPED = 0xFFFF  # ::ffff:0:0/96 >> 32


@dataclass(frozen=True, slots=True)
class AclConfig:
    """``fastdns.acl``: the networks that may query, and what the others get."""

    allow: tuple[str, ...] = DEFAULT_ALLOW
    action: AclAction = "drop"


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``text`` as a network (host bits must be zero: ``10.0.0.1/8`` is a mistake, not
    ``10.0.0.0/8``); ``ValueError`` naming the value otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"must be a CIDR string such as 10.0.0.0/8, got {text!r}")
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise ValueError(f"not a valid network: {text!r} ({e})") from e


def address(host: str) -> tuple[int, int] | None:
    """``(4, int)`` or ``(6, int)`` for an address as a socket reports it; IPv4-mapped IPv6 is
    IPv4; a zone (``%eth0``) is ignored; None when it is not an address."""
    try:
        if ":" not in host:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big")
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), "big")
    except (OSError, ValueError, TypeError):
        return None
    if n >> 32 == _MAPPED:
        return 4, n & 0xFFFFFFFF
    return 6, n


class NetworkSet:
    """A set of IPv4 and IPv6 networks; ``host in s`` for an address as a socket reports it."""

    __slots__ = ("_v4", "_v6", "cidrs")

    def __init__(self, cidrs: Iterable[str]) -> None:
        nets = [parse_cidr(c) for c in cidrs]
        self.cidrs: tuple[str, ...] = tuple(str(n) for n in nets)
        self._v4 = tuple(_pair(n) for n in nets if n.version == 4)
        self._v6: list[tuple[int, int]] = []
        for n in nets:
            if n.version != 6:
                continue
            mapped = n.network_address.ipv4_mapped if n.prefixlen >= 96 else None
            if mapped is not None:  # ::ffff:10.0.0.0/104 means 10.0.0.0/8: judged as IPv4
                v4 = ipaddress.ip_network(f"{mapped}/{n.prefixlen - 96}")
                self._v4 += (_pair(v4),)
            else:
                self._v6.append(_pair(n))

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        a = address(host)
        if a is None:
            return False
        version, n = a
        return any(n & mask == base for base, mask in (self._v4 if version == 4 else self._v6))

    def __repr__(self) -> str:
        return f"NetworkSet({', '.join(self.cidrs)})"


def _pair(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    return int(net.network_address), int(net.netmask)


def describe(config: AclConfig) -> str:
    """The ACL for the start-up log line: ``allow 127.0.0.0/8,... (drop others)``."""
    if not config.allow:
        return f"allow nothing ({config.action} all)"
    return f"allow {','.join(config.allow)} ({config.action} others)"
