"""resolv.conf and the hosts file rewritten in place under load (docs/configuration.md, "Files
rewritten in place").

Editors and some VPN clients truncate the file and write it again a moment later; a worker
that polls in between reads an empty file. Before: that empty read became "no usable
nameserver" (SERVFAIL for everything, fallbacks aside) and every rewrite, even one with the
same servers, flushed the cache. Now the last good contents are kept for
``fastdns.files.FILE_GRACE`` seconds, and only a real change flushes the cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.load import QueryLoad
from support.server import FastDNSProcess, resolv_conf_text
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e

TICK = 1.0  # fastdns.worker.TICK: a blank this long is seen by every worker's poll
SLOW = TICK + 0.3


def rewrite_in_place(path: Path, text: str, blank: float) -> None:
    """Truncate ``path``, wait ``blank`` seconds, write ``text`` (same inode), as an editor."""
    with open(path, "w") as fh:  # O_TRUNC
        fh.flush()
        time.sleep(blank)
        fh.write(text)


@pytest.fixture(name="up")
def _up(upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = upstream_factory()
    up.add_zone("test")
    up.add("cached.test", "A", "192.0.2.1", ttl=300)
    up.add("uncached.test", "A", "192.0.2.2", ttl=0)
    return up


def test_resolv_conf_rewritten_in_place_under_load(
    fastdns_factory: Any, tmp_path: Path, up: FakeUpstream
) -> None:
    resolv = tmp_path / "inplace-resolv.conf"
    text = resolv_conf_text(up)
    resolv.write_text(text)
    server: FastDNSProcess = fastdns_factory(
        {"fastdns": {"workers": 2, "resolv_conf": str(resolv)}}
    )
    with (
        QueryLoad(server.address, server.udp_port, "cached.test", interval=0.01) as cached,
        QueryLoad(server.address, server.udp_port, "uncached.test", interval=0.01) as fresh,
    ):
        assert cached.wait_for_count(100, 10.0) and fresh.wait_for_count(100, 10.0)
        warm = up.count("cached.test", "A")
        assert warm <= 2  # one per worker
        # Every 0.5 s for 6 s, longer than the grace: a worker that polled only once a second
        # could see the blank at every poll and give up. Two blanks outlast a poll.
        for blank in (SLOW, *[0.15] * 12, SLOW):
            rewrite_in_place(resolv, text, blank)
            time.sleep(0.35)  # the rewrite cadence is the scenario, not a wait
        # An observation window, not a wait for a condition: the loads keep asking for one
        # more poll period, so a worker that broke on the last rewrite shows up as SERVFAIL
        # or a timeout below. fastdns exposes no "file polled" event to wait for instead.
        time.sleep(TICK + 0.2)
    assert cached.answers["SERVFAIL"] == 0 and fresh.answers["SERVFAIL"] == 0
    assert cached.failed == 0 and fresh.failed == 0
    assert set(cached.answers) == {"192.0.2.1"} and set(fresh.answers) == {"192.0.2.2"}
    assert up.count("cached.test", "A") == warm  # the cache was kept: same servers
    held = server.stderr.count("is empty or unreadable")
    assert 2 <= held <= 2 * 14, held  # the slow blanks were held; once per blank and worker
    assert "forwarded queries will get SERVFAIL" not in server.stderr


def test_a_real_change_of_servers_still_flushes_the_cache(
    fastdns_factory: Any, upstream_factory: Any, tmp_path: Path, up: FakeUpstream
) -> None:
    other: FakeUpstream = upstream_factory()
    other.add_zone("test")
    other.add("cached.test", "A", "192.0.2.9", ttl=300)
    resolv = tmp_path / "change-resolv.conf"
    resolv.write_text(resolv_conf_text(up))
    server: FastDNSProcess = fastdns_factory({"fastdns": {"resolv_conf": str(resolv)}})
    assert server.query("cached.test").answer[0][0].to_text() == "192.0.2.1"
    rewrite_in_place(resolv, resolv_conf_text(other), 0.15)
    deadline = time.monotonic() + 3 * TICK
    while time.monotonic() < deadline:
        if server.query("cached.test").answer[0][0].to_text() == "192.0.2.9":
            break
        time.sleep(0.05)
    assert server.query("cached.test").answer[0][0].to_text() == "192.0.2.9"


def test_hosts_file_rewritten_in_place_keeps_answering(
    fastdns_factory: Any, tmp_path: Path, up: FakeUpstream
) -> None:
    hosts = tmp_path / "inplace-hosts"
    text = "127.0.0.1 localhost\n10.7.7.7 filehost.test\n"
    hosts.write_text(text)
    server: FastDNSProcess = fastdns_factory(
        {"fastdns": {"workers": 2, "hosts_file": str(hosts)}}, upstreams=[up]
    )
    with QueryLoad(server.address, server.udp_port, "filehost.test", interval=0.01) as load:
        assert load.wait_for_count(50, 10.0)
        for blank in (SLOW, 0.15, SLOW):
            rewrite_in_place(hosts, text, blank)
            time.sleep(0.35)
        time.sleep(TICK + 0.2)  # observation window, as in the resolv.conf test above
    assert load.failed == 0
    assert set(load.answers) == {"10.7.7.7"}, load.answers
    assert up.count("filehost.test") == 0
