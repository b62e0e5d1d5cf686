"""Differential fuzz: the reply the compiled relay sends a client for an answer it matched
(fastdns/serve/cengine/render.c) is byte for byte the one Python sends: ``PacketCache.admit``'s
rendering when the reply is stored (the cache's header, the client's question, the TTLs the
entry shows, our OPT record when the client sent one), ``compose.splice`` when it is not.
Hypothesis drives queries with and without EDNS, DO and RD, replies of every shape and TTL
form and their mutations (support.fuzzing), under several cache configs and OPT sizes.

Skipped when the extension is not built.
"""

from __future__ import annotations

import dataclasses
import random

import dns.flags
import dns.message
import pytest
from hypothesis import given
from support.fuzzing import FUZZ, exchanges, reply_to

from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.resolve.cache.store import PacketCache

cengine = pytest.importorskip("fastdns.serve._cengine")

CONFIGS = [
    (CacheConfig(), 1232),
    (dataclasses.replace(CacheConfig(), min_ttl=60, max_ttl=120, denial_max_ttl=30), 4096),
    (dataclasses.replace(CacheConfig(), servfail_ttl=0, denial_capacity=0), 512),
    (dataclasses.replace(CacheConfig(), capacity=0), 1232),
]


def python_reply(query: bytes, reply: bytes, cfg: CacheConfig, opt_size: int) -> bytes:
    """What Relay.answered sends (before the client's size limit)."""
    q = wire.parse_query(query)
    cache = PacketCache(cfg, opt_size=opt_size)
    out, _ = cache.admit(q, reply, "forward", None, 1000.0)
    if out is reply:  # not stored: the upstream's, with the client's ID and question
        return compose.splice(reply, q.id, q.question, q.rd)
    return out


def check(query: bytes, reply: bytes) -> None:
    """Also with AA and AD set, and RA cleared, by the upstream (the cache's header differs)."""
    compare(query, reply)
    if len(reply) >= 4:
        flagged = reply[:2] + bytes(((reply[2] | 0x04), (reply[3] | 0x20) & ~0x80)) + reply[4:]
        compare(query, flagged)


def compare(query: bytes, reply: bytes) -> None:
    q = wire.parse_query(query)
    if not wire.question_matches(reply, q):
        return  # the relay never hands such a reply on
    if reply[3] & 0xF in wire.FAILOVER_RCODES or reply[2] & 2:
        return  # failover and TC replies go to the state machine, never rendered
    for cfg, opt_size in CONFIGS:
        limits = (cfg.min_ttl, cfg.max_ttl, cfg.denial_max_ttl, cfg.servfail_ttl)
        store = (cfg.capacity, cfg.denial_capacity, opt_size)
        rendered = cengine.render(query, reply, limits, store)
        expected = python_reply(query, reply, cfg, opt_size)
        assert rendered is None or rendered == expected, (cfg, query.hex(), reply.hex())
        assert rendered is not None or len(expected) > 65535 - 11  # only a too-big one is left


@FUZZ
@given(exchange=exchanges())
def test_c_and_python_render_alike(exchange: tuple[bytes, bytes, bytes]) -> None:
    query, reply, damaged = exchange
    check(query, reply)
    check(query, damaged)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_seeded_slice_of_whole_exchanges(seed: int) -> None:
    rng = random.Random(seed)
    stored = spliced = 0
    for i in range(1500):
        rdtype = rng.choice(("A", "AAAA", "TXT", "MX", "CNAME", "PTR", "ANY"))
        q = dns.message.make_query(
            f"N{i}.Fuzz.test", rdtype, use_edns=rng.random() < 0.5, want_dnssec=rng.random() < 0.2
        )
        if rng.random() < 0.3:
            q.flags &= ~dns.flags.RD
        query = q.to_wire()
        reply = reply_to(query, rng)
        check(query, reply)
        qq = wire.parse_query(query)
        out, _ = PacketCache(CacheConfig()).admit(qq, reply, "forward", None, 1000.0)
        if out is reply:
            spliced += 1
        else:
            stored += 1
    assert stored > 300 and spliced > 100, (stored, spliced)
