"""The addresses of this host's interfaces, from one rtnetlink dump (RTM_GETADDR, rtnetlink(7)).

The rules process asks which interfaces hold ``fastdns.host_ip`` to scope PREROUTING to them
(``fastdns.rules.scope_interfaces``). Netlink rather than ``ip -j address``: no dependency on
iproute2 and every address, secondary ones included (``SIOCGIFADDR`` gives only the primary).
Standard library only.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_GETADDR = 20, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2
HEADER = struct.Struct("=IHHII")  # nlmsghdr
IFADDRMSG = struct.Struct("=BBBBI")
RTATTR = struct.Struct("=HH")
TIMEOUT = 2.0  # seconds; the kernel answers a dump at once
MAX_BYTES = 4 << 20  # bound on the whole dump (tens of thousands of addresses)


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_dump(data: bytes) -> tuple[list[tuple[int, str]], bool]:
    """(interface index, address) pairs in ``data`` (one recv), and whether the dump ended."""
    out: list[tuple[int, str]] = []
    pos = 0
    while pos + HEADER.size <= len(data):
        length, kind, _, _, _ = HEADER.unpack_from(data, pos)
        if length < HEADER.size or pos + length > len(data):
            raise OSError("truncated netlink message")
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (errno,) = struct.unpack_from("=i", data, pos + HEADER.size)
            raise OSError(-errno, "RTM_GETADDR failed")
        if kind == RTM_NEWADDR:
            out += _addresses(data[pos + HEADER.size : pos + length])
        pos += _align(length)
    return out, False


def _addresses(msg: bytes) -> list[tuple[int, str]]:
    family, _, _, _, index = IFADDRMSG.unpack_from(msg)
    attrs: dict[int, bytes] = {}
    pos = IFADDRMSG.size
    while pos + RTATTR.size <= len(msg):
        alen, atype = RTATTR.unpack_from(msg, pos)
        if alen < RTATTR.size:
            break
        attrs[atype] = msg[pos + RTATTR.size : pos + alen]
        pos += _align(alen)
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point
    # links (rtnetlink(7)), and the only one for IPv6.
    raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return []
    try:
        return [(index, str(ipaddress.ip_address(raw)))]
    except ValueError:
        return []


def interface_addresses() -> dict[str, list[str]]:
    """{interface name: its addresses}; ``OSError`` when the kernel does not answer."""
    pairs: list[tuple[int, str]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as sock:
        sock.settimeout(TIMEOUT)
        header = HEADER.pack(
            HEADER.size + IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0
        )
        request = header + IFADDRMSG.pack(0, 0, 0, 0, 0)
        sock.sendto(request, (0, 0))
        total = 0
        done = False
        while not done:
            data = sock.recv(65536)
            total += len(data)
            if not data or total > MAX_BYTES:
                raise OSError("the netlink address dump did not end")
            found, done = parse_dump(data)
            pairs += found
    names = dict(socket.if_nameindex())
    out: dict[str, list[str]] = {}
    for index, addr in pairs:
        out.setdefault(names.get(index, f"#{index}"), []).append(addr)
    return out
