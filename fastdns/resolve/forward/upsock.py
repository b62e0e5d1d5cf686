"""Random-port UDP sockets to one upstream, replaced all the time (RFC 5452 §9.2).

A forwarded query is matched to its reply by the upstream ID (16 bits), the source address the
kernel filters on a connected socket, and the question (RFC 5452 §9). With one socket per upstream
for a worker's whole life its port never changes, and a spoofer who saw it once needs only the ID:
65,536 datagrams (tests/e2e/test_upstream_failures.py). So every query leaves from a socket picked
at random from ``POOL_SIZE`` sockets per upstream, each a fresh kernel-chosen (random) ephemeral
port, and a socket is retired after ``MAX_USES`` queries or ``MAX_AGE`` seconds. A retired socket
stays open only while queries sent on it still wait for their reply; a port seen once is soon gone,
and a spoofer must guess it among the ephemeral range as well as the ID.

A socket error (ICMP port unreachable, ``ECONNREFUSED``) fails the queries in flight on that
socket, which go on to their next attempt, and closes it: never the end of forwarding. The
sockets are watched through one private epoll set per worker (``fdpoll``), not one
event-loop reader each: a socket comes and goes in one ``epoll_ctl``, and an error is a ready
socket whose ``recv`` raises (libuv would stop a poll handle for good on POLLERR). A query that
timed out still reads its socket once by hand (``stalled``): a reply the loop has not dispatched
yet answers it, and the socket is retired.
"""

from __future__ import annotations

import _socket
import errno
import logging
import random
import socket
from collections.abc import Callable
from typing import Protocol

from fastdns.dns import wire
from fastdns.errors import FastDNSError
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.forward import portswap
from fastdns.resolve.forward.fdpoll import FdPoll
from fastdns.resolve.forward.sockmark import mark_upstream

logger = logging.getLogger(__name__)

POOL_SIZE = 256  # sockets per upstream in rotation (RFC 5452 §9.2: ports are the entropy)
# Queries sent from one port before it is retired. A new port costs the kernel a disconnect and
# an autobind (portswap, a few us), so a port is not one query's: a spoofer still has to
# hit the one slot in POOL_SIZE that the seen port holds, for at most MAX_USES queries.
MAX_USES = 8
MAX_AGE = 5.0  # seconds a socket is picked for new queries
# Sockets whose port was given back (``portswap``), kept to take the next new ports.
SPARES = 64
LINGER = 60.0  # a retired socket is closed after this even with queries left on it (a bug guard)
READ_BATCH = 64  # replies read per wakeup of one socket
# Out of descriptors or buffers: reuse a socket already open instead (counted), never fail.
_DGRAM_NONBLOCK = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
_EXHAUSTED = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def sockaddr(host: str, port: int) -> tuple[int, tuple[object, ...]]:
    """(family, sockaddr) for a numeric address, with IPv6 ``%scope`` support; no DNS."""
    addr, _, scope = host.partition("%")
    if ":" in addr:
        scope_id = 0
        if scope:
            scope_id = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        return socket.AF_INET6, (addr, port, 0, scope_id)
    return socket.AF_INET, (addr, port)


class Waiter(Protocol):
    """Who gets an upstream reply: an attempt of ``Forwarder.exchange`` or a fast-lane query."""

    def done(self) -> bool: ...

    def set_result(self, data: bytes) -> None: ...

    def set_exception(self, exc: BaseException) -> None: ...


class UpstreamDown(FastDNSError):
    """The upstream could not be reached (ICMP unreachable, socket closed, no socket)."""


class PortSocket:
    """One connected UDP socket (one source port) and the upstream IDs in flight on it."""

    __slots__ = ("born", "channel", "fd", "pending", "retired", "slot", "sock", "uses", "write")

    def __init__(
        self,
        channel: UdpChannel,
        sock: _socket.socket | None,
        write: Callable[[bytes], object],
        born: float,
        slot: int,
    ) -> None:
        self.channel, self.sock, self.write, self.born, self.slot = channel, sock, write, born, slot
        self.fd = sock.fileno() if sock is not None else -1
        self.pending: dict[int, tuple[Waiter, wire.Query]] = {}
        self.uses = 0
        self.retired = False

    def on_readable(self) -> None:
        recv = self.sock.recv  # type: ignore[union-attr]
        for _ in range(READ_BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.channel.broken(self, e)
                return
            self.received(data)
            if not self.pending:  # nothing more is due: spare the EAGAIN read (level-triggered
                return  # polling calls again for anything left, spoofed or late)

    def received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        uid = wire.reply_id(data)
        entry = self.pending.get(uid)
        if entry is None:
            self.channel.stats.inc("upstream_unmatched", self.channel.to)  # late or spoofed
            return
        waiter, q = entry
        if not wire.question_matches(data, q):
            self.channel.stats.inc("upstream_mismatch", self.channel.to)  # never an answer
            return
        del self.pending[uid]
        if self.retired and not self.pending:
            self.channel.close_socket(self)
        if not waiter.done():
            waiter.set_result(data)

    def track(self, waiter: Waiter, q: wire.Query) -> int:
        """A fresh upstream ID for ``q`` on this socket, whose reply goes to ``waiter``."""
        pending = self.pending
        uid = random.getrandbits(16)
        while uid in pending:
            uid = random.getrandbits(16)
        pending[uid] = (waiter, q)
        return uid

    def forget(self, uid: int, waiter: Waiter) -> None:
        entry = self.pending.get(uid)
        if entry is not None and entry[0] is waiter:
            del self.pending[uid]
            if self.retired and not self.pending:
                self.channel.close_socket(self)

    def repoint(self, uid: int, old: Waiter, new: Waiter) -> bool:
        """Hand the reply to ``uid`` from ``old`` to ``new`` (the fast lane's first attempt,
        taken over by ``Forwarder.exchange``); False when it is no longer awaited."""
        entry = self.pending.get(uid)
        if entry is None or entry[0] is not old:
            return False
        self.pending[uid] = (new, entry[1])
        return True


class UdpChannel:
    """The sockets to one upstream: ``pick`` gives a random one for each query."""

    def __init__(
        self,
        stats: WorkerStats,
        to: str,
        poll: FdPoll | None = None,
        addr: tuple[int, tuple[object, ...]] | None = None,
    ) -> None:
        self.stats = stats
        self.to = to
        self.poll = poll  # watches the sockets (None with ``attach``)
        self.addr = addr  # (family, sockaddr); None with ``attach``
        self.slots: list[PortSocket | None] = [None] * POOL_SIZE
        self.retired: set[PortSocket] = set()  # open until their queries are done
        self.spare: list[_socket.socket] = []  # without a port, registered in ``poll``
        self.open = 0
        self.closed = False
        self._fake: Callable[[bytes], object] | None = None

    def attach(self, write: Callable[[bytes], object]) -> None:
        """Send through ``write`` instead of sockets (unit tests, benchmarks)."""
        self._fake = write

    def pick(self, now: float) -> PortSocket:
        """A socket for one query: a random slot, opened afresh when empty, used up or old."""
        i = random.getrandbits(8) if POOL_SIZE == 256 else random.randrange(POOL_SIZE)
        s = self.slots[i]
        if s is None or s.uses >= MAX_USES or now - s.born > MAX_AGE:
            fresh = self._open(now, i)
            if fresh is not None:
                if s is not None:
                    self.retire(s)
                s = self.slots[i] = fresh
            elif s is None:
                s = self._any()
        s.uses += 1
        return s

    def _open(self, now: float, slot: int) -> PortSocket | None:
        if self.closed:
            raise UpstreamDown("closed")
        if self._fake is not None:
            self.open += 1
            return PortSocket(self, None, self._fake, now, slot)
        assert self.poll is not None and self.addr is not None
        family, addr = self.addr
        fresh = not self.spare
        if fresh:
            try:
                # The C socket type, non-blocking from birth: no Python wrapper to build and
                # no fcntl call (close-on-exec as always).
                sock = _socket.socket(family, _DGRAM_NONBLOCK)
            except OSError as e:
                if e.errno in _EXHAUSTED:
                    self.stats.inc("upstream_socket", self.to, "fallback")
                    return None
                raise UpstreamDown(str(e)) from e
        else:
            sock = self.spare.pop()
        try:
            if fresh:
                mark_upstream(sock)  # type: ignore[arg-type]  # before the first packet
            sock.connect(addr)  # the kernel picks a random ephemeral port (autobind)
        except OSError as e:
            if not fresh:
                self.poll.remove(sock.fileno())
            sock.close()
            if e.errno in _EXHAUSTED or e.errno == errno.EADDRNOTAVAIL:  # no port free
                self.stats.inc("upstream_socket", self.to, "fallback")
                return None
            raise UpstreamDown(str(e)) from e
        s = PortSocket(self, sock, sock.send, now, slot)
        if fresh:
            self.poll.add(s.fd, s.on_readable)
        else:
            self.poll.set_callback(s.fd, s.on_readable)
        self.open += 1
        self.stats.counters[("upstream_socket", self.to, "opened")] += 1
        return s

    def _any(self) -> PortSocket:
        """Out of descriptors: any socket still open to this upstream."""
        for s in self.slots:
            if s is not None:
                return s
        raise UpstreamDown("no socket could be opened")

    def retire(self, s: PortSocket) -> None:
        """No new queries on ``s``; it closes when the last one on it is done."""
        if s.retired:
            return
        s.retired = True
        if self.slots[s.slot] is s:
            self.slots[s.slot] = None
        if s.pending:
            self.retired.add(s)
        else:
            self.close_socket(s)

    def broken(self, s: PortSocket, exc: BaseException, event: str | None = "error") -> None:
        """A socket error (ICMP unreachable): the queries on ``s`` fail, ``s`` is closed."""
        if event is not None:
            self.stats.inc("upstream_socket", self.to, event)
        s.retired = True
        if self.slots[s.slot] is s:
            self.slots[s.slot] = None
        pending, s.pending = s.pending, {}
        self.close_socket(s, reuse=False)
        down = UpstreamDown(str(exc))
        for waiter, _ in pending.values():
            if not waiter.done():
                waiter.set_exception(down)

    def stalled(self, s: PortSocket) -> None:
        """A query on ``s`` timed out: read ``s`` once by hand (a reply the loop has not
        dispatched yet still answers), and retire it."""
        if s.sock is not None and s.fd >= 0:
            before = len(s.pending)
            s.on_readable()
            if len(s.pending) < before and not s.retired:
                self.stats.inc("upstream_socket", self.to, "stalled")
                logger.warning(
                    "upstream %s: replies were waiting unread on a socket; replaced", self.to
                )
        self.retire(s)

    def close_socket(self, s: PortSocket, reuse: bool = True) -> None:
        """``s`` is done: its port is given back, and the socket kept as a spare for a new
        port (``fastdns.resolve.forward.portswap``) or closed."""
        self.retired.discard(s)
        if s.write is _closed:
            return
        s.write = _closed
        self.open -= 1
        sock, fd = s.sock, s.fd
        s.sock, s.fd = None, -1
        if sock is None:
            return
        poll = self.poll
        if poll is not None:
            if reuse and not self.closed and len(self.spare) < SPARES and portswap.release(sock):
                poll.set_callback(fd, None)  # stays in the epoll set: no port, no events
                self.spare.append(sock)
                return
            poll.remove(fd)
        sock.close()

    def sweep(self, now: float) -> None:
        """Retire sockets past MAX_AGE (idle ones too: their port is not kept), and close
        retired ones that outlived LINGER."""
        for s in self.slots:
            if s is not None and now - s.born > MAX_AGE:
                self.retire(s)
        for s in [s for s in self.retired if now - s.born > LINGER]:
            self.broken(s, UpstreamDown("socket retired"), "lingered")

    def datagram_received(self, data: bytes, addr: object = None) -> None:
        """A reply given by hand (with ``attach``): to the socket that waits for its ID."""
        uid = wire.reply_id(data) if len(data) >= 12 else -1
        for s in [*self.slots, *self.retired]:
            if s is not None and uid in s.pending:
                s.received(data)
                return
        self.stats.inc("upstream_unmatched", self.to)

    def in_flight(self) -> int:
        return sum(len(s.pending) for s in (*self.slots, *self.retired) if s is not None)

    def close(self) -> None:
        self.closed = True
        for s in [*self.slots, *self.retired]:
            if s is not None:
                self.broken(s, UpstreamDown("socket closed"), None)
        self.slots = [None] * POOL_SIZE
        for sock in self.spare:
            if self.poll is not None:
                self.poll.remove(sock.fileno())
            sock.close()
        self.spare.clear()


def _closed(data: bytes) -> object:
    raise OSError(errno.EBADF, "socket closed")
