"""``FakeUpstream``: a scriptable DNS server on 127.0.0.x that stands in for the internet.

fastdns reads its upstreams from a resolv.conf, which has no port syntax, so each fake sits on
port 53 of its own loopback address (``next_address()``). It answers over UDP and TCP from one
background thread (``selectors`` plus a timer heap, so a delayed reply never holds up another),
from records added with ``add``/``add_zone``, and misbehaves on request (``behave``). Sockets are
bound in ``__init__``, before the thread starts, so a query sent right after construction is
never lost (dnspython ``tests/nanonameserver.py`` does the same).

    with FakeUpstream(next_address()) as up:
        up.add_zone("test", soa_minimum=60)
        up.add("www.test", "CNAME", "web.test")
        up.add("web.test", "A", "192.0.2.1", "192.0.2.2", ttl=300)
        up.behave("slow.test", delay=0.5)
        ...
        assert up.count("www.test", "A") == 1
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import selectors
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from support import require_loopback

Transport = Literal["udp", "tcp"]
# How a spoofed reply (wrong ID or wrong question) is sent: alone, or followed by the real one.
Spoof = Literal["only", "then-correct"]
RecordValue = str | bytes | list[str | bytes] | tuple[str | bytes, ...] | dns.rdata.Rdata

_MAX_CNAME_CHAIN = 16
_UDP_READS_PER_EVENT = 64  # then let due timers run

# --------------------------------------------------------------------------------------------
# Loopback addresses. The test namespace routes all of 127.0.0.0/8 to lo, so every fake gets an
# address of its own and can sit on port 53. 127.0.0.1-9 are left to the server under test.

_address_lock = threading.Lock()
_address_counter = itertools.count(10)


def next_address() -> str:
    """A 127.x.y.z address that no earlier call in this process returned."""
    with _address_lock:
        n = next(_address_counter)
        while n & 0xFF in (0, 255):  # keep the last octet 1..254: nobody has to think about it
            n = next(_address_counter)
    if n >= 1 << 24:
        raise RuntimeError("ran out of 127.0.0.0/8 addresses")
    return str(ipaddress.IPv4Address((127 << 24) | n))


def dead_address(port: int = 53) -> str:
    """A fresh loopback address with nothing on ``port``.

    UDP sent there gets ICMP port unreachable (``ECONNREFUSED`` on a connected socket), TCP
    gets a RST. For an address that takes queries and never answers, use
    ``FakeUpstream(addr, blackhole=True)``.
    """
    address = next_address()
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((address, port))  # proves nothing is bound there
    return address


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One query as the fake received it. ``qname`` keeps the client's case, no final dot."""

    transport: Transport
    qname: str  # "" when the query could not be parsed
    qtype: str  # "A", "TYPE65534", "" when unparsed
    qid: int  # -1 when shorter than a header
    flags: int
    raw_bytes: bytes
    src: tuple[Any, ...]
    edns: int | None = None  # the client's advertised UDP size, None without OPT
    at: float = 0.0  # time.monotonic() on receipt

    def message(self) -> dns.message.Message:
        return dns.message.from_wire(self.raw_bytes)


Handler = Callable[[dns.message.Message, Seen], dns.message.Message | bytes | None]


@dataclass(slots=True)
class _Rule:
    knobs: dict[str, Any]
    remaining: int | None  # queries it still applies to; None = forever


@dataclass(slots=True)
class _Behaviour:
    rcode: dns.rcode.Rcode | None = None
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False
    wrong_id: Spoof | None = None
    wrong_question: Spoof | None = None


_Scope = tuple[dns.name.Name | None, int | None, Transport | None]


def _as_name(name: str | dns.name.Name) -> dns.name.Name:
    return name if isinstance(name, dns.name.Name) else dns.name.from_text(name)


def _as_rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rdtype)


def _as_rcode(rcode: str | int) -> dns.rcode.Rcode:
    return dns.rcode.Rcode.make(rcode)


def _spoof(value: bool | Spoof | None) -> Spoof | None:
    if value is None or value is False:
        return None
    if value is True:
        return "only"
    if value not in ("only", "then-correct"):
        raise ValueError(f"expected True, 'only' or 'then-correct', got {value!r}")
    return value


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


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
        self.outside_rcode = _as_rcode(outside_rcode)
        self.max_udp = max_udp
        self.handler: Handler | None = None
        self.errors: list[str] = []  # tracebacks from the serving thread; fixtures assert empty
        self._lock = threading.RLock()  # records, zones, rules
        self._nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._zones: set[dns.name.Name] = set()
        self._rules: dict[_Scope, _Rule] = {}
        self._log: list[Seen] = []
        self._log_cond = threading.Condition()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []  # serving thread only
        self._timer_seq = itertools.count()
        self._conns: set[_TcpConn] = set()
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
        if not values:
            raise ValueError("add() needs at least one value")
        owner, rtype = _as_name(name), _as_rdtype(rdtype)
        rdatas = [self._rdata(rtype, v) for v in values]
        with self._lock:
            node = self._nodes.setdefault(owner, {})
            rrset = node.get(rtype)
            if rrset is None:
                rrset = node[rtype] = dns.rrset.RRset(owner, dns.rdataclass.IN, rtype)
            for rd in rdatas:
                rrset.add(rd, ttl)

    @staticmethod
    def _rdata(rdtype: dns.rdatatype.RdataType, value: RecordValue) -> dns.rdata.Rdata:
        if isinstance(value, dns.rdata.Rdata):
            return value
        if rdtype == dns.rdatatype.TXT:
            strings = [value] if isinstance(value, str | bytes) else list(value)
            raw = [s.encode() if isinstance(s, str) else s for s in strings]
            return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, raw)
        if not isinstance(value, str):
            raise TypeError(f"rdata for {dns.rdatatype.to_text(rdtype)} must be text or Rdata")
        return dns.rdata.from_text(
            dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False
        )

    def big(self, name: str, n: int, *, ttl: int = 300) -> None:
        """Give ``name`` ``n`` A records (198.18.0.0/15, RFC 2544), to overflow 512 bytes."""
        base = int(ipaddress.IPv4Address("198.18.0.1"))
        self.add(name, "A", *(str(ipaddress.IPv4Address(base + i)) for i in range(n)), ttl=ttl)

    def remove(self, name: str, rdtype: str | int | None = None) -> None:
        """Drop the RRset ``name``/``rdtype``, or every RRset at ``name``."""
        owner = _as_name(name)
        with self._lock:
            if rdtype is None:
                self._nodes.pop(owner, None)
            else:
                self._nodes.get(owner, {}).pop(_as_rdtype(rdtype), None)

    def add_zone(
        self, apex: str, *, soa_minimum: int = 60, soa_ttl: int = 3600, serial: int = 1
    ) -> None:
        """Make the fake authoritative for ``apex``: names under it that have no records get
        NXDOMAIN, names without the asked type NODATA, both with the SOA in the authority
        section at TTL ``min(soa_ttl, soa_minimum)`` (RFC 2308 §5)."""
        origin = _as_name(apex)
        soa = f"ns.{origin} hostmaster.{origin} {serial} 3600 600 86400 {soa_minimum}"
        with self._lock:
            self._zones.add(origin)
            self.remove(apex, "SOA")
            self.add(apex, "SOA", soa, ttl=soa_ttl)

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
        scope: _Scope = (
            None if name == "*" else _as_name(name),
            None if qtype is None else _as_rdtype(qtype),
            transport,
        )
        knobs: dict[str, Any] = {}
        if rcode is not None:
            knobs["rcode"] = _as_rcode(rcode)
        if delay is not None:
            knobs["delay"] = float(delay)
        if drop is not None:
            knobs["drop"] = drop
        if truncate is not None:
            knobs["truncate"] = truncate
        if wrong_id is not None:
            knobs["wrong_id"] = _spoof(wrong_id)
        if wrong_question is not None:
            knobs["wrong_question"] = _spoof(wrong_question)
        with self._lock:
            if knobs:
                self._rules[scope] = _Rule(knobs, times)
            else:
                self._rules.pop(scope, None)

    def reset(self) -> None:
        """Forget every behaviour (records and the query log stay)."""
        with self._lock:
            self._rules.clear()

    def _behaviour(self, qname: dns.name.Name, qtype: int, transport: Transport) -> _Behaviour:
        with self._lock:
            matching = [
                (scope, rule)
                for scope, rule in self._rules.items()
                if scope[0] in (None, qname)
                and scope[1] in (None, qtype)
                and scope[2] in (None, transport)
                and (rule.remaining is None or rule.remaining > 0)
            ]
            matching.sort(key=lambda sr: tuple(part is not None for part in sr[0]))
            b = _Behaviour()
            for _, rule in matching:  # least specific first, so the most specific wins
                for key, value in rule.knobs.items():
                    setattr(b, key, value)
                if rule.remaining is not None:
                    rule.remaining -= 1
            return b

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
        if name is not None and _norm(s.qname) != _norm(name):
            return False
        if qtype is not None:
            want = dns.rdatatype.to_text(_as_rdtype(qtype))
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
        conn = _TcpConn(self, sock, src)
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
            send(self._error(query, dns.rcode.FORMERR))
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
        b = self._behaviour(q.name, q.rdtype, transport)
        if b.drop:
            return
        replies = self._replies(query, seen, b, transport)

        def send_all() -> None:
            for r in replies:
                send(r)

        if b.delay > 0:
            self._call_later(b.delay, send_all)
        else:
            send_all()

    def _record(self, seen: Seen) -> None:
        with self._log_cond:
            self._log.append(seen)
            self._log_cond.notify_all()

    # ---------------------------------------------------------------------------------------
    # Building replies

    def _replies(
        self, query: dns.message.Message, seen: Seen, b: _Behaviour, transport: Transport
    ) -> list[bytes]:
        if query.opcode() != dns.opcode.QUERY:
            return [self._error(query, dns.rcode.NOTIMP)]
        limit = 65535
        if transport == "udp":
            limit = min(max(512, query.payload), self.max_udp) if query.edns >= 0 else 512
        custom = self.handler(query, seen) if self.handler is not None else None
        if isinstance(custom, bytes):
            return [custom]
        response = custom if custom is not None else self._response(query, b.rcode)
        if b.truncate and transport == "udp":
            _strip(response)
            response.flags |= dns.flags.TC
        correct = _render(response, limit)
        out: list[bytes] = []
        if b.wrong_id:
            out.append(struct.pack("!H", (query.id + 1) & 0xFFFF) + correct[2:])
        if b.wrong_question:
            q = query.question[0]
            response.question = [
                dns.rrset.RRset(dns.name.from_text("wrong", q.name), q.rdclass, q.rdtype)
            ]
            out.append(_render(response, limit))
        if "only" not in (b.wrong_id, b.wrong_question):
            out.append(correct)
        return out

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=self.max_udp
        )
        response.set_rcode(rcode)
        return response.to_wire(max_size=65535)

    def _response(
        self, query: dns.message.Message, forced: dns.rcode.Rcode | None
    ) -> dns.message.Message:
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=self.max_udp
        )
        if query.edns >= 0:
            response.want_dnssec(bool(query.ednsflags & dns.flags.DO))  # RFC 3225 §3
        q = query.question[0]
        with self._lock:
            if forced is not None:
                response.set_rcode(forced)
                if forced in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    response.authority.extend(self._soa_for(q.name))
            elif q.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                rcode, answer, authority = self._resolve(q.name, q.rdtype)
                response.set_rcode(rcode)
                response.answer.extend(answer)
                response.authority.extend(authority)
        return response

    def _resolve(
        self, qname: dns.name.Name, qtype: int
    ) -> tuple[dns.rcode.Rcode, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        """rcode, answer and authority for ``qname``/``qtype``, chasing CNAMEs in our data."""
        answer: list[dns.rrset.RRset] = []
        name, visited = qname, set[dns.name.Name]()
        for _ in range(_MAX_CNAME_CHAIN):
            visited.add(name)
            node = self._nodes.get(name)
            if not node:
                if self._has_descendants(name):  # empty non-terminal: NODATA (RFC 8020)
                    return dns.rcode.NOERROR, answer, self._soa_for(name)
                if self._zone_of(name) is None:
                    # A chain that leaves our data ends here, as if chased elsewhere.
                    return (dns.rcode.NOERROR if answer else self.outside_rcode), answer, []
                return dns.rcode.NXDOMAIN, answer, self._soa_for(name)  # RFC 6604 §2
            if qtype == dns.rdatatype.ANY:
                return dns.rcode.NOERROR, answer + list(node.values()), []
            if qtype in node:
                return dns.rcode.NOERROR, [*answer, node[qtype]], []
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                return dns.rcode.NOERROR, answer, self._soa_for(name)  # NODATA
            answer.append(cname)
            name = next(iter(cname)).target
            if name in visited:  # a loop: return what we have
                break
        return dns.rcode.NOERROR, answer, []

    def _has_descendants(self, name: dns.name.Name) -> bool:
        return any(
            n != name and n.is_subdomain(name) and rrsets for n, rrsets in self._nodes.items()
        )

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        apexes = [z for z in self._zones if name.is_subdomain(z)]
        return max(apexes, key=len) if apexes else None

    def _soa_for(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        apex = self._zone_of(name)
        soa = self._nodes.get(apex, {}).get(dns.rdatatype.SOA) if apex is not None else None
        if apex is None or soa is None:
            return []
        rd = next(iter(soa))
        return [dns.rrset.from_rdata(apex, min(soa.ttl, rd.minimum), rd)]  # RFC 2308 §5


def _strip(response: dns.message.Message) -> None:
    response.answer.clear()
    response.authority.clear()
    response.additional.clear()


def _render(response: dns.message.Message, limit: int) -> bytes:
    """Wire form; if it exceeds ``limit``, an empty reply with TC=1 (RFC 1035 §4.2.1).

    Records go out in the order they were added: dnspython shuffles RRsets by default, which
    made tests of record order (Lima's "record 1", "record 2") flaky.
    """
    try:
        wire = response.to_wire(max_size=65535, want_shuffle=False)
    except dns.exception.TooBig:
        wire = b""
    if wire and len(wire) <= limit:
        return wire
    _strip(response)
    response.flags |= dns.flags.TC
    return response.to_wire(max_size=65535, want_shuffle=False)


@dataclass(eq=False, slots=True)
class _TcpConn:
    """One client connection: 2-byte length framing (RFC 1035 §4.2.2), pipelined queries."""

    server: FakeUpstream
    sock: socket.socket
    src: tuple[Any, ...]
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    closed: bool = False

    def on_event(self, key: selectors.SelectorKey, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self._read()

    def _read(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.inbuf += data
        for message in self._messages():
            self.server._guard(
                functools.partial(self.server._on_query, message, "tcp", self.src, self.send)
            )

    def _messages(self) -> Iterator[bytes]:
        while len(self.inbuf) >= 2:
            (size,) = struct.unpack_from("!H", self.inbuf)
            if len(self.inbuf) < 2 + size:
                return
            message = bytes(self.inbuf[2 : 2 + size])
            del self.inbuf[: 2 + size]
            yield message

    def send(self, wire: bytes) -> None:
        if self.closed:
            return  # the client hung up before a delayed reply
        self.outbuf += struct.pack("!H", len(wire)) + wire
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        del self.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        self.server._sel.modify(self.sock, events, self.on_event)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server._conns.discard(self)
        try:
            self.server._sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
