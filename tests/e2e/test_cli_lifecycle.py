"""The command line as a user runs it: ``check-config`` exit codes and messages, start-up errors,
the state file, signals and what gets logged."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest
import yaml
from support.clients import query, raw_udp
from support.server import FastDNSProcess, run_cli, write_resolv_conf
from support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e


def safe_doc(tmp_path: Path, **fastdns: Any) -> dict[str, Any]:
    """A config whose files are test files and whose fallbacks are none (in case it serves)."""
    resolv = write_resolv_conf(tmp_path / "resolv.conf")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    section = {
        "resolv_conf": str(resolv),
        "hosts_file": str(hosts),
        "fallback": [],
        "listen": "127.0.0.1",
        **fastdns,
    }
    return {"fastdns": section}


def write_yaml(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# ------------------------------------------------------------------------------ check-config


def test_check_config_ok(tmp_path: Path) -> None:
    doc = safe_doc(tmp_path)
    doc["hostResolver"] = {
        "hosts": {"A.test": "10.0.0.1", "a.test.": "10.0.0.2", "x": "y", "y": "x"}
    }
    doc["vmType"] = "vz"
    path = write_yaml(tmp_path / "lima.yaml", doc)
    out = run_cli("check-config", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{path}: ok"
    line = path.read_text().splitlines().index("    a.test.: 10.0.0.2") + 1
    assert f"warning: {path}:{line}: hostResolver.hosts.a.test.: duplicates 'A.test'" in (
        out.stderr
    )
    assert "warning: hostResolver.hosts.x: alias cycle" in out.stderr  # warned at load
    assert "warning: hostResolver.hosts.y: alias cycle" in out.stderr


def test_check_config_warns_about_a_misspelt_key_with_its_file_and_line(tmp_path: Path) -> None:
    """A typo in a key fastdns reads would silently drop the static names: a warning."""
    path = tmp_path / "lima.yaml"
    path.write_text(
        yaml.safe_dump(safe_doc(tmp_path), sort_keys=False)
        + "hostResolvr:\n  hosts:\n    a.test: 10.0.0.1\n"
    )
    line = path.read_text().splitlines().index("hostResolvr:") + 1
    out = run_cli("check-config", str(path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        f"warning: {path}:{line}: hostResolvr: not a key fastdns reads (did you mean "
        "'hostResolver'?); ignored"
    ) in out.stderr.splitlines()


def test_check_config_reports_every_problem_with_its_key_path(tmp_path: Path) -> None:
    doc = safe_doc(tmp_path, udp_port=70000, listen="localhost", colour="blue")
    doc["dns"] = ["1.1.1.1"]
    doc["hostResolver"] = {"ipv6": "yes", "hosts": {"bad.test": "10.0.0.256"}}
    path = write_yaml(tmp_path / "bad.yaml", doc)
    out = run_cli("check-config", str(path), cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    # error: FILE:LINE: KEY.PATH: message
    assert all(line.startswith(f"error: {path}:") for line in lines), lines
    paths = sorted(line.split(": ", 3)[2] for line in lines)
    assert paths == [
        "dns",
        "fastdns.colour",
        "fastdns.listen",
        "fastdns.udp_port",
        "hostResolver.hosts.bad.test",
        "hostResolver.ipv6",
    ]
    assert all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unreadable_config_is_one_clear_line(tmp_path: Path, command: str) -> None:
    out = run_cli(command, str(tmp_path / "nope.yaml"), cwd=tmp_path, timeout=20)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "nope.yaml: cannot read: No such file or directory" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_bad_yaml_is_one_clear_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "lima.yaml"
    path.write_text("fastdns:\n  resolv_conf: [unclosed\n  fallback: []\n")
    out = run_cli(command, str(path), cwd=tmp_path, timeout=20)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "not valid YAML (line" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "x.yaml", safe_doc(tmp_path, colour="blue"))
    out = run_cli("serve", str(path), cwd=tmp_path, timeout=20)
    assert out.returncode == 2
    assert "fastdns.colour: unknown key" in out.stderr
    assert "Traceback" not in out.stderr


def test_disabled_resolver_without_dns_refuses_to_start(tmp_path: Path) -> None:
    doc = safe_doc(tmp_path)
    doc["hostResolver"] = {"enabled": False}
    path = write_yaml(tmp_path / "x.yaml", doc)
    out = run_cli("serve", str(path), cwd=tmp_path, timeout=20)
    assert out.returncode == 2
    assert "nothing to forward to" in out.stderr
    assert "Traceback" not in out.stderr


# ------------------------------------------------------------------------------ serve errors


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_port_in_use_is_one_clear_line(tmp_path: Path, kind: int) -> None:
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        port = holder.getsockname()[1]
        key = "udp_port" if kind == socket.SOCK_DGRAM else "tcp_port"
        fdp = FastDNSProcess({"fastdns": {key: port}}, tmp_path, wait=False)
        try:
            rc = fdp.wait_exit(15)
        finally:
            fdp.close()
    assert rc not in (0, None) and rc > 0
    err = fdp.stderr
    assert "Traceback" not in err
    problem = [line for line in err.splitlines() if "in use" in line]
    assert len(problem) == 1, err
    assert str(port) in problem[0]


# ------------------------------------------------------------------------------ state, signals


@pytest.fixture(name="slow_upstream")
def _slow_upstream(upstream_factory: Any) -> FakeUpstream:
    up: FakeUpstream = upstream_factory()
    up.add_zone("test")
    up.add("slow.test", "A", "192.0.2.1")
    up.add("ok.test", "A", "192.0.2.2")
    up.behave("slow.test", delay=0.5)
    return up


def test_state_file_and_stdout_line(fastdns_factory: Any) -> None:
    fdp: FastDNSProcess = fastdns_factory({})
    state = json.loads(fdp.state_path.read_text())
    assert {"udp_port", "tcp_port", "listen", "pid", "ready"} <= set(state)
    assert state["ready"] is True and state["listen"] == "127.0.0.1"
    assert state["pid"] == fdp.pid
    assert isinstance(state["udp_port"], int) and 0 < state["udp_port"] < 65536
    assert isinstance(state["tcp_port"], int) and 0 < state["tcp_port"] < 65536
    first_line = json.loads(fdp.stdout.splitlines()[0])
    assert {k: first_line[k] for k in ("udp_port", "tcp_port", "listen", "pid", "ready")} == {
        k: state[k] for k in ("udp_port", "tcp_port", "listen", "pid", "ready")
    }
    # the ports are really bound by the server (no probe-then-close)
    assert fdp.query("host.lima.internal").rcode() == dns.rcode.NOERROR
    assert fdp.query("host.lima.internal", tcp=True).rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_cleanly_with_exit_0_and_finish_in_flight_queries(
    fastdns_factory: Any, slow_upstream: FakeUpstream, sig: int
) -> None:
    fdp: FastDNSProcess = fastdns_factory(
        {
            "fastdns": {
                "native": {"enabled": False},
                "cache": {"enabled": False},
                "graceful_timeout": 3,
            }
        },
        upstreams=[slow_upstream],
    )
    result: dict[str, Any] = {}

    def ask() -> None:
        try:
            result["reply"] = query(fdp.address, fdp.udp_port, "slow.test", timeout=3.0)
        except Exception as e:  # reported below
            result["error"] = e

    asker = threading.Thread(target=ask)
    asker.start()
    assert slow_upstream.wait_for(1, "slow.test", timeout=3.0)  # the query is in flight
    rc = fdp.stop(sig, timeout=10)
    asker.join(5)
    assert rc == 0
    assert "Traceback" not in fdp.stderr
    assert fdp.orphans == []
    reply = result.get("reply")
    assert reply is not None, result.get("error")
    assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["192.0.2.1"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT], ids=["SIGTERM", "SIGQUIT"])
def test_after_a_stop_the_state_file_no_longer_says_ready(fastdns_factory: Any, sig: int) -> None:
    fdp: FastDNSProcess = fastdns_factory({})
    pid = fdp.state["pid"]
    assert fdp.stop(sig) == 0
    state = fdp.read_state()
    assert state is not None and state["ready"] is False, state
    assert state["pid"] == pid and state["workers"] == []
    assert len(fdp.stdout.splitlines()) == 1  # stdout keeps one line per serving change


def test_a_second_sigint_kills_at_once_and_says_so_truthfully(
    fastdns_factory: Any, slow_upstream: FakeUpstream
) -> None:
    """Ctrl+C twice: nothing timed out, so no "did not exit in time" line."""
    section = {"native": {"enabled": False}, "cache": {"enabled": False}, "graceful_timeout": 5}
    fdp: FastDNSProcess = fastdns_factory({"fastdns": section}, upstreams=[slow_upstream])
    slow_upstream.behave("slow.test", delay=3.0)
    asker = threading.Thread(target=lambda: raw_udp_quiet(fdp), daemon=True)
    asker.start()
    assert slow_upstream.wait_for(1, "slow.test", timeout=3.0)  # a worker has to drain
    fdp.send_signal(signal.SIGINT)
    assert wait_for_text(fdp, "stopping: draining", 5)
    start = time.monotonic()
    rc = fdp.stop(signal.SIGINT, timeout=10)
    took = time.monotonic() - start
    err = fdp.stderr
    assert rc == 0, err
    assert took < 2.0, err  # not the 5 s drain
    assert "SIGINT while stopping: killing the children now" in err
    assert "did not exit in time" not in err, err
    assert "stopped by SIGKILL" in err
    assert fdp.orphans == []


def raw_udp_quiet(fdp: FastDNSProcess) -> None:
    try:
        query(fdp.address, fdp.udp_port, "slow.test", timeout=5.0)
    except Exception:  # the server is killed under it: no reply is fine
        pass


def wait_for_text(fdp: FastDNSProcess, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in fdp.stderr:
            return True
        time.sleep(0.02)
    return False


def test_query_names_are_not_logged_at_info(
    fastdns_factory: Any, slow_upstream: FakeUpstream, tmp_path: Path
) -> None:
    fdp: FastDNSProcess = fastdns_factory(
        {
            "hostResolver": {"hosts": {"secret-static.test": "10.0.0.1", "loopy": "loopy"}},
            "fastdns": {"upstream_timeout": 0.2, "deadline": 0.5},
        },
        upstreams=[slow_upstream],
    )
    secrets = [
        "secret-static.test",
        "secret-forward.test",
        "secret-nx.test",
        "ok.test",
        "loopy",
        "slow.test",
    ]
    for name in secrets:
        fdp.query(name, "A")
        fdp.query(name, "TXT", tcp=True)
    fdp.query("secret-ch.test", "TXT", rdclass="CH")
    raw_udp(
        fdp.address,
        fdp.udp_port,
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x0csecret-broke\x00",
        0.5,
    )
    assert fdp.query("ok.test").rcode() == dns.rcode.NOERROR  # everything above was handled
    assert fdp.stop() == 0
    err = fdp.stderr.lower()
    for name in [*secrets, "secret-ch", "secret-broke"]:
        if name == "loopy":  # a static alias cycle is named at load (config, not a query)
            continue
        assert name not in err, fdp.stderr


def test_log_level_debug_is_accepted(fastdns_factory: Any) -> None:
    fdp: FastDNSProcess = fastdns_factory({}, args=["--log-level", "debug"])
    assert fdp.query("host.lima.internal").rcode() == dns.rcode.NOERROR
    assert fdp.stop() == 0


def test_servfail_reply_is_a_full_reply(fastdns_factory: Any) -> None:
    # no upstream at all: SERVFAIL, with the question echoed and the client's ID
    fdp: FastDNSProcess = fastdns_factory({"fastdns": {"deadline": 0.5, "upstream_timeout": 0.2}})
    q = dns.message.make_query("Nowhere.Test", "A", id=777)
    started = time.monotonic()
    raw = raw_udp(fdp.address, fdp.udp_port, q.to_wire())
    assert raw is not None and time.monotonic() - started < 1.0
    reply = dns.message.from_wire(raw)
    assert reply.id == 777 and reply.rcode() == dns.rcode.SERVFAIL
    assert reply.question == q.question
