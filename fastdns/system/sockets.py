"""Binding the listening sockets (UDP and TCP, optionally in one SO_REUSEPORT group)."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import sys
import termios

from fastdns.errors import BootError

UDP_RCVBUF = 4 * 1024 * 1024  # absorb bursts; the kernel caps it at rmem_max


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # ip(7)
IPV6_FREEBIND = 78  # ipv6(7), Linux >= 4.15


def set_freebind(sock: socket.socket) -> None:
    """Allow binding an address no interface holds yet (ip(7) IP_FREEBIND): node-local mode
    binds its address before the interface that holds it exists (docs/nodelocal.md)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


def bind_udp(
    host: str, port: int, *, reuse_port: bool = False, freebind: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket; ``BootError`` with a clear reason on failure."""
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        if freebind:
            set_freebind(sock)
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
    host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024, freebind: bool = False
) -> socket.socket:
    """A bound, listening, non-blocking TCP socket; ``BootError`` on failure."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        if freebind:
            set_freebind(sock)
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


def leave_reuseport_group(sock: socket.socket) -> bool:
    """Stop the kernel from steering new UDP flows to ``sock``, keeping what it has queued.

    A connected UDP socket is skipped by SO_REUSEPORT selection (Linux >= 5.4), yet it can
    still read its queue and send to any address; so a retiring worker connects its socket to
    itself, answers what it already received and then closes: no queued query is lost
    (closing at once would drop the queue). Not for a wildcard address, where connect() would
    also pin the source address of every reply. Returns False when it did not detach.
    """
    try:
        local = sock.getsockname()
        if ipaddress.ip_address(local[0].split("%", 1)[0]).is_unspecified:
            return False
        sock.connect(local)
    except (OSError, ValueError):
        return False
    return True


def queued_bytes(sock: socket.socket) -> int:
    """Size of the next datagram waiting in ``sock``'s receive queue (0: empty or unknown)."""
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(buf, sys.byteorder)
