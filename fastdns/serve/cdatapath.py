"""The compiled UDP datapath: the worker's socket read and written by C (docs/datapath.md).

``fastdns.serve._cengine.Engine`` (fastdns/serve/cengine/engine.c) reads up to ``batch``
datagrams per wakeup with one recvmmsg; a query from a source that passes the gate whose bytes
after the ID are a ready form (``fastdns.resolve.cache.front``) is answered in C, and every
other datagram comes up here through one call, ``UDPServer.on_datagram``: the gate, the fast
lane, ``_full`` (parse, cache, answer_now, relay, task), exactly as on the Python datapath.
Replies sent from Python go through ``Engine.sendto`` and join the batch's one sendmmsg.

Decisions stay in Python: ``FrontTable`` decides which forms are ready and until when and tells
the engine (its ``mirror``); ``Gate`` tells it which sources pass. The engine's hit counts
come back per form at each ``fold`` and are counted by the same ``Accounting.flush_fronts`` as
the Python fast lane's, so every metric counts the same on both datapaths.

A miss Python's lane would relay raw to the first upstream is relayed by the engine itself
(``fastdns.serve.crelay``: the policy, the cache's keys mirrored, the outcomes handed up);
its upstream sockets are read through one epoll descriptor (``Engine.upstream_fd``) and its
timeouts come from one timer at the oldest query's deadline, as the lane's.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, TypeVar

from fastdns.resolve.cache.front import FormMirror, Front
from fastdns.resolve.cache.store import KeyMirror
from fastdns.serve._cengine import Engine
from fastdns.serve.crelay import CRelay
from fastdns.serve.gate import PASS, PassMirror
from fastdns.serve.udp import ServerState, UDPServer

__all__ = ["CDatapath"]

# The engine's counters folded into the worker's stats as deltas (fastdns/metrics/definitions.py).
COUNTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("recv_calls", ("datapath_batches",)),
    ("answered", ("datapath_datagrams", "compiled")),
    ("upcalls", ("datapath_datagrams", "python")),
    ("relayed", ("datapath_datagrams", "compiled")),
    ("send_calls", ("datapath_send_batches",)),
    ("send_errors", ("send_errors", "udp")),
    ("relay_answered", ("datapath_relayed", "answered")),
    ("relay_failed", ("datapath_relayed", "error")),
    ("relay_timeouts", ("datapath_relayed", "timeout")),
    # queries the native path declines, relayed raw (as the Python lane counts them)
    ("relay_declined_unsupported_type", ("native_fallback", "unsupported_type")),
    ("relay_declined_dnssec", ("native_fallback", "dnssec")),
    ("relay_declined_disabled", ("native_fallback", "disabled")),
)
# The relay's counters per upstream (the one it relays to), as the Python lane's sockets count.
UPSTREAM_COUNTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("relay_unmatched", ("upstream_unmatched",)),
    ("relay_mismatched", ("upstream_mismatch",)),
    ("relay_opened", ("upstream_socket", "opened")),
)


def _no_send(data: bytes, addr: Any) -> None:
    pass


class Engines:
    """Several engines told the same verdicts and forms: a worker that serves several
    addresses (node-local mode, docs/nodelocal.md) runs an engine per UDP socket over one
    ``Gate`` and one ``FrontTable``. With one engine the engine itself is the mirror."""

    __slots__ = ("engines",)

    def __init__(self, *engines: Engine) -> None:
        self.engines = list(engines)

    def allow(self, host: str, /) -> None:
        for engine in self.engines:
            engine.allow(host)

    def forget(self) -> None:
        for engine in self.engines:
            engine.forget()

    def install(
        self,
        form: bytes,
        body: bytes,
        until: float,
        token: Front,
        stored: float,
        stamp: int,
        ttls: tuple[int, ...],
        /,
    ) -> None:
        for engine in self.engines:
            engine.install(form, body, until, token, stored, stamp, ttls)

    def drop(self, form: bytes, /) -> None:
        for engine in self.engines:
            engine.drop(form)

    def clear(self) -> None:
        for engine in self.engines:
            engine.clear()

    def key_add(self, key: bytes, /) -> None:
        for engine in self.engines:
            engine.key_add(key)

    def key_discard(self, key: bytes, /) -> None:
        for engine in self.engines:
            engine.key_discard(key)

    def key_clear(self) -> None:
        for engine in self.engines:
            engine.key_clear()


M = TypeVar("M", PassMirror, FormMirror, KeyMirror)


def joined(mirror: M | None, engine: Engine) -> M | Engine | Engines:
    """``mirror`` that tells ``engine`` as well."""
    if mirror is None:
        return engine
    if isinstance(mirror, Engines):
        mirror.engines.append(engine)
        return mirror
    assert isinstance(mirror, Engine)
    return Engines(mirror, engine)


def left(mirror: M | None, engine: Engine) -> M | Engine | Engines | None:
    """``mirror`` without ``engine``."""
    if mirror is engine:
        return None
    if isinstance(mirror, Engines):
        mirror.engines = [e for e in mirror.engines if e is not engine]
        return mirror.engines[0] if len(mirror.engines) == 1 else mirror
    return mirror


class CDatapath:
    """The compiled datapath: an ``Engine`` over one ``UDPServer`` and its ``ServerState``."""

    def __init__(self, state: ServerState, batch: int = 64) -> None:
        self.state = state
        self.udp = UDPServer(state)
        self.batch = batch
        self.engine: Engine | None = None
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.writing = False  # the loop watches the socket for writability (a backlog)
        self._seen = dict.fromkeys((name for name, _ in (*COUNTERS, *UPSTREAM_COUNTERS)), 0)
        self.crelay = CRelay(state, self.udp)
        self.timer: asyncio.TimerHandle | None = None
        self.upstream_fd = -1

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop, self.sock = loop, sock
        engine = Engine(
            sock.fileno(),
            self.batch,
            self.udp.on_datagram,
            self._want_write,
            relayed=self.crelay.relayed,
            arm=self._arm,
            max_inflight=self.state.config.max_inflight,
        )
        self.engine = engine
        self.udp.sendto = engine.sendto
        gate = self.state.gate
        gate.mirror = joined(gate.mirror, engine)
        for host, v in gate.verdicts.items():
            if v == PASS:
                engine.allow(host)
        cache = self.state.cache
        if cache is not None:
            cache.front.mirror = joined(cache.front.mirror, engine)
            for form, f in cache.front.forms.items():
                cache.front.mirror_install(form, f)
            cache.keys = joined(cache.keys, engine)
            limits = cache.config
            # each answer classified by admission.c as the cache would (``PacketCache.put``)
            engine.relay_cache(
                (limits.min_ttl, limits.max_ttl, limits.denial_max_ttl, limits.servfail_ttl)
            )
            # and the client's reply to each final answer built and sent there (render.c)
            config = self.state.config
            engine.relay_render(
                (limits.capacity, limits.denial_capacity, self.state.pipeline.opt_size),
                config.lima_compat,
                config.edns_max_udp,
            )
            for key in (*cache.success, *cache.denial):
                engine.key_add(key)
        self.state.elsewhere.append(self._relay_inflight)
        self.upstream_fd = engine.upstream_fd
        loop.add_reader(self.upstream_fd, engine.on_upstream)
        self.crelay.engine = engine
        self.crelay.tell()
        loop.add_reader(sock.fileno(), engine.on_readable)

    def drain(self, stop_reading: bool) -> None:
        self.state.draining = stop_reading  # True clears the forms, the engine's too
        self.crelay.tell()  # draining: the engine relays no new query

    def close(self) -> None:
        self.state.draining = True
        self.state.relay.close()
        engine, sock, loop = self.engine, self.sock, self.loop
        if engine is None or sock is None or loop is None:
            return
        self._collect()  # the last report still counts the engine's hits (``fold``)
        loop.remove_reader(sock.fileno())
        loop.remove_reader(self.upstream_fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._relay_inflight in self.state.elsewhere:
            self.state.elsewhere.remove(self._relay_inflight)
        self.crelay.engine = None
        if self.writing:
            loop.remove_writer(sock.fileno())
            self.writing = False
        gate = self.state.gate
        gate.mirror = left(gate.mirror, engine)
        if self.state.cache is not None:
            front = self.state.cache.front
            front.mirror = left(front.mirror, engine)
            self.state.cache.keys = left(self.state.cache.keys, engine)
        self.udp.sendto = _no_send
        engine.close()
        sock.close()
        self.sock = None

    def fold(self) -> None:
        self._collect()
        self.state.accounting.flush_fronts()
        self.crelay.tell()  # once a tick: upstream health, the hosts file, the plan

    def clear(self) -> None:
        if self.state.cache is not None:
            self.state.cache.front.clear()  # the mirror clears the engine's
        self.crelay.tell()  # a reload: new upstreams, new static names

    @property
    def inflight(self) -> int:
        return self.state.inflight  # the engine's relayed queries included (``elsewhere``)

    def _relay_inflight(self) -> int:
        engine = self.engine
        return engine.inflight if engine is not None else 0

    def _arm(self, when: float) -> None:
        """The engine has queries in flight: call its ``expire`` when the oldest is due."""
        if self.loop is not None and self.timer is None:
            self.timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.timer = None
        engine = self.engine
        if engine is None or self.loop is None:
            return
        when = engine.expire()
        if when is not None:
            self.timer = self.loop.call_at(when, self._expire)

    def _collect(self) -> None:
        """The engine's per-form hits onto their ``Front`` (then ``flush_fronts`` counts them
        as the Python fast lane's), and its counters' deltas into the worker's stats."""
        engine = self.engine
        if engine is None:
            return
        self.crelay.fold()
        cache = self.state.cache
        accounting = self.state.accounting
        for front, n, seconds, late, late_seconds, slots, first, last in engine.fold():
            if cache is not None:
                cache.front.retire(front)
            front.n += n
            front.dur += seconds
            if slots is not None:
                accounting.late_front_hits(front, late, late_seconds, slots)
            if not front.first:
                front.first = first
            front.last = last
        # (a closed engine's counters lack its relay's: those were collected before it closed)
        counters, seen, stats = engine.counters(), self._seen, self.state.stats.counters
        for name, key in COUNTERS:
            delta = counters.get(name, seen[name]) - seen[name]
            if delta:
                stats[key] += delta
                seen[name] = counters[name]
        server = self.crelay.server
        to = f"{server[0]}:{server[1]}" if server is not None else "none"
        for name, (metric, *labels) in UPSTREAM_COUNTERS:
            delta = counters.get(name, seen[name]) - seen[name]
            if delta:
                stats[(metric, to, *labels)] += delta
                seen[name] = counters[name]

    def _want_write(self) -> None:
        if self.loop is not None and self.sock is not None and not self.writing:
            self.writing = True
            self.loop.add_writer(self.sock.fileno(), self._on_writable)

    def _on_writable(self) -> None:
        engine = self.engine
        if engine is None or engine.on_writable():
            if self.loop is not None and self.sock is not None:
                self.loop.remove_writer(self.sock.fileno())
            self.writing = False
