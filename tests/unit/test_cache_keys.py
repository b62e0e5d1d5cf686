"""The cache's key mirror (``PacketCache.keys``, told every key that comes and goes): after
any sequence of stores, replacements, evictions, expiries, uncacheable answers and clears, the
mirror holds exactly the keys the cache holds (the compiled relay trusts it to leave cached
names to Python: fastdns/serve/crelay.py)."""

from __future__ import annotations

import random

import pytest
from test_cache import SOA, answer, cache, make_query, parse

from fastdns.resolve.cache.store import PacketCache

T0 = 1000.0


class SetMirror:
    def __init__(self) -> None:
        self.keys: set[bytes] = set()

    def key_add(self, key: bytes, /) -> None:
        self.keys.add(key)

    def key_discard(self, key: bytes, /) -> None:
        self.keys.discard(key)

    def key_clear(self) -> None:
        self.keys.clear()


def held(c: PacketCache) -> set[bytes]:
    return set(c.success) | set(c.denial)


@pytest.mark.parametrize("seed", range(5))
def test_the_mirror_holds_exactly_the_cached_keys(seed: int) -> None:
    rng = random.Random(seed)
    c = cache(capacity=20, denial_capacity=10, servfail_ttl=5)
    mirror = SetMirror()
    c.keys = mirror
    now = T0
    for _ in range(600):
        name = f"n{rng.randrange(40)}.example.com"
        msg = make_query(name, do=rng.random() < 0.2)
        op = rng.random()
        if op < 0.45:  # a positive answer, maybe with a TTL of 0 (never cached: forgets)
            ttl = rng.choice((0, 1, 30, 300))
            c.admit(parse(msg), answer(msg, f"{name}. {ttl} IN A 192.0.2.1"), "forward", None, now)
        elif op < 0.65:  # a denial (moves the key between the maps)
            reply = answer(msg, rcode=3, authority=(SOA,))
            c.admit(parse(msg), reply, "forward", None, now)
        elif op < 0.72:  # an uncacheable reply (TC): the old entry is forgotten
            c.admit(parse(msg), answer(msg, tc=True), "forward", None, now)
        elif op < 0.76:
            c.admit(parse(msg), answer(msg, rcode=2), "forward", None, now)  # SERVFAIL
        elif op < 0.97:  # a lookup: an expired entry is removed
            c.get(parse(msg), now)
        else:
            c.clear()
        now += rng.choice((0.0, 0.5, 2.0, 40.0))
        assert mirror.keys == held(c)


def test_without_a_mirror_nothing_is_told() -> None:
    c = cache()
    msg = make_query()
    c.admit(parse(msg), answer(msg, "www.example.com. 60 IN A 192.0.2.1"), "forward", None, T0)
    assert c.keys is None and len(c) == 1
