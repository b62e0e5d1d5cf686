"""A new random source port for a UDP socket without closing it (``upsock``).

Linux lets a connected UDP socket dissolve its association with ``connect(AF_UNSPEC)``
(connect(2)); a socket whose port the kernel chose (autobind, never ``bind``) then also gives
the port back (``__udp_disconnect`` unhashes it), and the next ``connect`` autobinds a fresh
random ephemeral port, exactly as a new socket would. That is two system calls instead of
``close`` + ``socket`` + ``connect`` and the epoll registration of a new descriptor, which in
the forwarder's steady state (a port every ``MAX_USES`` queries) cost the kernel far more:
a file, an inode and a dentry built and freed per port.

Python's ``socket.connect`` cannot pass an ``AF_UNSPEC`` address, so libc's ``connect`` is
called through ctypes, loaded on first use. Where that fails, ``release`` says so and the
caller closes the socket as before.
"""

from __future__ import annotations

import _socket
import ctypes
from collections.abc import Callable
from typing import Any

_DRAIN = 64  # datagrams read before giving up on a socket that keeps receiving

_connect: Callable[[int, Any, int], int] | None = None
_unspec: Any = None
_broken = False


def _load() -> bool:
    global _connect, _unspec, _broken
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.connect
        fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
        fn.restype = ctypes.c_int
    except (OSError, AttributeError):
        _broken = True
        return False
    _unspec = ctypes.create_string_buffer(16)  # a sockaddr whose sa_family is AF_UNSPEC (0)
    _connect = fn
    return True


def release(sock: _socket.socket) -> bool:
    """Disconnect ``sock`` and give its source port back, dropping anything queued on it;
    True when it is ready for ``connect`` to a new random port, False when it should be
    closed instead (no libc ``connect``, a pending socket error, a flood)."""
    if _connect is None and (_broken or not _load()):
        return False
    if _connect(sock.fileno(), _unspec, 16) != 0:  # type: ignore[misc]
        return False
    # Datagrams that reached the old port before it was given back are still queued: they
    # must never be taken for replies to the queries of the next port (RFC 5452 §9.2).
    recv = sock.recv
    for _ in range(_DRAIN):
        try:
            recv(1)
        except BlockingIOError:
            return True
        except OSError:  # an ICMP error queued for the old association
            return False
    return False
