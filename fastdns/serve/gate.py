"""The per-source verdict the UDP reader and the TCP acceptor act on, cached per address.

``fastdns.acl`` says who may query and ``fastdns.ratelimit`` which of them are rate limited;
judging an address takes 1-2 microseconds, more than the cache-hit fast lane spends on a
whole query, so the verdict is kept per source address in a plain dict that the reader
consults with one ``get``: ``PASS`` (0, falsy: answer), ``DENY`` (-1), or a positive rate-limit
bucket key. The dict is bounded: past ``CAPACITY`` addresses it is emptied and refilled (a
source-spraying flood then pays those microseconds per datagram, as without the cache).
"""

from __future__ import annotations

from typing import Protocol

from fastdns.policy.acl import AclConfig, NetworkSet
from fastdns.policy.ratelimit import RateLimitConfig, RateLimiter, prefix_key

PASS, DENY = 0, -1
MISS = -2  # ``verdicts.get(host, MISS)``: not judged yet
CAPACITY = 4096  # addresses whose verdict is kept per worker (about 70 bytes each)


class PassMirror(Protocol):
    """Told the PASS verdicts (the compiled datapath answers those sources itself)."""

    def allow(self, host: str, /) -> object: ...

    def forget(self) -> object: ...


class Gate:
    """The ACL and the rate limiter of one worker, and their verdicts by source address."""

    __slots__ = ("acl", "action", "exempt", "limiter", "mirror", "rrl", "verdicts")

    def __init__(self, acl: AclConfig, rrl: RateLimitConfig, workers: int = 1) -> None:
        self.acl = NetworkSet(acl.allow)
        self.action = acl.action
        self.rrl = rrl
        self.exempt = NetworkSet(rrl.exempt)
        self.limiter = RateLimiter.for_worker(rrl, workers) if rrl.enabled else None
        self.verdicts: dict[str, int] = {}
        self.mirror: PassMirror | None = None  # told every PASS and every emptying

    def judge(self, host: str) -> int:
        """The verdict for ``host`` (kept for the next datagram from it)."""
        if host not in self.acl:
            v = DENY
        elif self.limiter is None or host in self.exempt:
            v = PASS
        else:
            v = prefix_key(host, self.rrl.ipv4_prefix, self.rrl.ipv6_prefix) or DENY
        verdicts, mirror = self.verdicts, self.mirror
        if len(verdicts) >= CAPACITY:
            verdicts.clear()
            if mirror is not None:
                mirror.forget()
        verdicts[host] = v
        if v == PASS and mirror is not None:
            mirror.allow(host)
        return v

    def allows(self, host: str) -> bool:
        """Whether the ACL lets ``host`` in (the TCP acceptor: TCP is not rate limited)."""
        v = self.verdicts.get(host, MISS)
        if v == MISS:
            v = self.judge(host)
        return v != DENY
