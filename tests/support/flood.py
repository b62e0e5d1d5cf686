"""A flood of hostile packets against a running ``fastdns serve``, with a valid query every
``every`` packets whose answer is checked against what the FakeUpstream serves.

Used by tests/e2e/test_flood.py (tens of thousands of packets) and ``python -m bench.flood``
(a million). Packets are random bytes or valid queries mutated (``support.mutate``) from a
seeded ``random.Random``: a run is reproducible from its seed. UDP packets leave from several
sockets (the kernel's SO_REUSEPORT hash spreads source ports over the workers); TCP streams
carry random bytes, cut frames, lying lengths, valid frames with garbage, and close mid-frame,
some with a reset. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from support import mutate, require_loopback

ZONE = "flood.test"
NAMES = 512  # valid query names: flood-N.flood.test A 10.77.N/256.N%256


def name_of(i: int) -> str:
    return f"flood-{i % NAMES}.{ZONE}"


def address_of(i: int) -> str:
    n = i % NAMES
    return f"10.77.{n // 256}.{n % 256}"


@dataclass
class Tally:
    udp_packets: int = 0
    tcp_streams: int = 0
    valid_sent: int = 0
    valid_ok: int = 0
    retries: int = 0  # valid queries asked again after a lost datagram
    replies_to_junk: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(why)


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data) & 0xFFFF) + data


class Flood:
    """Send ``udp`` datagrams and ``tcp`` streams to ``address``; ``check`` every ``every``."""

    def __init__(
        self,
        address: str,
        udp_port: int,
        tcp_port: int,
        *,
        seed: int = 1,
        sockets: int = 16,
        every: int = 100,
    ) -> None:
        self.address = require_loopback(address)
        self.udp = (address, udp_port)
        self.tcp = (address, tcp_port)
        self.rng = random.Random(seed)
        self.every = every
        self.tally = Tally()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.family = family
        self.socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(sockets)]
        for s in self.socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            s.connect(self.udp)
            s.setblocking(False)
        self.corpus = [mutate.random_query(self.rng) for _ in range(64)]

    def close(self) -> None:
        for s in self.socks:
            s.close()

    # ---------------------------------------------------------------------------- packets

    def junk(self) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.15:
            return rng.randbytes(rng.randrange(0, 600))
        if r < 0.25:  # a response (QR set): dropped without a reply
            base = bytearray(rng.choice(self.corpus))
            base[2] |= 0x80
            return bytes(base)
        return mutate.apply(rng.choice(self.corpus), mutate.random_ops(rng))

    def _drain(self, s: socket.socket) -> None:
        """Read the replies to junk waiting on ``s``: each must be a DNS response header."""
        while True:
            try:
                data = s.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                self.tally.fail("ICMP port unreachable: the server is not listening")
                return
            self.tally.replies_to_junk += 1
            if len(data) < 12 or not data[2] & 0x80:
                self.tally.fail(f"a reply that is no DNS response: {data[:32]!r}")

    # ---------------------------------------------------------------------------- checks

    def _expect(self, wire_reply: bytes, qid: int, i: int, how: str) -> bool:
        try:
            msg = dns.message.from_wire(wire_reply)
        except dns.exception.DNSException as e:
            self.tally.fail(f"{how} valid query {i}: unparseable reply ({e})")
            return True
        if msg.id != qid or [q.name.to_text() for q in msg.question] != [name_of(i) + "."]:
            return False  # a reply to junk that happens to carry the same ID: keep waiting
        want = address_of(i)
        got = [r.address for rrset in msg.answer for r in rrset if rrset.rdtype == dns.rdatatype.A]
        if msg.rcode() != dns.rcode.NOERROR or got != [want]:
            self.tally.fail(
                f"{how} valid query {i}: {dns.rcode.to_text(msg.rcode())} {got} (want {want})"
            )
        else:
            self.tally.valid_ok += 1
        return True

    def check_udp(self, i: int) -> None:
        """Ask ``name_of(i)`` from a random socket; up to 3 tries of 1 s (a datagram may be
        lost under the flood: the kernel drops what a full socket buffer cannot take)."""
        s = self.rng.choice(self.socks)
        self._drain(s)
        qid = self.rng.randrange(1 << 16)
        query = dns.message.make_query(name_of(i), "A", id=qid).to_wire()
        self.tally.valid_sent += 1
        for attempt in range(3):
            if attempt:
                self.tally.retries += 1
            s.send(query)
            deadline = time.monotonic() + 1.0
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([s], [], [], left)[0]:
                    break
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    continue
                if data[:2] == query[:2] and self._expect(data, qid, i, "UDP"):
                    return
        self.tally.fail(f"UDP valid query {i} ({name_of(i)}): no answer in 3 tries")

    # ---------------------------------------------------------------------------- TCP

    def stream(self, i: int) -> None:
        """One TCP connection of a random kind; with a valid query to check in some."""
        rng = self.rng
        kind = rng.choice(("random", "cut", "lie", "garbage", "reset", "valid"))
        qid = rng.randrange(1 << 16)
        valid = dns.message.make_query(name_of(i), "A", id=qid).to_wire()
        junk = self.junk()
        payload = {
            "random": rng.randbytes(rng.randrange(1, 300)),
            "cut": frame(junk)[: rng.randrange(1, len(junk) + 2)],
            "lie": struct.pack("!H", rng.choice((0, 1, 11, 0xFFFF, len(junk) + 7))) + junk,
            "garbage": frame(valid + rng.randbytes(rng.randrange(1, 40))) + rng.randbytes(3),
            "reset": frame(junk) + frame(junk)[:5],
            "valid": frame(junk) + frame(valid),
        }[kind]
        self.tally.tcp_streams += 1
        try:
            s = socket.create_connection(self.tcp, timeout=2.0)
        except OSError as e:
            self.tally.fail(f"TCP stream {i}: cannot connect ({e})")
            return
        with s:
            try:
                s.sendall(payload)
                if kind == "reset":  # close with RST mid-frame
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                s.shutdown(socket.SHUT_WR)
                data = b""
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:  # the server closes once it has answered
                    chunk = s.recv(65535)
                    if not chunk:
                        break
                    data += chunk
                else:
                    self.tally.fail(f"TCP stream {i} ({kind}): not closed within 3 s")
                    return
            except TimeoutError:
                self.tally.fail(f"TCP stream {i} ({kind}): no close within 2 s")
                return
            except ConnectionResetError:
                return  # the server may reset a connection it closed with data unread
        replies = []
        while len(data) >= 2:
            size = struct.unpack_from("!H", data)[0]
            replies.append(data[2 : 2 + size])
            data = data[2 + size :]
        for reply in replies:
            if len(reply) < 12 or not reply[2] & 0x80:
                self.tally.fail(f"TCP stream {i} ({kind}): a reply that is no response")
        if kind == "valid":
            self.tally.valid_sent += 1
            if not any(self._expect(r, qid, i, "TCP") for r in replies if r[:2] == valid[:2]):
                self.tally.fail(f"TCP stream {i}: no answer to the valid query")

    # ---------------------------------------------------------------------------- the run

    def run(
        self,
        packets: int,
        streams: int,
        *,
        budget: float,
        tick: Callable[[int], None] | None = None,
    ) -> Tally:
        """Send ``packets`` datagrams (every ``every``-th a checked valid query) and ``streams``
        TCP streams spread among them; stop early when ``budget`` seconds have passed."""
        end = time.monotonic() + budget
        tcp_every = max(1, packets // max(streams, 1))
        socks = self.socks
        rng = self.rng
        for n in range(1, packets + 1):
            if n % self.every == 0:
                self.check_udp(n // self.every)
                if time.monotonic() > end:
                    self.tally.fail(f"time budget of {budget:g}s spent after {n} packets")
                    break
                if tick is not None and n % (self.every * 100) == 0:
                    tick(n)
            else:
                s = socks[n % len(socks)]
                try:
                    s.send(self.junk())
                except (BlockingIOError, ConnectionRefusedError):
                    self._drain(s)
                except OSError as e:  # EMSGSIZE and such: the packet never left
                    if e.errno != 90:
                        raise
                self.tally.udp_packets += 1
            if n % tcp_every == 0 and self.tally.tcp_streams < streams:
                self.stream(n + rng.randrange(NAMES))
        for s in socks:
            self._drain(s)
        return self.tally
