"""Response rate limiting for UDP (docs/exposure.md), without sockets: token buckets per client
prefix.

A DNS server on an address the internet can reach is a reflector: a spoofed 39-byte TXT query
with EDNS 4096 made fastdns send 1,156 bytes (29.6x). BIND's RRL, unbound's ``ip-ratelimit``
and dnsdist's ``MaxQPSIPRule`` bound what one source gets; so does this, per client prefix
(``ipv4_prefix`` /24, ``ipv6_prefix`` /56: one spoofer, one bucket, whatever address in its
network it forges).

- **Tokens are reply units, not answers.** A reply of up to ``UNIT`` (512) bytes costs one
  token; a larger one costs ``size / UNIT`` (1,156 bytes: 2.26). A query is admitted while its
  prefix holds a whole token; its reply's extra units are charged when it is sent (the bucket
  may go below zero, down to ``-burst``). So ``qps`` bounds a prefix's bytes per second too,
  to about ``qps * 512`` however large the answers it asks for: the amplification is contained
  by the bytes, not just by the count.
- **Slip** (BIND RRL): of the queries refused for want of tokens, every ``slip``-th gets an
  empty reply with TC=1 (no larger than the query) so a real client behind a spoofed flood
  retries over TCP, which proves its address; the others are dropped. ``slip: 0`` drops all.
- **Bounded**: at most ``max_clients`` buckets, least recently used evicted first (a returning
  prefix starts with a full bucket again). tests/unit/test_ratelimit.py measures the bytes per
  entry.
- **TCP is exempt**: its handshake proves the source address, so it cannot be reflected, and
  its connections are bounded per source by ``tcp_max_connections_per_source`` (as BIND RRL
  exempts TCP).
- **Per worker**: each worker process keeps its own table with ``qps / workers`` and
  ``burst / workers`` (at least one): the kernel spreads a client's datagrams over the workers
  by its source port (SO_REUSEPORT), so the sum approaches ``qps`` for a client that changes
  ports (stub resolvers and spoofed floods do). A client that keeps one source port meets one
  worker and gets ``qps / workers``. docs/exposure.md has the figures.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from fastdns.policy.acl import address

UNIT = 512  # reply bytes one token pays for: the classic UDP DNS message (RFC 1035 §4.2.1)
PASS, SLIP, DROP = 0, 1, 2  # what ``RateLimiter.admit`` says

DEFAULT_EXEMPT: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
_V6_TAG = 1 << 129  # keeps IPv6 prefix keys apart from IPv4 ones (and every key above zero)
_V4_TAG = 1 << 128


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """``fastdns.ratelimit``; ``qps: 0`` is off."""

    qps: float = 0.0  # reply units (<= 512 bytes) per second per client prefix, all workers
    burst: float = 0.0  # bucket size in reply units; 0 = one second's worth (qps)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    max_clients: int = 10000  # buckets per worker (LRU)
    slip: int = 2  # every slip-th limited query gets an empty TC=1 reply; 0 = drop all
    exempt: tuple[str, ...] = DEFAULT_EXEMPT

    @property
    def enabled(self) -> bool:
        return self.qps > 0


def prefix_key(host: str, ipv4_prefix: int, ipv6_prefix: int) -> int | None:
    """The bucket key of the prefix ``host`` falls in (an IPv4-mapped address as IPv4); a
    positive int, or None when ``host`` is not an address."""
    a = address(host)
    if a is None:
        return None
    version, n = a
    if version == 4:
        return _V4_TAG | (n >> (32 - ipv4_prefix))
    return _V6_TAG | (n >> (128 - ipv6_prefix))


class Bucket:
    """One prefix's tokens as of ``stamp``, and how many of its queries were limited."""

    __slots__ = ("limited", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.limited = 0


class RateLimiter:
    """Token buckets keyed by ``prefix_key``; the clock is the caller's (``now`` arguments)."""

    __slots__ = ("buckets", "burst", "max_clients", "rate", "slip")

    def __init__(self, rate: float, burst: float, max_clients: int, slip: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self.slip = slip
        self.buckets: OrderedDict[int, Bucket] = OrderedDict()

    @classmethod
    def for_worker(cls, config: RateLimitConfig, workers: int) -> RateLimiter:
        """One worker's share of the configured limit (see the module docstring)."""
        n = max(1, workers)
        burst = config.burst or config.qps
        return cls(config.qps / n, max(1.0, burst / n), config.max_clients, config.slip)

    def admit(self, key: int, now: float) -> int:
        """PASS (one token taken), SLIP (send an empty TC=1 reply) or DROP."""
        buckets = self.buckets
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = Bucket(self.burst, now)
            if len(buckets) > self.max_clients:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            if now > b.stamp:
                tokens = b.tokens + (now - b.stamp) * self.rate
                b.tokens = tokens if tokens < self.burst else self.burst
                b.stamp = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return PASS
        b.limited += 1
        if self.slip and b.limited % self.slip == 0:
            return SLIP
        return DROP

    def charge(self, key: int, size: int) -> None:
        """A reply of ``size`` bytes went to ``key``'s prefix: take its units beyond the one
        ``admit`` took (a bucket stops at ``-burst``, so a debt is repaid within 2*burst/rate)."""
        if size <= UNIT:
            return
        b = self.buckets.get(key)
        if b is not None:
            b.tokens = max(-self.burst, b.tokens - (size - UNIT) / UNIT)

    def __len__(self) -> int:
        return len(self.buckets)


def describe(config: RateLimitConfig) -> str:
    """The rate limit for the start-up log line."""
    if not config.enabled:
        return "rate limiting off"
    return (
        f"rate limiting {config.qps:g} qps burst {config.burst or config.qps:g} per "
        f"/{config.ipv4_prefix} and /{config.ipv6_prefix}, slip {config.slip}, exempt "
        f"{','.join(config.exempt) or 'none'}"
    )
