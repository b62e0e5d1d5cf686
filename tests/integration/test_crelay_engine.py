"""The compiled relay (fastdns/serve/cengine/relay.c) on real loopback sockets: an Engine made
with ``relayed``, a client socket and a fake upstream socket read by the test itself.

Each test runs the engine's callbacks by hand (what the loop would call): ``on_readable`` for
the client's query, ``on_upstream`` once the upstream's reply is sent, ``expire`` for the
timer. What the engine hands up is recorded, as what the upstream receives."""

from __future__ import annotations

import os
import select
import socket
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import dns.message
import dns.rrset
import pytest

from fastdns.config.schema import CacheConfig
from fastdns.dns import compose, wire
from fastdns.metrics import stats
from fastdns.metrics.stats import SIZE_BUCKETS
from fastdns.resolve.cache.admission import classify
from fastdns.resolve.cache.store import PacketCache

cengine = pytest.importorskip("fastdns.serve._cengine")
Engine = cengine.Engine
from fastdns.serve.crelay import query_of  # noqa: E402  (imports the extension)

REPLY, ERROR, TIMEOUT, LATE, FOLLOW = 0, 1, 2, 3, 5
TALLIES = 64  # tally.h FD_TALLIES


def make_query(name: str = "www.example.test", rdtype: str = "A", **kw: Any) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)
    q.id = 0x1234
    return q.to_wire()


def answer(query: bytes, address: str = "192.0.2.1", qname: str | None = None) -> bytes:
    """The upstream's reply to ``query`` (its ID); with ``qname``, for that question."""
    q = dns.message.from_wire(query)
    if qname is not None:
        asked = dns.message.make_query(qname, "A")
        asked.id = q.id
        q = asked
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", address))
    return r.to_wire()


class Upstream:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()
        return host, port

    def recv(self) -> tuple[bytes, Any]:
        data, addr = self.sock.recvfrom(65535)
        return data, addr

    def pending(self, wait: float = 0.05) -> bool:
        return bool(select.select([self.sock], [], [], wait)[0])


class Rig:
    def __init__(self, max_inflight: int = 16) -> None:
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server.bind(("127.0.0.1", 0))
        self.server.setblocking(False)
        self.up = Upstream()
        self.upcalls: list[bytes] = []
        self.items: list[tuple[Any, ...]] = []
        self.stored: list[tuple[Any, ...]] = []  # answers the engine sent and counted itself
        self.armed: list[float] = []
        self.engine = Engine(
            self.server.fileno(),
            16,
            lambda data, addr: self.upcalls.append(data),
            lambda: None,
            relayed=self.relayed,
            arm=self.armed.append,
            max_inflight=max_inflight,
        )
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(2)
        self.engine.allow("127.0.0.1")
        self.policy(self.up.addr)

    def relayed(self, items: list[tuple[Any, ...]], stored: list[tuple[Any, ...]]) -> None:
        self.items.extend(items)
        self.stored.extend(stored)

    def policy(
        self,
        server: tuple[str, int] | None,
        timeout: float = 1.0,
        deadline: float = 4.0,
        endings: tuple[bytes, ...] | None = (),
        suffix: bytes = b"",
        ipv6_local: bool = False,
        native: tuple[Any, ...] | None = None,
        nss: bool = False,
    ) -> None:
        self.engine.relay_policy(
            server, timeout, deadline, 0, endings, suffix, ipv6_local, native, nss
        )

    def ask(self, data: bytes) -> None:
        self.client.sendto(data, self.server.getsockname())
        assert select.select([self.server], [], [], 2)[0]
        self.engine.on_readable()

    def upstream_reads(self) -> None:
        """Wait (bounded) until the engine's upstream sockets are readable, then one wakeup."""
        select.select([self.engine.upstream_fd], [], [], 2)
        self.engine.on_upstream()

    def close(self) -> None:
        self.engine.close()
        for s in (self.server, self.client, self.up.sock):
            s.close()


@pytest.fixture(name="rig")
def _rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def test_a_miss_is_relayed_with_a_fresh_id_and_its_answer_handed_up(rig: Rig) -> None:
    query = make_query()
    rig.ask(query)
    assert rig.upcalls == []
    sent, src = rig.up.recv()
    assert sent[2:] == query[2:]  # the client's bytes, its own ID replaced
    assert rig.engine.inflight == 1 and len(rig.armed) == 1
    reply = answer(sent)
    rig.up.sock.sendto(reply, src)
    rig.upstream_reads()
    assert len(rig.items) == 1
    kind, _seq, q, r, addr, t0, sent_at, _parts, verdict, done = rig.items[0]
    assert done is None  # not answered by the engine: it was told no cache limits
    assert verdict is False  # not classified: this engine was told no cache limits
    assert (kind, q, r) == (REPLY, query, reply)
    assert addr == rig.client.getsockname() and t0 <= sent_at
    assert rig.engine.inflight == 0
    c = rig.engine.counters()
    assert (c["relayed"], c["relay_answered"], c["upcalls"]) == (1, 1, 0)


def test_ids_and_ports_are_random_and_ports_serve_at_most_eight_queries(rig: Rig) -> None:
    ids, ports = [], []
    for i in range(64):
        rig.ask(make_query(f"n{i}.example.test"))
        sent, src = rig.up.recv()
        ids.append(int.from_bytes(sent[:2], "big"))
        ports.append(src[1])
        rig.up.sock.sendto(answer(sent), src)
        rig.upstream_reads()
    assert len(set(ids)) > 50  # 64 draws of 16 bits: collisions are rare
    assert all(ports.count(p) <= 8 for p in set(ports))
    assert len(set(ports)) >= 8
    assert [item[0] for item in rig.items] == [REPLY] * 64


QUERIES_THAT_GO_UP = {
    "chaos class": make_query("version.bind", "TXT", rdclass="CH"),
    "edns version 1": make_query(use_edns=1),
    "large": make_query("x" * 60 + ".example.test", use_edns=0, payload=1232, pad=600),
    "static ending": make_query("box.lan"),
    "loop probe": make_query("n1.0badc0de.loop.fastdns.invalid", "HINFO"),
    "aaaa answered here": make_query("v6.example.test", "AAAA"),
}


@pytest.mark.parametrize("label", sorted(QUERIES_THAT_GO_UP))
def test_what_python_must_decide_goes_up(rig: Rig, label: str) -> None:
    suffix = b"\x080badc0de\x04loop\x07fastdns\x07invalid\x00"
    rig.policy(rig.up.addr, endings=(b"\x03lan\x00",), suffix=suffix, ipv6_local=True)
    query = QUERIES_THAT_GO_UP[label]
    rig.ask(query)
    assert rig.upcalls == [query]
    assert not rig.up.pending()
    rig.ask(make_query("fine.example.test"))  # the same policy relays the others
    assert rig.up.pending(1)


def test_a_source_not_yet_passed_goes_up(rig: Rig) -> None:
    rig.engine.forget()
    rig.ask(make_query())
    assert len(rig.upcalls) == 1 and not rig.up.pending()


@pytest.mark.parametrize("policy", ["no server", "no endings"])
def test_a_policy_that_relays_nothing(rig: Rig, policy: str) -> None:
    if policy == "no server":
        rig.policy(None)
    else:
        rig.policy(rig.up.addr, endings=None)
    rig.ask(make_query())
    assert len(rig.upcalls) == 1 and not rig.up.pending()


def test_cached_keys_go_up_until_the_cache_lets_them_go(rig: Rig) -> None:
    query = make_query("Cached.Example.Test")
    key = cengine.parse_query(query)[10]
    rig.engine.key_add(key)
    rig.ask(query)
    rig.ask(make_query("cached.example.test"))  # another case, the same key
    assert len(rig.upcalls) == 2 and not rig.up.pending()
    rig.engine.key_discard(key)
    rig.ask(query)
    assert rig.up.pending(1)
    sent, src = rig.up.recv()
    rig.up.sock.sendto(answer(sent), src)  # answered: no longer in flight
    rig.upstream_reads()
    rig.engine.key_add(key)
    rig.engine.key_clear()
    rig.ask(query)
    assert rig.up.pending(1)
    assert rig.engine.counters()["relay_keys"] == 0


def test_many_keys_grow_the_mirror_and_stay_exact(rig: Rig) -> None:
    keys = [cengine.parse_query(make_query(f"k{i}.example.test"))[10] for i in range(5000)]
    for k in keys:
        rig.engine.key_add(k)
    for k in keys[::2]:
        rig.engine.key_discard(k)
    assert rig.engine.counters()["relay_keys"] == 2500
    rig.ask(make_query("k1.example.test"))  # still held
    rig.ask(make_query("k0.example.test"))  # let go
    assert len(rig.upcalls) == 1 and rig.up.pending(1)


def test_spoofed_and_mismatched_replies_are_never_answers(rig: Rig) -> None:
    query = make_query()
    rig.ask(query)
    sent, src = rig.up.recv()
    wrong_id = bytes([sent[0] ^ 1]) + answer(sent)[1:]
    rig.up.sock.sendto(wrong_id, src)
    rig.up.sock.sendto(answer(sent, qname="other.example.test."), src)
    rig.up.sock.sendto(b"\x00" * 5, src)  # shorter than a header
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:  # not the upstream
        stranger.bind(("127.0.0.1", 0))
        stranger.sendto(answer(sent), src)
    rig.upstream_reads()
    assert rig.items == []
    c = rig.engine.counters()
    assert (c["relay_unmatched"], c["relay_mismatched"]) == (1, 1)
    upper = answer(sent, qname="WWW.EXAMPLE.TEST.")  # a 0x20 echo is the same question
    rig.up.sock.sendto(upper, src)
    rig.upstream_reads()
    assert [item[0] for item in rig.items] == [REPLY]


def test_a_timeout_goes_up_and_the_late_reply_follows_until_the_deadline(rig: Rig) -> None:
    rig.policy(rig.up.addr, timeout=0.05, deadline=0.3)
    rig.ask(make_query("late.example.test"))
    rig.ask(make_query("never.example.test"))
    (late, late_src), (_, _) = rig.up.recv(), rig.up.recv()
    assert rig.armed and rig.armed[0] - time.monotonic() <= 0.05
    time.sleep(0.06)
    following = rig.engine.expire()
    assert [item[0] for item in rig.items] == [TIMEOUT, TIMEOUT]
    assert following is not None and following > time.monotonic()  # the late list's deadline
    assert rig.engine.inflight == 0
    rig.up.sock.sendto(answer(late), late_src)
    rig.upstream_reads()
    assert [item[0] for item in rig.items] == [TIMEOUT, TIMEOUT, LATE]
    assert rig.items[2][1] == rig.items[0][1]  # the same seq as its timeout
    time.sleep(0.3)
    assert rig.engine.expire() is None  # the other one is forgotten at its deadline
    assert len(rig.items) == 3


def test_an_unreachable_upstream_fails_the_socket(rig: Rig) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind(("127.0.0.1", 0))
        dead = gone.getsockname()
    rig.policy(dead)
    rig.ask(make_query())
    rig.upstream_reads()  # ICMP port unreachable: an error on the socket
    assert [item[0] for item in rig.items] == [ERROR]
    assert rig.engine.inflight == 0 and rig.engine.counters()["relay_failed"] == 1


def test_a_full_table_goes_up() -> None:
    rig = Rig(max_inflight=2)
    try:
        for i in range(3):
            rig.ask(make_query(f"f{i}.example.test"))
        assert len(rig.upcalls) == 1 and rig.engine.counters()["relay_full"] == 1
    finally:
        rig.close()


def test_a_new_upstream_takes_new_queries_and_the_old_one_still_answers(rig: Rig) -> None:
    rig.ask(make_query("first.example.test"))
    first, first_src = rig.up.recv()
    other = Upstream()
    try:
        rig.policy(other.addr)
        rig.ask(make_query("second.example.test"))
        assert other.recv()[0][2:] == make_query("second.example.test")[2:]
        rig.up.sock.sendto(answer(first), first_src)  # on a retired socket: still awaited
        rig.upstream_reads()
        assert [item[0] for item in rig.items] == [REPLY]
    finally:
        other.sock.close()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_closing_with_queries_in_flight_closes_every_socket() -> None:
    before = fds()
    rig = Rig(max_inflight=64)
    for i in range(40):
        rig.ask(make_query(f"c{i}.example.test"))
    rig.policy(Upstream().addr)  # the pool retired, its queries still in flight
    rig.ask(make_query("after.example.test"))
    assert rig.engine.inflight == 41
    rig.close()
    assert rig.engine.upstream_fd == -1 and rig.engine.inflight == 0
    assert fds() <= before + 1  # (the second Upstream's socket, collected later)


@pytest.mark.parametrize(
    "args, error",
    [
        ((("127.0.0.1", 0), 1.0, 4.0, 0, (), b"", False, None, False), ValueError),  # port 0
        ((("127.0.0.1", 53), 0.0, 4.0, 0, (), b"", False, None, False), ValueError),  # timeout
        ((("127.0.0.1", 53), 2.0, 1.0, 0, (), b"", False, None, False), ValueError),  # deadline
        ((("127.0.0.1", 53), 1.0, 4.0, 0, ["x"], b"", False, None, False), TypeError),  # endings
        ((("127.0.0.1", 53), 1.0, 4.0, 0, (), "s", False, None, False), TypeError),  # suffix
        ((("127.0.0.1", 53), 1.0, 4.0, 0, (), b"", False, (1,), False), TypeError),  # native
        (
            (("127.0.0.1", 53), 1.0, 4.0, 0, (), b"", False, ((70000,), True, 1, True, ()), 0),
            ValueError,
        ),  # a type out of range
        ((("127.0.0.1", 53), 1.0, 4.0, 0, ()), TypeError),  # too few
    ],
)
def test_bad_policies_are_refused(rig: Rig, args: tuple[Any, ...], error: type) -> None:
    with pytest.raises(error):
        rig.engine.relay_policy(*args)


def test_an_engine_without_a_relay_has_none() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        e = Engine(s.fileno(), 4, lambda d, a: None, lambda: None)
        assert e.upstream_fd == -1 and e.inflight == 0
        with pytest.raises(RuntimeError):
            e.relay_policy(None, 1.0, 4.0, 0, (), b"", False, None, False)
        e.key_add(b"k")  # no relay: nothing to tell
        e.close()


# The native path's rule as resolver.py gives it: its types, forward_first, ndots, a channel,
# the top-level labels c-ares answers itself.
NATIVE = ((1, 2, 5, 15, 16, 28, 33), True, 1, True, (b"localhost", b"onion"))


@pytest.mark.parametrize(
    "label, query, relayed, declined",
    [
        ("a type it declines", make_query("x.example.test", "PTR"), True, "unsupported_type"),
        ("DNSSEC", make_query("x.example.test", want_dnssec=True), True, "dnssec"),
        ("forward first", make_query("x.example.test"), True, None),
        ("short name: the search list first", make_query("intranet"), False, None),
        ("localhost: c-ares answers", make_query("db.localhost"), False, None),
        (".onion", make_query("abc.onion"), False, None),
        (".local: NSS first", make_query("printer.local"), False, None),
        (".local other types are DNS's", make_query("printer.local", "TXT"), True, None),
    ],
)
def test_the_native_paths_rule(
    rig: Rig, label: str, query: bytes, relayed: bool, declined: str | None
) -> None:
    rig.policy(rig.up.addr, native=NATIVE, nss=True)
    rig.ask(query)
    assert rig.up.pending() == relayed, label
    assert (rig.upcalls == []) == relayed
    counters = rig.engine.counters()
    for reason in ("unsupported_type", "dnssec", "disabled"):
        assert counters[f"relay_declined_{reason}"] == (reason == declined)


@pytest.mark.parametrize(
    "native, relayed",
    [
        (((1, 28), False, 1, True, ()), False),  # forward_first off: c-ares asks it
        (((1, 28), True, 2, True, ()), False),  # ndots 2: x.example is searched first
        (((1, 28), True, 1, False, ()), True),  # no channel: declined ("disabled")
    ],
)
def test_the_native_paths_settings(rig: Rig, native: tuple[Any, ...], relayed: bool) -> None:
    rig.policy(rig.up.addr, native=native)
    rig.ask(make_query("x.example"))
    assert rig.up.pending() == relayed
    assert rig.engine.counters()["relay_declined_disabled"] == (not native[3])


def test_the_same_question_in_flight_waits_for_the_first(rig: Rig) -> None:
    """Asked again (another ID, another case) while the first is in flight: one upstream
    query; the second goes up as a follower of the first (its seq), before the answer."""
    first, again = make_query("same.example.test"), make_query("SAME.example.test")
    rig.ask(first)
    rig.ask(again)
    assert [item[0] for item in rig.items] == [FOLLOW]
    sent, src = rig.up.recv()
    assert not rig.up.pending()
    rig.up.sock.sendto(answer(sent), src)
    rig.upstream_reads()
    (follow, seq, q, *_), (reply, seq2, q2, *_) = rig.items
    assert (follow, q, reply, q2, seq) == (FOLLOW, again, REPLY, first, seq2)
    assert rig.engine.counters()["relay_followed"] == 1
    rig.ask(again)  # the first is answered: a new query is relayed
    assert rig.up.pending(1)


def test_many_leaders_come_and_go(rig: Rig) -> None:
    """The leaders' table under churn: every question in flight is found, none after."""
    for round_ in range(3):
        names = [f"l{round_}-{i}.example.test" for i in range(12)]
        for name in names:
            rig.ask(make_query(name))
        sent = [rig.up.recv() for _ in names]
        for name in names[::3]:  # followers of some, found among the others
            rig.ask(make_query(name.upper()))
        assert len([i for i in rig.items if i[0] == FOLLOW]) == 4 * (round_ + 1)
        for data, src in reversed(sent):
            rig.up.sock.sendto(answer(data), src)
        for _ in range(12):  # bounded: a wakeup reads every ready socket
            if rig.engine.inflight == 0:
                break
            rig.upstream_reads()
        assert rig.engine.inflight == 0


SLOTS = ("id", "flags", "qname", "qtype", "qclass", "qend", "key", "has_opt", "udp_size", "do")


@pytest.mark.parametrize(
    "query",
    [
        make_query("MiXeD.Example.Test"),
        make_query("x.example.test", "TXT", use_edns=0, payload=4000),
        make_query("x.example.test", "AAAA", want_dnssec=True),
        make_query("x.example.test", use_edns=0, payload=100),  # below 512: read as 512
    ],
)
def test_the_fields_handed_up_make_the_query_python_parses(rig: Rig, query: bytes) -> None:
    rig.ask(query)
    sent, src = rig.up.recv()
    rig.up.sock.sendto(answer(sent), src)
    rig.upstream_reads()
    (item,) = rig.items
    made, parsed = query_of(item[2], item[7]), wire.parse_query(query)
    for name in (*SLOTS, "edns_version", "wire"):
        assert getattr(made, name) == getattr(parsed, name), name


def test_answers_come_up_classified_as_the_cache_would(rig: Rig) -> None:
    """With the cache's limits, each answer comes up with admission.c's verdict, which is
    admission.py's (tests/fuzz/test_fuzz_cclassify.py holds the two equal)."""
    cfg = CacheConfig()
    rig.engine.relay_cache((cfg.min_ttl, cfg.max_ttl, cfg.denial_max_ttl, cfg.servfail_ttl))
    query = make_query("v.example.test")
    rig.ask(query)
    sent, src = rig.up.recv()
    reply = answer(sent)
    rig.up.sock.sendto(reply, src)
    rig.upstream_reads()
    (item,) = rig.items
    expected = classify(wire.parse_query(query), reply, cfg)
    assert expected is not None and item[8] == expected
    rig.engine.relay_cache(None)
    rig.ask(make_query("w.example.test"))
    sent, src = rig.up.recv()
    rig.up.sock.sendto(answer(sent), src)
    rig.upstream_reads()
    assert rig.items[1][8] is False


def store_and_render(rig: Rig, cfg: CacheConfig, opt_size: int = 1232) -> None:
    rig.engine.relay_cache((cfg.min_ttl, cfg.max_ttl, cfg.denial_max_ttl, cfg.servfail_ttl))
    rig.engine.relay_render((cfg.capacity, cfg.denial_capacity, opt_size), False, 1232)


def python_reply(query: bytes, reply: bytes, cfg: CacheConfig) -> bytes:
    q = wire.parse_query(query)
    out, _ = PacketCache(cfg, opt_size=1232).admit(q, reply, "forward", None, 1000.0)
    return compose.splice(reply, q.id, q.question, q.rd) if out is reply else out


@pytest.mark.parametrize("edns", [False, True])
def test_a_final_answer_is_sent_by_the_engine_as_python_would(rig: Rig, edns: bool) -> None:
    cfg = CacheConfig()
    store_and_render(rig, cfg)
    query = make_query("Sent.Example.Test", use_edns=0 if edns else None)
    rig.ask(query)
    sent, src = rig.up.recv()
    reply = answer(sent)
    rig.up.sock.sendto(reply, src)
    rig.upstream_reads()
    got = rig.client.recv(65535)  # the engine's own send, in the wakeup's sendmmsg
    assert got == python_reply(query, reply, cfg)
    assert rig.engine.counters()["relay_rendered"] == 1
    # handed up to be stored, without the rest of a full item: counted in C (tally.h)
    assert rig.items == []
    q = wire.parse_query(query)
    (stored,) = rig.stored
    _seq, key, qend, stored_reply, verdict, sent_reply = stored
    assert (key, qend, stored_reply, sent_reply) == (q.key, q.qend, reply, got)
    assert verdict == classify(q, reply, cfg)


def test_answers_sent_here_are_counted_here_as_record_counts_them(rig: Rig) -> None:
    """The tallies say per (qtype, DO, rcode, size slots) what ``Accounting.record`` counts
    for each answer (its sizes, its duration) and per rcode what ``note_reply`` counts."""
    store_and_render(rig, CacheConfig())
    asked = [make_query(f"t{i}.example.test") for i in range(3)]
    asked.append(make_query("d.example.test", use_edns=0, want_dnssec=True))
    asked.append(make_query("nx.example.test"))
    t_start = time.monotonic()
    sizes = []
    for query in asked:
        rig.ask(query)
        sent, src = rig.up.recv()
        reply = nxdomain(sent) if b"\x02nx" in query else answer(sent)
        rig.up.sock.sendto(reply, src)
        rig.upstream_reads()
        sizes.append((len(query), len(rig.client.recv(65535))))
    elapsed = time.monotonic() - t_start
    assert len(rig.stored) == 5 and rig.items == []
    requests, replies = rig.engine.relay_tallies()
    by_key = {(t[0], t[1], t[2]): t for t in requests}
    assert set(by_key) == {(1, False, 0), (1, True, 0), (1, False, 3)}
    plain = by_key[(1, False, 0)]
    assert plain[7] == 3  # answers
    assert plain[4] == sum(q for q, _ in sizes[:3]) and plain[6] == sum(r for _, r in sizes[:3])
    slot = bisect_left(SIZE_BUCKETS, sizes[0][0])
    assert plain[3] == slot and plain[5] == bisect_left(SIZE_BUCKETS, sizes[0][1])
    assert sum(plain[8]) == 3 and 0 <= plain[9] <= elapsed
    assert by_key[(1, True, 0)][7] == 1 and by_key[(1, False, 3)][7] == 1
    assert sorted((rcode, n) for rcode, n, _slots, _secs in replies) == [(0, 4), (3, 1)]
    assert all(sum(slots) == n and 0 <= secs <= elapsed for _, n, slots, secs in replies)
    assert rig.engine.relay_tallies() == ([], [])  # zeroed by the fold


def test_answers_beyond_the_tallies_room_go_up_in_full(rig: Rig) -> None:
    """Each (qtype, DO, rcode, sizes) key takes a slot until the next fold; with every slot
    taken, an answer is still sent here but counted by Python (a full item)."""
    store_and_render(rig, CacheConfig())
    for qtype in range(1000, 1000 + TALLIES + 1):
        rig.ask(make_query("t.example.test", f"TYPE{qtype}"))
        sent, src = rig.up.recv()
        rig.up.sock.sendto(answer(sent), src)
        rig.upstream_reads()
        rig.client.recv(65535)
    assert len(rig.stored) == TALLIES
    (item,) = rig.items
    assert item[0] == REPLY and item[9] is not None  # sent here, counted up there
    requests, _ = rig.engine.relay_tallies()
    assert len(requests) == TALLIES


def test_the_size_slots_are_the_metrics(rig: Rig) -> None:
    assert cengine.SIZE_BUCKETS == stats.SIZE_BUCKETS


def nxdomain(query: bytes) -> bytes:
    r = dns.message.make_response(dns.message.from_wire(query))
    r.set_rcode(3)
    return r.to_wire()


@pytest.mark.parametrize(
    "label, native, nss, reply_of",
    [
        ("forward-first without an address", NATIVE, False, nxdomain),
        ("NSS would look the address up", None, True, nxdomain),
        ("bigger than the client's 512 bytes", None, False, "big"),
    ],
)
def test_answers_python_must_finish_are_not_sent(
    rig: Rig, label: str, native: Any, nss: bool, reply_of: Any
) -> None:
    store_and_render(rig, CacheConfig())
    rig.policy(rig.up.addr, native=native, nss=nss)
    rig.ask(make_query("x.example.test"))
    sent, src = rig.up.recv()
    if reply_of == "big":
        r = dns.message.make_response(dns.message.from_wire(sent))
        for i in range(40):
            r.answer.append(dns.rrset.from_text("x.example.test.", 60, "IN", "A", f"10.0.0.{i}"))
        data = r.to_wire()
    else:
        data = reply_of(sent)
    rig.up.sock.sendto(data, src)
    rig.upstream_reads()
    assert rig.items[0][9] is None, label
    rig.client.settimeout(0.2)
    with pytest.raises(TimeoutError):
        rig.client.recv(65535)  # nothing from the engine: Python answers it
