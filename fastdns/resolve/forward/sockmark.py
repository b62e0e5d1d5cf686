"""The firewall mark (``SO_MARK``) on fastdns's upstream sockets: the rules' loop guard.

The rules' OUTPUT jump skips packets carrying ``fastdns.rules.mark`` (``-m mark ! --mark``), so
fastdns's own upstream queries are never redirected back into fastdns, while every other local
process, root included, is (an exemption by uid 0 would cover every root process).
Setting ``SO_MARK`` needs CAP_NET_ADMIN (socket(7)): workers that dropped to ``fastdns.user``
cannot, and rely on the uid exemption instead (``fastdns.rules.plan_rules``).

Per process: a worker calls ``configure`` once it has its final privileges; each upstream socket
then gets ``mark_upstream(sock)`` before its first packet (NAT is decided on a flow's first
packet, so a mark set later would come too late). Standard library only.
"""

from __future__ import annotations

import logging
import socket

logger = logging.getLogger(__name__)

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux asm-generic/socket.h
MAX_MARK = 0xFFFFFFFF

_mark = 0  # the mark this process puts on its upstream sockets; 0 = none


def mark_socket(sock: socket.socket, mark: int) -> None:
    """Set ``SO_MARK`` on ``sock``; ``OSError`` (EPERM without CAP_NET_ADMIN) is the caller's."""
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def configure(mark: int) -> bool:
    """Mark this process's upstream sockets with ``mark`` (0: none) from now on, if the kernel
    lets it; returns whether it will. Called after any privilege drop."""
    global _mark
    _mark = 0
    if not mark:
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            mark_socket(probe, mark)
    except OSError as e:
        logger.info(
            "upstream sockets are not marked with 0x%x (%s; SO_MARK needs "
            "CAP_NET_ADMIN): the rules' OUTPUT exemption matches fastdns.user's uid "
            "instead",
            mark,
            e.strerror or e,
        )
        return False
    _mark = mark
    return True


def current() -> int:
    return _mark


def mark_upstream(sock: socket.socket) -> None:
    """Put this process's mark on a new upstream socket, before it sends anything."""
    if _mark:
        try:
            mark_socket(sock, _mark)
        except OSError as e:  # the capability was checked in configure(); keep forwarding
            logger.debug("cannot mark an upstream socket: %s", e)
