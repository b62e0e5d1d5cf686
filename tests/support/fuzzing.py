"""Hypothesis settings and strategies for the fuzz tests (tests/fuzz).

``FUZZ`` is the settings every fuzz test uses: in CI a fixed, bounded set of examples
(derandomized: the same examples every run, no flaky CI), no deadline (a 2-core machine
shared by several jobs is no place for per-example timing). For a longer, random search:
``FASTDNS_FUZZ_EXAMPLES=20000 FASTDNS_FUZZ_RANDOM=1 tests/netns-run .venv/bin/python -m
pytest tests/fuzz``.
"""

from __future__ import annotations

import os
import random

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from support import mutate

EXAMPLES = int(os.environ.get("FASTDNS_FUZZ_EXAMPLES", "300"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("FASTDNS_FUZZ_RANDOM") != "1",
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

ops = st.lists(
    st.tuples(st.sampled_from(mutate.KINDS), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)),
    max_size=4,
)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def valid_queries(draw: st.DrawFn) -> bytes:
    """A valid query built by dnspython (random name, case, type, EDNS, DO, CD, options)."""
    return mutate.random_query(random.Random(draw(seeds)))


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    """Client query bytes: valid, mutated, structured garbage or raw random bytes."""
    kind = draw(st.sampled_from(("valid", "mutated", "mutated", "header", "raw")))
    if kind == "raw":
        return draw(st.binary(max_size=600))
    if kind == "header":
        fields = draw(
            st.tuples(*[st.integers(0, 0xFFFF)] * 2, *[st.sampled_from(mutate.COUNTS)] * 4)
        )
        return b"".join(v.to_bytes(2, "big") for v in fields) + draw(st.binary(max_size=300))
    base = draw(valid_queries())
    return base if kind == "valid" else mutate.apply(base, draw(ops))


def reply_to(query: bytes, rng: random.Random) -> bytes:
    """A plausible upstream reply to ``query`` (valid dnspython wire): answers of the asked
    type or a CNAME chain, NXDOMAIN/NODATA with or without an SOA, SERVFAIL, big RRsets,
    additional records, OPT with options; compressed as dnspython compresses."""
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    name = q.question[0].name
    qtype = q.question[0].rdtype
    shape = rng.choice(("answer", "answer", "cname", "nxdomain", "nodata", "servfail", "big"))
    ttl = rng.choice((0, 1, 30, 300, 86400, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF))

    def add(section: list[dns.rrset.RRset], owner: dns.name.Name, rdtype: str, *texts: str) -> None:
        section.append(dns.rrset.from_text(owner, ttl, "IN", rdtype, *texts))

    target = dns.name.from_text("target.fuzz.test")
    rdtype = dns.rdatatype.to_text(qtype) if qtype in (1, 28, 16, 15, 5, 12) else "A"
    texts = {
        "A": ["192.0.2.1"],
        "AAAA": ["2001:db8::1"],
        "TXT": ['"hello"'],
        "MX": ["10 mx.fuzz.test."],
        "CNAME": ["c.fuzz.test."],
        "PTR": ["p.fuzz.test."],
    }
    if shape == "answer":
        add(r.answer, name, rdtype, *texts[rdtype])
    elif shape == "cname":
        add(r.answer, name, "CNAME", target.to_text())
        add(r.answer, target, rdtype, *texts[rdtype])
    elif shape in ("nxdomain", "nodata"):
        if shape == "nxdomain":
            r.set_rcode(dns.rcode.NXDOMAIN)
        if rng.random() < 0.8:
            add(
                r.authority,
                dns.name.from_text("fuzz.test"),
                "SOA",
                f"ns.fuzz.test. h.fuzz.test. 1 2 3 4 {rng.choice((0, 60, 3600))}",
            )
    elif shape == "servfail":
        r.set_rcode(dns.rcode.SERVFAIL)
    else:
        addresses = [f"10.0.{i // 256}.{i % 256}" for i in range(rng.randint(20, 120))]
        add(r.answer, name, "A", *addresses)
        add(
            r.authority,
            dns.name.from_text("fuzz.test"),
            "NS",
            *[f"ns{i}.fuzz.test." for i in range(rng.randint(0, 8))] or ["ns.fuzz.test."],
        )
        add(r.additional, dns.name.from_text("ns0.fuzz.test"), "A", "192.0.2.53")
    if q.edns >= 0:
        options = []
        if rng.random() < 0.3:  # padding, a cookie, an unknown option: up to 1400 bytes
            options.append(mutate.random_option(rng, rng.choice((8, 200, 1400))))
        r.use_edns(0, r.ednsflags, rng.choice((512, 1232, 4096)), options=options)
    return r.to_wire(max_size=65535)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(valid query, its valid reply, that reply mutated or a raw replacement)."""
    query = draw(valid_queries())
    reply = reply_to(query, random.Random(draw(seeds)))
    kind = draw(st.sampled_from(("valid", "mutated", "mutated", "mutated", "raw")))
    if kind == "valid":
        damaged = reply
    elif kind == "raw":
        # keep the header and question (so the reply gets past question_matches), then garbage
        qend = 12 + len(dns.message.from_wire(query).question[0].name.to_wire()) + 4
        damaged = reply[:qend] + draw(st.binary(max_size=400))
    else:
        damaged = mutate.apply(reply, draw(ops))
    return query, reply, damaged
