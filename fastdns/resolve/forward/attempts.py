"""The forwarding state machine: which upstream to ask next, over what, until when (sans-IO).

One ``Attempts`` object per forwarded query decides, on each event, what its driver does
next; it sends nothing, reads no clock and sets no timer (every method takes ``now``, the
event loop's clock). Two drivers run it: the UDP fast lane (``fastdns.resolve.relay``,
callbacks) and the general path (``Forwarder.exchange`` in ``upstream``, a coroutine). The
lane hands its object over to the general path when it cannot go on with callbacks alone.

Rules (docs/answering.md):

- servers in resolv.conf order, those that keep timing out last (``order_servers``), for
  ``rounds`` rounds (resolv.conf ``attempts``); the order is taken at each round's start;
- each UDP attempt waits ``timeout`` (``upstream_timeout``), never past the client's
  deadline; a timed-out or failed (socket error) server is asked again only in a later round;
- SERVFAIL and REFUSED (``wire.FAILOVER_RCODES``): that server is not asked again for this
  query;
- a TC reply: the same server over TCP (RFC 7766 §5); when that fails, go on where the
  attempt that was truncated left off;
- a server in ``tcp_only`` (a route's ``tcp://`` server) is asked over TCP only, each attempt
  waiting ``timeout`` like a UDP one (its reply is not awaited after that);
- every UDP attempt's reply stays acceptable until the deadline: after the last server, wait
  for replies still due; at the deadline (or with under a millisecond left before an attempt),
  give up (the caller answers SERVFAIL);
- a server named in ``tls`` is asked over DNS over TLS instead of UDP (step TLS, its
  ``TlsTarget``; ``fastdns.resolve.forward.dot``): the same rules as a UDP attempt (its
  timeout, failover, its reply acceptable until the deadline), never a TC retry.

Attempts are numbered in send order (``seq``): events name the attempt they are about, so a
late reply from an earlier round is told apart from the current attempt to the same server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fastdns.dns import wire

__all__ = [
    "DONE",
    "DOWN_FOR",
    "GIVE_UP",
    "MAX_FAILS",
    "TCP",
    "TLS",
    "UDP",
    "WAIT",
    "Attempts",
    "Health",
    "Server",
    "TlsTarget",
    "order_servers",
]

Server = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TlsTarget:
    """How a server is reached over DNS over TLS (RFC 7858): its address and port, the name
    its certificate must carry (RFC 8310; also sent as SNI), and whether that is checked."""

    host: str
    port: int
    name: str
    verify: bool = True


# An upstream that timed out this many times in a row is tried after the healthy ones
# (CoreDNS forward max_fails), until it answers again or DOWN_FOR seconds pass.
MAX_FAILS = 2
DOWN_FOR = 10.0

# What the driver does next (the value every method returns; details in the attributes):
UDP = 0  # send the query over UDP to ``server``; its attempt is ``seq``; wait until ``until``
TCP = 1  # ask ``server`` over TCP (attempt ``seq``), at most until ``until``
WAIT = 2  # wait for replies until ``until``, then call ``on_timeout``
DONE = 3  # attempt ``seq``'s reply (from ``server``, over TCP when ``tcp``) is the answer
GIVE_UP = 4  # no answer before the deadline: SERVFAIL
TLS = 5  # send the query over TLS to ``server`` (``tls[server]``), attempt ``seq``; as UDP

# Less than this left before the deadline: not worth another attempt.
_MARGIN = 0.001


@dataclass
class Health:
    fails: int = 0
    last_fail: float = 0.0

    def down(self, now: float) -> bool:
        return self.fails >= MAX_FAILS and now - self.last_fail < DOWN_FOR


def order_servers(
    servers: tuple[Server, ...], health: Mapping[Server, Health], now: float
) -> list[Server]:
    """resolv.conf order, with servers that keep timing out moved to the end (stable)."""
    if not health:
        return list(servers)
    up = [s for s in servers if not (h := health.get(s)) or not h.down(now)]
    if len(up) == len(servers):
        return list(servers)
    return up + [s for s in servers if s not in up]


class Attempts:
    """The attempts of one forwarded query. After each call: ``step`` (what it returned),
    ``server`` and ``seq`` (the attempt it concerns), ``until`` (for UDP and WAIT), ``tcp``
    (for DONE: the answer came over TCP)."""

    __slots__ = (
        "_idx",
        "_order",
        "_outstanding",
        "_refused",
        "_resume",
        "_resume_until",
        "_round",
        "_servers",
        "_tcp",
        "current",
        "deadline",
        "health",
        "rounds",
        "seq",
        "server",
        "servers",
        "step",
        "tcp",
        "tcp_only",
        "timeout",
        "tls",
        "until",
    )

    def __init__(
        self,
        servers: tuple[Server, ...],
        health: Mapping[Server, Health],
        rounds: int,
        timeout: float,
        deadline: float,
        *,
        tcp_only: frozenset[Server] = frozenset(),
        tls: Mapping[Server, TlsTarget] | None = None,
    ) -> None:
        self.servers, self.health, self.tcp_only = servers, health, tcp_only
        self.tls = tls  # the servers asked over TLS, and how
        self.rounds, self.timeout, self.deadline = rounds, timeout, deadline
        self._order: list[Server] = []  # this round's servers, asked up to ``_idx``
        self._idx = 0
        self._round = -1
        self._refused: set[Server] | None = None
        self._servers: list[Server] = []  # attempt seq -> its server
        self._tcp = 0  # bit seq set: attempt seq is over TCP
        self._outstanding = 0  # UDP attempts sent whose reply or error has not come
        self._resume = -1  # the attempt a TCP retry of a late reply interrupted
        self._resume_until = 0.0
        self.current = -1  # the attempt being waited for (-1: only late replies now)
        self.step = WAIT
        self.server: Server = ("", 0)
        self.seq = -1
        self.until = deadline
        self.tcp = False

    # ------------------------------------------------------------------ events

    @property
    def started(self) -> bool:
        """``start`` was called: the next step is decided (``step``)."""
        return self._round >= 0

    def start(self, now: float) -> int:
        """The first step: UDP to the first server (or GIVE_UP: no server, no time)."""
        return self._next(now)

    def on_reply(self, seq: int, rcode: int, tc: bool, now: float) -> int:
        """Attempt ``seq`` got a reply (ID, source and question already checked); ``tc``
        only for a UDP one (a reply over a stream is whole)."""
        tcp = self._tcp >> seq & 1 == 1
        if not tcp:
            self._outstanding -= 1
        server = self._servers[seq]
        if tc and not tcp:
            if seq != self.current:  # a late reply: come back to the current one after
                self._resume, self._resume_until = self.current, self.until
            t = self._attempt(server, True)
            self.current, self.until = t, self.deadline
            return self._go(TCP, server, t)
        if rcode in wire.FAILOVER_RCODES:
            if self._refused is None:
                self._refused = set()
            self._refused.add(server)
            return self._failed(seq, now)
        self.tcp = tcp
        self.current = -1
        return self._go(DONE, server, seq)

    def on_error(self, seq: int, now: float) -> int:
        """Attempt ``seq`` failed: a socket error (ICMP unreachable), or its TCP exchange."""
        if not self._tcp >> seq & 1:
            self._outstanding -= 1
        return self._failed(seq, now)

    def on_timeout(self, now: float) -> int:
        """``until`` passed: the current attempt timed out (it may still answer later), or
        the deadline came while waiting for late replies."""
        if self.current < 0:
            self.step = GIVE_UP
            return GIVE_UP
        return self._failed(self.current, now)

    # ------------------------------------------------------------------ decisions

    def _failed(self, seq: int, now: float) -> int:
        """Attempt ``seq`` gave no answer: go on from where the current attempt stands."""
        if seq != self.current:
            self.step = WAIT  # a late attempt: the current one is still awaited
            return WAIT
        if self._resume >= 0:  # the TCP retry of a late reply failed: back to the current
            self.current, self.until = self._resume, self._resume_until
            self._resume = -1
            self.step = WAIT
            return WAIT
        return self._next(now)

    def _next(self, now: float) -> int:
        """The next server to ask, else wait for late replies, else give up."""
        self.current = -1
        refused = self._refused
        while True:
            if self._idx < len(self._order):
                server = self._order[self._idx]
                self._idx += 1
            elif self._round + 1 < self.rounds:
                self._round += 1
                self._order = order_servers(self.servers, self.health, now)
                self._idx = 0
                continue
            else:  # every server was asked: replies still due may come until the deadline
                self._round = self.rounds
                if self._outstanding > 0:
                    self.until = self.deadline
                    self.step = WAIT
                    return WAIT
                self.step = GIVE_UP
                return GIVE_UP
            if refused is not None and server in refused:
                continue
            if self.deadline - now <= _MARGIN:
                self.step = GIVE_UP
                return GIVE_UP
            if self.tcp_only and server in self.tcp_only:
                seq = self.current = self._attempt(server, True)
                self.until = min(now + self.timeout, self.deadline)
                return self._go(TCP, server, seq)
            seq = self.current = self._attempt(server, False)
            self._outstanding += 1
            self.until = min(now + self.timeout, self.deadline)
            tls = self.tls
            return self._go(TLS if tls is not None and server in tls else UDP, server, seq)

    def _attempt(self, server: Server, tcp: bool) -> int:
        seq = len(self._servers)
        self._servers.append(server)
        if tcp:
            self._tcp |= 1 << seq
        return seq

    def _go(self, step: int, server: Server, seq: int) -> int:
        self.step, self.server, self.seq = step, server, seq
        return step
