"""Which client TCP connections a worker keeps: the slot policy, without sockets.

A worker holds at most ``limit`` connections and at most ``per_source`` from one address
(dnsdist ``setMaxTCPConnectionsPerClient``; unbound ``tcp-connection-limit``). When a new
connection would pass either bound, the idlest connection of the same bound - the one whose
last complete query is oldest, with no query still being answered - is closed to make room
(RFC 7766 §6.2.3: under resource pressure a server may close idle connections, and should
prefer the oldest); only when every candidate is busy is the new one refused. So slow or
silent connections cannot keep a well-behaved client out for as long as they like.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

C = TypeVar("C")

# Why a connection was refused or closed to make room (fastdns_dns_tcp_connections_closed_total).
Pressure = Literal["per_source", "evicted", "max_connections"]


@dataclass(frozen=True, slots=True)
class Admission(Generic[C]):
    """``admit``: take the new connection or not; ``victim``: close it first (for ``reason``)."""

    admit: bool
    victim: C | None = None
    reason: Pressure | None = None


class TCPSlots(Generic[C]):
    """The open connections in order of last progress (idlest first), overall and by source."""

    __slots__ = ("_by_source", "_order", "_source", "limit", "per_source")

    def __init__(self, limit: int, per_source: int) -> None:
        self.limit = limit
        self.per_source = per_source
        # dicts as ordered sets: re-inserting a key moves it to the end (the most recent).
        self._order: dict[C, None] = {}
        self._by_source: dict[str, dict[C, None]] = {}
        self._source: dict[C, str] = {}

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._order))

    def __contains__(self, conn: object) -> bool:
        return conn in self._order

    def count(self, source: str) -> int:
        return len(self._by_source.get(source, ()))

    def consider(self, source: str, busy: Callable[[C], bool]) -> Admission[C]:
        """What to do with a new connection from ``source``; ``busy(conn)``: it has queries
        being answered (never closed to make room)."""
        mine = self._by_source.get(source)
        if mine is not None and len(mine) >= self.per_source:
            victim = _idlest(mine, busy)
            return Admission(victim is not None, victim, "per_source")
        if len(self._order) >= self.limit:
            victim = _idlest(self._order, busy)
            return Admission(
                victim is not None, victim, "evicted" if victim is not None else "max_connections"
            )
        return Admission(True)

    def add(self, conn: C, source: str) -> None:
        self._order[conn] = None
        self._by_source.setdefault(source, {})[conn] = None
        self._source[conn] = source

    def touch(self, conn: C) -> None:
        """``conn`` made progress (a complete query): it becomes the least idle."""
        order = self._order
        if conn in order:
            del order[conn]
            order[conn] = None
            mine = self._by_source[self._source[conn]]
            del mine[conn]
            mine[conn] = None

    def discard(self, conn: C) -> None:
        if conn in self._order:
            del self._order[conn]
            source = self._source.pop(conn)
            mine = self._by_source[source]
            del mine[conn]
            if not mine:
                del self._by_source[source]


def _idlest(conns: dict[C, None], busy: Callable[[C], bool]) -> C | None:
    for conn in conns:
        if not busy(conn):
            return conn
    return None
