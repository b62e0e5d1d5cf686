"""Node-local mode with real interfaces, iptables and conntrack (docs/nodelocal.md).

The test's own namespace (from tests/netns-run) is the "node": fastdns runs there in
node-local mode and makes its interface holding 169.254.20.10 (fd00::10). A "pod" namespace is
joined to it by a veth pair and routes everything through the node, as a pod's does. The
addresses exist only inside these namespaces (support.netns).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import netns
from support.netns import (
    CLUSTER_IP,
    NODE_IF,
    NODE_IP,
    NODE_IP6,
    NODELOCAL_IP,
    NODELOCAL_IP6,
    OTHER_NODELOCAL_IP,
    POD_IF,
    POD_IP,
    POD_IP6,
    GuestLink,
    answer,
    dig_argv,
    run,
    wait_for,
)
from support.server import FastDNSProcess

pytestmark = pytest.mark.privileged

IFACE = "fdns-nl0"
CHAIN = f"FASTDNS-NL-{IFACE}"
NAME = "svc.nodelocal.test"
ADDR = "10.9.8.7"
NEW_ADDR = "10.9.8.8"  # what the upgraded version answers


@pytest.fixture(name="pod", scope="module")
def _pod() -> Iterator[GuestLink]:
    if os.geteuid() != 0 or shutil.which("conntrack") is None:
        pytest.fail("the privileged tests need root, iptables and conntrack (CI runs them as root)")
    link = GuestLink(NODE_IF, POD_IF, NODE_IP, POD_IP, first=False, host_routes=False)
    try:
        run("ip", "-6", "addr", "add", f"{NODE_IP6}/64", "dev", NODE_IF, "nodad")
        link.guest("ip", "-6", "addr", "add", f"{POD_IP6}/64", "dev", POD_IF, "nodad")
        link.guest("ip", "-6", "route", "add", "default", "via", NODE_IP6)
        yield link
    finally:
        link.close()


RUNNING: list[FastDNSProcess] = []
# A host firewall that uses conntrack: with it the node's namespace tracks connections (the
# kernel enables conntrack in a namespace only once a rule needs it), as on a real node where
# kube-proxy's nat rules do. Untracked packets are not INVALID: NOTRACK passes it.
FIREWALL = "*filter\n-A INPUT -m conntrack --ctstate INVALID -j DROP\nCOMMIT\n"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    """Each test starts with only the firewall, and ends without any fastdns, node-local rules,
    interface or conntrack entries."""
    for binary in ("iptables-restore", "ip6tables-restore"):
        subprocess.run([binary], input="*raw\nCOMMIT\n" + FIREWALL, text=True, check=True)
    yield
    while RUNNING:
        RUNNING.pop().close()
    for binary in ("iptables-restore", "ip6tables-restore"):
        subprocess.run([binary], input="*raw\nCOMMIT\n*filter\nCOMMIT\n", text=True, check=True)
    run("ip", "link", "del", IFACE, check=False)
    run("conntrack", "-F", check=False)


def config(*addresses: str, **nodelocal: Any) -> dict[str, Any]:
    return {
        "hostResolver": {"hosts": {NAME: ADDR}},
        "fastdns": {
            "workers": 1,
            "graceful_timeout": 1.0,
            "listen": addresses[0],
            "udp_port": 53,
            "tcp_port": 53,
            "nodelocal": {
                "enabled": True,
                "interface": IFACE,
                "addresses": list(addresses),
                "sync_interval": 0.5,
                **nodelocal,
            },
        },
    }


def start(
    tmp_path: Path, *addresses: str, env: dict[str, str] | None = None, **nl: Any
) -> FastDNSProcess:
    fdp = FastDNSProcess(config(*(addresses or (NODELOCAL_IP,)), **nl), tmp_path, env=env)
    RUNNING.append(fdp)
    return fdp


def synced(fdp: FastDNSProcess, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the state file says the node-local rules are in place."""
    state = fdp.wait_state(lambda s: (s.get("nodelocal") or {}).get("rules") is True, timeout)
    return dict(state["nodelocal"])


def chain(table: str, family: int = 4) -> list[str]:
    text = netns.save(table, "iptables-save" if family == 4 else "ip6tables-save")
    return [ln for ln in text.splitlines() if CHAIN in ln]


def link_exists() -> bool:
    return run("ip", "link", "show", "dev", IFACE, check=False).returncode == 0


def pod_dig(pod: GuestLink, server: str, *opts: str) -> str:
    return answer(["nsenter", f"--net={pod.ns}", *dig_argv(server, NAME, *opts)])


def flows(server: str, family: str = "ipv4") -> str:
    """conntrack entries of the pod's flows to ``server`` (the node's table)."""
    pod = POD_IP if family == "ipv4" else POD_IP6
    proc = run(
        "conntrack", "-L", "-f", family, "--orig-src", pod, "--orig-dst", server, check=False
    )
    return proc.stdout.strip()


def test_pod_resolves_through_notracked_node_local_address(pod: GuestLink, tmp_path: Path) -> None:
    fdp = start(tmp_path)
    state = synced(fdp)
    assert state["kind"] in ("dummy", "bridge") and state["addresses"] == [NODELOCAL_IP]
    assert f"{state['kind']} interface {IFACE}" in fdp.stderr  # what was made: log, state file
    kind = run("ip", "-j", "-d", "link", "show", "dev", IFACE).stdout
    assert f'"info_kind":"{state["kind"]}"' in kind
    raw, filt = chain("raw"), chain("filter")
    assert "-A PREROUTING -j " + CHAIN in raw[1] and "-A OUTPUT -j " + CHAIN in raw[2]
    assert any("-d 169.254.20.10/32 -p udp -m udp --dport 53 -j NOTRACK" in r for r in raw)
    assert any("-s 169.254.20.10/32 -p tcp -m tcp --sport 8080 -j NOTRACK" in r for r in raw)
    assert any("-A INPUT -j " + CHAIN in r for r in filt)
    assert any("--dport 53 -j ACCEPT" in r for r in filt)

    assert pod_dig(pod, NODELOCAL_IP) == ADDR
    assert pod_dig(pod, NODELOCAL_IP, "+tcp") == ADDR
    resolv = tmp_path / "pod-resolv.conf"
    resolv.write_text(f"nameserver {NODELOCAL_IP}\noptions timeout:2 attempts:1\n")
    # glibc in the pod: its own mount namespace sees resolv.conf naming the node-local address.
    getent = run(
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "$0" /etc/resolv.conf && exec nsenter --net={pod.ns} getent ahosts {NAME}',
        str(resolv),
    )
    assert ADDR in getent.stdout
    # NOTRACK: none of those DNS flows has a conntrack entry, while other traffic has one.
    assert flows(NODELOCAL_IP) == ""
    # (a DNS query to the node's own address: nothing listens, but conntrack saw it)
    pod_dig(pod, NODE_IP)
    assert "dport=53" in flows(NODE_IP)
    health = run("curl", "-sS", "-m", "3", f"http://{NODELOCAL_IP}:8080/health")
    assert health.stdout.strip() == "OK"

    assert fdp.stop() == 0
    assert chain("raw") == [] and chain("filter") == [] and not link_exists()


def test_without_notrack_conntrack_sees_the_flows(pod: GuestLink, tmp_path: Path) -> None:
    fdp = start(tmp_path, notrack=False)
    synced(fdp)
    assert chain("raw") == [] and any("-j ACCEPT" in r for r in chain("filter"))
    assert pod_dig(pod, NODELOCAL_IP) == ADDR
    assert "dport=53" in flows(NODELOCAL_IP)
    assert fdp.stop() == 0


def test_rules_wait_until_the_workers_answer(pod: GuestLink, tmp_path: Path) -> None:
    """A cache that does not answer gets no rules: with its DNS port blocked the interface
    exists (the workers are bound) but no rule points traffic at it until it answers."""
    block = ["-I", "INPUT", "-d", NODELOCAL_IP, "-p", "udp", "--dport", "53", "-j", "DROP"]
    run("iptables", *block)
    fdp = start(tmp_path)
    wait_for(lambda: "waiting for the workers to answer" in fdp.stderr, 10, what=fdp.stderr)
    assert link_exists()
    health = run(
        "curl", "-sS", "-m", "3", "-w", "%{http_code}", f"http://{NODELOCAL_IP}:8080/health"
    )
    assert health.stdout.endswith("503"), health.stdout  # a 503 naming why
    assert "fastdns does not answer on 169.254.20.10" in health.stdout, health.stdout
    assert chain("raw") == [] and all("-A " + CHAIN not in r for r in chain("filter"))
    run("iptables", "-D", *block[1:])
    synced(fdp)
    assert pod_dig(pod, NODELOCAL_IP) == ADDR
    assert fdp.stop() == 0


def test_killed_instance_left_overs_are_cleaned_by_the_next(pod: GuestLink, tmp_path: Path) -> None:
    first = start(tmp_path, OTHER_NODELOCAL_IP)
    synced(first)
    os.killpg(first.pgid, signal.SIGKILL)
    first.close()
    assert link_exists() and any(OTHER_NODELOCAL_IP in r for r in chain("raw"))
    second = start(tmp_path, NODELOCAL_IP)
    wait_for(
        lambda: chain("raw") and not any(OTHER_NODELOCAL_IP in r for r in chain("raw")),
        10,
        what="the leftover address's rules replaced",
    )
    synced(second)
    addrs = run("ip", "-j", "addr", "show", "dev", IFACE).stdout
    assert OTHER_NODELOCAL_IP not in addrs and NODELOCAL_IP in addrs
    assert pod_dig(pod, NODELOCAL_IP) == ADDR
    assert second.stop() == 0
    assert chain("raw") == [] and not link_exists()


def test_teardown_false_leaves_rules_and_interface(pod: GuestLink, tmp_path: Path) -> None:
    fdp = start(tmp_path, teardown=False)
    synced(fdp)
    assert fdp.stop() == 0
    assert link_exists() and chain("raw") and chain("filter")
    assert "teardown: false" in fdp.stderr


def test_xtables_lock_held_delays_the_sync(pod: GuestLink, tmp_path: Path) -> None:
    lock = tmp_path / "xtables.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        fdp = start(tmp_path, env={"XTABLES_LOCKFILE": str(lock)})
        wait_for(lambda: "xtables lock" in fdp.stderr, 10, what=fdp.stderr)
        assert (
            chain("raw") == []
            and (fdp.read_state() or {}).get("nodelocal", {}).get("rules") is not True
        )
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    synced(fdp)
    assert "resolved" in fdp.stderr
    assert fdp.stop() == 0


def test_ipv6_node_local_address(pod: GuestLink, tmp_path: Path) -> None:
    fdp = start(tmp_path, NODELOCAL_IP6)
    state = synced(fdp)
    assert state["addresses"] == [NODELOCAL_IP6]
    raw6 = chain("raw", 6)
    assert any("-d fd00::10/128 -p udp -m udp --dport 53 -j NOTRACK" in r for r in raw6)
    assert chain("raw", 4) == []
    assert pod_dig(pod, NODELOCAL_IP6) == ADDR
    assert pod_dig(pod, NODELOCAL_IP6, "+tcp") == ADDR
    assert flows(NODELOCAL_IP6, "ipv6") == ""
    pod_dig(pod, NODE_IP6)
    assert "dport=53" in flows(NODE_IP6, "ipv6")
    assert fdp.stop() == 0
    assert chain("raw", 6) == [] and not link_exists()


def test_one_instance_serves_several_addresses(pod: GuestLink, tmp_path: Path) -> None:
    """node-local-dns's setup: the link-local address and the kube-dns ClusterIP on the
    interface (kubelet's ``--cluster-dns`` unchanged), here with an IPv6 address too; one
    fastdns, two workers, serves them all over UDP and TCP, every one NOTRACKed."""
    addresses = (NODELOCAL_IP, NODELOCAL_IP6, CLUSTER_IP)
    doc = config(*addresses)
    doc["fastdns"]["workers"] = 2
    fdp = FastDNSProcess(doc, tmp_path)
    RUNNING.append(fdp)
    assert synced(fdp)["addresses"] == list(addresses)
    assert (fdp.read_state() or {})["addresses"] == list(addresses)
    held = run("ip", "-j", "addr", "show", "dev", IFACE).stdout
    for address in addresses:
        family, bits, proto = (6, 128, "ipv6") if ":" in address else (4, 32, "ipv4")
        assert f'"local":"{address}"' in held
        notrack = f"-d {address}/{bits} -p udp -m udp --dport 53 -j NOTRACK"
        assert any(notrack in r for r in chain("raw", family)), address
        accept = f"-d {address}/{bits} -p tcp -m tcp --dport 53 -j ACCEPT"
        assert any(accept in r for r in chain("filter", family)), address
        for _ in range(4):  # new flows: over both workers' sockets on that address
            assert pod_dig(pod, address) == ADDR, address
            assert pod_dig(pod, address, "+tcp") == ADDR, address
        assert flows(address, proto) == "", address
    pod_dig(pod, NODE_IP)
    assert "dport=53" in flows(NODE_IP)  # conntrack is on: only NOTRACK kept those out
    health = run("curl", "-sS", "-m", "3", f"http://{NODELOCAL_IP}:8080/health")
    assert health.stdout.strip() == "OK"

    assert fdp.stop() == 0
    for family in (4, 6):
        assert chain("raw", family) == [] and chain("filter", family) == []
    assert not link_exists()


def test_rules_wait_until_every_address_answers(pod: GuestLink, tmp_path: Path) -> None:
    """One address that does not answer (here: its DNS port blocked) holds back the rules of
    all, and /health names it."""
    block = ["-I", "INPUT", "-d", CLUSTER_IP, "-p", "udp", "--dport", "53", "-j", "DROP"]
    run("iptables", *block)
    fdp = start(tmp_path, NODELOCAL_IP, CLUSTER_IP)
    wait_for(lambda: "waiting for the workers to answer" in fdp.stderr, 10, what=fdp.stderr)
    health = run(
        "curl", "-sS", "-m", "3", "-w", "%{http_code}", f"http://{NODELOCAL_IP}:8080/health"
    )
    assert health.stdout.endswith("503") and CLUSTER_IP in health.stdout, health.stdout
    assert chain("raw") == [] and all("-A " + CHAIN not in r for r in chain("filter"))
    run("iptables", "-D", *block[1:])
    synced(fdp)
    assert pod_dig(pod, CLUSTER_IP) == ADDR and pod_dig(pod, NODELOCAL_IP) == ADDR
    assert fdp.stop() == 0


LOAD = Path(__file__).resolve().parents[1] / "support" / "steadyload.py"
RATE, SECONDS = 5000, 12  # queries per second, seconds of load


@pytest.mark.slow
def test_upgrade_on_the_same_address_loses_no_query(pod: GuestLink, tmp_path: Path) -> None:
    """docs/nodelocal.md, "Upgrades": the new fastdns (here: a new config, another answer)
    joins the old one's SO_REUSEPORT group on the node-local address and adopts its rules;
    the old one, with ``teardown: false``, leaves the group and drains. Under a steady load
    from the pod every query is answered, by one version or the other."""
    old = start(tmp_path, teardown=False)
    synced(old)
    load = subprocess.Popen(
        [
            "nsenter",
            f"--net={pod.ns}",
            sys.executable,
            str(LOAD),
            NODELOCAL_IP,
            "53",
            NAME,
            str(RATE),
            str(SECONDS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert load.stderr is not None
        assert load.stderr.readline().strip() == "started"
        time.sleep(2)  # under load before the new version starts (a load test: time is the point)
        new_config = config(NODELOCAL_IP)
        new_config["hostResolver"]["hosts"][NAME] = NEW_ADDR
        new = FastDNSProcess(new_config, tmp_path)
        RUNNING.append(new)
        assert synced(new)["rules"] is True
        assert old.stop() == 0  # SIGTERM: leaves the group, drains, keeps rules and interface
        out, err = load.communicate(timeout=SECONDS + 15)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(5)
    result = json.loads(out)
    answers = result["answers"]
    print(f"upgrade under {RATE} q/s for {SECONDS} s: {result}")
    assert result["lost"] == 0 and result["other"] == 0, (result, err)
    assert answers.get(ADDR, 0) > 0 and answers.get(NEW_ADDR, 0) > 0, result
    assert answers[ADDR] + answers[NEW_ADDR] == result["sent"] == RATE * SECONDS
    assert link_exists() and chain("raw")
    assert pod_dig(pod, NODELOCAL_IP) == NEW_ADDR
    assert new.stop() == 0
    assert chain("raw") == [] and not link_exists()
