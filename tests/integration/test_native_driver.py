"""fastdns.cares.AresDriver on a real uvloop loop against a FakeUpstream: futures complete
once, synchronous completions (cache hits, bad names), cancellation on close, idle timers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pycares
import pytest
from support.fixtures import UpstreamFactory
from support.upstream import FakeUpstream

from fastdns.resolve.native.cares import AresDriver, E, keep_txt_strings, query_cache_ttl
from fastdns.serve.worker import new_event_loop

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), 10))
    finally:
        loop.close()


@pytest.fixture(name="up")
def _up(upstream_factory: UpstreamFactory) -> FakeUpstream:
    up = upstream_factory()
    up.add_zone("test")
    up.add("a.test", "A", "192.0.2.1", ttl=300)
    up.add("t.test", "TXT", ["x"], ttl=300)
    up.behave("hang.test", drop=True)
    return up


def driver(up: FakeUpstream) -> AresDriver:
    keep_txt_strings()  # as NativeResolver does
    return AresDriver(
        asyncio.get_running_loop(),
        [f"{up.address}:53"],
        flags=pycares.ARES_FLAG_EDNS,
        timeout=1.0,
        tries=1,
    )


def test_lookups_complete_and_leave_nothing_armed(up: FakeUpstream) -> None:
    async def main() -> None:
        d = driver(up)
        result, status = await d.getaddrinfo("a.test", socket.AF_INET)
        assert status is None and [n.addr[0] for n in result.nodes] == [b"192.0.2.1"]
        result, status = await d.search("t.test", pycares.QUERY_TYPE_TXT)
        assert status is None and result.answer[0].data.strings == (b"x",)
        assert d.pending == 0
        d.close()
        assert d._timer is None and not d._fds

    run(main)


def test_a_cache_hit_completes_inside_the_call(up: FakeUpstream) -> None:
    async def main() -> None:
        d = driver(up)
        await d.search("t.test", pycares.QUERY_TYPE_TXT)
        fut = d.search("t.test", pycares.QUERY_TYPE_TXT)  # c-ares' query cache
        assert fut.done() and fut.result()[1] is None
        assert d.pending == 0
        d.close()

    run(main)
    assert up.count("t.test", "TXT") == 1


def test_the_query_cache_can_be_turned_off(up: FakeUpstream) -> None:
    """What fastdns.native does (CARES_QCACHE_MAX_TTL): the option takes effect, read back
    from c-ares, and the second question goes to the upstream again."""

    async def main() -> None:
        keep_txt_strings()
        d = AresDriver(
            asyncio.get_running_loop(),
            [f"{up.address}:53"],
            flags=pycares.ARES_FLAG_EDNS,
            timeout=1.0,
            tries=1,
            qcache_max_ttl=0,
        )
        assert query_cache_ttl(d.channel) == 0
        for _ in range(2):
            fut = d.search("t.test", pycares.QUERY_TYPE_TXT)
            assert not fut.done()
            assert (await fut)[1] is None
        d.close()

    run(main)
    assert up.count("t.test", "TXT") == 2


def test_a_bad_name_is_reported_once(up: FakeUpstream) -> None:
    async def main() -> None:
        d = driver(up)
        for fut in (
            d.search("a" * 64 + ".test", pycares.QUERY_TYPE_TXT),  # label > 63
            d.getaddrinfo("a" * 64 + ".test", socket.AF_INET),
        ):
            assert fut.done()
            result, status = fut.result()
            assert result is None and status is not None
        assert d.pending == 0  # even when callback and exception both came
        d.close()

    run(main)


def test_close_cancels_pending_lookups_on_the_loop(up: FakeUpstream) -> None:
    async def main() -> None:
        d = driver(up)
        idle: list[AresDriver] = []
        d.on_idle = idle.append
        fut = d.getaddrinfo("hang.test", socket.AF_INET)
        assert await asyncio.to_thread(up.wait_for, 1, "hang.test")
        assert not fut.done() and d.pending == 1
        d.close()
        assert fut.result() == (None, E.ARES_ECANCELLED)
        assert d.pending == 0 and d.closed
        await asyncio.sleep(0)
        assert idle == [d]
        d.close()  # idempotent
        late = d.search("t.test", pycares.QUERY_TYPE_TXT)  # a closed channel fails, not raises
        assert late.done() and late.result()[0] is None

    run(main)


def test_a_timeout_is_seen_at_its_deadline_not_a_tick_later(up: FakeUpstream) -> None:
    async def main() -> float:
        d = driver(up)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        _, status = await d.getaddrinfo("hang.test", socket.AF_INET)
        assert status == E.ARES_ETIMEOUT
        d.close()
        return loop.time() - t0

    elapsed = run(main)
    assert elapsed < 1.0 + 0.5  # timeout=1.0, tries=1 (a fixed 1 s tick would not add more,
    # but a missed re-arm would wait for the next socket event forever)
