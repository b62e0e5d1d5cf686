"""Broken packets against ``fastdns serve``: a corpus with the answer the issue asks for (FORMERR,
NOTIMP or drop) over UDP and TCP, then a hypothesis generator of random and mutated packets.

After every batch the server must still answer a valid query, and at the end it must be alive
with no traceback in its log.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.clients import recv_frame
from support.server import FastDNSProcess
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

FORMERR, NOTIMP = dns.rcode.FORMERR, dns.rcode.NOTIMP
DROP = None
PROBE = "probe.mal.test"


@pytest.fixture(name="upstream", scope="module")
def _upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("mal.test")
    up.add("fwd.mal.test", "A", "192.0.2.1")
    return up


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, upstream: FakeUpstream) -> Iterator[FastDNSProcess]:
    server: FastDNSProcess = mod_fastdns_factory(
        {
            "hostResolver": {"hosts": {PROBE: "10.0.0.1", "alias.mal.test": "fwd.mal.test"}},
            "fastdns": {"upstream_timeout": 0.3, "deadline": 1.0},
        },
        upstreams=[upstream],
    )
    yield server
    # the module's last word: alive, no traceback
    assert server.proc.poll() is None, server.stderr
    assert "Traceback" not in server.stderr, server.stderr


def header(
    qid: int = 0xABCD, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


Q = b"\x05probe\x03mal\x04test\x00\x00\x01\x00\x01"
BASE = len(header() + Q)


def rr(owner: bytes, rtype: int = 1, rdata: bytes = b"\x01\x02\x03\x04") -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


def long_name(n_labels: int) -> bytes:
    return (b"\x3f" + b"a" * 63) * n_labels + b"\x00"


CORPUS: list[tuple[str, bytes, int | None]] = [
    ("empty", b"", DROP),
    ("one-byte", b"\x12", DROP),
    ("eleven-bytes", header()[:11], DROP),
    ("header-only", header(), FORMERR),
    ("qr-set", header(flags=0x8100) + Q, DROP),
    ("qr-set-bad-opcode", header(flags=0x8100 | (5 << 11)) + Q, DROP),
    ("qr-set-qdcount-0", header(flags=0x8000, qd=0), DROP),
    ("opcode-iquery", header(flags=0x0100 | (1 << 11)) + Q, NOTIMP),
    ("opcode-status", header(flags=0x0100 | (2 << 11)) + Q, NOTIMP),
    ("opcode-notify", header(flags=0x0100 | (4 << 11)) + Q, NOTIMP),
    ("opcode-update", header(flags=0x0100 | (5 << 11)) + Q, NOTIMP),
    ("opcode-15", header(flags=0x0100 | (15 << 11)) + Q, NOTIMP),
    ("opcode-update-qdcount-0", header(flags=5 << 11, qd=0), NOTIMP),
    ("qdcount-0", header(qd=0), FORMERR),
    ("qdcount-0-with-question", header(qd=0) + Q, FORMERR),
    ("qdcount-2", header(qd=2) + Q + Q, FORMERR),
    ("qdcount-65535", header(qd=0xFFFF) + Q, FORMERR),
    ("label-type-0x40", header() + b"\x45probe\x00\x00\x01\x00\x01", FORMERR),
    ("label-type-0x80", header() + b"\x85probe\x00\x00\x01\x00\x01", FORMERR),
    ("pointer-in-question", header() + b"\xc0\x0c\x00\x01\x00\x01", FORMERR),
    ("pointer-loop-in-question", header() + b"\x01a\xc0\x0c\x00\x01\x00\x01", FORMERR),
    ("pointer-past-end-in-question", header() + b"\xc3\xff\x00\x01\x00\x01", FORMERR),
    ("pointer-loop-in-additional", header(ar=1) + Q + rr(b"\xc0" + bytes([BASE])), FORMERR),
    (
        "pointer-two-hop-loop",
        header(ar=2) + Q + rr(b"\x01x\xc0" + bytes([BASE + 18])) + rr(b"\xc0" + bytes([BASE])),
        FORMERR,
    ),
    ("pointer-past-end-in-additional", header(ar=1) + Q + rr(b"\xc0\xff"), FORMERR),
    ("cut-pointer", header(ar=1) + Q + b"\xc0", FORMERR),
    ("name-256-bytes", header() + long_name(4)[:-2] + b"\x00\x00\x01\x00\x01", FORMERR),
    ("name-320-bytes", header() + long_name(5) + b"\x00\x01\x00\x01", FORMERR),
    ("owner-name-over-255", header(ar=1) + Q + rr(long_name(5)), FORMERR),
    ("cut-question-in-name", header() + Q[:4], FORMERR),
    ("cut-question-in-type", header() + Q[:-3], FORMERR),
    ("cut-question-no-root", header() + b"\x05probe", FORMERR),
    ("trailing-garbage", header() + Q + b"\xde\xad\xbe\xef", FORMERR),
    ("trailing-zero", header() + Q + b"\x00", FORMERR),
    ("ancount-without-record", header(an=1) + Q, FORMERR),
    ("huge-counts", header(an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + Q, FORMERR),
    (
        "rdlength-past-end",
        header(ar=1) + Q + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 500),
        FORMERR,
    ),
    (
        "two-opt-records",
        header(ar=2) + Q + (b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)) * 2,
        FORMERR,
    ),
]


def probe_query(qid: int) -> bytes:
    return dns.message.make_query(PROBE, "A", id=qid).to_wire()


def is_probe_reply(data: bytes, qid: int) -> bool:
    return (
        len(data) >= 12
        and struct.unpack_from("!H", data)[0] == qid
        and PROBE.encode()[:5] in (data[13:18])
    )


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def check_reply_to(packet: bytes, reply: bytes, want: int | None) -> None:
    assert want is not None, f"expected a drop, got {reply!r}"
    assert len(reply) >= 12
    qid, flags = struct.unpack_from("!HH", reply)
    assert qid == struct.unpack_from("!H", packet)[0]
    assert flags & 0x8000  # QR
    assert flags & 0xF == want
    assert (flags >> 11) & 0xF == (packet[2] >> 3) & 0xF  # opcode echoed


@pytest.mark.parametrize(("case", "packet", "want"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_over_udp(
    server: FastDNSProcess, case: str, packet: bytes, want: int | None
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((server.address, server.udp_port))
        s.send(packet)
        s.send(probe_query(0x0F0F))  # then a valid query: its reply comes after any to packet
        first = s.recv(65535)
        if want is DROP:
            assert is_probe_reply(first, 0x0F0F), f"{case}: a reply to a dropped packet: {first!r}"
            return
        check_reply_to(packet, first, want)
        assert is_probe_reply(s.recv(65535), 0x0F0F)


@pytest.mark.parametrize(("case", "packet", "want"), CORPUS, ids=[c[0] for c in CORPUS])
def test_corpus_over_tcp(
    server: FastDNSProcess, case: str, packet: bytes, want: int | None
) -> None:
    with socket.create_connection((server.address, server.tcp_port), timeout=2.0) as s:
        s.sendall(frame(packet) + frame(probe_query(0x0F0F)))
        first = recv_frame(s)
        if want is DROP:
            assert is_probe_reply(first, 0x0F0F), f"{case}: a reply to a dropped packet: {first!r}"
        else:
            check_reply_to(packet, first, want)
            assert is_probe_reply(recv_frame(s), 0x0F0F)
        # the connection survives a bad frame
        s.sendall(frame(probe_query(0x0E0E)))
        assert is_probe_reply(recv_frame(s), 0x0E0E)


def test_tcp_oversized_and_zero_length_frames(server: FastDNSProcess) -> None:
    with socket.create_connection((server.address, server.tcp_port), timeout=2.0) as s:
        s.sendall(b"\x00\x00" + frame(probe_query(0x0D0D)))  # an empty frame is dropped
        assert is_probe_reply(recv_frame(s), 0x0D0D)
    with socket.create_connection((server.address, server.tcp_port), timeout=2.0) as s:
        s.sendall(b"\x00\x0a" + header()[:5])  # a frame cut short, then the client goes away
    with socket.create_connection((server.address, server.tcp_port), timeout=2.0) as s:
        s.sendall(frame(header() + Q + b"\x00" * 60000))  # 60 KB of trailing garbage
        reply = recv_frame(s)
        assert reply[3] & 0xF == FORMERR
    assert server.query(PROBE, "A").rcode() == dns.rcode.NOERROR


# ------------------------------------------------------------------------------ generated packets

VALID = [
    dns.message.make_query("probe.mal.test", "A").to_wire(),
    dns.message.make_query(
        "Fwd.Mal.Test", "A", use_edns=0, payload=1232, want_dnssec=True
    ).to_wire(),
    dns.message.make_query("alias.mal.test", "A").to_wire(),
    dns.message.make_query("x.mal.test", "TXT").to_wire(),
    dns.message.make_query("1.0.0.10.in-addr.arpa", "PTR", use_edns=0).to_wire(),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid query with a few bytes changed, cut, inserted or duplicated."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "dup"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x3F, 0x40, 0x80, 0xC0, 0xC0 | (i >> 8), 0xFF]))
        elif op == "cut":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            data += data[i:]
    return bytes(data)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """A header with random fields over random name-ish bytes and maybe records."""
    flags = draw(st.integers(0, 0xFFFF)) & ~0x8000  # mostly queries: they reach the parser
    counts = [draw(st.sampled_from([0, 1, 2, 0xFFFF])) for _ in range(4)]
    body = draw(st.binary(max_size=300))
    return struct.pack("!HHHHHH", draw(st.integers(0, 0xFFFF)), flags, *counts) + body


packets = st.one_of(st.binary(max_size=600), mutated(), structured())


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=st.lists(packets, min_size=1, max_size=6))
def test_generated_packets_never_break_the_server(
    server: FastDNSProcess, batch: list[bytes]
) -> None:
    check_replies: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((server.address, server.udp_port))
        for packet in batch:
            s.send(packet)
        s.send(probe_query(0x7E57))
        for _ in range(len(batch) + 1):  # replies to the batch may come first
            data = s.recv(65535)
            if is_probe_reply(data, 0x7E57):
                break
            check_replies.append(data)
        else:
            pytest.fail("no reply to the valid query after the batch")
    with socket.create_connection((server.address, server.tcp_port), timeout=2.0) as t:
        t.sendall(b"".join(frame(p) for p in batch) + frame(probe_query(0x7E58)))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = recv_frame(t)
            if is_probe_reply(data, 0x7E58):
                break
            check_replies.append(data)
    for data in check_replies:  # whatever came back is a response header at least
        assert len(data) >= 12 and data[2] & 0x80, data


def test_server_survived(server: FastDNSProcess) -> None:
    assert server.proc.poll() is None
    assert server.query(PROBE, "A").rcode() == dns.rcode.NOERROR
    assert server.query("fwd.mal.test", "A", tcp=True).rcode() == dns.rcode.NOERROR
    assert "Traceback" not in server.stderr, server.stderr
    assert "ERROR" not in server.stderr, server.stderr
