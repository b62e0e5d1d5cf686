"""Binding the first worker's listening sockets in the supervisor, before the fork.

Runs in: the supervisor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

from fastdns.config.schema import Config
from fastdns.system.sockets import bind_tcp, bind_udp

# The first worker's sockets: (UDP, TCP), each one per address of ``Config.listen_addresses``
# in that order, or () where that protocol was not asked for.
Prebound = tuple[tuple[socket.socket, ...], tuple[socket.socket, ...]]


def bind_first(config: Config, *, udp: bool = True, tcp: bool = True) -> Prebound:
    """Bind the first worker's UDP and/or TCP sockets, one per listen address (``BootError``
    when not possible).

    A fixed port is first bound without SO_REUSEPORT and released: that fails when anything
    holds the port, even a SO_REUSEPORT socket of another fastdns under the same uid, whose
    group we would otherwise silently join and share traffic with. Port 0 needs no probe:
    the kernel hands out a port nobody holds, and the workers then join it.
    """
    jobs: tuple[tuple[bool, int, Callable[..., socket.socket]], ...] = (
        (udp, config.udp_port, bind_udp),
        (tcp, config.tcp_port, bind_tcp),
    )
    # Node-local mode binds before its interface exists (freebind), and shares its port with
    # the next fastdns of an upgrade on purpose (docs/nodelocal.md, "Upgrades"): the kernel
    # lets only SO_REUSEPORT sockets of the same uid join, and never a socket bound without it.
    # Only node-local mode has more than one address (Config.listen_addresses).
    nodelocal = config.nodelocal.enabled
    for wanted, port, bind in jobs:
        if wanted and port and not nodelocal:
            bind(config.listen, port).close()
    socks: list[list[socket.socket]] = [[], []]
    try:
        for (wanted, port, bind), out in zip(jobs, socks, strict=True):
            if not wanted:
                continue
            for address in config.listen_addresses:
                sock = bind(address, port, reuse_port=True, freebind=nodelocal)
                out.append(sock)
                port = port or int(sock.getsockname()[1])  # port 0: the same on every address
    except BaseException:
        for sock in (s for group in socks for s in group):
            sock.close()
        raise
    return tuple(socks[0]), tuple(socks[1])


def prebound_socks(prebound: Prebound | None) -> Iterator[socket.socket]:
    """Every socket of ``prebound``."""
    for group in prebound or ((), ()):
        yield from group


def bound_port(socks: tuple[socket.socket, ...], default: int) -> int:
    return int(socks[0].getsockname()[1]) if socks else default
