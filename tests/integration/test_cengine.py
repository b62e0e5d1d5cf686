"""The compiled datapath's Engine (fastdns/serve/cengine/engine.c) on real loopback sockets.

Each test makes a non-blocking server socket and an Engine over it, sends from a client
socket, runs the engine's read callback itself (what the loop would call), and reads what the
client got. Python's side is recorded: upcalls and want_write calls."""

from __future__ import annotations

import errno
import resource
import select
import socket
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

import pytest

from fastdns.metrics.stats import TIME_BUCKETS

cengine = pytest.importorskip("fastdns.serve._cengine")
Engine = cengine.Engine

FORM = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01"
BODY = b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + b"answer"


class Rig:
    """A server socket with its Engine, a client socket, and what the engine told Python."""

    def __init__(self, family: int = socket.AF_INET, host: str = "127.0.0.1", batch: int = 64):
        self.server = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6 and host == "::":
            self.server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.server.bind((host, 0))
        self.server.setblocking(False)
        self.upcalls: list[tuple[bytes, Any]] = []
        self.wants = 0
        self.on_upcall: Any = None
        self.engine = Engine(self.server.fileno(), batch, self._up, self._want)
        self.clients: list[socket.socket] = []

    def _up(self, data: bytes, addr: Any) -> None:
        self.upcalls.append((data, addr))
        if self.on_upcall is not None:
            self.on_upcall(data, addr)

    def _want(self) -> None:
        self.wants += 1

    def client(self, family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
        c = socket.socket(family, socket.SOCK_DGRAM)
        c.bind((host, 0))
        c.settimeout(2)
        self.clients.append(c)
        return c

    @property
    def port(self) -> int:
        return int(self.server.getsockname()[1])

    def send(self, client: socket.socket, data: bytes, host: str = "127.0.0.1") -> None:
        client.sendto(data, (host, self.port))

    def read(self) -> None:
        """Wait (bounded) until the server socket is readable, then run one wakeup."""
        assert select.select([self.server], [], [], 2)[0], "nothing arrived"
        self.engine.on_readable()

    def close(self) -> None:
        self.engine.close()
        self.server.close()
        for c in self.clients:
            c.close()


@pytest.fixture(name="rig")
def _rig() -> Iterator[Rig]:
    rig = Rig()
    yield rig
    rig.close()


def ready(rig: Rig, until: float | None = None, token: Any = "tok") -> None:
    until = time.monotonic() + 30 if until is None else until
    assert rig.engine.install(FORM, BODY, until, token)
    assert rig.engine.allow("127.0.0.1")


def no_reply(client: socket.socket) -> bool:
    return not select.select([client], [], [], 0.05)[0]


# ------------------------------------------------------------------------------ answers


def test_a_ready_form_is_answered_with_the_query_id(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.send(c, b"\xbe\xef" + FORM)
    rig.read()
    assert c.recv(65535) == b"\xbe\xef" + BODY
    assert rig.upcalls == []
    counters = rig.engine.counters()
    assert counters["answered"] == 1 and counters["sent"] == 1 and counters["upcalls"] == 0


def test_an_unknown_form_goes_up_with_the_recvfrom_address(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.send(c, b"\x00\x07" + FORM + b"x")
    rig.read()
    assert rig.upcalls == [(b"\x00\x07" + FORM + b"x", c.getsockname())]
    assert no_reply(c)


def test_a_source_not_told_to_pass_goes_up(rig: Rig) -> None:
    assert rig.engine.install(FORM, BODY, time.monotonic() + 30, "tok")
    c = rig.client()
    rig.send(c, b"\x00\x01" + FORM)
    rig.read()  # never allowed: (a DENY or a rate-limited source is never allowed)
    assert [d for d, _ in rig.upcalls] == [b"\x00\x01" + FORM]
    rig.engine.allow("127.0.0.1")
    rig.engine.forget()  # Gate.verdicts emptied: the engine's set too
    rig.send(c, b"\x00\x02" + FORM)
    rig.read()
    assert len(rig.upcalls) == 2 and no_reply(c)


def test_dropped_and_cleared_forms_are_not_answered(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.engine.drop(FORM)
    rig.send(c, b"\x00\x01" + FORM)
    rig.read()
    ready(rig)
    rig.engine.clear()
    rig.send(c, b"\x00\x02" + FORM)
    rig.read()
    assert len(rig.upcalls) == 2 and no_reply(c)
    assert rig.engine.counters()["forms"] == 0


def test_a_form_is_answered_only_until_its_deadline(rig: Rig) -> None:
    ready(rig, until=time.monotonic() - 0.001)
    c = rig.client()
    rig.send(c, b"\x00\x01" + FORM)
    rig.read()
    assert len(rig.upcalls) == 1 and no_reply(c)


def test_short_and_whole_size_datagrams_go_up_whole(rig: Rig) -> None:
    ready(rig)
    rig.engine.install(b"\x01", b"one", time.monotonic() + 30, "t1")
    c = rig.client()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    for size in (0, 1, 2):  # under 3 bytes: never looked up
        rig.send(c, b"\x00" * size)
        rig.read()
    rig.send(c, b"\x00\x00\x01")  # 3 bytes: the 1-byte form
    rig.read()
    assert c.recv(100) == b"\x00\x00one"
    big = bytes(range(256)) * 255 + b"\x00" * 227  # 65507 bytes: the largest UDP/IPv4 payload
    rig.send(c, big)
    rig.read()
    assert [len(d) for d, _ in rig.upcalls] == [0, 1, 2, 65507]
    assert rig.upcalls[-1][0] == big


def test_more_than_a_batch_is_read_in_batches_and_answered_in_one_send(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rig.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for i in range(100):
        rig.send(c, i.to_bytes(2, "big") + FORM)
    rig.read()  # one wakeup: 64 datagrams, one sendmmsg
    counters = rig.engine.counters()
    assert counters["datagrams"] == 64 and counters["recv_calls"] == 1
    assert counters["answered"] == 64 and counters["send_calls"] == 1
    rig.read()
    ids = sorted(int.from_bytes(c.recv(100)[:2], "big") for _ in range(100))
    assert ids == list(range(100))
    assert rig.engine.counters()["send_calls"] == 2


def test_python_replies_inside_a_batch_join_its_sendmmsg_in_order(rig: Rig) -> None:
    ready(rig)
    c = rig.client()

    def answer(data: bytes, addr: Any) -> None:
        rig.engine.sendto(b"py" + data[:2], addr)

    rig.on_upcall = answer
    rig.send(c, b"\x00\x01" + FORM + b"?")  # up
    rig.send(c, b"\x00\x02" + FORM)  # here
    rig.send(c, b"\x00\x03" + FORM + b"?")  # up
    time.sleep(0.01)  # all three queued before the one wakeup (loopback: immediate)
    rig.read()
    got = [c.recv(100) for _ in range(3)]
    assert sorted(got) == sorted([b"py\x00\x01", b"\x00\x02" + BODY, b"py\x00\x03"])
    assert rig.engine.counters()["send_calls"] == 1


def test_sendto_outside_a_batch_sends_at_once(rig: Rig) -> None:
    c = rig.client()
    rig.engine.sendto(b"later", c.getsockname())  # a relayed reply, after its batch
    assert c.recv(100) == b"later"
    rig.engine.sendto(bytearray(b"copied"), c.getsockname())
    assert c.recv(100) == b"copied"
    with pytest.raises(OSError):
        rig.engine.sendto(b"x", ("not-an-address", 53))


def test_an_upcall_error_is_raised_after_the_batch_is_answered(rig: Rig) -> None:
    ready(rig)
    c = rig.client()

    def fail(data: bytes, addr: Any) -> None:
        raise ValueError("bug in the upcall")

    rig.on_upcall = fail
    rig.send(c, b"\x00\x01" + FORM + b"?")
    rig.send(c, b"\x00\x02" + FORM)
    time.sleep(0.01)
    with pytest.raises(ValueError, match="bug in the upcall"):
        rig.read()
    assert c.recv(100) == b"\x00\x02" + BODY  # the hit of the same batch still went out


# ------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET6, "::1")])
def test_ipv6_addresses_are_the_tuples_recvfrom_gives(family: int, host: str) -> None:
    rig = Rig(family, host)
    try:
        c = rig.client(family, host)
        rig.send(c, b"\x00\x01" + FORM, host)
        rig.read()
        assert rig.upcalls[0][1] == c.getsockname()  # (host, port, flowinfo, scope_id)
        assert len(rig.upcalls[0][1]) == 4
        rig.engine.install(FORM, BODY, time.monotonic() + 30, "t")
        rig.engine.allow("::1")
        rig.send(c, b"\x00\x02" + FORM, host)
        rig.read()
        assert c.recv(100) == b"\x00\x02" + BODY
        rig.engine.sendto(b"py", rig.upcalls[0][1])
        assert c.recv(100) == b"py"
    finally:
        rig.close()


def test_v4_mapped_sources_on_a_dual_stack_socket() -> None:
    rig = Rig(socket.AF_INET6, "::")
    try:
        c = rig.client()
        rig.send(c, b"\x00\x01" + FORM)
        rig.read()
        port = c.getsockname()[1]
        assert rig.upcalls[0][1] == ("::ffff:127.0.0.1", port, 0, 0)  # as recvfrom gives it
        rig.engine.install(FORM, BODY, time.monotonic() + 30, "t")
        rig.engine.allow("127.0.0.1")  # not the form the gate judges here
        rig.send(c, b"\x00\x02" + FORM)
        rig.read()
        assert len(rig.upcalls) == 2
        rig.engine.allow("::ffff:127.0.0.1")
        rig.send(c, b"\x00\x03" + FORM)
        rig.read()
        assert c.recv(100) == b"\x00\x03" + BODY
        rig.engine.sendto(b"py", ("::ffff:127.0.0.1", port, 0, 0))
        assert c.recv(100) == b"py"
    finally:
        rig.close()


def test_hosts_that_are_not_addresses_are_not_allowed(rig: Rig) -> None:
    assert not rig.engine.allow("fe80::1%lo")  # scoped: always up to Python
    assert not rig.engine.allow("localhost")
    assert rig.engine.counters()["sources"] == 0


def test_the_passing_set_is_bounded(rig: Rig) -> None:
    for i in range(cengine.MAX_BACKLOG + 10):  # 4096 + 10 (the gate's CAPACITY is 4096 too)
        rig.engine.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert 0 < rig.engine.counters()["sources"] <= 4096


# ------------------------------------------------------------------------------ the backlog


def test_replies_wait_in_the_backlog_when_the_buffer_is_full(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.engine._fail_sends(errno.EAGAIN, 1)  # loopback never fills: the next send "would block"
    rig.send(c, b"\x00\x01" + FORM)
    rig.read()
    assert rig.wants == 1 and rig.engine.counters()["backlog"] == 1 and no_reply(c)
    rig.engine.sendto(b"after", c.getsockname())  # behind it, not before
    assert rig.wants == 1 and rig.engine.counters()["backlog"] == 2
    rig.engine._fail_sends(errno.EAGAIN, 1)
    assert rig.engine.on_writable() is False  # still full
    assert rig.engine.on_writable() is True
    assert c.recv(100) == b"\x00\x01" + BODY and c.recv(100) == b"after"
    assert rig.engine.counters()["backlog"] == 0


def test_a_full_backlog_drops_and_counts(rig: Rig) -> None:
    c = rig.client()
    rig.engine._fail_sends(errno.EAGAIN, 1)
    for _ in range(cengine.MAX_BACKLOG + 5):
        rig.engine.sendto(b"x", c.getsockname())
    counters = rig.engine.counters()
    assert counters["backlog"] == cengine.MAX_BACKLOG and counters["backlog_drops"] == 5
    assert counters["send_errors"] == 5 and rig.wants == 1


def test_other_send_errors_are_counted_not_raised(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.engine._fail_sends(errno.EPERM, 2)
    rig.send(c, b"\x00\x01" + FORM)
    rig.read()
    rig.engine.sendto(b"x", c.getsockname())
    counters = rig.engine.counters()
    assert counters["send_errors"] == 2 and counters["backlog"] == 0 and no_reply(c)


# ------------------------------------------------------------------------------ accounting


def test_fold_counts_hits_per_token_including_dropped_forms(rig: Rig) -> None:
    ready(rig, token="first")
    c = rig.client()
    for i in range(3):
        rig.send(c, i.to_bytes(2, "big") + FORM)
        rig.read()
    rig.engine.install(FORM, BODY, time.monotonic() + 30, "second")  # replaced
    rig.send(c, b"\x00\x09" + FORM)
    rig.read()
    rig.engine.drop(FORM)
    folded = {token: (n, seconds) for token, n, seconds, *_ in rig.engine.fold()}
    assert {token: n for token, (n, _) in folded.items()} == {"first": 3, "second": 1}
    assert all(0 <= s <= 3 * 0.00025 for _, s in folded.values())
    assert rig.engine.fold() == []  # zeroed


def test_a_slow_hit_is_counted_in_its_duration_slot(rig: Rig) -> None:
    ready(rig)
    c = rig.client()

    def slow(data: bytes, addr: Any) -> None:
        time.sleep(0.002)  # the hit of this batch waits for the whole batch

    rig.on_upcall = slow
    rig.send(c, b"\x00\x01" + FORM + b"?")
    rig.send(c, b"\x00\x02" + FORM)
    time.sleep(0.01)
    rig.read()
    [(token, n, _, late, seconds, slots, first, last)] = rig.engine.fold()
    assert (token, n, late) == ("tok", 0, 1) and seconds >= 0.002 and slots is not None
    assert list(slots) == [int(i == bisect_left(TIME_BUCKETS, seconds)) for i in range(17)]
    assert 0 < first == last <= time.monotonic()
    assert rig.engine.fold() == []


def test_ttls_are_counted_down_from_the_stored_time(rig: Rig) -> None:
    """The body's TTL fields show TTL - age, age = whole seconds since stored (entry.retime)."""
    body = BODY + (300).to_bytes(4, "big") + (7).to_bytes(4, "big")
    at = len(BODY)
    stored = time.monotonic() - 2.5  # age 2
    assert rig.engine.install(FORM, body, stored + 30, "tok", stored, 0, (at, 300, at + 4, 1))
    assert rig.engine.allow("127.0.0.1")
    c = rig.client()
    rig.send(c, b"\x00\x05" + FORM)
    rig.read()
    assert c.recv(100) == b"\x00\x05" + BODY + (298).to_bytes(4, "big") + bytes(4)
    assert rig.upcalls == [] and rig.engine.counters()["answered"] == 1


@pytest.mark.parametrize(
    "ttls", [(len(BODY) - 3, 300), (-1, 300), (0, 2**32), (0,), [0, 300], (0, "x")]
)
def test_ttl_fields_are_checked_against_the_body(rig: Rig, ttls: Any) -> None:
    with pytest.raises((ValueError, TypeError, OverflowError)):
        rig.engine.install(FORM, BODY, time.monotonic() + 30, "tok", 0.0, 0, ttls)
    assert rig.engine.counters()["forms"] == 0


# ------------------------------------------------------------------------------ lifetime


def test_close_is_idempotent_and_everything_after_is_a_no_op(rig: Rig) -> None:
    ready(rig)
    rig.engine.close()
    rig.engine.close()
    assert rig.engine.closed
    rig.engine.on_readable()
    rig.engine.sendto(b"x", ("127.0.0.1", 9))
    assert rig.engine.install(FORM, BODY, 1.0, "t") is False
    assert rig.engine.fold() == [] and rig.engine.on_writable() is True


def test_close_inside_an_upcall_ends_the_batch_safely(rig: Rig) -> None:
    ready(rig)
    c = rig.client()
    rig.on_upcall = lambda data, addr: rig.engine.close()
    rig.send(c, b"\x00\x01" + FORM + b"?")
    rig.send(c, b"\x00\x02" + FORM)
    time.sleep(0.01)
    rig.read()
    assert rig.engine.closed and len(rig.upcalls) == 1


def test_bad_arguments_are_errors(rig: Rig) -> None:
    with pytest.raises(ValueError):
        Engine(rig.server.fileno(), 0, print, print)
    with pytest.raises(ValueError):
        Engine(rig.server.fileno(), 1025, print, print)
    with pytest.raises(TypeError):
        rig.engine.install("form", BODY, 1.0, "t")
    with pytest.raises(ValueError):
        rig.engine.install(b"", BODY, 1.0, "t")
    with pytest.raises(TypeError):
        rig.engine.sendto(b"x", "127.0.0.1")


def _asan_loaded() -> bool:
    with open("/proc/self/maps") as fh:
        return "libasan" in fh.read()


# Under AddressSanitizer (scripts/sanitize) freed memory sits in ASan's quarantine, so RSS is no
# leak signal there; ASan itself checks every access of those runs instead.
flat_rss = pytest.mark.skipif(_asan_loaded(), reason="RSS is no leak signal under ASan")


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


@flat_rss
def test_memory_stays_flat_over_many_table_operations(rig: Rig) -> None:
    """Install, hit, drop, clear and fold cycles release what they hold (RSS, not refcounts:
    release builds have no sys.gettotalrefcount)."""
    c = rig.client()
    rig.engine.allow("127.0.0.1")

    def cycles(n: int) -> None:
        for i in range(n):
            form = FORM + i.to_bytes(4, "big")
            rig.engine.install(form, BODY + bytes(200), time.monotonic() + 30, object())
            if i % 50 == 0:
                rig.send(c, b"\x00\x01" + form)
                rig.read()
                c.recv(1000)
                rig.engine.fold()
            if i % 3 == 0:
                rig.engine.drop(form)
            if i % 5000 == 4999:
                rig.engine.clear()

    cycles(20_000)  # warm: the table and the allocator reach their size
    before = rss_kib()
    cycles(200_000)
    assert rss_kib() - before < 2048, "memory grew"
    assert rig.engine.counters()["forms"] <= 9216


@flat_rss
def test_memory_stays_flat_over_many_upcalls_sends_and_errors(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upcalls (their bytes and address tuples), Python's sends in and out of a batch, the
    backlog, and upcall exceptions release what they hold."""
    monkeypatch.setattr("sys.unraisablehook", lambda *args: None)  # the second error of a batch
    c = rig.client()
    c.setblocking(False)
    for s in (c, rig.server):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rig.engine.allow("127.0.0.1")

    def answer(data: bytes, addr: Any) -> None:
        rig.engine.sendto(b"r" + data[:20], addr)
        if len(data) % 7 == 0:
            raise ValueError("a bug in the upcall")

    rig.on_upcall = answer

    def batches(n: int) -> None:
        for k in range(n):
            for i in range(64):
                rig.send(c, b"\x00\x01" + (FORM if i % 2 else bytes(200 + i)))
            rig.engine.install(FORM, BODY + bytes(100), time.monotonic() + 10, object())
            if k % 10 == 0:
                rig.engine._fail_sends(errno.EAGAIN, 1)  # this batch's replies: the backlog
            try:
                rig.read()
            except ValueError:
                pass
            assert rig.engine.on_writable()
            rig.engine.sendto(b"later", c.getsockname())
            while select.select([c], [], [], 0)[0]:
                c.recv(2000)
            rig.engine.fold()
            rig.upcalls.clear()

    batches(100)
    before = rss_kib()
    batches(600)  # about 19,000 upcalls of 200+ bytes and as many hits
    assert rss_kib() - before < 1024, "memory grew"
    counters = rig.engine.counters()
    assert counters["answered"] >= 19_000 and counters["upcalls"] >= 19_000
