"""Tests of the test harness itself: FakeUpstream, the clients, the server runner, the guard."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from support import require_loopback
from support.clients import dig, make_query, query, raw_tcp, raw_udp
from support.fixtures import FastDNSFactory, ResolvConfWriter, UpstreamFactory
from support.inproc import InProcessServer
from support.server import (
    FastDNSProcess,
    FastDNSStartError,
    UnsafeConfigError,
    prepare_config,
)
from support.upstream import FakeUpstream, dead_address, next_address

REPO = Path(__file__).resolve().parents[2]
SHORT = 0.15  # how long to wait for a reply that must not come


def ask(up: FakeUpstream, name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    return query(up.address, up.port, name, rdtype, **kwargs)


def rrset_texts(msg: dns.message.Message) -> list[str]:
    return [rrset.to_text() for rrset in msg.answer]


def addresses(msg: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in msg.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}


# --------------------------------------------------------------------------------------------
# Records


def test_a_record_and_question_case_echoed(upstream: FakeUpstream) -> None:
    upstream.add("www.test", "A", "192.0.2.1", ttl=120)
    upstream.add("WWW.test", "A", "192.0.2.2")  # same name, any case: appends to the RRset
    reply = ask(upstream, "WwW.TeSt")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.RA and reply.flags & dns.flags.RD
    assert reply.question[0].name.to_text() == "WwW.TeSt."
    assert addresses(reply) == {"192.0.2.1", "192.0.2.2"}
    assert reply.answer[0].ttl == 120


def test_cname_chain_includes_target_rrset(upstream: FakeUpstream) -> None:
    upstream.add("www.test", "CNAME", "edge.test")
    upstream.add("edge.test", "CNAME", "origin.test")
    upstream.add("origin.test", "A", "192.0.2.7")
    reply = ask(upstream, "www.test")
    assert [r.rdtype for r in reply.answer] == [dns.rdatatype.CNAME] * 2 + [dns.rdatatype.A]
    assert addresses(reply) == {"192.0.2.7"}
    assert ask(upstream, "www.test", "CNAME").answer[0].to_text() == (
        "www.test. 300 IN CNAME edge.test."
    )


def test_cname_leaving_our_data_and_cname_to_nxdomain(upstream: FakeUpstream) -> None:
    upstream.add("out.test", "CNAME", "elsewhere.example")
    reply = ask(upstream, "out.test")
    assert reply.rcode() == dns.rcode.NOERROR and len(reply.answer) == 1
    upstream.add("dangling.test", "CNAME", "missing.test")
    reply = ask(upstream, "dangling.test")
    assert reply.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: rcode of the last name
    assert len(reply.answer) == 1 and reply.authority[0].rdtype == dns.rdatatype.SOA


def test_txt_keeps_string_boundaries_and_empty_strings(upstream: FakeUpstream) -> None:
    upstream.add("t.test", "TXT", "", ["a b", "", "c"], "single string with spaces")
    reply = ask(upstream, "t.test", "TXT")
    strings = sorted(rd.strings for rd in reply.answer[0])
    assert strings == [(b"",), (b"a b", b"", b"c"), (b"single string with spaces",)]


def test_other_types_from_rdata_text(upstream: FakeUpstream) -> None:
    cases = {
        "AAAA": "2001:db8::1",
        "MX": "10 mail.test.",
        "NS": "ns1.test.",
        "SRV": "0 5 5060 sip.test.",
        "PTR": "host.test.",
        "CAA": '0 issue "ca.test"',
        "TYPE65534": r"\# 2 abcd",
    }
    for rdtype, text in cases.items():
        upstream.add("multi.test", rdtype, text.replace(".test.", ".test"))
    for rdtype, text in cases.items():
        reply = ask(upstream, "multi.test", rdtype)
        assert [rd.to_text() for rd in reply.answer[0]] == [text], rdtype
    soa = ask(upstream, "test", "SOA").answer[0]
    assert soa.ttl == 3600 and next(iter(soa)).minimum == 60


def test_nxdomain_and_nodata_carry_soa_with_minimum_ttl(upstream_factory: UpstreamFactory) -> None:
    up = upstream_factory()
    up.add_zone("example.test", soa_minimum=42)
    up.add("host.example.test", "A", "192.0.2.1")
    up.add("deep.ent.example.test", "A", "192.0.2.2")
    nx = ask(up, "nope.example.test")
    assert nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer
    assert [(r.name.to_text(), r.rdtype, r.ttl) for r in nx.authority] == [
        ("example.test.", dns.rdatatype.SOA, 42)
    ]
    for name in ("host.example.test", "ent.example.test"):  # exists / empty non-terminal
        nodata = ask(up, name, "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer, name
        assert nodata.authority[0].ttl == 42


def test_outside_any_zone_refused_by_default_configurable(
    upstream_factory: UpstreamFactory,
) -> None:
    assert ask(upstream_factory(), "x.example").rcode() == dns.rcode.REFUSED
    up = upstream_factory(outside_rcode="NXDOMAIN")
    up.add("known.example", "A", "192.0.2.1")
    assert ask(up, "x.example").rcode() == dns.rcode.NXDOMAIN
    assert addresses(ask(up, "known.example")) == {"192.0.2.1"}  # records need no zone


def test_big_overflows_512_and_edns_size_is_honoured(upstream_factory: UpstreamFactory) -> None:
    up = upstream_factory(max_udp=1232)
    up.add_zone("test")
    up.big("big.test", 60)  # ~1 kB of answers
    plain = ask(up, "big.test")
    assert plain.flags & dns.flags.TC and not plain.answer and plain.edns < 0
    assert ask(up, "big.test", edns=512).flags & dns.flags.TC
    full = ask(up, "big.test", edns=4096, do=True)
    assert not full.flags & dns.flags.TC and len(addresses(full)) == 60
    assert full.edns == 0 and full.payload == 1232 and full.ednsflags & dns.flags.DO
    up.big("huge.test", 100)  # ~1.6 kB: over max_udp even though the client offers 4096
    assert ask(up, "huge.test", edns=4096).flags & dns.flags.TC
    assert len(addresses(ask(up, "huge.test", tcp=True))) == 100


# --------------------------------------------------------------------------------------------
# Behaviours


def test_forced_rcode_per_name_wildcard_and_runtime_change(upstream: FakeUpstream) -> None:
    upstream.add("a.test", "A", "192.0.2.1")
    upstream.add("b.test", "A", "192.0.2.2")
    upstream.behave("a.test", rcode="SERVFAIL")
    assert ask(upstream, "A.TEST").rcode() == dns.rcode.SERVFAIL
    assert ask(upstream, "b.test").rcode() == dns.rcode.NOERROR
    upstream.behave("*", rcode="REFUSED")
    assert ask(upstream, "b.test").rcode() == dns.rcode.REFUSED
    assert ask(upstream, "a.test").rcode() == dns.rcode.SERVFAIL  # the name wins over "*"
    upstream.behave("a.test")  # clears a.test's own behaviour; "*" still applies
    assert ask(upstream, "a.test").rcode() == dns.rcode.REFUSED
    upstream.reset()
    assert addresses(ask(upstream, "a.test")) == {"192.0.2.1"}


def test_times_qtype_and_transport_scopes(upstream: FakeUpstream) -> None:
    upstream.add("flaky.test", "A", "192.0.2.1")
    upstream.behave("flaky.test", rcode="SERVFAIL", times=1)
    assert ask(upstream, "flaky.test").rcode() == dns.rcode.SERVFAIL
    assert ask(upstream, "flaky.test").rcode() == dns.rcode.NOERROR
    upstream.add("dual.test", "A", "192.0.2.2")
    upstream.behave("dual.test", qtype="AAAA", drop=True)
    assert ask(upstream, "dual.test", "A").rcode() == dns.rcode.NOERROR
    with pytest.raises(dns.exception.Timeout):
        ask(upstream, "dual.test", "AAAA", timeout=SHORT)
    upstream.behave("*", transport="udp", drop=True)
    with pytest.raises(dns.exception.Timeout):
        ask(upstream, "flaky.test", timeout=SHORT)
    assert addresses(ask(upstream, "flaky.test", tcp=True)) == {"192.0.2.1"}


def test_delay_does_not_block_other_queries(upstream: FakeUpstream) -> None:
    upstream.add("slow.test", "A", "192.0.2.1")
    upstream.add("fast.test", "A", "192.0.2.2")
    upstream.behave("slow.test", delay=0.4)
    slow, fast = make_query("slow.test", "A"), make_query("fast.test", "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((upstream.address, upstream.port))
        start = time.monotonic()
        s.send(slow.to_wire())
        s.send(fast.to_wire())
        first = dns.message.from_wire(s.recv(65535))
        first_at = time.monotonic() - start
        second = dns.message.from_wire(s.recv(65535))
        second_at = time.monotonic() - start
    assert first.id == fast.id and second.id == slow.id
    assert first_at < 0.4 <= second_at


def test_tcp_pipelined_delay_answers_out_of_order(upstream: FakeUpstream) -> None:
    upstream.add("slow.test", "A", "192.0.2.1")
    upstream.add("fast.test", "A", "192.0.2.2")
    upstream.behave("slow.test", delay=0.2)
    slow, fast = make_query("slow.test", "A"), make_query("fast.test", "A")
    with socket.create_connection((upstream.address, upstream.port), timeout=2.0) as s:
        for q in (slow, fast):
            wire = q.to_wire()
            s.sendall(struct.pack("!H", len(wire)) + wire)
        ids = [dns.query.receive_tcp(s, time.time() + 2.0)[0].id for _ in range(2)]
    assert ids == [fast.id, slow.id]


def test_drop_never_answers_but_logs(upstream: FakeUpstream) -> None:
    upstream.behave("gone.test", drop=True)
    with pytest.raises(dns.exception.Timeout):
        ask(upstream, "gone.test", timeout=SHORT)
    assert (
        raw_tcp(upstream.address, upstream.port, make_query("gone.test").to_wire(), timeout=SHORT)
        is None
    )
    assert upstream.count("GONE.test.") == 2
    assert upstream.count("gone.test", transport="tcp") == 1


def test_truncate_over_udp_full_over_tcp(upstream: FakeUpstream) -> None:
    upstream.add("tc.test", "A", "192.0.2.1")
    upstream.behave("tc.test", truncate=True)
    udp = ask(upstream, "tc.test")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(upstream, "tc.test", tcp=True)
    assert not tcp.flags & dns.flags.TC and addresses(tcp) == {"192.0.2.1"}


@pytest.mark.parametrize("mode", ["only", "then-correct"])
def test_wrong_id(upstream: FakeUpstream, mode: str) -> None:
    upstream.add("id.test", "A", "192.0.2.1")
    upstream.behave("id.test", wrong_id=mode)  # type: ignore[arg-type]
    q = make_query("id.test", "A", qid=0x1234)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.connect((upstream.address, upstream.port))
        s.send(q.to_wire())
        assert dns.message.from_wire(s.recv(65535)).id == 0x1235
        s.settimeout(SHORT)
        if mode == "only":
            with pytest.raises(TimeoutError):
                s.recv(65535)
        else:
            correct = dns.message.from_wire(s.recv(65535))
            assert correct.id == 0x1234 and addresses(correct) == {"192.0.2.1"}


def test_wrong_question(upstream: FakeUpstream) -> None:
    upstream.add("q.test", "A", "192.0.2.1")
    upstream.behave("q.test", wrong_question=True)
    reply = raw_udp(upstream.address, upstream.port, make_query("q.test", qid=7).to_wire())
    assert reply is not None
    msg = dns.message.from_wire(reply)
    assert msg.id == 7 and msg.question[0].name.to_text() == "wrong.q.test."


def test_garbage_gets_formerr(upstream: FakeUpstream) -> None:
    header = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0)  # promises a question
    reply = raw_udp(upstream.address, upstream.port, header + b"\x07trunc")
    assert reply is not None
    assert struct.unpack("!HH", reply[:4]) == (0xBEEF, 0x8000 | dns.rcode.FORMERR)
    assert upstream.queries[-1].qname == ""


def test_handler_overrides_records(upstream: FakeUpstream) -> None:
    upstream.handler = lambda q, seen: b"\x00" * 3 if seen.qname == "junk.test" else None
    upstream.add("ok.test", "A", "192.0.2.1")
    assert raw_udp(upstream.address, upstream.port, make_query("junk.test").to_wire()) == bytes(3)
    assert addresses(ask(upstream, "ok.test")) == {"192.0.2.1"}


# --------------------------------------------------------------------------------------------
# Log, addresses, lifecycle


def test_query_log(upstream: FakeUpstream) -> None:
    upstream.add("log.test", "A", "192.0.2.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        q = query(upstream.address, upstream.port, "Log.Test", "AAAA", edns=1400, qid=99)
        assert q.id == 99
    seen = upstream.queries[-1]
    assert (seen.transport, seen.qname, seen.qtype, seen.qid, seen.edns) == (
        "udp",
        "Log.Test",
        "AAAA",
        99,
        1400,
    )
    assert seen.flags & dns.flags.RD and seen.message().id == 99 and seen.src[1] > 0
    assert upstream.count("log.test") == 1 and upstream.count(qtype="A") == 0
    assert upstream.wait_for(1, "log.test", "AAAA", timeout=1.0)
    assert not upstream.wait_for(2, "log.test", timeout=0.05)
    upstream.clear()
    assert upstream.queries == [] and upstream.count() == 0


def test_several_upstreams_on_port_53(upstream_factory: UpstreamFactory) -> None:
    ups = [upstream_factory() for _ in range(3)]
    assert len({up.address for up in ups}) == 3 and {up.port for up in ups} == {53}
    for i, up in enumerate(ups):
        up.add("same.test", "A", f"192.0.2.{i + 1}")
    assert [addresses(ask(up, "same.test")) for up in ups] == [
        {"192.0.2.1"},
        {"192.0.2.2"},
        {"192.0.2.3"},
    ]


def test_dead_address_refuses_and_blackhole_swallows(upstream_factory: UpstreamFactory) -> None:
    dead = dead_address()
    with pytest.raises(ConnectionRefusedError):
        raw_udp(dead, 53, make_query("x.test").to_wire(), timeout=1.0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((dead, 53), timeout=1.0)
    hole = upstream_factory(blackhole=True)
    assert raw_udp(hole.address, 53, make_query("x.test").to_wire(), timeout=SHORT) is None
    assert raw_tcp(hole.address, 53, make_query("x.test").to_wire(), timeout=SHORT) is None
    assert hole.count("x.test") == 2


def test_close_is_quick_and_frees_the_port() -> None:
    address = next_address()
    up = FakeUpstream(address)
    up.add("p.test", "A", "192.0.2.1")
    up.behave("p.test", delay=30)
    ask_wire = make_query("p.test").to_wire()
    with socket.create_connection((address, 53), timeout=1.0) as conn:
        conn.sendall(struct.pack("!H", len(ask_wire)) + ask_wire)
        assert up.wait_for(1, "p.test", transport="tcp")
        start = time.monotonic()
        up.close()
        assert time.monotonic() - start < 1.0
        up.close()  # idempotent
    with FakeUpstream(address) as again:  # same address and port, UDP and TCP
        again.add("p.test", "A", "192.0.2.9")
        assert addresses(ask(again, "p.test", tcp=True)) == {"192.0.2.9"}
    assert not up.errors


def test_port_zero_and_ipv6_loopback() -> None:
    with FakeUpstream(next_address(), 0) as up:
        up.add("z.test", "A", "192.0.2.1")
        assert up.port != 53
        assert addresses(ask(up, "z.test")) == addresses(ask(up, "z.test", tcp=True))
    with FakeUpstream("::1", 0) as up6:
        up6.add("v6.test", "AAAA", "2001:db8::1")
        assert ask(up6, "v6.test", "AAAA").answer[0][0].to_text() == "2001:db8::1"


def test_loopback_guard() -> None:
    assert require_loopback("127.3.2.1") == "127.3.2.1"
    for bad in ("192.0.2.1", "8.8.8.8", "localhost", "::ffff:10.0.0.1", "fe80::1%lo"):
        with pytest.raises(ValueError):
            require_loopback(bad)
    with pytest.raises(ValueError):
        FakeUpstream("10.0.0.1")
    with pytest.raises(ValueError):
        query("10.0.0.1", 53, "x.test")


def test_dig_helper(upstream: FakeUpstream) -> None:
    upstream.add("dig.test", "A", "192.0.2.5")
    result = dig(upstream.address, upstream.port, "dig.test", "A", "+short")
    assert result.returncode == 0 and result.stdout.split() == ["192.0.2.5"]
    for bad in ("@192.0.2.1", "+trace", "+tra", "+nssearch", "-f"):
        with pytest.raises(ValueError):
            dig(upstream.address, upstream.port, "dig.test", bad)


# --------------------------------------------------------------------------------------------
# The server runner and the session guard

FAKE_SERVE = textwrap.dedent(
    """
    import json, os, signal, socket, sys
    config, state = sys.argv[2], sys.argv[4]
    assert sys.argv[1] == "serve" and sys.argv[3] == "--state-file"
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    if os.fork() == 0:  # a worker that ignores TERM and outlives the supervisor
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            signal.pause()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(os.environ.get("EXIT", "0"))))
    port = udp.getsockname()[1]
    doc = {"ready": True, "udp_port": port, "tcp_port": port, "listen": "127.0.0.1",
           "pid": os.getpid()}
    with open(state + ".tmp", "w") as fh:
        json.dump(doc, fh)
    os.replace(state + ".tmp", state)
    print("started", file=sys.stderr, flush=True)
    while True:
        signal.pause()
    """
)


def test_server_runner_lifecycle_with_stand_in(tmp_path: Path) -> None:
    script = tmp_path / "fake_serve.py"
    script.write_text(FAKE_SERVE)
    with FastDNSProcess(
        {}, tmp_path, program=[sys.executable, str(script)], env={"EXIT": "3"}
    ) as proc:
        assert proc.state["ready"] is True and proc.state["pid"] == proc.pid
        assert proc.udp_port == proc.tcp_port > 0 and proc.address == "127.0.0.1"
        assert "started" in proc.stderr
        assert len(proc.group_pids()) == 2
        assert proc.stop() == 3
        assert len(proc.orphans) == 1  # the worker that ignored TERM, now killed
        assert proc.group_pids() == []


def test_server_runner_reports_early_exit(tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text("import sys\nprint('boom: bad config', file=sys.stderr)\nsys.exit(2)\n")
    with pytest.raises(FastDNSStartError, match=r"exited with 2(.|\n)*boom: bad config"):
        FastDNSProcess({}, tmp_path, program=[sys.executable, str(script)])


def test_prepare_config_fills_safe_defaults_and_refuses_system_files(tmp_path: Path) -> None:
    doc = prepare_config({"hostResolver": {"hosts": {"h.test": "192.0.2.1"}}}, tmp_path)
    section = doc["fastdns"]
    assert Path(section["resolv_conf"]).read_text().count("nameserver") == 0
    assert Path(section["hosts_file"]).parent == tmp_path and section["fallback"] == []
    assert (section["listen"], section["udp_port"], section["tcp_port"]) == ("127.0.0.1", 0, 0)
    unsafe: list[dict[str, Any]] = [
        {"fastdns": {"resolv_conf": "/etc/resolv.conf"}},
        {"fastdns": {"hosts_file": "/etc/hosts"}},
        {"fastdns": {"resolv_conf": "resolv.conf"}},
        {"fastdns": {"fallback": ["8.8.8.8"]}},
        {"fastdns": {"listen": "0.0.0.0"}},
        {"fastdns": {"metrics": {"listen": "0.0.0.0:9153"}}},
        {"hostResolver": {"enabled": False}, "dns": ["192.0.2.53"]},
    ]
    for config in unsafe:
        with pytest.raises(UnsafeConfigError):
            prepare_config(config, tmp_path)


def test_fixture_writers(
    resolv_conf: ResolvConfWriter, upstream_factory: UpstreamFactory, tmp_path: Path
) -> None:
    up = upstream_factory()
    path = resolv_conf(up, "127.0.0.53", search=["test"], options=["ndots:1"])
    text = path.read_text()
    assert f"nameserver {up.address}\nnameserver 127.0.0.53\nsearch test\noptions ndots:1" in text
    with pytest.raises(ValueError):
        resolv_conf(upstream_factory(port=0))  # resolv.conf cannot carry a port
    with pytest.raises(ValueError):
        resolv_conf("192.0.2.53")
    factory = FastDNSFactory(tmp_path)
    with pytest.raises(ValueError):
        factory({"fastdns": {"resolv_conf": str(path)}}, upstreams=[up])


def test_netns_run_isolates_and_passes_exit_code() -> None:
    code = "import os, socket; print(socket.if_nameindex(), os.environ['FASTDNS_TEST_NETNS'])"
    result = subprocess.run(
        [str(REPO / "tests" / "netns-run"), sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(1, 'lo')] 1"
    failing = subprocess.run(
        [str(REPO / "tests" / "netns-run"), "sh", "-c", "exit 7"], timeout=10, check=False
    )
    assert failing.returncode == 7


def test_session_guard_refuses_without_netns_marker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FASTDNS_TEST_NETNS"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            str(Path(__file__)),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 4
    assert "refusing to run outside an isolated network namespace" in result.stderr


def test_inproc_close_fails_when_the_drain_raises(tmp_path: Path) -> None:
    """The in-process server's close() does not swallow a failed drain."""
    server = InProcessServer({"fastdns": {"fallback": []}}, tmp_path)

    async def broken_drain() -> None:
        raise OSError("drain broke")

    server.worker.drain = broken_drain  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="the drain raised") as failed:
        server.close()
    assert isinstance(failed.value.__cause__, OSError)
    server.close()  # reported once; closing again is a no-op
