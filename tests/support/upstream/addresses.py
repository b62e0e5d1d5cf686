"""Loopback addresses for fake upstreams. The test namespace routes all of 127.0.0.0/8 to lo, so
every fake gets an address of its own and can sit on port 53 (a resolv.conf has no port
syntax). 127.0.0.1-9 are left to the server under test.

Two blocks that never meet: ``next_address`` counts up from 127.0.0.10 and stops short of
127.200.0.0; ``dead_address`` hands out addresses in 127.200.0.0/16, where no test binds
anything. An address is therefore dead by construction, not because a probe found it free
(a probe that binds and closes proves nothing about the moment after it)."""

from __future__ import annotations

import ipaddress
import itertools
import threading

_address_lock = threading.Lock()
_address_counter = itertools.count(10)
_dead_counter = itertools.count(1)
_DEAD_BLOCK = (127 << 24) | (200 << 16)  # 127.200.0.0/16: only dead_address hands these out


def next_address() -> str:
    """A 127.x.y.z address that no earlier call in this process returned."""
    with _address_lock:
        n = next(_address_counter)
        while n & 0xFF in (0, 255):  # keep the last octet 1..254: nobody has to think about it
            n = next(_address_counter)
    if (127 << 24) | n >= _DEAD_BLOCK:
        raise RuntimeError("ran out of 127.0.0.0/8 addresses below the dead block")
    return str(ipaddress.IPv4Address((127 << 24) | n))


def dead_address() -> str:
    """A loopback address in 127.200.0.0/16 that nothing listens on, on any port.

    UDP sent there gets ICMP port unreachable (``ECONNREFUSED`` on a connected socket), TCP
    gets a RST. For an address that takes queries and never answers, use
    ``FakeUpstream(addr, blackhole=True)``.
    """
    with _address_lock:
        n = next(_dead_counter)
        while n & 0xFF in (0, 255):
            n = next(_dead_counter)
    if n >= 1 << 16:
        raise RuntimeError("ran out of dead addresses")
    return str(ipaddress.IPv4Address(_DEAD_BLOCK | n))
