"""Many short-lived descriptors watched through one: a private epoll set behind one reader.

The random-port upstream sockets (``upsock``) come and go all the time: a socket lives
for a few queries. Registering each with the event loop (``add_reader``/``remove_reader``)
costs a uvloop poll handle, its Python objects and libuv bookkeeping per socket, and one loop
callback per reply; and libuv stops a poll handle for good on POLLERR (an ICMP error on a
connected UDP socket), so a socket had to be unregistered and closed on the first error or its
descriptor number could never be watched again. Here the sockets are in one ``select.epoll``
set of our own, which is the only descriptor the loop watches: registering a socket is one
``epoll_ctl``, a wakeup of the loop dispatches every ready socket in one callback, and an error
is just a ready socket whose ``recv`` raises, handled by its owner.

Created on first use, in the process that uses it (a worker, after fork), never at import; works
with uvloop and with the standard asyncio loop (an epoll descriptor is pollable).
"""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable

MAX_EVENTS = 256  # ready sockets taken per wakeup; level-triggered, the rest come next time


class FdPoll:
    """Calls ``callback()`` for each registered descriptor when it is readable (or in error)."""

    __slots__ = ("_ep", "_readers", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._ep: select.epoll | None = None
        self._readers: dict[int, Callable[[], object]] = {}

    def add(self, fd: int, callback: Callable[[], object]) -> None:
        ep = self._ep
        if ep is None:
            ep = self._ep = select.epoll()
            self.loop.add_reader(ep.fileno(), self._ready)
        ep.register(fd, select.EPOLLIN)  # level-triggered; EPOLLERR is always reported
        self._readers[fd] = callback

    def set_callback(self, fd: int, callback: Callable[[], object] | None) -> None:
        """Point a registered ``fd`` at another callback, or none (its events are ignored);
        no system call."""
        if callback is None:
            self._readers.pop(fd, None)
        else:
            self._readers[fd] = callback

    def remove(self, fd: int) -> None:
        """Before ``fd`` is closed: a descriptor closed while still registered stays in the
        set as long as any duplicate of it is open, and would report for its number."""
        self._readers.pop(fd, None)
        if self._ep is not None:
            try:
                self._ep.unregister(fd)
            except OSError:  # (not registered)
                pass

    def _ready(self) -> None:
        readers = self._readers
        for fd, _ in self._ep.poll(0, MAX_EVENTS):  # type: ignore[union-attr]
            callback = readers.get(fd)
            if callback is not None:  # (an earlier callback of this batch may have removed it)
                callback()

    def __len__(self) -> int:
        return len(self._readers)

    def close(self) -> None:
        ep, self._ep = self._ep, None
        self._readers.clear()
        if ep is not None:
            if not self.loop.is_closed():
                self.loop.remove_reader(ep.fileno())
            ep.close()
