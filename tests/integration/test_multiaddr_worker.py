"""One worker serving several addresses (node-local mode, docs/nodelocal.md): a UDP datapath and
a TCP server per address over one shared state, on both datapaths. Real loopback sockets on
127.0.0.1 and 127.0.0.2 and real clients (dnspython)."""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
from support.inproc import InProcessFactory, InProcessServer

from fastdns.system.sockets import bind_tcp, bind_udp

NAME, ADDR = "multi.test", "10.9.8.7"
OTHER = "127.0.0.2"
DATAPATHS = [
    "python",
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("fastdns.serve._cengine") is None,
            reason="the compiled datapath is not built",
        ),
    ),
]


def serve_two(inproc: InProcessFactory, datapath: str) -> tuple[InProcessServer, int, int]:
    """A worker on 127.0.0.1 (its ``listen``) and on 127.0.0.2, same ports on both."""
    udp, tcp = bind_udp(OTHER, 0), bind_tcp(OTHER, 0)
    server = inproc(
        {"hostResolver": {"hosts": {NAME: ADDR}}, "fastdns": {"datapath": datapath}},
        more_socks=[(udp, tcp)],
    )
    return server, udp.getsockname()[1], tcp.getsockname()[1]


def ask_udp(query: bytes, host: str, port: int) -> dns.message.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (host, port))
        data, source = s.recvfrom(65535)
    assert source == (host, port)  # answered from the address asked
    return dns.message.from_wire(data)


def answers(msg: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in msg.answer for rd in rrset]


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_every_address_answers_over_udp_and_tcp(inproc: InProcessFactory, datapath: str) -> None:
    server, udp_port, tcp_port = serve_two(inproc, datapath)
    worker = server.worker
    assert len(worker.datapaths) == 2 and len(worker.tcp_servers) == 2
    query = dns.message.make_query(NAME, dns.rdatatype.A)
    query.id = 4242
    data = query.to_wire()  # the same bytes every time: the ready-reply table's form
    for host, port in [("127.0.0.1", server.udp_port)] * 3 + [(OTHER, udp_port)] * 3:
        assert answers(ask_udp(data, host, port)) == [ADDR], host
    for host, port in (("127.0.0.1", server.tcp_port), (OTHER, tcp_port)):
        assert answers(dns.query.tcp(query, host, port=port, timeout=2)) == [ADDR], host
    server.call(lambda: [d.fold() for d in worker.datapaths])
    assert server.counter("requests", "udp", "A") == 6
    assert server.counter("requests", "tcp", "A") == 2
    if datapath == "compiled":
        # The second address's engine was told the form the first address's query made: it
        # answered every repeat itself (the one gate and form table mirror into both engines).
        counts = server.call(lambda: [d.engine.counters() for d in worker.datapaths])
        assert counts[0]["answered"] >= 1 and counts[1]["answered"] == 3, counts
        assert server.counter("datapath_datagrams", "compiled") >= 4


@pytest.mark.parametrize("datapath", DATAPATHS)
def test_clear_and_close_cover_every_address(inproc: InProcessFactory, datapath: str) -> None:
    server, udp_port, _ = serve_two(inproc, datapath)
    worker = server.worker
    query = dns.message.make_query(NAME, dns.rdatatype.A)
    data = query.to_wire()
    for _ in range(3):
        ask_udp(data, OTHER, udp_port)
    assert server.call(lambda: len(worker.pipeline.cache.front.forms)) >= 1  # type: ignore[union-attr]
    server.call(lambda: [hook() for hook in worker.reload_hooks])  # a resolv.conf change
    assert server.call(lambda: len(worker.pipeline.cache.front.forms)) == 0  # type: ignore[union-attr]
    server.call(lambda: [d.fold() for d in worker.datapaths])
    before = server.counter("datapath_datagrams", "compiled")
    assert answers(ask_udp(data, OTHER, udp_port)) == [ADDR]  # by the full path, not a stale form
    server.call(lambda: [d.fold() for d in worker.datapaths])
    assert server.counter("datapath_datagrams", "compiled") == before
    socks: list[Any] = [s for pair in worker.listeners for s in pair]
    server.close()
    assert all(s.fileno() == -1 for s in socks)
    state = worker.state
    assert state is not None and state.gate.mirror is None
    assert state.cache is not None and state.cache.front.mirror is None
