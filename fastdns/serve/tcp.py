"""The client-facing TCP server: RFC 7766 framing, pipelined queries, and the bounds that keep
slow or hostile clients from taking a worker's memory or its connection slots.

Every connection is bounded in what it can make the worker hold and for how long:

- **Replies waiting to be written.** The kernel holds at most ``TCP_SNDBUF`` (doubled) of
  them; the transport pauses the protocol when more than
  ``WRITE_HIGH`` bytes wait (``pause_writing``); the connection then stops handling queries and
  stops reading until the client has read its replies (``resume_writing``). Replies of queries
  already being answered still arrive; a connection whose unsent bytes pass
  ``tcp_max_write_buffer`` is closed, and one that reads nothing for ``tcp_idle_timeout`` while
  paused is closed too.
- **Queries being answered**: at most ``TCP_MAX_PENDING``; reading stops above it.
- **Time.** One deadline per connection, re-armed only by progress, never per byte: a frame
  must be complete ``tcp_frame_timeout`` seconds after its first byte (the 2-byte length prefix
  included), and a connection with no frame in progress is closed after ``tcp_idle_timeout``
  (RFC 7766 §6.2.3, RFC 7828 §3.2).
- **Slots** (``fastdns.serve.tcpslots``): per worker and per source address; under pressure the
  idlest
  connection is closed to let a new one in.

Server-initiated closes are counted by reason (``fastdns_dns_tcp_connections_closed_total``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Literal, Protocol, cast, get_args

from fastdns.config.schema import Config
from fastdns.dns import compose, wire
from fastdns.dns.resolved import Resolved
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.cache.store import PacketCache
from fastdns.resolve.pipeline import Pipeline
from fastdns.serve.accounting import Accounting
from fastdns.serve.gate import Gate
from fastdns.serve.tcpslots import TCPSlots

logger = logging.getLogger(__name__)

TCP_MAX_PENDING = 64  # queries in progress per TCP connection before we stop reading
# Bytes of queries read but not handled yet: reading stops as soon as the connection is blocked,
# so this is one incomplete frame plus what one read returned; above it something is wrong.
TCP_MAX_INPUT = 65535 + 2 + 256 * 1024
WRITE_HIGH = 64 * 1024  # unsent reply bytes above which the transport pauses the protocol
WRITE_LOW = 16 * 1024  # ... and below which it resumes it
# The kernel's send buffer for a client connection (Linux doubles it: 128 KiB). Left to
# autotuning it grew to megabytes of unread replies per connection (net.ipv4.tcp_wmem), kernel
# memory no bound of ours saw; 128 KiB still holds two of the largest replies in flight.
TCP_SNDBUF = 64 * 1024

# Why fastdns closed (or refused) a client connection: fastdns_dns_tcp_connections_closed_total.
CloseReason = Literal[
    "idle",
    "frame_timeout",
    "write_stalled",
    "write_buffer",
    "oversize",
    "per_source",
    "evicted",
    "max_connections",
]
CLOSE_REASONS: frozenset[str] = frozenset(get_args(CloseReason))


class TCPState(Protocol):
    """What a connection needs from its worker (``fastdns.serve.udp.ServerState``)."""

    config: Config
    stats: WorkerStats
    cache: PacketCache | None
    pipeline: Pipeline
    tcp_connections: TCPSlots[TCPServer]
    gate: Gate
    accounting: Accounting

    @property
    def draining(self) -> bool: ...

    def full(self) -> bool: ...

    def spawn(self, coro: Any) -> None: ...


def _busy(conn: TCPServer) -> bool:
    return conn.pending > 0


class TCPServer(asyncio.Protocol):
    """One client connection (RFC 7766: 2-byte length framing, pipelined queries answered as
    they complete)."""

    def __init__(self, state: TCPState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.buffer = bytearray()
        self.pending = 0
        self.read_paused = False
        self.write_paused = False
        self.eof = False
        # One timer: ``deadline`` moves freely; the timer fires at ``timer_at`` (never later
        # than the deadline) and re-arms itself when the deadline moved on.
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    # --- lifecycle ----------------------------------------------------------------------

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream server hands its protocol a Transport; asyncio.Protocol declares the base.
        self.transport = transport = cast(asyncio.Transport, base)
        state = self.state
        if state.draining:
            state.stats.inc("overload", "tcp")
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if not state.gate.allows(source):
            # Outside the ACL (fastdns.acl): closed before a byte is read, whatever acl.action
            # says (a REFUSED would need the query read first); reset, no TIME_WAIT kept here.
            state.stats.inc("acl_blocked", "tcp", state.gate.action)
            transport.abort()
            return
        slots = state.tcp_connections
        verdict = slots.consider(source, _busy)
        if verdict.victim is not None:
            verdict.victim.close(verdict.reason or "evicted")
        if not verdict.admit:
            if verdict.reason == "max_connections":
                state.stats.inc("overload", "tcp")
            state.stats.inc("tcp_closed", verdict.reason or "max_connections")
            transport.close()
            return
        slots.add(self, source)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SNDBUF)
            except OSError:
                pass  # the kernel's default, bounded by net.ipv4.tcp_wmem
        transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.loop = loop = asyncio.get_running_loop()
        self._set_deadline(loop.time() + state.config.tcp_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.tcp_connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def close(self, reason: CloseReason) -> None:
        """Close for ``reason`` (counted), dropping unsent replies: the slot is free at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.state.stats.inc("tcp_closed", reason)
        self.state.tcp_connections.discard(self)
        if reason == "idle":
            transport.close()  # nothing is waiting to be written
        else:
            transport.abort()

    def close_when_idle(self) -> None:
        """Draining: stop reading; close now if nothing is pending."""
        if self.transport is None:
            return
        if not self.read_paused:
            self.transport.pause_reading()
            self.read_paused = True
        if not self.pending:
            self.transport.close()

    # --- deadlines ----------------------------------------------------------------------

    def _set_deadline(self, when: float) -> None:
        self.deadline = when
        if self.timer is None or self.timer_at > when:
            if self.timer is not None:
                self.timer.cancel()
            # self.loop is set in connection_made, before any frame or timer.
            self.timer = self.loop.call_at(when, self._on_timer)  # type: ignore[union-attr]
            self.timer_at = when

    def _on_timer(self) -> None:
        self.timer = None
        if self.transport is None or self.loop is None:
            return
        now = self.loop.time()
        if now < self.deadline:
            self._set_deadline(self.deadline)
        elif self.pending:  # queries being answered have their own deadline
            self._set_deadline(now + self.state.config.tcp_idle_timeout)
        elif self.write_paused:
            self.close("write_stalled")  # the client has not read its replies
        elif self.buffer:
            self.close("frame_timeout")  # RFC 7766 §6.2.3: a frame that never completes
        else:
            self.close("idle")

    # --- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        starting = not self.buffer  # the first byte of a frame's length prefix
        self.buffer += data
        if len(self.buffer) > TCP_MAX_INPUT:
            self.buffer.clear()
            self.close("oversize")
            return
        self._process(starting)

    def _process(self, fresh: bool) -> None:
        """Handle the complete frames buffered while the connection is not blocked, then move
        the deadline and pause or resume reading. ``fresh``: a frame started now (or input
        resumes now), so its deadline starts now."""
        buf, transport = self.buffer, self.transport
        done, size = 0, len(buf)
        while size - done >= 2 and not self.write_paused and self.pending < TCP_MAX_PENDING:
            end = done + 2 + (buf[done] << 8 | buf[done + 1])
            if size < end:
                break
            frame = bytes(buf[done + 2 : end])
            done = end
            self._handle(frame)
            if transport is None or transport.is_closing():
                return
        if done:
            del buf[:done]
            self.state.tcp_connections.touch(self)
        if transport is None:
            return
        config = self.state.config
        if not self.write_paused:  # else pause_writing set the write-stall deadline
            # self.loop is set in connection_made, before any frame or timer.
            now = self.loop.time()  # type: ignore[union-attr]
            if not buf:
                if done:
                    self._set_deadline(now + config.tcp_idle_timeout)
            elif done or fresh:
                self._set_deadline(now + config.tcp_frame_timeout)
        blocked = self.write_paused or self.pending >= TCP_MAX_PENDING
        if blocked:
            if not self.read_paused:
                transport.pause_reading()
                self.read_paused = True
        elif (
            self.read_paused
            and self.pending < TCP_MAX_PENDING // 2
            and not (self.state.draining or self.eof)
        ):
            transport.resume_reading()
            self.read_paused = False

    def eof_received(self) -> bool | None:
        # Keep the write side open until pending replies are sent; then close.
        self.eof = True
        if not self.pending and self.transport is not None:
            self.transport.close()
        return True

    # --- writing ------------------------------------------------------------------------

    def pause_writing(self) -> None:
        """More than WRITE_HIGH bytes wait for the client to read: handle no more of its
        queries and read no more until it does; it has tcp_idle_timeout to start reading."""
        self.write_paused = True
        if self.transport is not None and self.loop is not None:
            if not self.read_paused:
                self.transport.pause_reading()
                self.read_paused = True
            self._set_deadline(self.loop.time() + self.state.config.tcp_idle_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.transport.is_closing():
            # self.loop is set in connection_made, before any frame or timer.
            now = self.loop.time()  # type: ignore[union-attr]
            self._set_deadline(now + self.state.config.tcp_idle_timeout)
            self._process(True)

    def _write(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(len(reply).to_bytes(2, "big") + reply)
            if transport.get_write_buffer_size() > self.state.config.tcp_max_write_buffer:
                self.close("write_buffer")

    # --- queries ------------------------------------------------------------------------

    def _handle(self, frame: bytes) -> None:
        t0 = time.monotonic()
        state = self.state
        try:
            q = wire.parse_query(frame)
        except wire.Malformed as e:
            state.stats.inc("dropped" if e.rcode is None else "malformed", "tcp")
            # A frame shorter than a header raises with rcode None: nothing to echo.
            reply = compose.header_only_reply(frame, e.rcode) if e.rcode is not None else None
            if reply is not None:
                self._write(reply)
            return
        cache = state.cache  # first, as for UDP; no truncation over TCP
        if cache is not None:
            reply = cache.get(q, t0, tcp=True)
            if reply is not None:
                self._write(reply)
                state.accounting.record("tcp", q, Resolved(reply, "cache"), len(frame), t0)
                return
        res = state.pipeline.answer_now(q)
        if res is None and state.full():
            state.stats.inc("overload", "tcp")
            res = Resolved(compose.error_reply(q, wire.REFUSED), "server")
        if res is not None:
            self._write(res.reply)
            state.accounting.record("tcp", q, res, len(frame), t0)
            return
        self.pending += 1
        state.spawn(self._answer(q, len(frame), t0))

    async def _answer(self, q: wire.Query, size: int, t0: float) -> None:
        res = await self.state.pipeline.answer_or_servfail(q, "tcp")
        self.pending -= 1
        self._write(res.reply)
        self.state.accounting.record("tcp", q, res, size, t0)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if (self.eof or self.state.draining) and not self.pending:
            transport.close()
        elif self.read_paused and not self.write_paused and (self.pending < TCP_MAX_PENDING // 2):
            self._process(True)  # the frames held back, then reading again
