"""``FakeUpstream``: the server itself: its UDP and TCP sockets, the serving thread (``selectors``
plus a timer heap), the query log. What it answers comes from ``zone``, ``behaviour`` and
``replies``; see the package docstring for an example."""

from __future__ import annotations

import functools
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from support import require_loopback

from .addresses import next_address
from .behaviour import Rules, Spoof
from .names import as_rcode, as_rdtype, norm
from .replies import error, replies
from .seen import Handler, Seen, Transport
from .tcp import TcpConn
from .zone import RecordValue, Zone

_UDP_READS_PER_EVENT = 64  # then let due timers run


class FakeUpstream:
    """An authoritative-looking, recursion-available DNS server for tests (UDP and TCP).

    ``address`` must be loopback (default: ``next_address()``); ``port=0`` picks a free port,
    the same for UDP and TCP. ``outside_rcode`` answers names under no zone that have no
    records. ``blackhole=True`` reads and logs every query and never answers. ``max_udp`` caps
    UDP replies even when the client advertises more. Set ``handler`` to build replies yourself
    (return a message, raw bytes, or None to fall back to the records); behaviours still apply
    around it.
    """

    def __init__(
        self,
        address: str | None = None,
        port: int = 53,
        *,
        tcp: bool = True,
        blackhole: bool = False,
        outside_rcode: str | int = "REFUSED",
        max_udp: int = 4096,
    ) -> None:
        address = require_loopback(address if address is not None else next_address())
        self.address = address
        self.zone = Zone(as_rcode(outside_rcode))
        self.rules = Rules()
        self.max_udp = max_udp
        self.handler: Handler | None = None
        self.errors: list[str] = []  # tracebacks from the serving thread; fixtures assert empty
        self._log: list[Seen] = []
        self._log_cond = threading.Condition()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # serving thread only
        self._timer_seq = itertools.count()
        self._conns: set[TcpConn] = set()
        self._stopping = False

        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._udp, self._tcp = self._bind(family, address, port, tcp)
        self.port: int = self._udp.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel = selectors.DefaultSelector()
        for sock in (self._udp, self._tcp, self._wake_r):
            if sock is not None:
                sock.setblocking(False)
        self._sel.register(self._udp, selectors.EVENT_READ, self._on_udp)
        if self._tcp is not None:
            self._sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        if blackhole:
            self.behave("*", drop=True)
        self._thread = threading.Thread(
            target=self._serve, name=f"fake-upstream-{address}", daemon=True
        )
        self._thread.start()

    @staticmethod
    def _bind(
        family: int, address: str, port: int, tcp: bool
    ) -> tuple[socket.socket, socket.socket | None]:
        for _ in range(20):  # port 0: the free UDP port may be taken for TCP; try another
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((address, port))
                if not tcp:
                    return udp, None
                stream = socket.socket(family, socket.SOCK_STREAM)
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    stream.bind((address, udp.getsockname()[1]))
                    stream.listen(64)
                except OSError:
                    stream.close()
                    raise
                return udp, stream
            except OSError:
                udp.close()
                if port != 0:
                    raise
        raise OSError(f"no port free for both UDP and TCP on {address}")

    # ---------------------------------------------------------------------------------------
    # Records

    def add(self, name: str, rdtype: str | int, *values: RecordValue, ttl: int = 300) -> None:
        """Append one RR per value to the RRset ``name``/``rdtype`` (its TTL: the smallest given).

        A value is zone-file rdata text (``"10 mail.test"``, names are absolute), a dnspython
        ``Rdata``, or for TXT a string or a list of strings, each RR keeping its string
        boundaries (``""`` is an empty string).
        """
        self.zone.add(name, rdtype, *values, ttl=ttl)

    def big(self, name: str, n: int, *, ttl: int = 300) -> None:
        """Give ``name`` ``n`` A records (198.18.0.0/15, RFC 2544), to overflow 512 bytes."""
        self.zone.big(name, n, ttl=ttl)

    def remove(self, name: str, rdtype: str | int | None = None) -> None:
        """Drop the RRset ``name``/``rdtype``, or every RRset at ``name``."""
        self.zone.remove(name, rdtype)

    def add_zone(
        self, apex: str, *, soa_minimum: int = 60, soa_ttl: int = 3600, serial: int = 1
    ) -> None:
        """Make the fake authoritative for ``apex``: names under it that have no records get
        NXDOMAIN, names without the asked type NODATA, both with the SOA in the authority
        section at TTL ``min(soa_ttl, soa_minimum)`` (RFC 2308 §5)."""
        self.zone.add_zone(apex, soa_minimum=soa_minimum, soa_ttl=soa_ttl, serial=serial)

    # ---------------------------------------------------------------------------------------
    # Behaviours

    def behave(
        self,
        name: str = "*",
        *,
        qtype: str | int | None = None,
        transport: Transport | None = None,
        times: int | None = None,
        rcode: str | int | None = None,
        delay: float | None = None,
        drop: bool | None = None,
        truncate: bool | None = None,
        wrong_id: bool | Spoof | None = None,
        wrong_question: bool | Spoof | None = None,
    ) -> None:
        """Set how queries for ``name`` (``"*"`` = any) are answered; replaces an earlier call
        with the same ``name``/``qtype``/``transport``. A call with no knobs clears it.

        For each knob the most specific matching call wins (name over qtype over transport);
        knobs it leaves out come from less specific calls. ``times=N`` lets the call apply to
        the next N matching queries only.

        - ``rcode``: answer with this rcode and no records (SOA added for NXDOMAIN/NOERROR).
        - ``delay``: seconds before the reply goes out; other queries are not held up.
        - ``drop``: never answer (the query is still logged).
        - ``truncate``: over UDP answer TC=1 with no records; over TCP answer in full.
        - ``wrong_id`` / ``wrong_question``: send a reply whose ID is off by one / whose
          question is ``wrong.<qname>``; ``True`` or ``"only"`` sends just that,
          ``"then-correct"`` sends it and then the correct reply.
        """
        given = {
            "rcode": rcode,
            "delay": delay,
            "drop": drop,
            "truncate": truncate,
            "wrong_id": wrong_id,
            "wrong_question": wrong_question,
        }
        knobs = {key: value for key, value in given.items() if value is not None}
        self.rules.set(name, qtype, transport, times, knobs)

    def reset(self) -> None:
        """Forget every behaviour (records and the query log stay)."""
        self.rules.clear()

    # ---------------------------------------------------------------------------------------
    # The query log

    @property
    def queries(self) -> list[Seen]:
        """A snapshot of every query received, oldest first."""
        with self._log_cond:
            return list(self._log)

    def count(
        self,
        name: str | None = None,
        qtype: str | int | None = None,
        transport: Transport | None = None,
    ) -> int:
        """How many queries matched (name case-insensitive, trailing dot optional)."""
        with self._log_cond:
            return sum(1 for s in self._log if self._matches(s, name, qtype, transport))

    def wait_for(
        self,
        n: int = 1,
        name: str | None = None,
        qtype: str | int | None = None,
        transport: Transport | None = None,
        *,
        timeout: float = 2.0,
    ) -> bool:
        """Wait until ``count(name, qtype, transport) >= n``; False if ``timeout`` passed."""
        with self._log_cond:
            return self._log_cond.wait_for(
                lambda: sum(1 for s in self._log if self._matches(s, name, qtype, transport)) >= n,
                timeout,
            )

    def send_udp(self, dst: tuple[Any, ...], datagrams: list[bytes]) -> None:
        """Send ``datagrams`` to ``dst`` from the fake's own UDP address and port, as a spoofer
        that forges this upstream's address would (RFC 5452 §4)."""
        for data in datagrams:
            try:
                self._udp.sendto(data, dst)
            except BlockingIOError:  # the socket buffer is full: let the receiver catch up
                time.sleep(0.001)

    def clear(self) -> None:
        """Empty the query log."""
        with self._log_cond:
            self._log.clear()

    @staticmethod
    def _matches(
        s: Seen, name: str | None, qtype: str | int | None, transport: Transport | None
    ) -> bool:
        if name is not None and norm(s.qname) != norm(name):
            return False
        if qtype is not None:
            want = dns.rdatatype.to_text(as_rdtype(qtype))
            if s.qtype != want:
                return False
        return transport is None or s.transport == transport

    # ---------------------------------------------------------------------------------------
    # Lifecycle

    def close(self) -> None:
        """Stop serving and close every socket; returns within about a second."""
        if self._stopping:
            return
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(1.0)
        if self._thread.is_alive():  # should not happen; close from here so the port is freed
            self._close_sockets()
        self._wake_w.close()

    def __enter__(self) -> FakeUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FakeUpstream {self.address}:{self.port}>"

    # ---------------------------------------------------------------------------------------
    # The serving thread

    def _serve(self) -> None:
        try:
            while not self._stopping:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    if key.data is not None:
                        key.data(key, mask)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self._timers)
                    self._guard(fn)
        except Exception:  # a bug here must show up in the test, not hang it
            self.errors.append(traceback.format_exc())
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        for conn in list(self._conns):
            conn.close()
        for sock in (self._udp, self._tcp, self._wake_r):
            if sock is not None:
                sock.close()
        self._sel.close()

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self.errors.append(traceback.format_exc())

    def _call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def _on_udp(self, key: selectors.SelectorKey, mask: int) -> None:
        for _ in range(_UDP_READS_PER_EVENT):
            try:
                data, src = self._udp.recvfrom(65535)
            except OSError:  # BlockingIOError: drained
                return
            send = functools.partial(self._udp_send, src)
            self._guard(functools.partial(self._on_query, data, "udp", src, send))

    def _udp_send(self, dst: tuple[Any, ...], wire: bytes) -> None:
        try:
            self._udp.sendto(wire, dst)
        except OSError:
            pass  # the client went away; a real server would not notice either

    def _on_accept(self, key: selectors.SelectorKey, mask: int) -> None:
        assert self._tcp is not None
        try:
            sock, src = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        conn = TcpConn(self, sock, src)
        self._conns.add(conn)
        self._sel.register(sock, selectors.EVENT_READ, conn.on_event)

    def _on_query(
        self, raw: bytes, transport: Transport, src: tuple[Any, ...], send: Callable[[bytes], None]
    ) -> None:
        now = time.monotonic()
        qid = struct.unpack_from("!H", raw)[0] if len(raw) >= 2 else -1
        flags = struct.unpack_from("!H", raw, 2)[0] if len(raw) >= 4 else 0
        try:
            query = dns.message.from_wire(raw)
        except Exception:  # any parse failure is the client's bug: log it, answer FORMERR
            self._record(Seen(transport, "", "", qid, flags, raw, src, None, now))
            if len(raw) >= 12 and not flags & dns.flags.QR:
                opcode_bits = flags & 0x7800
                send(
                    struct.pack(
                        "!HHHHHH", qid, 0x8000 | opcode_bits | dns.rcode.FORMERR, 0, 0, 0, 0
                    )
                )
            return
        if query.flags & dns.flags.QR:
            return  # a response sent to us: ignore, as servers do
        if len(query.question) != 1:
            self._record(Seen(transport, "", "", qid, flags, raw, src, None, now))
            send(error(query, dns.rcode.FORMERR, self.max_udp))
            return
        q = query.question[0]
        seen = Seen(
            transport,
            q.name.to_text(omit_final_dot=True),
            dns.rdatatype.to_text(q.rdtype),
            qid,
            flags,
            raw,
            src,
            query.payload if query.edns >= 0 else None,
            now,
        )
        self._record(seen)
        b = self.rules.for_query(q.name, q.rdtype, transport)
        if b.drop:
            return
        out = replies(
            query, seen, b, transport, zone=self.zone, max_udp=self.max_udp, handler=self.handler
        )

        def send_all() -> None:
            for r in out:
                send(r)

        if b.delay > 0:
            self._call_later(b.delay, send_all)
        else:
            send_all()

    def _record(self, seen: Seen) -> None:
        with self._log_cond:
            self._log.append(seen)
            self._log_cond.notify_all()
