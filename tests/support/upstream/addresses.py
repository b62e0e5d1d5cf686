"""Loopback addresses for fake upstreams. The test namespace routes all of 127.0.0.0/8 to lo, so
every fake gets an address of its own and can sit on port 53 (a resolv.conf has no port
syntax). 127.0.0.1-9 are left to the server under test."""

from __future__ import annotations

import ipaddress
import itertools
import socket
import threading

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
