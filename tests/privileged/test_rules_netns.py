"""The rules process with real iptables in real network namespaces (docs/rules.md).

The test's own namespace (from tests/netns-run) plays the host; a guest namespace is joined to
it by a veth pair (support.netns). fastdns listens on 127.0.0.1 and the virtual address
10.201.0.53 is DNAT'ed to it: from the guest through PREROUTING (which needs route_localnet),
from local processes through OUTPUT (fastdns's own uid is exempt: the loop guard).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import netns, procfs
from support.netns import (
    GUEST_IP,
    HOST_IF,
    HOST_IP,
    OUTSIDER_HOST_IF,
    OUTSIDER_HOST_IP,
    OUTSIDER_IF,
    OUTSIDER_IP,
    SCRIPT_GUEST_IF,
    SCRIPT_GUEST_IP,
    SCRIPT_HOST_IF,
    SCRIPT_HOST_IP,
    VIRTUAL_IP,
    GuestLink,
    answer,
    dig_argv,
    wait_for,
)
from support.server import FastDNSProcess, child_env

pytestmark = pytest.mark.privileged


def normalized(text: str) -> str:
    """iptables-save text without comments and counters: comparable across runs."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.rsplit(" ", 1)[0] if line.endswith("]") else line
        elif line.startswith("[") and "] -A " in line:
            line = line.split("] ", 1)[1]
        out.append(line)
    return "\n".join(out) + "\n"


NAME = "who.test"
DOCKERISH = """*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


@pytest.fixture(name="link", scope="module")
def _link() -> Iterator[GuestLink]:
    if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
        pytest.fail("the privileged tests need root and iptables (CI runs them as root)")
    link = GuestLink()
    yield link
    link.close()


@pytest.fixture(name="nat", autouse=True)
def _nat(link: GuestLink) -> Iterator[str]:
    """A nat table with someone else's rules in it (Docker's jumps); after each test it must be
    exactly as it was, and route_localnet back to 0."""
    subprocess.run(["iptables-restore", "--noflush"], input=DOCKERISH, text=True, check=True)
    before = normalized(netns.save("nat"))
    yield before
    # Reset for the next test, whatever happened in this one.
    subprocess.run(
        ["iptables-restore"], input="*nat\nCOMMIT\n*filter\nCOMMIT\n", text=True, check=True
    )
    subprocess.run(["ip6tables-restore"], input="*nat\nCOMMIT\n", text=True, check=True)
    Path(f"/proc/sys/net/ipv4/conf/{HOST_IF}/route_localnet").write_text("0\n")


def fastdns_config(ip: str, **rules: Any) -> dict[str, Any]:
    # host_ip: the address guests use for this host; PREROUTING is limited to its interface.
    section = {"workers": 1, "graceful_timeout": 1.0, "host_ip": HOST_IP}
    if rules:
        section["rules"] = {"virtual_ip": VIRTUAL_IP, "reconcile_interval": 0.5, **rules}
    return {"hostResolver": {"hosts": {NAME: ip}}, "fastdns": section}


def guest(link: GuestLink, *opts: str) -> str:
    return answer(["nsenter", f"--net={link.ns}", *dig_argv(VIRTUAL_IP, NAME, *opts)])


def local(*opts: str) -> str:
    """A local client that is not fastdns's uid (root here), so OUTPUT's DNAT applies."""
    return answer(netns.as_nobody(dig_argv(VIRTUAL_IP, NAME, *opts)))


def chain_body(chain: str = "FASTDNS") -> list[str]:
    return [ln for ln in netns.save("nat").splitlines() if ln.startswith(f"-A {chain} ")]


def installed_to(port: int) -> bool:
    return any(f"127.0.0.1:{port}" in rule for rule in chain_body())


class RulesRun:
    """``fastdns rules run`` as its own process (what the supervisor forks), with a status
    socket the test reads."""

    def __init__(
        self,
        tmp_path: Path,
        fdp: FastDNSProcess,
        *,
        env: dict[str, str] | None = None,
        **rules: Any,
    ) -> None:
        doc = dict(fdp.config)
        doc["fastdns"] = {
            **doc["fastdns"],
            "rules": {
                "enabled": True,
                "virtual_ip": VIRTUAL_IP,
                "reconcile_interval": 0.5,
                **rules,
            },
        }
        self.dir = tmp_path / f"rules-{fdp.udp_port}"
        self.dir.mkdir()
        self.config = self.dir / "fastdns.yaml"
        self.config.write_text(yaml.safe_dump(doc))
        self.ports = self.dir / "ports.json"
        self.write_ports(fdp)
        self.status_path = str(self.dir / "status.sock")
        self.status = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.status.bind(self.status_path)
        self.log = open(self.dir / "stderr.log", "w+b")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastdns",
                "rules",
                "run",
                str(self.config),
                "--ports-file",
                str(self.ports),
                "--status-socket",
                self.status_path,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            env=child_env(env),
        )
        self.last: dict[str, Any] = {}

    def write_ports(self, fdp: FastDNSProcess) -> None:
        from fastdns.rules.main import write_ports_file

        write_ports_file(str(self.ports), fdp.udp_port, fdp.tcp_port)

    def wait_status(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        self.status.settimeout(0.2)

        def seen() -> bool:
            try:
                self.last = json.loads(self.status.recv(65536))
            except TimeoutError:
                return False
            return bool(predicate(self.last))

        wait_for(seen, timeout, 0, what=f"status (last: {self.last}; log: {self.stderr})")
        return self.last

    @property
    def stderr(self) -> str:
        self.log.flush()
        return (self.dir / "stderr.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.status.close()
        self.log.close()


@pytest.fixture(name="rules_run")
def _rules_run(tmp_path: Path) -> Iterator[Any]:
    made: list[RulesRun] = []

    def make(fdp: FastDNSProcess, **kw: Any) -> RulesRun:
        r = RulesRun(tmp_path, fdp, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# ---------------------------------------------------------------------------------------------


def test_serve_dnats_guest_and_local_clients_and_cleans_up(
    link: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1", enabled=True))
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed by fastdns serve")
    assert installed_to(fdp.tcp_port)
    assert netns.route_localnet(HOST_IF) == 1  # DNAT to 127.0.0.1 from PREROUTING

    # The guest, through PREROUTING; the reply comes from the virtual address (conntrack).
    assert guest(link) == "10.9.9.1"
    assert guest(link, "+tcp") == "10.9.9.1"
    # A local process, through OUTPUT.
    assert local() == "10.9.9.1"
    assert local("+tcp") == "10.9.9.1"

    # Our jumps come first, before Docker's; one jump per hook, one rule per protocol.
    rules = normalized(netns.save("nat")).splitlines()
    pre = [r for r in rules if r.startswith("-A PREROUTING")]
    out = [r for r in rules if r.startswith("-A OUTPUT")]
    assert pre[0] == f"-A PREROUTING -i {HOST_IF} -j FASTDNS" and len(pre) == 2
    # fastdns runs as root without fastdns.user: exempt by its sockets' mark, not by uid 0.
    assert out[0] == "-A OUTPUT -m mark ! --mark 0x53 -j FASTDNS"
    assert len(out) == 2 and len(chain_body()) == 2

    # SIGTERM: the rules go first (new clients stop arriving), then the workers drain; the nat
    # table is as it was.
    assert fdp.stop() == 0
    log = fdp.stderr
    assert 0 <= log.find("removed the FASTDNS rules") < log.find("draining"), log
    assert normalized(netns.save("nat")) == nat
    assert "FASTDNS" not in netns.save("filter")
    assert netns.route_localnet(HOST_IF) == 0


def test_apply_twice_is_idempotent_and_remove_restores(
    link: GuestLink, nat: str, tmp_path: Path
) -> None:
    from support.server import run_cli

    cfg = tmp_path / "lima.yaml"
    cfg.write_text(yaml.safe_dump(fastdns_config("10.9.9.1", enabled=True)))
    args = ("rules", "apply", str(cfg), "--udp-port", "5353", "--tcp-port", "5354")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("installed: 10.201.0.53:53 -> 127.0.0.1")
    after_one = netns.save("nat"), netns.save("filter")
    second = run_cli(*args, cwd=tmp_path)
    assert second.stdout.startswith("already installed")
    after_two = netns.save("nat"), netns.save("filter")
    assert [normalized(t) for t in after_one] == [normalized(t) for t in after_two]
    text = normalized(after_two[0])
    assert text.count("-j FASTDNS") == 2 and text.count("--dport 53 -j DNAT") == 2

    shown = run_cli(
        "rules", "show", str(cfg), "--udp-port", "5353", "--tcp-port", "5354", cwd=tmp_path
    )
    for rule in chain_body():
        assert rule in shown.stdout

    removed = run_cli("rules", "remove", str(cfg), cwd=tmp_path)
    assert removed.returncode == 0 and removed.stdout.startswith("removed chain FASTDNS")
    assert normalized(netns.save("nat")) == nat
    assert netns.route_localnet(HOST_IF) == 0


def test_flush_is_restored_and_sigterm_removes(
    link: GuestLink, nat: str, fastdns_factory: Any, rules_run: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1"))
    rr = rules_run(fdp)
    rr.wait_status(lambda s: s["installed"])
    assert guest(link) == "10.9.9.1"

    subprocess.run(["iptables", "-t", "nat", "-F"], check=True)  # firewalld reload, say
    assert chain_body() == []
    status = rr.wait_status(lambda s: s["installed"] and s["reconcile"]["changed"] >= 2)
    assert status["error"] == ""
    assert len(chain_body()) == 2 and guest(link) == "10.9.9.1"
    assert "removed or changed by someone else: restored them" in rr.stderr

    assert rr.stop() == 0
    assert rr.wait_status(lambda s: not s["installed"])["error"] == ""
    # Docker's rules were flushed by the test itself above; ours are gone completely.
    assert "FASTDNS" not in netns.save("nat") + netns.save("filter")
    assert netns.route_localnet(HOST_IF) == 0


def test_port_change_moves_existing_flows(
    link: GuestLink, fastdns_factory: Any, rules_run: Any
) -> None:
    a = fastdns_factory(fastdns_config("10.9.9.1"))
    b = fastdns_factory(fastdns_config("10.9.9.2"))
    rr = rules_run(a)
    changed = rr.wait_status(lambda s: s["installed"])["reconcile"]["changed"]
    pinned = ("-b", f"{GUEST_IP}#40053")  # one client flow: same source port every time
    assert guest(link, *pinned) == "10.9.9.1"

    rr.write_ports(b)
    rr.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: installed_to(b.udp_port), what="rules moved to b")
    # The rules are visible before the old flows are forgotten (conntrack -D runs after the
    # restore): wait for the reconcile that did both to be reported.
    rr.wait_status(lambda s: s["reconcile"]["changed"] > changed)
    # Without the conntrack flush this flow would still reach a for ~30 s (conntrack keeps the old
    # DNAT).
    assert guest(link, *pinned) == "10.9.9.2"
    assert guest(link, "+tcp") == "10.9.9.2"
    assert "ports changed" in rr.stderr


def test_iptables_missing_at_start_then_installed(
    link: GuestLink, tmp_path: Path, fastdns_factory: Any, rules_run: Any
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fdp = fastdns_factory(fastdns_config("10.9.9.1"))
    rr = rules_run(fdp, env={"PATH": str(bin_dir)})
    status = rr.wait_status(lambda s: s["error"])
    assert not status["installed"] and "iptables-restore not found in PATH" in status["error"]
    assert rr.proc.poll() is None  # keeps running, and fastdns keeps serving on its ports
    assert fdp.query(NAME).answer

    for tool in ("iptables-restore", "iptables-save"):
        os.symlink(shutil.which(tool) or "", bin_dir / tool)
    status = rr.wait_status(lambda s: s["installed"])
    assert status["error"] == "" and status["reconcile"]["error"] >= 1
    assert guest(link) == "10.9.9.1"
    assert "conntrack not found" in rr.stderr  # only a warning


def test_rules_left_by_a_killed_process_are_replaced_then_cleaned(
    link: GuestLink, nat: str, fastdns_factory: Any, rules_run: Any
) -> None:
    a = fastdns_factory(fastdns_config("10.9.9.1"))
    first = rules_run(a)
    first.wait_status(lambda s: s["installed"])
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert installed_to(a.udp_port) and netns.route_localnet(HOST_IF) == 1

    b = fastdns_factory(fastdns_config("10.9.9.2"))
    second = rules_run(b)
    second.wait_status(lambda s: s["installed"])
    assert "found rules left by a previous fastdns in chain FASTDNS: replaced them" in (
        second.stderr
    )
    assert installed_to(b.udp_port) and not installed_to(a.udp_port)
    assert guest(link) == "10.9.9.2"
    assert second.stop() == 0
    assert normalized(netns.save("nat")) == nat
    # The route_localnet change of the killed process was recorded in the kernel and undone.
    assert netns.route_localnet(HOST_IF) == 0


def test_loop_guard_virtual_address_in_resolv_conf(
    link: GuestLink, fastdns_factory: Any, upstream: Any, resolv_conf: Any, rules_run: Any
) -> None:
    # resolv.conf names only the virtual address; the fallback is a real upstream.
    upstream.add("far.test", "A", "10.7.7.7")
    path = _resolv_with_vip(resolv_conf)
    cfg = fastdns_config("10.9.9.1", enabled=True)
    cfg["fastdns"].update(resolv_conf=str(path), fallback=[upstream.address])
    fdp = fastdns_factory(cfg)
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    # Guests get correct answers: fastdns never forwards to the virtual address (itself).
    assert answer(["nsenter", f"--net={link.ns}", *dig_argv(VIRTUAL_IP, "far.test")]) == (
        "10.7.7.7"
    )
    wait_for(
        lambda: "names the virtual DNS address 10.201.0.53" in fdp.stderr, what="a clear warning"
    )
    assert fdp.stop() == 0


def _resolv_with_vip(resolv_conf: Any) -> Path:
    # support refuses non-loopback nameservers (a guard for tests that send to them); this one
    # is the in-namespace virtual address, written by hand.
    path = resolv_conf("127.0.0.1", name="resolv-vip.conf")
    path.write_text(f"nameserver {VIRTUAL_IP}\n")
    return Path(path)


def test_loop_through_a_local_stub_is_detected(
    link: GuestLink, tmp_path: Path, fastdns_factory: Any, resolv_conf: Any
) -> None:
    # fastdns -> dnsmasq on 127.0.0.9 (running as nobody, so not exempt) -> 10.201.0.53 ->
    # DNAT -> fastdns: the rules process's probe comes back, the worker answers the marker.
    stub = subprocess.Popen(
        [
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--user=nobody",
            "--group=nogroup",
            "--pid-file=",
            "--bind-interfaces",
            "--listen-address=127.0.0.9",
            "--port=53",
            f"--server={VIRTUAL_IP}",
            "--cache-size=0",
            "--log-facility=-",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        path = resolv_conf("127.0.0.9")
        cfg = fastdns_config("10.9.9.1", enabled=True)
        cfg["fastdns"]["resolv_conf"] = str(path)
        fdp = fastdns_factory(cfg)
        wait_for(
            lambda: (
                "forwarding loop: queries fastdns forwards to 127.0.0.9 come back" in fdp.stderr
            ),
            what=f"loop detected; stderr:\n{fdp.stderr}",
        )
        # Static answers still work, and nothing amplifies: the probe is never forwarded.
        assert guest(link) == "10.9.9.1"
        assert fdp.stop() == 0
    finally:
        stub.kill()
        stub.wait(5)


# --------------------------------------------------------------------------------------------
# Through the supervisor (fastdns serve): reload with new ports, a crashed rules process.


# The ports the reload moves to. Fixed, and below this namespace's ephemeral range (32768 and
# up: ip_local_port_range), so no port-0 bind (fastdns's first ports, its upstream sockets, a
# client) can hold them, and no test binds them: free by construction, no probe to race.
RELOAD_UDP_PORT, RELOAD_TCP_PORT = 20053, 20054


def rules_children(fdp: FastDNSProcess) -> list[int]:
    return [p for p, title in procfs.children_titled(fdp.pid).items() if title == "fastdns: rules"]


def test_serve_reload_with_new_ports_moves_rules_and_flows(
    link: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1", enabled=True))  # ports 0: fastdns picks
    udp = fdp.udp_port
    wait_for(lambda: installed_to(udp), what="rules installed")
    pinned = ("-b", f"{GUEST_IP}#40054")
    assert guest(link, *pinned) == "10.9.9.1"

    new_udp, new_tcp = RELOAD_UDP_PORT, RELOAD_TCP_PORT
    assert udp not in (new_udp, new_tcp)
    doc = dict(fdp.config)
    doc["hostResolver"] = {"hosts": {NAME: "10.9.9.2"}}
    doc["fastdns"] = {**doc["fastdns"], "udp_port": new_udp, "tcp_port": new_tcp}
    fdp.config_path.write_text(yaml.safe_dump(doc))
    fdp.send_signal(signal.SIGHUP)
    fdp.wait_state(lambda s: s["udp_port"] == new_udp)
    wait_for(lambda: installed_to(new_udp) and installed_to(new_tcp), what="rules moved")
    # The old flow moves (conntrack -D right after the rules change). Without the delete, the
    # pinned flow's UDP conntrack entry (~30 s, refreshed by each try) would keep reaching the
    # old port for far longer than this bound.
    wait_for(lambda: guest(link, *pinned) == "10.9.9.2", timeout=5, what="pinned flow moved")
    assert guest(link, "+tcp") == "10.9.9.2"
    assert fdp.stop() == 0
    assert normalized(netns.save("nat")) == nat


def test_serve_restarts_a_killed_rules_process(
    link: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1", enabled=True))
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    wait_for(lambda: len(rules_children(fdp)) == 1, what="one rules process")
    (old,) = rules_children(fdp)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: rules_children(fdp) not in ([], [old]), what="a new rules process")
    assert installed_to(fdp.udp_port)  # the kernel kept the rules meanwhile
    subprocess.run(["iptables", "-t", "nat", "-F", "FASTDNS"], check=True)
    wait_for(lambda: installed_to(fdp.udp_port), what="the new rules process reconciles")
    assert guest(link) == "10.9.9.1"
    assert fdp.stop() == 0
    assert normalized(netns.save("nat")) == nat


def test_ipv6_virtual_address_uses_ip6tables(link: GuestLink, fastdns_factory: Any) -> None:
    six_before = normalized(netns.save("nat", "ip6tables-save"))
    cfg = fastdns_config("10.9.9.1", enabled=True, virtual_ip=netns.VIRTUAL_IP6, hooks=["OUTPUT"])
    cfg["fastdns"]["listen"] = "::1"
    fdp = fastdns_factory(cfg)
    wait_for(
        lambda: f"[::1]:{fdp.udp_port}" in netns.save("nat", "ip6tables-save"),
        what="ip6tables rules installed",
    )
    argv = dig_argv(netns.VIRTUAL_IP6, NAME)
    assert answer(netns.as_nobody(argv)) == "10.9.9.1"
    assert answer(netns.as_nobody([*argv, "+tcp"])) == "10.9.9.1"
    assert "FASTDNS" not in netns.save("nat")  # nothing in the IPv4 table
    assert fdp.stop() == 0
    assert normalized(netns.save("nat", "ip6tables-save")) == six_before


def test_a_killed_supervisor_takes_the_rules_with_it(
    link: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1", enabled=True))
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    os.kill(fdp.pid, signal.SIGKILL)  # the supervisor only (stop() would kill the group)
    # PDEATHSIG: the rules process gets SIGTERM and removes the rules.
    wait_for(lambda: normalized(netns.save("nat")) == nat, what="rules removed")
    wait_for(lambda: netns.route_localnet(HOST_IF) == 0, what="route_localnet restored")


def test_serve_reports_missing_iptables_in_ready_and_metrics(
    link: GuestLink, tmp_path: Path, fastdns_factory: Any
) -> None:
    import urllib.error
    import urllib.request

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cfg = fastdns_config("10.9.9.1", enabled=True)
    cfg["fastdns"]["metrics"] = {"listen": "127.0.0.1:0"}
    fdp = fastdns_factory(cfg, env={"PATH": str(bin_dir)})
    base = f"http://127.0.0.1:{fdp.state['metrics_port']}"

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(base + path, timeout=2) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    wait_for(lambda: "not available" in get("/ready")[1], what="/ready names the problem")
    assert get("/ready")[0] == 503
    assert fdp.query(NAME).answer  # serving on the bound ports regardless
    assert "fastdns_rules_installed 0.0" in get("/metrics")[1]

    for tool in ("iptables-restore", "iptables-save"):
        os.symlink(shutil.which(tool) or "", bin_dir / tool)
    wait_for(lambda: get("/ready")[0] == 200, what="/ready once the rules are installed")
    assert guest(link) == "10.9.9.1"
    metrics = get("/metrics")[1]
    assert "fastdns_rules_installed 1.0" in metrics
    assert 'fastdns_rules_reconcile_total{result="error"}' in metrics
    assert fdp.stop() == 0


def test_legacy_backend_apply_and_remove(link: GuestLink, tmp_path: Path) -> None:
    from support.server import run_cli

    before = normalized(netns.save("nat", "iptables-legacy-save"))
    cfg = tmp_path / "lima.yaml"
    cfg.write_text(yaml.safe_dump(fastdns_config("10.9.9.1", enabled=True, iptables="legacy")))
    args = ("--udp-port", "5353", "--tcp-port", "5354")
    for _ in range(2):
        assert run_cli("rules", "apply", str(cfg), *args, cwd=tmp_path).returncode == 0
    legacy = normalized(netns.save("nat", "iptables-legacy-save"))
    assert legacy.count("-j FASTDNS") == 2 and legacy.count("-j DNAT") == 2
    assert "FASTDNS" not in netns.save("nat")  # the nft rule set is a separate one
    assert run_cli("rules", "remove", str(cfg), cwd=tmp_path).returncode == 0
    assert normalized(netns.save("nat", "iptables-legacy-save")) == before
    assert netns.route_localnet(HOST_IF) == 0


# --------------------------------------------------------------------------------------------
# Closed by default (docs/rules.md): only the guest-facing interface, root clients, the guest
# script.


@pytest.fixture(name="outsider")
def _outsider() -> Iterator[GuestLink]:
    """Another namespace on another interface of the host, with a route for the virtual
    address via the host: a network the host routes but does not serve."""
    link = GuestLink(
        OUTSIDER_HOST_IF, OUTSIDER_IF, OUTSIDER_HOST_IP, OUTSIDER_IP, first=False, host_routes=False
    )
    yield link
    link.close()


def test_prerouting_serves_the_guest_interface_only(
    link: GuestLink, outsider: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    fdp = fastdns_factory(fastdns_config("10.9.9.1", enabled=True))
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    assert guest(link) == "10.9.9.1" and guest(link, "+tcp") == "10.9.9.1"

    def outside(*opts: str) -> str:
        return answer(["nsenter", f"--net={outsider.ns}", *dig_argv(VIRTUAL_IP, NAME, *opts)])

    assert outside() == "" and outside("+tcp") == ""
    assert netns.route_localnet(HOST_IF) == 1
    assert netns.route_localnet(OUTSIDER_HOST_IF) == 0
    assert fdp.stop() == 0
    assert netns.route_localnet(HOST_IF) == 0


def test_no_guest_facing_interface_is_a_boot_error_unless_any(
    link: GuestLink, outsider: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    cfg = fastdns_config("10.9.9.1", enabled=True)
    cfg["fastdns"]["host_ip"] = "10.200.0.99"  # held by no interface
    fdp = fastdns_factory(cfg, wait=False)
    assert fdp.proc.wait(15) == 3
    assert "no interface holds fastdns.host_ip 10.200.0.99" in fdp.stderr
    assert "interfaces: any" in fdp.stderr
    assert normalized(netns.save("nat")) == nat

    cfg["fastdns"]["rules"]["interfaces"] = "any"  # told so: today's unscoped behaviour
    fdp = fastdns_factory(cfg)
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    wait_for(lambda: netns.route_localnet(OUTSIDER_HOST_IF) == 1, what="route_localnet")
    assert "-A PREROUTING -j FASTDNS" in netns.save("nat")
    assert answer(["nsenter", f"--net={outsider.ns}", *dig_argv(VIRTUAL_IP, NAME)]) == "10.9.9.1"
    assert fdp.stop() == 0


def test_root_client_on_the_host_gets_answers(
    link: GuestLink, nat: str, fastdns_factory: Any, upstream: Any, resolv_conf: Any
) -> None:
    # fastdns runs as root with no fastdns.user: its own traffic is exempt by mark, so a root
    # client is redirected like any other (with a uid-0 exemption it timed out).
    upstream.add("far.test", "A", "10.7.7.7")
    cfg = fastdns_config("10.9.9.1", enabled=True)
    cfg["fastdns"]["resolv_conf"] = str(resolv_conf(upstream))
    fdp = fastdns_factory(cfg)
    wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
    assert os.geteuid() == 0
    assert answer(dig_argv(VIRTUAL_IP, NAME)) == "10.9.9.1"
    assert answer(dig_argv(VIRTUAL_IP, NAME, "+tcp")) == "10.9.9.1"
    # Forwarded queries leave on sockets carrying the mark (SO_MARK, fastdns.sockmark).
    assert answer(dig_argv(VIRTUAL_IP, "far.test")) == "10.7.7.7"
    sockets = netns.run("ss", "-uanpe", "dst", f"{upstream.address}:53").stdout
    assert "fwmark:0x53" in sockets, sockets
    assert fdp.stop() == 0


@pytest.fixture(name="script_guest")
def _script_guest() -> Iterator[GuestLink]:
    """A guest with only its link's /24: no route to the virtual address until the script."""
    link = GuestLink(
        SCRIPT_HOST_IF,
        SCRIPT_GUEST_IF,
        SCRIPT_HOST_IP,
        SCRIPT_GUEST_IP,
        first=False,
        host_routes=False,
        default_route=False,
    )
    yield link
    link.close()


def test_guest_script_runs_in_a_guest_and_answers(
    script_guest: GuestLink, tmp_path: Path, fastdns_factory: Any
) -> None:
    from support.server import run_cli

    cfg = fastdns_config("10.9.9.1")
    cfg["fastdns"].update(
        listen=SCRIPT_HOST_IP, host_ip=SCRIPT_HOST_IP, rules={"virtual_ip": VIRTUAL_IP}
    )
    fdp = fastdns_factory(cfg)
    made = run_cli(
        "guest-script",
        str(fdp.config_path),
        "--udp-port",
        str(fdp.udp_port),
        "--tcp-port",
        str(fdp.tcp_port),
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr

    def in_guest(*opts: str) -> str:
        return answer(["nsenter", f"--net={script_guest.ns}", *dig_argv(VIRTUAL_IP, NAME, *opts)])

    assert in_guest() == ""  # no route to the virtual address, no DNAT yet
    for _ in range(2):  # at every boot: twice changes nothing
        ran = script_guest.guest("sh", "-c", made.stdout, check=False)
        assert ran.returncode == 0, ran.stderr
    assert in_guest() == "10.9.9.1" and in_guest("+tcp") == "10.9.9.1"
    routes = script_guest.guest("ip", "route", "show", f"{VIRTUAL_IP}/32").stdout
    assert f"via {SCRIPT_HOST_IP}" in routes
    jumps = script_guest.guest("iptables-save", "-t", "nat").stdout
    assert jumps.count("-j FASTDNS") == 2, jumps
    assert fdp.stop() == 0


def test_the_example_config_boots_once_its_user_exists(
    link: GuestLink, nat: str, fastdns_factory: Any
) -> None:
    # deploy/examples/rules.yaml, made safe to serve here (generated resolv.conf and hosts,
    # loopback metrics, free ports) and pointed at this host's guest-facing address.
    example = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "rules.yaml"
    doc = yaml.safe_load(example.read_text())
    section = doc["fastdns"]
    for key in ("resolv_conf", "hosts_file", "udp_port", "tcp_port"):
        section.pop(key)
    section.update(
        host_ip=HOST_IP, workers=1, graceful_timeout=1.0, metrics={"listen": "127.0.0.1:0"}
    )
    section["rules"].update(virtual_ip=VIRTUAL_IP, reconcile_interval=0.5)
    assert section["user"] == "fastdns"
    try:
        import pwd

        pwd.getpwnam("fastdns")
    except KeyError:
        fdp = fastdns_factory(doc, wait=False)
        assert fdp.proc.wait(15) == 3
        assert "no such user 'fastdns': create it with `useradd --system" in fdp.stderr
    section["user"] = "nobody"  # a user that exists here
    # No metrics process: it imports modules after dropping to nobody, and this machine's Python
    # lives under /root (0700); a packaged Python is readable by every user.
    section["metrics"] = {"listen": ""}
    shared = Path(tempfile.mkdtemp(prefix="fastdns-example-"))
    os.chmod(shared, 0o755)  # the unprivileged workers read the generated files in there
    try:
        with FastDNSProcess(doc, shared) as fdp:
            wait_for(lambda: installed_to(fdp.udp_port), what="rules installed")
            # Workers as nobody cannot set SO_MARK: its uid is exempt too.
            out = [r for r in netns.save("nat").splitlines() if r.startswith("-A OUTPUT")]
            assert out[0] == (
                f"-A OUTPUT -m mark ! --mark 0x53 -m owner ! --uid-owner {netns.NOBODY} -j FASTDNS"
            )
            vip = dig_argv(VIRTUAL_IP, "host.docker.internal")
            assert answer(["nsenter", f"--net={link.ns}", *vip]) == HOST_IP  # the guest
            assert answer(vip) == HOST_IP  # a root client on the host
            assert fdp.stop() == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)
