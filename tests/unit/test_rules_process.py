"""fastdns.rulesproc (the reconcile loop's decisions, with a fake manager) and fastdns.loopguard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastdns.config.load import build_config
from fastdns.dns import compose, loopguard, wire
from fastdns.resolve.resolvconf import ResolvConf, plan_upstreams
from fastdns.rules import main as rulesproc
from fastdns.rules.iptables import IptablesError, IptablesMissing, Outcome
from fastdns.rules.plan import RulePlan


class FakeManager:
    def __init__(self) -> None:
        self.spec = "auto"
        self.applied: list[RulePlan] = []
        self.removed: list[tuple[str, int]] = []
        self.fail: Exception | None = None

    def apply(self, plan: RulePlan, *, owned: bool = False) -> Outcome:
        if self.fail is not None:
            raise self.fail
        changed = not self.applied or self.applied[-1] != plan
        self.applied.append(plan)
        return Outcome(changed, changed, False, [], changed)

    def remove(self, chain: str, family: int) -> bool:
        self.removed.append((chain, family))
        return True


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.path = "x"

    def send(self, msg: dict[str, Any]) -> None:
        self.messages.append(msg)

    def close(self) -> None:
        pass


def config(tmp_path: Path, **rules: Any) -> Any:
    doc = {
        "fastdns": {
            "resolv_conf": str(tmp_path / "resolv.conf"),
            "fallback": [],
            "rules": {
                "enabled": True,
                "virtual_ip": "10.201.0.53",
                "reconcile_interval": 8,
                "interfaces": "any",
                **rules,
            },
        }
    }
    return build_config(doc, str(tmp_path / "fastdns.yaml"))


@pytest.fixture(name="proc")
def _proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> rulesproc.RulesProcess:
    monkeypatch.setattr(rulesproc, "listener_answers", lambda *a, **k: "")
    monkeypatch.setattr(rulesproc, "probe_for_loop", lambda *a, **k: [])
    p = rulesproc.RulesProcess(
        config(tmp_path),
        5353,
        5354,
        manager=FakeManager(),  # type: ignore[arg-type]
        clock=lambda: 1000.0,
    )
    p.sender = Sent()  # type: ignore[assignment]
    return p


def test_install_then_reconcile_ok(proc: rulesproc.RulesProcess) -> None:
    assert proc.step() == 8
    assert proc.step() == 8
    assert proc.counts == {"ok": 1, "changed": 1, "error": 0}
    last = proc.sender.messages[-1]  # type: ignore[attr-defined]
    assert last["kind"] == "rules" and last["installed"] is True and last["error"] == ""
    assert last["last_reconcile"] == 1000.0


def test_missing_iptables_backs_off_then_installs(proc: rulesproc.RulesProcess) -> None:
    proc.manager.fail = IptablesMissing("iptables-restore not found in PATH (/x)")  # type: ignore[attr-defined]
    delays = [proc.step() for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8, 8]  # doubling, capped at reconcile_interval
    status = proc.sender.messages[-1]  # type: ignore[attr-defined]
    assert status["installed"] is False and "not available" in status["error"]
    assert status["reconcile"]["error"] == 6
    proc.manager.fail = None  # type: ignore[attr-defined]
    assert proc.step() == 8
    assert proc.sender.messages[-1]["installed"] is True  # type: ignore[attr-defined]
    assert proc.retry == rulesproc.FIRST_RETRY


def test_failing_iptables_keeps_the_process_alive(proc: rulesproc.RulesProcess) -> None:
    proc.manager.fail = IptablesError("iptables-restore failed: table nat missing")  # type: ignore[attr-defined]
    assert proc.step() == 0.5
    assert "table nat missing" in proc.error


def test_waits_for_the_listener(
    proc: rulesproc.RulesProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rulesproc, "listener_answers", lambda *a, **k: "connection refused")
    assert proc.step() == 0.5
    assert not proc.manager.applied  # type: ignore[attr-defined]
    assert "waiting for fastdns" in proc.error


def test_sighup_reads_new_ports_and_config(proc: rulesproc.RulesProcess, tmp_path: Path) -> None:
    proc.step()
    ports = tmp_path / "ports.json"
    rulesproc.write_ports_file(str(ports), 6000, 6001)
    proc.ports_path = str(ports)
    (tmp_path / "fastdns.yaml").write_text(
        "fastdns:\n  fallback: []\n  rules: {enabled: true, virtual_ip: 10.201.0.53, "
        "chain: OTHER, interfaces: any}\n"
    )
    proc.reload()
    proc.step()
    new = proc.manager.applied[-1]  # type: ignore[attr-defined]
    assert (new.udp_port, new.tcp_port, new.chain) == (6000, 6001, "OTHER")
    assert proc.manager.removed == [("FASTDNS", 4)]  # type: ignore[attr-defined]


def test_invalid_config_on_reload_keeps_the_old_one(
    proc: rulesproc.RulesProcess, tmp_path: Path
) -> None:
    (tmp_path / "fastdns.yaml").write_text("fastdns: {rules: {chain: 'bad chain!'}}\n")
    before = proc.config
    proc.reload()
    assert proc.config is before


def test_ports_file_overrides_arguments(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    assert rulesproc.read_ports_file(str(path)) is None
    rulesproc.write_ports_file(str(path), 1, 2)
    assert rulesproc.read_ports_file(str(path)) == (1, 2)
    path.write_text("{not json")
    assert rulesproc.read_ports_file(str(path)) is None


def test_shutdown_removes_and_reports(proc: rulesproc.RulesProcess) -> None:
    proc.step()
    assert proc.shutdown() == 0
    assert proc.manager.removed == [("FASTDNS", 4)]  # type: ignore[attr-defined]
    assert proc.sender.messages[-1]["installed"] is False  # type: ignore[attr-defined]


def test_bad_plan_is_reported_not_retried_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rulesproc, "listener_answers", lambda *a, **k: "")
    p = rulesproc.RulesProcess(config(tmp_path), 0, 5354, manager=FakeManager())  # type: ignore[arg-type]
    assert p.step() == 8
    assert "no UDP port" in p.error


# ------------------------------------------------------------------------- loop guard


def test_probe_names_match_only_our_token() -> None:
    token = loopguard.instance_token("127.0.0.1", 5353, boot="b")
    assert token == loopguard.instance_token("127.0.0.1", 5353, boot="b")
    assert token != loopguard.instance_token("127.0.0.1", 5354, boot="b")
    suffix = loopguard.probe_suffix(token)
    q = wire.parse_query(loopguard.probe_query(loopguard.probe_name(token, "abcd").upper()))
    assert loopguard.is_probe(q.qname, suffix)
    other = wire.parse_query(loopguard.probe_query(loopguard.probe_name("00000000")))
    assert not loopguard.is_probe(other.qname, suffix)
    bare = wire.name_to_wire(f"{token}.loop.fastdns.invalid")
    assert not loopguard.is_probe(bare, suffix)  # the zone itself is not a probe
    # a label that merely ends with the token's bytes is not a label boundary
    glued = wire.name_to_wire(f"x{token}.loop.fastdns.invalid")
    assert not loopguard.is_probe(glued, suffix)


def test_marker_reply_round_trip() -> None:
    q = wire.parse_query(loopguard.probe_query(loopguard.probe_name("12345678"), qid=7))
    reply = loopguard.marker_reply(q)
    assert wire.reply_id(reply) == 7 and loopguard.is_marker(reply)
    assert not loopguard.is_marker(compose.error_reply(q, wire.NXDOMAIN))
    assert not loopguard.is_marker(b"\x00" * 5)


def test_upstream_plan_skips_the_virtual_address(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    resolv = ResolvConf(nameservers=("10.201.0.53", "127.0.0.9"))
    assert plan_upstreams(cfg, resolv, 5353).servers == (("127.0.0.9", 53),)
    only_pre = config(tmp_path, hooks=["PREROUTING"])
    assert len(plan_upstreams(only_pre, resolv, 5353).servers) == 2


def test_an_upstream_silent_to_the_loop_probe_is_probed_again_a_few_times(
    proc: rulesproc.RulesProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local stub that is still starting answers no probe: the loop check is repeated 2 s
    later, at most LOOP_REPROBES times, and stops once every upstream answered."""
    calls: list[int] = []

    def probe(*a: Any, silent: list[str] | None = None, **k: Any) -> list[str]:
        calls.append(1)
        if len(calls) < 3 and silent is not None:
            silent.append("127.0.0.9")
        return []

    monkeypatch.setattr(rulesproc, "probe_for_loop", probe)
    assert [proc.step() for _ in range(4)] == [2.0, 2.0, 8, 8]
    assert len(calls) == 3  # twice silent, then answered: no more probes

    monkeypatch.setattr(
        rulesproc, "probe_for_loop", lambda *a, silent=None, **k: (silent.append("x"), [])[1]
    )
    proc.loop_checked = proc.loop_retry_plan = None  # as a reload does
    assert [proc.step() for _ in range(6)] == [2.0, 2.0, 2.0, 8, 8, 8]  # then it gives up


def test_no_guest_facing_interface_refuses_to_start_then_only_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closed by default (docs/rules.md): unscoped, PREROUTING would serve every network the host
    # routes.
    from fastdns.errors import BootError

    monkeypatch.setattr(rulesproc, "listener_answers", lambda *a, **k: "")
    monkeypatch.setattr(rulesproc, "probe_for_loop", lambda *a, **k: [])
    held = {"eth0": ["10.0.0.9"]}
    monkeypatch.setattr(rulesproc, "interface_addresses", lambda: held)
    doc = config(tmp_path)
    cfg = build_config(
        {
            "fastdns": {
                "fallback": [],
                "host_ip": "10.200.0.1",
                "rules": {"enabled": True, "virtual_ip": "10.201.0.53"},
            }
        },
        doc.path,
    )
    proc = rulesproc.RulesProcess(cfg, 5353, 5354, manager=FakeManager())  # type: ignore[arg-type]
    proc.sender = Sent()  # type: ignore[assignment]
    with pytest.raises(BootError, match=r"no interface holds fastdns.host_ip 10.200.0.1"):
        proc.step()
    held["br0"] = ["fe80::1", "10.200.0.1"]
    proc.step()
    assert proc.manager.applied[-1].interfaces == ("br0",)  # type: ignore[attr-defined]
    del held["br0"]  # later: reported, the process keeps running
    proc.step()
    assert "no interface holds" in proc.sender.messages[-1]["error"]  # type: ignore[attr-defined]


def test_interface_addresses_from_netlink() -> None:
    # The test namespace has lo; the netlink dump must name it with both loopback addresses.
    from fastdns.rules.ifaddrs import interface_addresses

    found = interface_addresses()
    assert "127.0.0.1" in found["lo"]
