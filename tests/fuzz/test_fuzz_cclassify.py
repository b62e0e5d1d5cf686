"""Differential fuzz: the C classify (fastdns/serve/cengine/admission.c), which the compiled
relay runs on every answer it hands up, gives ``fastdns.resolve.cache.admission.classify``'s
verdict for the same query and reply: the same kind, life, OPT offset, TTL pairs and as-is
flag, or both None. Hypothesis drives dnspython-built replies (answers, CNAME chains,
NXDOMAIN/NODATA with and without an SOA, SERVFAIL, big RRsets, OPT, every TTL shape including
the top bit set) and their mutations (support.fuzzing), under several cache configs and hints.

Skipped when the extension is not built.
"""

from __future__ import annotations

import dataclasses
import random

import dns.message
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import FUZZ, exchanges, reply_to, valid_queries

from fastdns.config.schema import CacheConfig
from fastdns.dns import wire
from fastdns.resolve.cache.admission import classify

cengine = pytest.importorskip("fastdns.serve._cengine")

CONFIGS = [
    CacheConfig(),
    dataclasses.replace(CacheConfig(), min_ttl=60, max_ttl=120, denial_max_ttl=30),
    dataclasses.replace(CacheConfig(), servfail_ttl=0, max_ttl=86400),
    dataclasses.replace(CacheConfig(), min_ttl=500, max_ttl=100),  # low above high
]


def c_verdict(query: bytes, reply: bytes, cfg: CacheConfig, hint: int | None) -> object:
    limits = (cfg.min_ttl, cfg.max_ttl, cfg.denial_max_ttl, cfg.servfail_ttl)
    return cengine.classify(query, reply, limits, hint)


def check(query: bytes, reply: bytes) -> None:
    q = wire.parse_query(query)
    for cfg in CONFIGS:
        for hint in (None, 0, 45):
            assert c_verdict(query, reply, cfg, hint) == classify(q, reply, cfg, hint), (
                cfg,
                hint,
                query.hex(),
                reply.hex(),
            )


@FUZZ
@given(exchange=exchanges())
def test_c_and_python_classify_any_reply_alike(exchange: tuple[bytes, bytes, bytes]) -> None:
    query, reply, damaged = exchange
    check(query, reply)
    check(query, damaged)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_seeded_slice_of_plausible_replies(seed: int) -> None:
    """Thousands of whole replies (no mutation): every kind of verdict is reached, so a
    generator that lost one would not pass blind."""
    rng = random.Random(seed)
    kinds: dict[object, int] = {}
    for i in range(1500):
        rdtype = rng.choice(("A", "AAAA", "TXT", "MX", "CNAME", "PTR", "ANY"))
        q = dns.message.make_query(f"n{i}.fuzz.test", rdtype, use_edns=rng.random() < 0.5)
        query = q.to_wire()
        reply = reply_to(query, rng)
        check(query, reply)
        v = classify(wire.parse_query(query), reply, CONFIGS[0], None)
        key = None if v is None else (v[0], v[4])
        kinds[key] = kinds.get(key, 0) + 1
    # success as-is and rewritten, denial, servfail, and not cached: each seen often
    for key in ((0, True), (0, False), (1, False), (2, False), None):
        assert kinds.get(key, 0) > 20, kinds


@given(query=valid_queries(), ttl=st.integers(0, 0xFFFFFFFF), minimum=st.integers(0, 0xFFFFFFFF))
def test_soa_timed_denials_alike(query: bytes, ttl: int, minimum: int) -> None:
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    r.set_rcode(3)
    r.authority.append(
        dns.rrset.from_text("fuzz.test.", ttl, "IN", "SOA", f"ns. h. 1 2 3 4 {minimum}")
    )
    check(query, r.to_wire())
