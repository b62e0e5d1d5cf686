"""Closed by default (docs/exposure.md): fastdns on 0.0.0.0, clients in another network namespace.

The guest namespace (support.netns.GuestLink, joined to the test's namespace by a veth pair)
gets three source addresses on its link: 10.200.0.2 and 192.168.77.2 (private: answered by
default) and 198.51.100.2 (TEST-NET-2, RFC 5737: "the internet", dropped or REFUSED). They
exist only inside these two namespaces; every query goes to the host end, 10.200.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from support.netns import GUEST_IF, HOST_IF, HOST_IP, GuestLink, run

pytestmark = pytest.mark.privileged

NAME = "open.test"
INTERNET, LAN, PRIVATE = "198.51.100.2", "192.168.77.2", "10.200.0.2"
EXTRA = {INTERNET: ("198.51.100.1", 24), LAN: ("192.168.77.1", 24)}

# One query from a source address in the guest namespace; prints what came back as JSON.
# The same query bytes every time (ID aside): the fast lane's key.
CLIENT = r"""
import json, socket, struct, sys
import dns.message, dns.rcode
server, port, source, proto, name = sys.argv[1:6]
q = dns.message.make_query(name, "A", use_edns=False)
q.id = 0x4242
wire = q.to_wire()
out = {"result": "timeout"}
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0)); s.settimeout(1.0)
        s.sendto(wire, (server, int(port)))
        data = s.recv(65535)
    else:
        s = socket.create_connection((server, int(port)), timeout=2.0, source_address=(source, 0))
        s.sendall(struct.pack("!H", len(wire)) + wire)
        head = s.recv(2)
        if len(head) < 2:
            raise ConnectionResetError
        data = b""
        while len(data) < struct.unpack("!H", head)[0]:
            chunk = s.recv(65535)
            if not chunk:
                raise ConnectionResetError
            data += chunk
    r = dns.message.from_wire(data)
    out = {"result": dns.rcode.to_text(r.rcode()),
           "answers": [rd.to_text() for rrset in r.answer for rd in rrset]}
except TimeoutError:
    pass
except OSError:
    out = {"result": "closed"}
print(json.dumps(out))
"""


@pytest.fixture(name="link", scope="module")
def _link() -> Iterator[GuestLink]:
    if os.geteuid() != 0 or shutil.which("nsenter") is None:
        pytest.fail("the privileged tests need root and nsenter (CI runs them as root)")
    link = GuestLink()
    try:
        for guest_ip, (host_ip, plen) in EXTRA.items():
            run("ip", "addr", "add", f"{host_ip}/{plen}", "dev", HOST_IF)
            link.guest("ip", "addr", "add", f"{guest_ip}/{plen}", "dev", GUEST_IF)
        yield link
    finally:
        link.close()


def ask(link: GuestLink, port: int, source: str, proto: str = "udp") -> dict[str, Any]:
    proc = link.guest(
        sys.executable, "-c", CLIENT, HOST_IP, str(port), source, proto, NAME, timeout=15
    )
    return json.loads(proc.stdout)


def serve(factory: Any, **acl: Any) -> Any:
    section: dict[str, Any] = {"listen": "0.0.0.0", "workers": 1, "graceful_timeout": 1.0}
    if acl:
        section["acl"] = acl
    return factory(
        {"hostResolver": {"hosts": {NAME: "10.9.9.9"}}, "fastdns": section}, wildcard_listen=True
    )


ANSWERED = {"result": "NOERROR", "answers": ["10.9.9.9"]}


def test_wildcard_listen_drops_the_internet_by_default(
    link: GuestLink, fastdns_factory: Any
) -> None:
    fdp = serve(fastdns_factory)
    udp, tcp = fdp.udp_port, fdp.tcp_port
    # Private sources are answered, the second time from the cache's fast lane.
    for source in (PRIVATE, LAN, LAN):
        assert ask(link, udp, source) == ANSWERED, source
    assert ask(link, tcp, LAN, "tcp") == ANSWERED
    # The internet gets nothing, over UDP (the same bytes the fast lane holds) or TCP.
    assert ask(link, udp, INTERNET) == {"result": "timeout"}
    assert ask(link, tcp, INTERNET, "tcp")["result"] in ("closed", "timeout")
    assert ask(link, udp, LAN) == ANSWERED
    assert fdp.stop() == 0
    line = next(ln for ln in fdp.stderr.splitlines() if "serving DNS on 0.0.0.0" in ln)
    assert "acl: allow 127.0.0.0/8,10.0.0.0/8," in line and "(drop others)" in line, line
    assert "rate limiting off" in line, line


def test_refuse_answers_the_internet_refused(link: GuestLink, fastdns_factory: Any) -> None:
    fdp = serve(fastdns_factory, action="refuse")
    udp, tcp = fdp.udp_port, fdp.tcp_port
    assert ask(link, udp, LAN) == ANSWERED
    assert ask(link, udp, LAN) == ANSWERED
    assert ask(link, udp, INTERNET) == {"result": "REFUSED", "answers": []}
    assert ask(link, tcp, INTERNET, "tcp")["result"] in ("closed", "timeout")
    assert ask(link, tcp, PRIVATE, "tcp") == ANSWERED


def test_allowing_the_internet_is_explicit(link: GuestLink, fastdns_factory: Any) -> None:
    fdp = serve(fastdns_factory, allow=["198.51.100.0/24"])
    assert ask(link, fdp.udp_port, INTERNET) == ANSWERED
    assert ask(link, fdp.tcp_port, INTERNET, "tcp") == ANSWERED
    assert ask(link, fdp.udp_port, LAN) == {"result": "timeout"}  # not in this list
