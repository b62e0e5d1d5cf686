"""The datapath seam: the per-packet UDP path of one worker behind one narrow interface.

What the datapath owns: the worker's UDP socket (reading it, up to a batch per wakeup, and
sending on it, with a bounded backlog when the buffer is full), the per-source gate (ACL, rate
limit), the ready-reply table (``fastdns.resolve.cache.front``: exact query bytes -> reply),
the cache lookup, and the forward fast lane (``fastdns.resolve.relay``). A datagram that none
of these can finish goes to the general path as a task (``ServerState.spawn``).

What it calls below (the resolution layer, never the other way round): ``wire.parse_query``,
``PacketCache.renew/get`` (fastdns/resolve/cache/), ``Pipeline.answer_now`` and
``Pipeline.answer`` (fastdns/resolve/pipeline.py), and ``Relay.start``
(fastdns/resolve/relay.py). Answers come back up only through the typed ``Delivery``
interface the datapath hands to the relay (``fastdns.resolve.relay.Delivery``): the relay
imports nothing from ``fastdns.serve``.

What it reports: per-query accounting (``ServerState.accounting``: requests, durations,
sizes, sources), the ready-reply table's hit counts folded once per tick (``fold``), and its
in-flight count (``inflight``, for max_inflight, draining and the heartbeat).

The worker (fastdns/serve/worker.py) uses only this interface: ``start`` once, ``fold`` every
tick and at the last report, ``clear`` when upstreams or the hosts file change, ``drain``
when it starts draining, ``close`` at the end. A compiled implementation replaces
``PyDatapath`` by providing the same operations; resolution stays as it is.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from fastdns.serve.udp import ServerState, UDPServer

__all__ = ["Datapath", "PyDatapath"]


class Datapath(Protocol):
    """The operations the worker calls on its UDP datapath."""

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Serve ``sock`` (bound, non-blocking) on ``loop``."""

    def drain(self, stop_reading: bool) -> None:
        """Draining starts: answer nothing more from the ready-reply table, and with
        ``stop_reading``, take no new query (what is in flight still finishes)."""

    def close(self) -> None:
        """Stop: no more reads, hand-offs or timers; unsent replies dropped; socket closed."""

    def fold(self) -> None:
        """Fold the per-form hit counts into the worker's stats (each tick, before a report)."""

    def clear(self) -> None:
        """Forget every ready reply (upstreams or the hosts file changed)."""

    @property
    def inflight(self) -> int:
        """Queries being resolved (tasks and the fast lane's)."""
        ...


class PyDatapath:
    """The Python datapath: ``UDPServer`` (fastdns/serve/udp.py) over one ``ServerState``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.udp = UDPServer(state)

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.udp.start(loop, sock)

    def drain(self, stop_reading: bool) -> None:
        self.state.draining = stop_reading

    def close(self) -> None:
        self.state.draining = True
        self.state.relay.close()
        self.udp.close()

    def fold(self) -> None:
        self.state.accounting.flush_fronts()

    def clear(self) -> None:
        if self.state.cache is not None:
            self.state.cache.front.clear()

    @property
    def inflight(self) -> int:
        return self.state.inflight
