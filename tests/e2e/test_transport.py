"""Transport, truncation and EDNS (docs/answering.md, "Transport") against ``fastdns serve``."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from support.clients import raw_tcp, raw_udp, recv_frame
from support.server import FastDNSProcess
from support.upstream import FakeUpstream, Seen

pytestmark = pytest.mark.e2e

STATIC = {"static.tr.test": "10.0.0.1"}
# the issue-2 forward path alone: no native lookups, no cache
BASE = {"native": {"enabled": False}, "cache": {"enabled": False}}


def no_ra_handler(query: dns.message.Message, seen: Seen) -> dns.message.Message | None:
    """Answer ``nora.tr.test`` the way an authoritative-only server would: RA=0."""
    if seen.qname.lower() != "nora.tr.test":
        return None
    reply = dns.message.make_response(query, recursion_available=False)
    reply.answer.append(
        dns.rrset.from_text("nora.tr.test.", 60, "IN", "A", "192.0.2.9")  # type: ignore[attr-defined]
    )
    return reply


@pytest.fixture(name="upstream", scope="module")
def _upstream(mod_upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = mod_upstream_factory()
    up.add_zone("tr.test")
    up.big("big.tr.test", 60)  # ~1 KB: over 512, under 1232
    up.big("huge.tr.test", 120)  # ~2 KB: over 1232
    up.add("small.tr.test", "A", "192.0.2.1")
    up.add("slow.tr.test", "A", "192.0.2.2")
    up.behave("slow.tr.test", delay=0.4)
    up.handler = no_ra_handler
    return up


@pytest.fixture(name="server", scope="module")
def _server(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory(
        {"hostResolver": {"hosts": STATIC}, "fastdns": BASE}, upstreams=[upstream]
    )
    return server


@pytest.fixture(name="compat", scope="module")
def _compat(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    server: FastDNSProcess = mod_fastdns_factory(
        {
            "fastdns": {
                **BASE,
                "lima_compat": True,
                "tcp_idle_timeout": 0.5,
                "tcp_max_connections": 3,
                "max_inflight": 2,
            }
        },
        upstreams=[upstream],
    )
    return server


@pytest.fixture(name="bounded", scope="module")
def _bounded(mod_fastdns_factory: Any, upstream: FakeUpstream) -> FastDNSProcess:
    """Three TCP slots and an idle timeout far beyond any test: a connection closed within a
    test was evicted, not timed out."""
    server: FastDNSProcess = mod_fastdns_factory(
        {"fastdns": {**BASE, "tcp_idle_timeout": 60, "tcp_max_connections": 3}},
        upstreams=[upstream],
    )
    return server


def count_a(reply: dns.message.Message) -> int:
    return sum(len(rrset) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A)


def udp(server: FastDNSProcess, q: dns.message.Message) -> tuple[bytes, dns.message.Message]:
    raw = raw_udp(server.address, server.udp_port, q.to_wire())
    assert raw is not None
    return raw, dns.message.from_wire(raw)


# ------------------------------------------------------------------------------ truncation


def test_case31_big_udp_reply_without_edns_is_truncated(server: FastDNSProcess) -> None:
    raw, reply = udp(server, dns.message.make_query("big.tr.test", "A"))
    assert len(raw) <= 512
    assert reply.flags & dns.flags.TC
    assert count_a(reply) in (0, 60)  # whole RRsets only: the 60-record set is all or nothing
    assert reply.edns == -1


def test_case31_small_replies_are_not_touched(server: FastDNSProcess) -> None:
    _, reply = udp(server, dns.message.make_query("small.tr.test", "A"))
    assert not reply.flags & dns.flags.TC and count_a(reply) == 1


def test_case31_dig_without_edns_sees_tc(server: FastDNSProcess) -> None:
    out = server.dig("+noedns", "+ignore", "big.tr.test")
    assert " tc" in out.stdout.split("flags:", 1)[1].split(";", 1)[0], out.stdout
    assert "MSG SIZE  rcvd:" in out.stdout
    size = int(out.stdout.split("MSG SIZE  rcvd:")[1].split()[0])
    assert size <= 512


def test_case32_edns_1232_fits_without_tc(server: FastDNSProcess) -> None:
    out = server.dig("+bufsize=1232", "+ignore", "big.tr.test")
    flags = out.stdout.split("flags:", 1)[1].split(";", 1)[0]
    assert " tc" not in flags
    assert out.stdout.count("\tA\t198.18.") == 60
    raw, reply = udp(server, dns.message.make_query("big.tr.test", "A", use_edns=0, payload=1232))
    assert 512 < len(raw) <= 1232 and not reply.flags & dns.flags.TC and count_a(reply) == 60


def test_case32_client_size_is_capped_by_edns_max_udp(server: FastDNSProcess) -> None:
    q = dns.message.make_query("huge.tr.test", "A", use_edns=0, payload=4096)
    raw, reply = udp(server, q)
    assert len(raw) <= 1232 and reply.flags & dns.flags.TC
    assert reply.edns == 0  # OPT kept when truncating


def test_case32_lima_compat_truncates_at_512(compat: FastDNSProcess) -> None:
    raw, reply = udp(compat, dns.message.make_query("big.tr.test", "A", use_edns=0, payload=1232))
    assert len(raw) <= 512 and reply.flags & dns.flags.TC
    out = compat.dig("+bufsize=1232", "+ignore", "big.tr.test")
    assert " tc" in out.stdout.split("flags:", 1)[1].split(";", 1)[0]


@pytest.mark.parametrize("name", ["big.tr.test", "huge.tr.test"])
def test_case33_tcp_gives_the_full_answer(server: FastDNSProcess, name: str) -> None:
    reply = server.query(name, "A", tcp=True)
    assert not reply.flags & dns.flags.TC
    assert count_a(reply) == (60 if name.startswith("big") else 120)
    out = server.dig("+short", name, tcp=True)
    assert len(out.stdout.split()) == count_a(reply)


def test_case33_lima_compat_tcp_is_not_truncated(compat: FastDNSProcess) -> None:
    assert count_a(compat.query("big.tr.test", "A", tcp=True)) == 60


# ------------------------------------------------------------------------------ TCP


def test_case35_pipelined_tcp_queries_are_answered_by_id(server: FastDNSProcess) -> None:
    names = ["slow.tr.test", "small.tr.test", "static.tr.test", "big.tr.test", "nx.tr.test"]
    queries = [dns.message.make_query(n, "A", id=100 + i) for i, n in enumerate(names)]
    payload = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
    with socket.create_connection((server.address, server.tcp_port), timeout=3) as s:
        s.sendall(payload)  # all at once, one connection
        replies = [dns.message.from_wire(recv_frame(s)) for _ in names]
    by_id = {r.id: r for r in replies}
    assert sorted(by_id) == [100, 101, 102, 103, 104]
    for q in queries:
        assert by_id[q.id].question == q.question
    assert replies[-1].id == 100  # the slow one finished last: answered as they complete
    assert count_a(by_id[103]) == 60 and by_id[104].rcode() == dns.rcode.NXDOMAIN


def test_tcp_connection_stays_open_for_more_queries(server: FastDNSProcess) -> None:
    with socket.create_connection((server.address, server.tcp_port), timeout=3) as s:
        for i in range(3):
            w = dns.message.make_query("static.tr.test", "A", id=i).to_wire()
            s.sendall(struct.pack("!H", len(w)) + w)
            assert dns.message.from_wire(recv_frame(s)).id == i


def test_tcp_idle_connections_are_closed(compat: FastDNSProcess) -> None:
    with socket.create_connection((compat.address, compat.tcp_port), timeout=3) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 2.0


def test_tcp_connections_are_bounded(bounded: FastDNSProcess) -> None:
    """At the limit a new connection takes the slot of the idlest one (RFC 7766 §6.2.3), so
    idle connections cannot keep new clients out. The idle timeout is 60 s: the
    idlest connection's close is the eviction (a read timeout fails the test), and the two
    others keep being served."""
    server = bounded
    held = [
        socket.create_connection((server.address, server.tcp_port), timeout=3) for _ in range(3)
    ]
    try:
        w = dns.message.make_query("small.tr.test", "A").to_wire()
        for s in held:  # make sure each is accepted and counted, the first one idlest
            s.sendall(struct.pack("!H", len(w)) + w)
            recv_frame(s)
        with socket.create_connection((server.address, server.tcp_port), timeout=3) as extra:
            extra.sendall(struct.pack("!H", len(w)) + w)
            assert dns.message.from_wire(recv_frame(extra)).rcode() == dns.rcode.NOERROR
            with pytest.raises(ConnectionError):  # not TimeoutError: closed, not silent
                recv_frame(held[0])  # closed to make room
            for s in held[1:]:  # not evicted: still served
                s.sendall(struct.pack("!H", len(w)) + w)
                assert dns.message.from_wire(recv_frame(s)).rcode() == dns.rcode.NOERROR
    finally:
        for s in held:
            s.close()
    assert server.query("small.tr.test", "A", tcp=True).rcode() == dns.rcode.NOERROR


# ------------------------------------------------------------------------------ header checks


def raw_query(qd: int = 1, opcode: int = 0, qr: bool = False) -> bytes:
    flags = 0x0100 | (opcode << 11) | (0x8000 if qr else 0)
    question = b"\x05small\x02tr\x04test\x00\x00\x01\x00\x01"
    return struct.pack("!HHHHHH", 0x3344, flags, qd, 0, 0, 0) + question * qd


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (raw_query(qd=0), dns.rcode.FORMERR),
        (raw_query(qd=2), dns.rcode.FORMERR),
        (raw_query(opcode=dns.opcode.UPDATE), dns.rcode.NOTIMP),
        (raw_query(opcode=dns.opcode.STATUS), dns.rcode.NOTIMP),
    ],
    ids=["qdcount0", "qdcount2", "update", "status"],
)
def test_case36_header_errors(server: FastDNSProcess, packet: bytes, rcode: int, tcp: bool) -> None:
    send = raw_tcp if tcp else raw_udp
    raw = send(server.address, server.tcp_port if tcp else server.udp_port, packet, 2.0)
    assert raw is not None
    qid, flags = struct.unpack_from("!HH", raw)
    assert qid == 0x3344 and flags & 0x8000 and flags & 0xF == rcode
    assert (flags >> 11) & 0xF == (packet[2] >> 3) & 0xF  # opcode echoed


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_case36_responses_are_dropped(server: FastDNSProcess, tcp: bool) -> None:
    send = raw_tcp if tcp else raw_udp
    assert (
        send(server.address, server.tcp_port if tcp else server.udp_port, raw_query(qr=True), 0.3)
        is None
    )
    assert server.query("small.tr.test", "A").rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("name", ["static.tr.test", "small.tr.test"])
def test_case37_query_over_512_bytes_is_answered_over_udp(
    server: FastDNSProcess, name: str
) -> None:
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 900)
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232, options=[pad])
    assert len(q.to_wire()) > 512
    _, reply = udp(server, q)
    assert reply.id == q.id and count_a(reply) == 1


def test_udp_queries_up_to_4096_bytes_are_read(server: FastDNSProcess) -> None:
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 4000)
    q = dns.message.make_query("static.tr.test", "A", use_edns=0, payload=1232, options=[pad])
    wire = q.to_wire(max_size=65535)
    assert 4000 < len(wire) <= 4096
    raw = raw_udp(server.address, server.udp_port, wire)
    assert raw is not None and count_a(dns.message.from_wire(raw)) == 1


# ------------------------------------------------------------------------------ reply header, OPT


@pytest.mark.parametrize("name", ["static.tr.test", "small.tr.test", "nora.tr.test"])
def test_case23_ra_is_set(server: FastDNSProcess, name: str) -> None:
    reply = server.query(name, "A")
    assert reply.flags & dns.flags.RA
    assert reply.flags & dns.flags.QR


@pytest.mark.parametrize("name", ["static.tr.test", "small.tr.test", "nx.tr.test"])
def test_case23_rd_is_copied(server: FastDNSProcess, name: str) -> None:
    assert server.query(name, "A", rd=True).flags & dns.flags.RD
    assert not server.query(name, "A", rd=False).flags & dns.flags.RD


@pytest.mark.parametrize("name", ["static.tr.test", "small.tr.test", "nx.tr.test"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_case23_opt_present_iff_the_query_had_one(
    server: FastDNSProcess, name: str, tcp: bool
) -> None:
    assert server.query(name, "A", tcp=tcp).edns == -1
    reply = server.query(name, "A", tcp=tcp, edns=1232)
    assert reply.edns == 0
    assert not reply.ednsflags & dns.flags.DO
    assert server.query(name, "A", tcp=tcp, do=True).ednsflags & dns.flags.DO


def test_case23_question_echoed_exactly(server: FastDNSProcess) -> None:
    for name in ("StAtIc.Tr.TeSt", "SmAlL.tR.tEsT", "Nx.TR.test"):
        q = dns.message.make_query(name, "A")
        raw, _ = udp(server, q)
        wire = q.to_wire()
        assert raw[12 : len(wire)] == wire[12:]


@pytest.mark.parametrize("name", ["version.bind", "id.server", "static.tr.test"])
@pytest.mark.parametrize("edns", [None, 1232])
def test_case23_chaos_class_is_refused(
    server: FastDNSProcess, upstream: FakeUpstream, name: str, edns: int | None
) -> None:
    reply = server.query(name, "TXT", rdclass="CH", edns=edns)
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.answer == []
    assert (reply.edns == 0) == (edns is not None)
    assert upstream.count(name) == 0


def test_edns_version_1_is_badvers(server: FastDNSProcess) -> None:
    q = dns.message.make_query("small.tr.test", "A", use_edns=1)
    _, reply = udp(server, q)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


def test_dig_norecurse_and_tcp(server: FastDNSProcess) -> None:
    out = server.dig("+norecurse", "small.tr.test")
    assert "status: NOERROR" in out.stdout and "192.0.2.1" in out.stdout
    out = server.dig("+tcp", "+norecurse", "static.tr.test", tcp=True)
    assert "status: NOERROR" in out.stdout and "10.0.0.1" in out.stdout


@pytest.mark.parametrize("first_has_opt", [False, True], ids=["plain-first", "edns-first"])
def test_coalesced_replies_match_each_clients_opt(
    server: FastDNSProcess, upstream: FakeUpstream, first_has_opt: bool
) -> None:
    # Identical questions in flight share one upstream query (the key has no EDNS size), but
    # each client's reply has an OPT record iff its query had one (RFC 6891 §7).
    name = f"co{int(first_has_opt)}.tr.test"
    upstream.add(name, "A", "192.0.2.20")
    upstream.behave(name, delay=0.4)
    first = dns.message.make_query(name, "A", use_edns=0 if first_has_opt else False, id=1)
    second = dns.message.make_query(name, "A", use_edns=False if first_has_opt else 0, id=2)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        for s in (a, b):
            s.settimeout(3)
            s.connect((server.address, server.udp_port))
        a.send(first.to_wire())
        assert upstream.wait_for(1, name, timeout=2)
        b.send(second.to_wire())
        replies = {q.id: dns.message.from_wire(s.recv(4096)) for q, s in ((first, a), (second, b))}
    assert upstream.count(name) == 1  # coalesced
    for q in (first, second):
        assert replies[q.id].edns == q.edns, (q.id, q.edns)
        assert count_a(replies[q.id]) == 1


def test_inflight_queries_are_bounded(compat: FastDNSProcess, upstream: FakeUpstream) -> None:
    names = [f"busy{i}.tr.test" for i in range(4)]
    for name in names:
        upstream.add(name, "A", "192.0.2.30")
        upstream.behave(name, delay=0.4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.connect((compat.address, compat.udp_port))
        for i, name in enumerate(names):
            s.send(dns.message.make_query(name, "A", id=i).to_wire())
        # static answers need no slot: served while both slots are taken
        s.send(dns.message.make_query("host.lima.internal", "A", id=99).to_wire())
        replies = {r.id: r for r in (dns.message.from_wire(s.recv(4096)) for _ in range(5))}
    rcodes = sorted(replies[i].rcode() for i in range(4))
    assert rcodes == [dns.rcode.NOERROR] * 2 + [dns.rcode.REFUSED] * 2  # max_inflight: 2
    assert replies[99].rcode() == dns.rcode.NOERROR and count_a(replies[99]) == 1
