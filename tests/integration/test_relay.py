"""The UDP forward fast lane (fastdns.relay) in a real worker: FakeUpstreams on 127.0.0.x:53,
queries over real sockets (``support.inproc.InProcessServer``), the lane's own counters read
from the worker's stats.

Each scenario checks what the client sees (the answer, which upstream gave it, how many
queries each upstream got) and that the lane, not only the general path, handled it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from support.clients import query
from support.fixtures import UpstreamFactory
from support.inproc import InProcessFactory, InProcessServer
from support.server import write_resolv_conf
from support.upstream import FakeUpstream

from fastdns.dns import wire
from fastdns.dns.resolved import Resolved

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"


def upstream(factory: UpstreamFactory, marker: str) -> FakeUpstream:
    """``*.lane.test`` names answer ``A marker``: a test can tell which upstream answered."""
    up = factory()
    up.add_zone("lane.test")
    for i in range(40):
        up.add(f"n{i}.lane.test", "A", marker)
    up.add("warm.lane.test", "A", marker)
    up.big("big.lane.test", 60)
    return up


@pytest.fixture(name="ups")
def _ups(upstream_factory: UpstreamFactory) -> tuple[FakeUpstream, FakeUpstream]:
    return upstream(upstream_factory, "192.0.2.1"), upstream(upstream_factory, "192.0.2.2")


def serve(
    inproc: InProcessFactory, tmp_path: Path, *servers: FakeUpstream, **fastdns: Any
) -> InProcessServer:
    resolv = write_resolv_conf(tmp_path / f"resolv-{len(inproc.made)}.conf", *servers)
    section = {
        "resolv_conf": str(resolv),
        # The Python lane itself (its counters, its state): on the compiled datapath the
        # engine relays these misses (tests/integration/test_crelay_engine.py,
        # tests/e2e/test_crelay.py), and hands only its failures to this lane.
        "datapath": "python",
        "native": {"enabled": False},
        "upstream_timeout": 0.3,
        "deadline": 2.0,
        **fastdns,
    }
    srv = inproc({"fastdns": section})
    # The first query opens the upstream sockets (the general path does that); the lane
    # takes the queries after it. Then the query logs start empty.
    assert ask(srv, "warm.lane.test").rcode() == dns.rcode.NOERROR
    for up in servers:
        up.clear()
    return srv


def ask(srv: InProcessServer, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return query(LOCAL, srv.udp_port, name, rdtype, **kw)


def a_of(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset if rrset.rdtype == 1]


def lane(srv: InProcessServer, outcome: str) -> int:
    return srv.call(lambda: srv.worker.stats.counters.get(("forward_fast_lane", outcome), 0))


def test_misses_are_answered_by_the_lane(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    srv = serve(inproc, tmp_path, *ups)
    before = lane(srv, "answered")
    for i in range(10):
        reply = ask(srv, f"n{i}.lane.test", qid=1000 + i)
        assert reply.id == 1000 + i and a_of(reply) == ["192.0.2.1"]
        assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert lane(srv, "answered") - before == 10
    assert ups[1].count() == 0  # the second upstream was never needed
    assert srv.call(lambda: srv.worker.state.inflight) == 0  # type: ignore[union-attr]
    # Answered queries leave the timeout queue as new ones come, not only when it fires.
    assert srv.call(lambda: len(srv.worker.state.relay.queue)) <= 1  # type: ignore[union-attr]


def test_a_timeout_moves_on_to_the_next_upstream(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, second = ups
    srv = serve(inproc, tmp_path, first, second)
    first.behave("n1.lane.test", drop=True)
    t0 = time.monotonic()
    reply = ask(srv, "n1.lane.test")
    assert a_of(reply) == ["192.0.2.2"]  # from the second upstream
    assert time.monotonic() - t0 < 1.5  # one upstream_timeout (0.3 s), not the deadline
    assert first.count("n1.lane.test") == 1 and second.count("n1.lane.test") == 1
    assert lane(srv, "timeout") == 1


def test_servfail_moves_on_and_the_failing_upstream_is_not_asked_again(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, second = ups
    srv = serve(inproc, tmp_path, first, second)
    first.behave("n2.lane.test", rcode="SERVFAIL")
    assert a_of(ask(srv, "n2.lane.test")) == ["192.0.2.2"]
    assert first.count("n2.lane.test") == 1 and second.count("n2.lane.test") == 1
    assert lane(srv, "failover") == 1


def test_every_upstream_failing_gives_servfail_within_the_deadline(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, second = ups
    srv = serve(inproc, tmp_path, first, second)
    first.behave("n3.lane.test", drop=True)
    second.behave("n3.lane.test", drop=True)
    t0 = time.monotonic()
    assert ask(srv, "n3.lane.test", timeout=5).rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t0 < 2.5  # the 2 s deadline
    assert lane(srv, "timeout") == 1


def test_a_truncated_reply_is_retried_over_tcp(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = ups
    srv = serve(inproc, tmp_path, *ups)
    first.behave("big.lane.test", truncate=True)  # TC over UDP, in full over TCP
    reply = ask(srv, "big.lane.test", edns=4096)
    assert len(a_of(reply)) == 60  # the whole answer, from TCP, fits the client's 4096
    assert first.count("big.lane.test", transport="udp") == 1
    assert first.count("big.lane.test", transport="tcp") == 1
    assert lane(srv, "truncated") == 1


def test_a_reply_with_the_wrong_question_is_never_the_answer(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = ups
    srv = serve(inproc, tmp_path, *ups)
    first.behave("n4.lane.test", wrong_question="then-correct")
    assert a_of(ask(srv, "n4.lane.test")) == ["192.0.2.1"]
    assert (
        srv.call(
            lambda: srv.worker.stats.counters.get(("upstream_mismatch", f"{first.address}:53"), 0)
        )
        == 1
    )


def test_identical_questions_in_flight_share_one_upstream_query(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = ups
    srv = serve(inproc, tmp_path, *ups, cache={"enabled": False}, upstream_timeout=1.0)
    first.behave("n5.lane.test", delay=0.3)
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda i: ask(srv, "n5.lane.test", qid=i), range(20)))
    assert sorted(r.id for r in replies) == list(range(20))
    assert all(a_of(r) == ["192.0.2.1"] for r in replies)
    assert first.count("n5.lane.test") == 1
    assert srv.call(lambda: srv.worker.stats.counters.get(("coalesced",), 0)) == 19


def test_the_in_flight_limit_counts_lane_queries(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = ups
    srv = serve(
        inproc, tmp_path, *ups, max_inflight=3, cache={"enabled": False}, upstream_timeout=1.0
    )
    for i in range(10, 13):
        first.behave(f"n{i}.lane.test", delay=0.5)
    with ThreadPoolExecutor(3) as pool:
        slow = [pool.submit(ask, srv, f"n{i}.lane.test") for i in range(10, 13)]
        assert first.wait_for(3, timeout=5)
        assert ask(srv, "n13.lane.test").rcode() == dns.rcode.REFUSED  # over the limit
        assert all(a_of(f.result()) == ["192.0.2.1"] for f in slow)
    assert a_of(ask(srv, "n13.lane.test")) == ["192.0.2.1"]  # room again


def test_draining_waits_for_lane_queries(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    first, _ = ups
    srv = serve(inproc, tmp_path, *ups, upstream_timeout=1.0)
    first.behave("n20.lane.test", delay=0.4)
    got: list[dns.message.Message] = []
    client = threading.Thread(target=lambda: got.append(ask(srv, "n20.lane.test")))
    client.start()
    assert first.wait_for(1, "n20.lane.test", "A", timeout=5)
    assert srv.call(lambda: srv.worker.state.relay.inflight) == 1  # type: ignore[union-attr]
    srv.close()  # stop: drain, then close
    client.join(5)
    assert got and a_of(got[0]) == ["192.0.2.1"]


def test_a_failure_storing_the_reply_still_answers_the_client(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    srv = serve(inproc, tmp_path, *ups)
    pipeline = srv.worker.pipeline
    assert pipeline is not None

    def broken(q: Any, res: Any) -> Any:
        raise RuntimeError("a bug in the cache")

    srv.call(lambda: setattr(pipeline, "remember", broken))
    reply = ask(srv, "n30.lane.test", qid=4242)
    assert reply.id == 4242 and a_of(reply) == ["192.0.2.1"]  # the upstream's answer, spliced
    assert srv.call(lambda: srv.worker.stats.counters.get(("unhandled_exceptions",), 0)) == 1
    assert srv.call(lambda: len(pipeline.pending)) == 0


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_a_bug_while_resolving_is_servfail_for_the_client(
    inproc: InProcessFactory,
    tmp_path: Path,
    ups: tuple[FakeUpstream, FakeUpstream],
    tcp: bool,
) -> None:
    """A task that raises (a bug below the server) answers SERVFAIL and is counted, over UDP
    and TCP alike (``Pipeline.answer_or_servfail``): the client never waits out its timeout."""
    srv = serve(inproc, tmp_path, *ups)
    pipeline = srv.worker.pipeline
    assert pipeline is not None

    async def broken(q: Any) -> Any:
        raise RuntimeError("a bug in resolution")

    srv.call(lambda: setattr(pipeline, "answer", broken))
    srv.call(lambda: setattr(srv.worker.state.relay, "closed", True))  # type: ignore[union-attr]
    reply = query(LOCAL, srv.tcp_port if tcp else srv.udp_port, "n40.lane.test", "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert srv.call(lambda: srv.worker.stats.counters.get(("unhandled_exceptions",), 0)) == 1


def test_a_second_hand_off_of_a_pending_question_still_answers_its_client(
    inproc: InProcessFactory, tmp_path: Path, ups: tuple[FakeUpstream, FakeUpstream]
) -> None:
    """Two queries for one question handed to the general path one after the other (the
    compiled relay hands a reply NSS must complete to it, and the engine relays the same
    question again meanwhile): the second finds the first's future pending and has none of
    its own. Whichever finishes last, each client gets its answer and nothing is left
    pending (the second used to raise KeyError there, and its client got nothing)."""
    srv = serve(inproc, tmp_path, *ups)
    relay, pipeline = srv.worker.state.relay, srv.worker.pipeline  # type: ignore[union-attr]
    assert relay is not None and pipeline is not None
    q = wire.parse_query(dns.message.make_query("twice.lane.test", "AAAA").to_wire())
    answer = Resolved(dns.message.make_response(dns.message.from_wire(q.wire)).to_wire(), "forward")
    sent: list[bytes] = []

    class Sink:
        def send_answer(self, q: Any, res: Resolved, addr: Any, size: int, t0: float) -> None:
            sent.append(res.reply)

        def account(self, q: Any, res: Resolved, size: int, t0: float) -> None:
            pass

    def both() -> int:
        now = srv.loop.time()
        server = (ups[0].address, 53)
        first = relay._general_now(q, Sink(), (LOCAL, 1), len(q.wire), now, server, now, None)
        second = relay._general_now(q, Sink(), (LOCAL, 2), len(q.wire), now, server, now, None)
        relay._finish(first, answer)
        relay._finish(second, answer)
        return len(pipeline.pending)

    assert srv.call(both) == 0
    assert len(sent) == 2
