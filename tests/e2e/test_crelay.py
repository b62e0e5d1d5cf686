"""Cache misses relayed by the compiled datapath itself (docs/datapath.md, "Misses") against
``fastdns serve``: what a client sees is what the Python lane gives (the answer, its ID, its
question's case, failover, TCP after TC, spoofed replies refused), and the engine's counter
(``fastdns_datapath_relayed_total``) says the engine relayed them: some on the compiled
datapath, none on the Python one. Everything the engine must leave to Python (cached keys,
static names) is checked by what reaches the upstream."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from support.clients import query, raw_udp
from support.fixtures import UpstreamFactory
from support.metrics import scrape, total, value, wait_until
from support.server import FastDNSProcess, write_resolv_conf
from support.upstream import FakeUpstream, dead_address

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
GOOD = "192.0.2.44"
COMPILED = os.environ.get("FASTDNS_TEST_DATAPATH", "compiled") == "compiled"


def every_name(up: FakeUpstream, address: str = GOOD) -> FakeUpstream:
    """``up`` answers an A record for any name asked, NXDOMAIN for those under nx.test."""

    def answer(q: dns.message.Message, seen: Any) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.RA
        name = q.question[0].name
        if name.is_subdomain(dns.name.from_text("nx.test")):
            r.set_rcode(dns.rcode.NXDOMAIN)
        else:
            r.answer.append(dns.rrset.from_text(name, 300, "IN", "A", address))
        return r

    up.handler = answer
    return up


@pytest.fixture(autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    while SERVED:
        SERVED.pop().stop()


SERVED: list[FastDNSProcess] = []


def serve(tmp_path: Path, *ups: FakeUpstream | str, **doc: Any) -> FastDNSProcess:
    resolv = write_resolv_conf(tmp_path / "resolv.conf", *ups)
    section = {
        "resolv_conf": str(resolv),
        "workers": 1,
        "native": {"enabled": False},
        "metrics": {"listen": f"{HOST}:0"},
        "upstream_timeout": 0.5,
        **doc.pop("fastdns", {}),
    }
    fdp = FastDNSProcess({"fastdns": section, **doc}, tmp_path)
    SERVED.append(fdp)
    # The first query from a source goes up to Python, which judges the source (the ACL,
    # the rate limiter) and tells the engine it passes: a static name, answered here.
    assert query(HOST, fdp.udp_port, "localhost").answer
    return fdp


def relayed(fdp: FastDNSProcess, outcome: str, at_least: int = 0) -> float:
    """The engine's count of relayed queries with ``outcome``, once it reached ``at_least``
    (counts reach /metrics once a tick)."""
    port = int(fdp.state["metrics_port"])
    samples = wait_until(
        lambda: scrape(HOST, port),
        lambda s: value(s, "fastdns_datapath_relayed_total", outcome=outcome) >= at_least,
        what=f"{at_least} relayed queries with outcome {outcome}",
    )
    return value(samples, "fastdns_datapath_relayed_total", outcome=outcome)


def a_of(reply: dns.message.Message) -> list[str]:
    return [rr.address for rrset in reply.answer for rr in rrset]


def mixed_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def test_misses_are_relayed_with_the_clients_id_and_case_then_cached(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = every_name(upstream_factory())
    fdp = serve(tmp_path, up)
    rng = random.Random(5)
    n = 60
    for i in range(n):
        name = mixed_case(f"name{i}.relay.test", rng)
        q = dns.message.make_query(name, "A")
        q.id = rng.randrange(65536)
        data = raw_udp(HOST, fdp.udp_port, q.to_wire())
        assert data is not None, name
        reply = dns.message.from_wire(data)
        assert reply.id == q.id
        assert str(reply.question[0].name) == name + "."  # 0x20: the client's own case
        assert a_of(reply) == [GOOD]
    answered = relayed(fdp, "answered", n if COMPILED else 0)
    assert answered == (n if COMPILED else 0)
    assert up.count() == n
    # Asked again in another case: cache hits (the engine knows those keys are cached), so
    # nothing more reaches the upstream and nothing more is relayed.
    for i in range(n):
        assert a_of(query(HOST, fdp.udp_port, f"NAME{i}.RELAY.TEST")) == [GOOD]
    assert up.count() == n
    port = int(fdp.state["metrics_port"])
    samples = wait_until(
        lambda: scrape(HOST, port),
        lambda s: total(s, "fastdns_cache_hits_total") >= n,
        what=f"{n} cache hits",
    )
    assert value(samples, "fastdns_datapath_relayed_total", outcome="answered") == answered


def test_static_names_are_answered_here_and_others_relayed(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = every_name(upstream_factory())
    fdp = serve(tmp_path, up, hostResolver={"hosts": {"box.lan": "10.0.0.3"}})
    assert a_of(query(HOST, fdp.udp_port, "box.lan")) == ["10.0.0.3"]
    assert a_of(query(HOST, fdp.udp_port, "other.lan")) == [GOOD]  # same ending: Python's
    assert a_of(query(HOST, fdp.udp_port, "far.relay.test")) == [GOOD]
    assert up.count("box.lan") == 0
    assert up.count("other.lan") == 1 and up.count("far.relay.test") == 1
    assert relayed(fdp, "answered", 1 if COMPILED else 0) == (1 if COMPILED else 0)


def test_a_dropped_query_fails_over_to_the_next_server(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    first, second = every_name(upstream_factory()), every_name(upstream_factory(), "192.0.2.45")
    first.behave("*", drop=True)
    fdp = serve(tmp_path, first, second)
    t0 = time.monotonic()
    assert a_of(query(HOST, fdp.udp_port, "dropped.relay.test", timeout=4)) == ["192.0.2.45"]
    assert time.monotonic() - t0 < 2.0  # the 0.5 s timeout, then the second server
    assert first.count("dropped.relay.test") == 1 and second.count("dropped.relay.test") == 1
    assert relayed(fdp, "timeout", 1 if COMPILED else 0) == (1 if COMPILED else 0)


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_a_failover_rcode_asks_the_next_server(
    upstream_factory: UpstreamFactory, tmp_path: Path, rcode: str
) -> None:
    first, second = upstream_factory(), upstream_factory()
    first.add("failover.relay.test", "A", GOOD)
    second.add("failover.relay.test", "A", "192.0.2.46")
    first.behave("*", rcode=rcode)
    fdp = serve(tmp_path, first, second)
    reply = query(HOST, fdp.udp_port, "failover.relay.test")
    assert reply.rcode() == dns.rcode.NOERROR and a_of(reply) == ["192.0.2.46"]
    assert first.count("failover.relay.test") == 1 and second.count("failover.relay.test") == 1


def test_an_unreachable_server_fails_over_at_once(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    """ICMP port unreachable from the first server: an error on the engine's socket, then the
    second server, well before the first server's timeout."""
    second = every_name(upstream_factory(), "192.0.2.47")
    fdp = serve(tmp_path, dead_address(), second, fastdns={"upstream_timeout": 1.5})
    t0 = time.monotonic()
    assert a_of(query(HOST, fdp.udp_port, "icmp.relay.test", timeout=4)) == ["192.0.2.47"]
    assert time.monotonic() - t0 < 1.0
    assert relayed(fdp, "error", 1 if COMPILED else 0) == (1 if COMPILED else 0)


def test_a_truncated_reply_is_asked_again_over_tcp(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = every_name(upstream_factory())
    up.behave("*", truncate=True)
    fdp = serve(tmp_path, up)
    reply = query(HOST, fdp.udp_port, "tc.relay.test")
    assert not reply.flags & dns.flags.TC and a_of(reply) == [GOOD]
    assert up.count("tc.relay.test", transport="udp") == 1
    assert up.count("tc.relay.test", transport="tcp") == 1


@pytest.mark.parametrize("spoof", ["wrong_id", "wrong_question"])
def test_spoofed_replies_are_never_the_answer(
    upstream_factory: UpstreamFactory, tmp_path: Path, spoof: str
) -> None:
    """A reply with another ID or question comes first from the upstream's own address and
    port; the real one after it answers, and the forgery is counted as rejected."""
    up = every_name(upstream_factory())
    up.behave("*", **{spoof: "then-correct"})
    fdp = serve(tmp_path, up)
    for i in range(5):
        assert a_of(query(HOST, fdp.udp_port, f"spoof{i}.relay.test")) == [GOOD]
    reason = "unknown_id" if spoof == "wrong_id" else "question_mismatch"
    port = int(fdp.state["metrics_port"])
    samples = wait_until(
        lambda: scrape(HOST, port),
        lambda s: total(s, "fastdns_forward_rejected_replies_total", reason=reason) >= 5,
        what="5 rejected replies",
    )
    assert total(samples, "fastdns_forward_rejected_replies_total", reason=reason) == 5


def test_a_new_resolv_conf_moves_the_relay(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    first, second = every_name(upstream_factory()), every_name(upstream_factory(), "192.0.2.48")
    fdp = serve(tmp_path, first)
    assert a_of(query(HOST, fdp.udp_port, "before.relay.test")) == [GOOD]
    write_resolv_conf(tmp_path / "resolv.conf", second)
    wait_until(
        lambda: a_of(query(HOST, fdp.udp_port, f"after{time.monotonic_ns()}.relay.test")),
        lambda addresses: addresses == ["192.0.2.48"],
        what="answers from the new upstream",
    )
    n = first.count()
    for i in range(10):
        assert a_of(query(HOST, fdp.udp_port, f"moved{i}.relay.test")) == ["192.0.2.48"]
    assert first.count() == n  # nothing more to the old upstream


def test_relayed_answers_count_as_python_counts_them(
    upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    """The answers the engine sends itself are counted in C and folded once a tick: the
    request series (by type, DO, rcode, sizes, durations) and the upstream's reply times say
    what the Python datapath says for the same queries, down to the bytes."""
    up = every_name(upstream_factory())
    fdp = serve(tmp_path, up)
    port = int(fdp.state["metrics_port"])
    udp = {"proto": "udp"}
    before = wait_until(
        lambda: scrape(HOST, port),
        lambda s: total(s, "fastdns_dns_requests_total") >= 1,
        what="the first query counted",
    )
    asked = [dns.message.make_query(f"count{i}.relay.test", "A") for i in range(12)]
    asked += [dns.message.make_query(f"do{i}.relay.test", "A", want_dnssec=True) for i in range(4)]
    asked.append(dns.message.make_query("gone.nx.test", "A"))
    sent = got = 0
    for q in asked:
        data = raw_udp(HOST, fdp.udp_port, q.to_wire())
        assert data is not None
        sent, got = sent + len(q.to_wire()), got + len(data)
    n = len(asked)
    after = wait_until(
        lambda: scrape(HOST, port),
        lambda s: total(s, "fastdns_dns_requests_total") >= n + 1,
        what=f"{n} more queries counted",
    )

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("fastdns_dns_requests_total", type="A", **udp) == n
    assert grew("fastdns_dns_do_requests_total") == 4
    assert grew("fastdns_dns_responses_total", rcode="NOERROR", plugin="forward") == n - 1
    assert grew("fastdns_dns_responses_total", rcode="NXDOMAIN", plugin="forward") == 1
    assert grew("fastdns_dns_request_size_bytes_count", **udp) == n
    assert grew("fastdns_dns_request_size_bytes_sum", **udp) == sent
    assert grew("fastdns_dns_response_size_bytes_count", **udp) == n
    assert grew("fastdns_dns_response_size_bytes_sum", **udp) == got
    assert grew("fastdns_dns_request_duration_seconds_count", type="A") == n
    assert 0 < grew("fastdns_dns_request_duration_seconds_sum", type="A") < n * 2.0
    to = f"{up.address}:53"
    assert grew("fastdns_proxy_request_duration_seconds_count", to=to, rcode="NOERROR") == n - 1
    assert grew("fastdns_proxy_request_duration_seconds_count", to=to, rcode="NXDOMAIN") == 1
    assert relayed(fdp, "answered", n if COMPILED else 0) == (n if COMPILED else 0)
