"""UDP and TCP DNS servers on an asyncio (uvloop) loop.

The UDP hot path is a straight line in ``UDPServer._on_readable``: a query whose exact bytes
were answered from the cache this second gets that reply again with its own ID
(``fastdns.resolve.cache.front``); else ``_full`` parses header and question, tries the cache
and the synchronous answers, else relays the query with callbacks (``fastdns.resolve.relay``) or
starts
one task. Everything is bounded: in-flight queries per worker (REFUSED above); the TCP server
and its bounds are in ``fastdns.serve.tcp``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fastdns.config.schema import Config
from fastdns.dns import compose, wire
from fastdns.dns.resolved import Resolved
from fastdns.metrics.stats import WorkerStats
from fastdns.policy.ratelimit import SLIP, UNIT
from fastdns.resolve.cache.front import FIRST_BUCKET, Front
from fastdns.resolve.pipeline import Pipeline
from fastdns.resolve.relay import Relay
from fastdns.serve.accounting import Accounting
from fastdns.serve.gate import DENY, MISS, PASS, Gate
from fastdns.serve.tcp import TCPServer
from fastdns.serve.tcpslots import TCPSlots

__all__ = ["ServerState", "TCPServer", "UDPServer"]  # TCPServer lives in fastdns.tcp

logger = logging.getLogger(__name__)

BATCH = 64  # UDP datagrams read per wakeup before the loop runs other callbacks
MAX_DATAGRAM = 65535  # a UDP query is read whole whatever its size (then judged by the parser)
MAX_BACKLOG = 4096  # replies waiting for a full socket buffer to drain; more are dropped


class ServerState:
    """In-flight tasks, shared by the UDP and TCP servers of one worker (for draining), and
    the per-query accounting (``fastdns.serve.accounting``)."""

    def __init__(self, config: Config, pipeline: Pipeline, stats: WorkerStats) -> None:
        self.stats = stats
        self.cache = pipeline.cache
        # Per-query accounting, held (not inherited): one attribute load per query.
        self.accounting = Accounting(stats, pipeline.cache)
        self.config = config
        self.pipeline = pipeline
        self.tasks: set[asyncio.Task[Any]] = set()
        # In-flight counts kept elsewhere (the compiled relays': fastdns/serve/crelay.py).
        self.elsewhere: list[Callable[[], int]] = []
        self._draining = False
        self.tcp_connections: TCPSlots[TCPServer] = TCPSlots(
            config.tcp_max_connections, config.tcp_max_connections_per_source
        )
        # The cache's hit path runs in the datagram callback; its refreshes are tasks tracked
        # here like any query, so draining waits for them and max_inflight counts them.
        pipeline.use_spawn(self.spawn)
        # The forward fast lane (UDP misses relayed with callbacks, no task).
        self.relay = Relay(pipeline, self.spawn)
        # Who may query, and who is rate limited (docs/exposure.md): judged per source address.
        self.gate = Gate(config.acl, config.ratelimit, config.worker_count())

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value and self.cache is not None:
            self.cache.front.clear()  # the UDP fast lane answers nothing more either

    def full(self) -> bool:
        return self.inflight >= self.config.max_inflight

    @property
    def inflight(self) -> int:
        """Queries being resolved: tasks plus the forward fast lanes' (Python's, C's)."""
        n = len(self.tasks) + self.relay.inflight
        for count in self.elsewhere:
            n += count()
        return n

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _reply_limit(config: Config, q: wire.Query) -> int:
    """Largest UDP reply for this client: its EDNS size capped by ours, 512 without OPT."""
    if config.lima_compat:
        return 512  # lima#380: Lima always truncates UDP replies to 512 bytes
    return min(q.udp_size, config.edns_max_udp) if q.has_opt else 512


def _malformed_reply(data: bytes, err: wire.Malformed) -> bytes | None:
    return compose.header_only_reply(data, err.rcode) if err.rcode is not None else None


def _slip_reply(data: bytes) -> bytes | None:
    """An empty TC=1 reply to a rate-limited query, so a real client retries over TCP (BIND
    RRL "slip"); its question echoed, no larger than the query. None when it does not parse."""
    try:
        q = wire.parse_query(data)
    except wire.Malformed:
        return None
    reply = compose.error_reply(q, wire.NOERROR)
    flags = int.from_bytes(reply[2:4], "big") | wire.TC
    return reply[:2] + flags.to_bytes(2, "big") + reply[4:]


def _no_send(data: bytes, addr: Any) -> None:
    pass


class UDPServer:
    """Answers the UDP queries of one socket, which it reads itself on the worker's loop.

    Not an asyncio ``DatagramTransport``: with one, uvloop enters a context, converts the peer
    address twice (once through an LRU cache) and copies the context again for every datagram;
    a minimal server that reads its socket with ``add_reader`` and ``recvfrom``, up to
    ``BATCH`` datagrams per wakeup, spent 7.3-8.2 us of CPU per query against 8.5-9.4 us (same
    dnsperf load, same machine). A reply that would block is queued and sent when the socket
    is writable, as the transport would; one that fails otherwise is counted and dropped.
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        # The fast lane: query form -> ready reply (cleared when draining starts).
        self.front: dict[bytes, Front] = state.cache.front.forms if state.cache is not None else {}
        self.sendto: Any = _no_send  # the socket's sendto once started
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.backlog: deque[tuple[bytes, Any]] = deque()
        self.gate = state.gate
        self.verdicts = state.gate.verdicts  # source address -> PASS, DENY or a bucket key

    def start(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Serve ``sock`` (bound, non-blocking) on ``loop``."""
        self.loop, self.sock = loop, sock
        self.sendto = sock.sendto
        loop.add_reader(sock.fileno(), self._on_readable)

    def connection_made(self, transport: Any) -> None:
        """Send through ``transport`` instead of a socket (tests, benchmarks)."""
        self.sendto = transport.sendto

    def close(self) -> None:
        """Stop reading, drop unsent replies, close the socket."""
        if self.sock is not None and self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            if self.backlog:
                self.loop.remove_writer(self.sock.fileno())
            self.sock.close()
        self.sock = None
        self.sendto = _no_send
        self.backlog.clear()

    def _on_readable(self) -> None:
        """Read up to BATCH datagrams. A query whose exact bytes were answered from the cache
        and whose reply is still exact goes out at once (the fast lane, fastdns.front: no parse,
        no task, two increments); everything else takes ``_full``.

        One clock read per datagram: ``t`` is when the worker started taking the datagram off
        the socket (the previous one's end), so a fast hit's duration includes its read, and
        "still exact" is judged at most one datagram's work (microseconds) late."""
        # Registered as the reader only while self.sock is set (start/stop).
        recvfrom = self.sock.recvfrom  # type: ignore[union-attr]
        front, sendto, clock = self.front, self.sendto, time.monotonic
        verdict = self.verdicts.get
        t = clock()
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an error queued on the socket, now consumed; the next wakeup goes on
            # The ACL and the rate limit (fastdns.gate): one dict lookup when the source is
            # known and neither blocked nor limited (PASS is 0).
            v = verdict(addr[0], MISS)
            if v and (v := self._screen(v, data, addr, t)) < 0:
                t = clock()
                continue
            f = front.get(data[2:])
            if f is not None and t < f.until:
                reply = data[:2] + f.body
                try:
                    sendto(reply, addr)
                except OSError as e:
                    self._send_failed(reply, addr, e)
                if v and len(reply) > UNIT:
                    # A positive verdict comes only from the rate limiter (serve/gate.py).
                    self.gate.limiter.charge(v, len(reply))  # type: ignore[union-attr]
                t0, t = t, clock()
                if t - t0 <= FIRST_BUCKET:
                    f.n += 1
                    f.dur += t - t0
                else:
                    self.state.accounting.late_front_hit(f, t - t0)
                continue
            self._full(data, addr, f)
            t = clock()

    def on_datagram(self, data: bytes, addr: Any) -> None:
        """One datagram handed up by the compiled datapath (fastdns/serve/cdatapath.py): what
        ``_on_readable`` does for each (kept apart: that loop stays as it is), with its own
        clock read. The sources it answers itself pass the gate; these may not."""
        t = time.monotonic()
        v = self.verdicts.get(addr[0], MISS)
        if v and (v := self._screen(v, data, addr, t)) < 0:
            return
        f = self.front.get(data[2:])
        if f is not None and t < f.until:  # a rate-limited source, or one not told yet
            reply = data[:2] + f.body
            self._send(reply, addr)
            if v and len(reply) > UNIT:
                self.gate.limiter.charge(v, len(reply))  # type: ignore[union-attr]
            t0, t = t, time.monotonic()
            if t - t0 <= FIRST_BUCKET:
                f.n += 1
                f.dur += t - t0
            else:
                self.state.accounting.late_front_hit(f, t - t0)
            return
        self._full(data, addr, f)

    def _screen(self, v: int, data: bytes, addr: Any, now: float) -> int:
        """Act on a source's verdict (``fastdns.serve.gate``): DENY (-1) when the datagram was
        blocked or rate limited here, else PASS or the bucket key its reply is charged to."""
        gate = self.gate
        if v == MISS:
            v = gate.judge(addr[0])
        if v == DENY:
            self._blocked(data, addr)
            return DENY
        if v == PASS or gate.limiter is None:
            return PASS
        verdict = gate.limiter.admit(v, now)
        if verdict == PASS:
            return v
        stats = self.state.stats
        if verdict == SLIP:
            stats.inc("ratelimited", "slip")
            reply = _slip_reply(data)
            if reply is not None:
                self._send(reply, addr)
        else:
            stats.inc("ratelimited", "drop")
        return DENY

    def _blocked(self, data: bytes, addr: Any) -> None:
        """A query from a source outside the ACL: dropped, or REFUSED (no larger than the
        query, with its question when it parses: RFC 1035 §4.1.1; no amplification)."""
        action = self.gate.action
        self.state.stats.inc("acl_blocked", "udp", action)
        if action == "refuse":
            reply: bytes | None
            try:
                reply = compose.error_reply(wire.parse_query(data), wire.REFUSED)
            except wire.Malformed:
                reply = compose.header_only_reply(data, wire.REFUSED)
            if reply is not None:
                self._send(reply, addr)

    def _send_failed(self, reply: bytes, addr: Any, exc: OSError) -> None:
        """``sendto`` raised: queue the reply when the socket buffer is full, else count it."""
        sock, loop = self.sock, self.loop
        if (
            isinstance(exc, BlockingIOError)
            and sock is not None
            and loop is not None
            and (len(self.backlog) < MAX_BACKLOG)
        ):
            if not self.backlog:
                loop.add_writer(sock.fileno(), self._on_writable)
            self.backlog.append((reply, addr))
            return
        self.state.stats.inc("send_errors", "udp")

    def _on_writable(self) -> None:
        backlog, sendto = self.backlog, self.sendto
        while backlog:
            reply, addr = backlog[0]
            try:
                sendto(reply, addr)
            except BlockingIOError:
                return
            except OSError:
                self.state.stats.inc("send_errors", "udp")
            backlog.popleft()
        if self.sock is not None and self.loop is not None:
            self.loop.remove_writer(self.sock.fileno())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        """One query by the full path (tests, benchmarks: the socket reader calls ``_full``)."""
        self._full(data, addr, self.front.get(data[2:]))

    def _full(self, data: bytes, addr: Any, f: Front | None) -> None:
        """Parse, cache, synchronous answers, else relay or a task. ``f``: the fast lane's form
        for these bytes (out of date), as the reader found it; None when there is none."""
        state = self.state
        if state.draining:
            return
        t0 = time.monotonic()
        # Cache first: a hit is the hot path. Static answers still win: they are cached only
        # as answer_now gives them, and the cache is cleared when the hosts file or
        # resolv.conf changes (Worker.reload_hooks).
        cache = state.cache
        if f is not None and cache is not None:
            hit = cache.renew(f, data, t0)  # the same bytes as an earlier hit: no parse
            if hit is not None:  # (reply, the earlier query with these bytes)
                self._reply(hit[0], addr)
                state.accounting.record("udp", hit[1], Resolved(hit[0], "cache"), len(data), t0)
                return
        try:
            q = wire.parse_query(data)
        except wire.Malformed as e:
            state.stats.inc("dropped" if e.rcode is None else "malformed", "udp")
            reply = _malformed_reply(data, e)
            if reply is not None:
                self._reply(reply, addr)
            return
        if cache is not None:
            reply = cache.get(q, t0)
            if reply is not None:
                self._reply(reply, addr)
                state.accounting.record("udp", q, Resolved(reply, "cache"), len(data), t0)
                return
        res = state.pipeline.answer_now(q)
        if res is not None:
            self.send_answer(q, res, addr, len(data), t0)
            return
        if state.full():
            state.stats.inc("overload", "udp")
            res = Resolved(compose.error_reply(q, wire.REFUSED), "server")
            self.send_answer(q, res, addr, len(data), t0)
            return
        if state.relay.start(q, self, addr, len(data), t0):
            return
        state.spawn(self._answer(q, addr, len(data), t0))

    async def _answer(self, q: wire.Query, addr: Any, size: int, t0: float) -> None:
        res = await self.state.pipeline.answer_or_servfail(q, "udp")
        self.send_answer(q, res, addr, size, t0)

    def send_answer(self, q: wire.Query, res: Resolved, addr: Any, size: int, t0: float) -> None:
        """Send ``res`` to the client (truncated to its UDP size) and count it."""
        reply = res.reply
        limit = _reply_limit(self.state.config, q)
        if len(reply) > limit:
            try:
                reply = compose.truncate(reply, limit)
            except wire.Malformed:
                reply = compose.error_reply(q, wire.SERVFAIL)
            res = Resolved(reply, res.source)
        self._reply(reply, addr)
        self.state.accounting.record("udp", q, res, size, t0)

    def account(self, q: wire.Query, res: Resolved, size: int, t0: float) -> None:
        """Count ``res``, sent by the compiled datapath itself (fastdns/serve/crelay.py)."""
        self.state.accounting.record("udp", q, res, size, t0)

    def _reply(self, reply: bytes, addr: Any) -> None:
        if len(reply) > UNIT and self.gate.limiter is not None:
            key = self.verdicts.get(addr[0], PASS)
            if key > 0:  # a rate-limited source: its reply costs by its size (fastdns.ratelimit)
                self.gate.limiter.charge(key, len(reply))
        self._send(reply, addr)

    def _send(self, reply: bytes, addr: Any) -> None:
        try:
            self.sendto(reply, addr)
        except OSError as e:
            self._send_failed(reply, addr, e)
