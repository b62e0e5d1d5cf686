"""The response rate limiter (fastdns.ratelimit; docs/exposure.md), with an explicit clock."""

from __future__ import annotations

import tracemalloc

from fastdns.policy.ratelimit import (
    DROP,
    PASS,
    SLIP,
    UNIT,
    RateLimitConfig,
    RateLimiter,
    describe,
    prefix_key,
)

KEY = prefix_key("198.51.100.2", 24, 56)
assert KEY is not None


def test_prefix_keys() -> None:
    assert prefix_key("198.51.100.2", 24, 56) == prefix_key("198.51.100.250", 24, 56)
    assert prefix_key("198.51.100.2", 24, 56) != prefix_key("198.51.101.2", 24, 56)
    assert prefix_key("198.51.100.2", 32, 56) != prefix_key("198.51.100.3", 32, 56)
    assert prefix_key("::ffff:198.51.100.9", 24, 56) == KEY
    a = prefix_key("2001:db8:0:ff00::1", 24, 56)
    assert a == prefix_key("2001:db8:0:ff12::7", 24, 56)  # the same /56
    assert a != prefix_key("2001:db8:0:100::1", 24, 56)
    assert prefix_key("0.0.0.1", 24, 56) != prefix_key("::1", 24, 128)
    assert all(k and k > 0 for k in (prefix_key("0.0.0.0", 24, 56), prefix_key("::", 8, 16)))
    assert prefix_key("junk", 24, 56) is None


def test_token_bucket_burst_then_rate() -> None:
    r = RateLimiter(rate=10, burst=5, max_clients=100, slip=0)
    now = 1000.0
    assert [r.admit(KEY, now) for _ in range(7)] == [PASS] * 5 + [DROP] * 2
    assert r.admit(KEY, now + 0.05) == DROP  # half a token
    assert r.admit(KEY, now + 0.1) == PASS  # one token after 0.1 s at 10/s
    assert r.admit(KEY, now + 0.1) == DROP
    # Refill stops at the burst: after a long pause, 5 again, not 100.
    later = now + 10
    assert [r.admit(KEY, later) for _ in range(6)] == [PASS] * 5 + [DROP]
    # A clock that goes backwards takes nothing and gives nothing.
    assert r.admit(KEY, later - 5) == DROP


def test_slip_every_second_limited_reply() -> None:
    r = RateLimiter(rate=1, burst=1, max_clients=100, slip=2)
    assert r.admit(KEY, 0.0) == PASS
    assert [r.admit(KEY, 0.0) for _ in range(6)] == [DROP, SLIP] * 3
    r3 = RateLimiter(rate=1, burst=1, max_clients=100, slip=3)
    r3.admit(KEY, 0.0)
    assert [r3.admit(KEY, 0.0) for _ in range(6)] == [DROP, DROP, SLIP] * 2
    r1 = RateLimiter(rate=1, burst=1, max_clients=100, slip=1)
    r1.admit(KEY, 0.0)
    assert [r1.admit(KEY, 0.0) for _ in range(3)] == [SLIP] * 3


def test_prefixes_are_independent() -> None:
    r = RateLimiter(rate=1, burst=2, max_clients=100, slip=0)
    other = prefix_key("198.51.101.2", 24, 56)
    assert other is not None
    assert [r.admit(KEY, 0.0) for _ in range(3)] == [PASS, PASS, DROP]
    assert [r.admit(other, 0.0) for _ in range(3)] == [PASS, PASS, DROP]


def test_large_replies_cost_by_their_bytes() -> None:
    """A 1,156-byte TXT reply (the issue's 29.6x amplifier) costs 2.26 units: at 10 units a
    second a prefix gets about 4.4 such replies a second, not 10."""
    r = RateLimiter(rate=10, burst=10, max_clients=100, slip=0)
    answered = 0
    for tick in range(100):  # ten seconds in 0.1 s steps, a query every step
        now = tick / 10
        if r.admit(KEY, now) == PASS:
            answered += 1
            r.charge(KEY, 1156)
    sent = answered * 1156
    assert sent <= (10 * 10 + 10) * UNIT * 1.1  # rate * seconds + burst, in units of 512 B
    assert 35 <= answered <= 55
    r.charge(KEY, UNIT)  # one unit: nothing more to take
    r.charge(KEY, 10**9)
    assert r.buckets[KEY].tokens == -r.burst  # a debt is bounded
    r.charge(prefix_key("203.0.113.1", 24, 56) or 0, 4096)  # no bucket: nothing happens


def test_lru_bound() -> None:
    r = RateLimiter(rate=1, burst=1, max_clients=3, slip=0)
    keys = [prefix_key(f"203.0.{i}.1", 24, 56) or 0 for i in range(5)]
    for k in keys[:3]:
        assert r.admit(k, 0.0) == PASS
    assert r.admit(keys[0], 0.0) == DROP  # keys[0] is now the most recent
    r.admit(keys[3], 0.0)  # evicts keys[1], the least recently used
    assert len(r) == 3 and keys[1] not in r.buckets and keys[0] in r.buckets
    for i in range(1000):
        r.admit(prefix_key(f"10.{i // 256}.{i % 256}.1", 24, 56) or 0, 0.0)
    assert len(r) == 3


def test_per_worker_share() -> None:
    cfg = RateLimitConfig(qps=100, burst=40)
    r = RateLimiter.for_worker(cfg, 2)
    assert (r.rate, r.burst, r.max_clients, r.slip) == (50, 20, 10000, 2)
    r = RateLimiter.for_worker(RateLimitConfig(qps=3), 4)
    assert r.rate == 0.75 and r.burst == 1.0  # burst = qps by default, at least one token
    assert "3 qps" in describe(RateLimitConfig(qps=3))
    assert describe(RateLimitConfig()) == "rate limiting off"


def test_memory_per_client_is_bounded() -> None:
    """The table's cost per prefix (the docs state max_clients x this)."""
    n = 10000
    r = RateLimiter(rate=1, burst=5, max_clients=n, slip=2)
    hosts = [f"10.{i // 256}.{i % 256}.0" for i in range(n)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, host in enumerate(hosts):  # the keys are made here: they are in the table too
        r.admit(prefix_key(host, 24, 56) or 0, float(i))
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    print(f"rate limiter: {per_entry:.0f} bytes per client prefix")
    assert len(r) == n
    assert per_entry < 400
