"""Binding the first worker's listening sockets in the supervisor, before the fork.

Runs in: the supervisor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from fastdns.config.schema import Config
from fastdns.system.sockets import bind_tcp, bind_udp


def bind_first(
    config: Config, *, udp: bool = True, tcp: bool = True
) -> tuple[socket.socket | None, socket.socket | None]:
    """Bind the first worker's UDP and/or TCP socket (``BootError`` when not possible).

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
    nodelocal = config.nodelocal.enabled
    for wanted, port, bind in jobs:
        if wanted and port and not nodelocal:
            bind(config.listen, port).close()
    socks: list[socket.socket | None] = []
    try:
        for wanted, port, bind in jobs:
            socks.append(
                bind(config.listen, port, reuse_port=True, freebind=nodelocal) if wanted else None
            )
    except BaseException:
        for sock in socks:
            if sock is not None:
                sock.close()
        raise
    return socks[0], socks[1]


def bound_port(sock: socket.socket | None, default: int) -> int:
    return int(sock.getsockname()[1]) if sock is not None else default
