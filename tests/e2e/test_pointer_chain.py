"""A query whose records' owner names all point at the top of one long chain of compression
pointers (support.crafted.pointer_chain): every rule holds, so it must be answered as a query,
and it must not stall the worker. A parser that walks the chain once per record spends
seconds of CPU on one 64 KB packet, and the only worker answers nobody meanwhile.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import dns.rcode
import pytest
from support.clients import recv_frame
from support.crafted import pointer_chain
from support.server import FastDNSProcess

pytestmark = pytest.mark.e2e

NAME = "chain.ptr.test"
QUESTION = b"\x05chain\x03ptr\x04test\x00\x00\x01\x00\x01"
HOPS, RECORDS = 8000, 4000  # 64,032 bytes: as big as a UDP datagram on loopback allows
BOUND = 2.0  # seconds for everything after the attack to be answered (it takes ~10 ms)


@pytest.fixture(name="server")
def _server(fastdns_factory: Any) -> Iterator[FastDNSProcess]:
    # no upstream is needed: the name is a static host, answered by the only worker
    server: FastDNSProcess = fastdns_factory(
        {"fastdns": {"workers": 1}, "hostResolver": {"hosts": {NAME: "10.0.0.9"}}}
    )
    yield server
    assert "Traceback" not in server.stderr, server.stderr


def probe(qid: int) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + QUESTION


def check(reply: bytes, qid: int, rcode: int) -> None:
    got_id, flags, qd, an = struct.unpack_from("!HHHH", reply)
    assert (got_id, flags & 0x8000, flags & 0xF) == (qid, 0x8000, rcode), reply[:12].hex()
    if rcode == dns.rcode.NOERROR:  # the host's address, for the question asked
        assert (qd, an) == (1, 1) and reply[12 : 12 + len(QUESTION)] == QUESTION
        assert reply.endswith(b"\x00\x04\x0a\x00\x00\x09"), reply.hex()


def test_pointer_chains_over_udp_do_not_stall_the_worker(server: FastDNSProcess) -> None:
    attacks = {
        0xA001: (pointer_chain(QUESTION, HOPS, RECORDS, qid=0xA001), dns.rcode.NOERROR),
        0xA002: (pointer_chain(QUESTION, HOPS, RECORDS, qid=0xA002), dns.rcode.NOERROR),
        # FORMERR, found only after the last record's owner was checked
        0xA003: (
            pointer_chain(QUESTION, HOPS, RECORDS - 1, qid=0xA003, trailing=b"\x00"),
            dns.rcode.FORMERR,
        ),
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((server.address, server.udp_port))
        for packet, _ in attacks.values():
            assert len(packet) > 60_000
            s.send(packet)
        s.send(probe(0x0B0B))
        deadline = time.monotonic() + BOUND
        want = {**{qid: rcode for qid, (_, rcode) in attacks.items()}, 0x0B0B: dns.rcode.NOERROR}
        while want:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = s.recv(65535)
            except TimeoutError:
                pytest.fail(f"no reply within {BOUND}s to {sorted(hex(q) for q in want)}")
            qid = struct.unpack_from("!H", reply)[0]
            check(reply, qid, want.pop(qid))
    assert server.query(NAME, "A").rcode() == dns.rcode.NOERROR


def test_a_pointer_chain_over_tcp_does_not_stall_the_worker(server: FastDNSProcess) -> None:
    attack = pointer_chain(QUESTION, HOPS, RECORDS, qid=0xA004)
    frames = [struct.pack("!H", len(p)) + p for p in (attack, probe(0x0C0C))]
    with socket.create_connection((server.address, server.tcp_port), timeout=BOUND) as s:
        s.sendall(b"".join(frames))
        deadline = time.monotonic() + BOUND
        want = {0xA004, 0x0C0C}  # a TCP connection's replies may come in any order
        while want:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = recv_frame(s)
            except TimeoutError:
                pytest.fail(f"no reply within {BOUND}s to {sorted(hex(q) for q in want)}")
            qid = struct.unpack_from("!H", reply)[0]
            want.remove(qid)
            check(reply, qid, dns.rcode.NOERROR)
