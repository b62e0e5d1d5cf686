"""Hermetic test support: a fake upstream, DNS clients and a runner for the real server.

Every helper here talks only to loopback; ``require_loopback`` is the guard they all use. The
network namespace that ``tests/netns-run`` creates is the real guarantee, this is the second one.
"""

from __future__ import annotations

import ipaddress


def require_loopback(address: str) -> str:
    """Return ``address`` if it is in 127.0.0.0/8 or is ::1; raise ``ValueError`` otherwise."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError as e:
        raise ValueError(f"not an IP address: {address!r} (tests never resolve names)") from e
    if not ip.is_loopback:
        raise ValueError(f"{address} is not a loopback address: tests stay on 127.0.0.0/8 and ::1")
    return address
