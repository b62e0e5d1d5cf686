"""Binding the listening sockets (UDP and TCP, optionally in one SO_REUSEPORT group)."""

from __future__ import annotations

import socket

from fastdns.errors import BootError

UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts; the kernel caps it at rmem_max


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket; ``BootError`` with a clear reason on failure."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        except OSError:
            pass
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BootError(f"cannot bind UDP {host}:{port}: {e.strerror or e}") from e
    sock.setblocking(False)
    return sock


def bind_tcp(
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; ``BootError`` on failure."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise BootError(f"cannot bind TCP {host}:{port}: {e.strerror or e}") from e
    sock.setblocking(False)
    return sock
