"""DNS clients for tests: dnspython queries, raw wire exchanges and the ``dig`` binary.

Every helper takes an explicit loopback address and refuses anything else; none of them ever
reads /etc/resolv.conf.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

import dns.flags
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype

from support import require_loopback

DEFAULT_EDNS_PAYLOAD = 1232  # used when do=True and no edns size is given (DNS Flag Day 2020)

# dig options that would make it query servers other than the @server we give (dig accepts
# unique prefixes, so "+tra" is +trace).
_DIG_FORBIDDEN_OPTIONS = ("trace", "nssearch")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def make_query(
    name: str,
    rdtype: str | int = "A",
    *,
    edns: int | None = None,
    do: bool = False,
    qid: int | None = None,
    rd: bool = True,
    cd: bool = False,
    rdclass: str | int = "IN",
) -> dns.message.QueryMessage:
    """A query message; the name keeps its case. ``edns`` is the UDP size to advertise (None:
    no OPT unless ``do``)."""
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    payload = edns if edns is not None else (DEFAULT_EDNS_PAYLOAD if do else None)
    return dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        payload=payload,
        want_dnssec=do,
        id=qid,
        flags=flags,
    )


def query(
    addr: str,
    port: int,
    name: str,
    rdtype: str | int = "A",
    *,
    tcp: bool = False,
    timeout: float = 2.0,
    edns: int | None = None,
    do: bool = False,
    qid: int | None = None,
    rd: bool = True,
    cd: bool = False,
    rdclass: str | int = "IN",
) -> dns.message.Message:
    """Send one query with dnspython and return the reply (TC replies are returned as is).

    Raises ``dns.exception.Timeout`` when nothing comes back in ``timeout`` seconds, and
    ``dns.query.BadResponse`` for a reply whose ID or question does not match.
    """
    require_loopback(addr)
    q = make_query(name, rdtype, edns=edns, do=do, qid=qid, rd=rd, cd=cd, rdclass=rdclass)
    if tcp:
        return dns.query.tcp(q, addr, timeout=timeout, port=port)
    return dns.query.udp(q, addr, timeout=timeout, port=port)


def raw_udp(addr: str, port: int, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send ``wire`` from a connected socket; return the first datagram back, or None on timeout.

    A connected socket sees ICMP port unreachable: ``ConnectionRefusedError`` is raised then.
    """
    require_loopback(addr)
    with socket.socket(_family(addr), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((addr, port))
        s.send(wire)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def raw_tcp(addr: str, port: int, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """Send ``wire`` length-prefixed over a new TCP connection; return one framed reply, or None
    if the server closes the connection or ``timeout`` passes first."""
    require_loopback(addr)
    deadline = time.monotonic() + timeout
    with socket.create_connection((addr, port), timeout=timeout) as s:
        s.sendall(struct.pack("!H", len(wire)) + wire)
        header = _recv_exactly(s, 2, deadline)
        if header is None:
            return None
        return _recv_exactly(s, struct.unpack("!H", header)[0], deadline)


def _recv_exactly(s: socket.socket, n: int, deadline: float) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        s.settimeout(left)
        try:
            chunk = s.recv(n - len(buf))
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    """Read one 2-byte-length-framed DNS message from a blocking TCP socket (RFC 7766)."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return buf

    return exactly(struct.unpack("!H", exactly(2))[0])


def dig(
    addr: str, port: int, *args: str, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run ``dig @addr -p port +time=2 +tries=1 ARGS...`` and capture its text output.

    ``args`` may not name another server or ask dig to go elsewhere (+trace, -f); ~/.digrc is
    not read (HOME points at an empty place).
    """
    require_loopback(addr)
    for arg in args:
        if _dig_goes_elsewhere(arg):
            raise ValueError(f"dig argument {arg!r} could send queries elsewhere")
    env = dict(os.environ, HOME="/nonexistent")
    argv = ["dig", f"@{addr}", "-p", str(port), "+time=2", "+tries=1", *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _dig_goes_elsewhere(arg: str) -> bool:
    if arg.startswith(("@", "-f")):
        return True
    option = arg[1:].split("=", 1)[0].lower() if arg.startswith("+") else ""
    return len(option) >= 2 and any(full.startswith(option) for full in _DIG_FORBIDDEN_OPTIONS)
