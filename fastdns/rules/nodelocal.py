"""The rules process in node-local mode (``fastdns.nodelocal``, docs/nodelocal.md).

Started by the supervisor once the workers serve (they are bound to the node-local address
with IP_FREEBIND, before it exists). Then, in order: create the interface with the addresses,
check that the workers answer on them, install the raw NOTRACK and filter ACCEPT chains; then
every ``sync_interval`` (and on SIGHUP) check all of it again, restoring what someone removed.
iptables changes wait for the xtables lock (retried while another program holds it). On
SIGTERM it removes rules and interface unless ``teardown: false``: removing them is the
failover (clients of the kube-dns ClusterIP reach kube-dns through kube-proxy again), keeping
them is the upgrade (a second fastdns on the same addresses serves on). Whatever a killed
fastdns left is adopted or replaced by the next one's first sync.

The same status datagram as the DNAT loop (``fastdns.rules.main``); what was made (dummy or
bridge) goes to the log and, via the control pipe, to the state file (``"nodelocal"``).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from fastdns.config.load import load_config
from fastdns.config.schema import Config
from fastdns.dns import loopguard
from fastdns.errors import BootError, ConfigError, ExitCode
from fastdns.ipc import ControlWriter, StatusSender
from fastdns.metrics.stats import rules_message
from fastdns.rules import links
from fastdns.rules.health import answer_one, bind_health
from fastdns.rules.iptables import (
    IptablesError,
    IptablesMissing,
    RulesManager,
    XtablesLocked,
)
from fastdns.rules.links import LinkError
from fastdns.rules.main import listener_answers, read_ports_file
from fastdns.rules.nlplan import NodeLocalPlan, chain_name, plan_nodelocal, remove_text, sync_text

logger = logging.getLogger("fastdns.rules")

FIRST_RETRY = 0.5  # seconds; doubles up to sync_interval while something fails
LOCK_WAIT = 1.0  # seconds one sync waits for the xtables lock before it retries later
HEALTH_PROBE_TIMEOUT = 0.5


class NodeLocalProcess:
    """The node-local sync loop; ``run()`` returns the exit code."""

    def __init__(
        self,
        config: Config,
        udp_port: int,
        tcp_port: int,
        status_path: str | None = None,
        *,
        ports_path: str | None = None,
        control: ControlWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.udp_port, self.tcp_port = read_ports_file(ports_path) or (udp_port, tcp_port)
        self.ports_path = ports_path
        self.manager = RulesManager(config.rules.iptables)
        self.sender = StatusSender(status_path or None)
        self.control = control
        self.clock = clock
        self.counts = {"ok": 0, "changed": 0, "error": 0}
        self.error = ""
        self.last_reconcile = 0.0
        self.retry = FIRST_RETRY
        self.answered = False  # the workers answered on the node-local address once
        self.installed: dict[int, NodeLocalPlan] = {}
        self.kind = ""  # dummy | bridge, once made or found
        self.pending: list[int] = []
        self.stopping = False
        self.health: socket.socket | None = None

    # ------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        msg = rules_message(
            True, bool(self.installed), self.error, self.counts, self.last_reconcile
        )
        if self.installed:
            nl = self.config.nodelocal
            msg["mapping"] = f"node-local {nl.interface}: {', '.join(nl.addresses)}"
        return msg

    def state(self) -> dict[str, Any]:
        nl = self.config.nodelocal
        return {
            "interface": nl.interface,
            "kind": self.kind,
            "addresses": list(nl.addresses),
            "rules": bool(self.installed),
            "notrack": nl.notrack,
            "error": self.error,
        }

    def report(self) -> None:
        self.sender.send(self.status())
        if self.control is not None:
            self.control.send(nodelocal=self.state())

    def _fail(self, error: str) -> float:
        if error != self.error:
            logger.error("%s", error)
        self.error = error
        self.counts["error"] += 1
        self.last_reconcile = self.clock()
        self.report()
        delay = min(self.retry, self.config.nodelocal.sync_interval)
        self.retry = min(self.retry * 2, self.config.nodelocal.sync_interval)
        return delay

    # ------------------------------------------------------------------------ one sync

    def why_not_answering(self, timeout: float = 1.0) -> str:
        """Why the workers do not answer on every node-local address, or "": the rules wait
        for all of them, and /health says which one does not."""
        token = loopguard.instance_token(self.config.listen, self.udp_port)
        for address in self.config.listen_addresses:
            why = listener_answers(
                address, self.udp_port, self.tcp_port, timeout=timeout, token=token
            )
            if why:
                return why
        return ""

    def step(self) -> float:
        """One sync; returns the seconds until the next one."""
        nl = self.config.nodelocal
        try:
            made = links.ensure(nl.interface, nl.addresses)
        except LinkError as e:
            return self._fail(f"cannot set up the node-local interface (retrying): {e}")
        if made.created or made.kind != self.kind:
            logger.info(
                "%s %s interface %s%s",
                "created" if made.created else "found",
                made.kind,
                nl.interface,
                " (this kernel has no dummy driver: an empty bridge holds the addresses)"
                if made.kind == "bridge" and made.created
                else "",
            )
        self.kind = made.kind
        if made.added or made.removed:
            logger.info(
                "%s: added %s, removed %s",
                nl.interface,
                ", ".join(made.added) or "nothing",
                ", ".join(made.removed) or "nothing",
            )
        self._health()
        if not self.answered:
            why = self.why_not_answering()
            if why:
                return self._fail(f"waiting for the workers to answer before the rules: {why}")
            self.answered = True
        try:
            changed = self.sync_rules(plan_nodelocal(self.config, self.udp_port, self.tcp_port))
        except XtablesLocked as e:
            return self._fail(f"waiting for the xtables lock (retrying): {e}")
        except IptablesError as e:
            return self._fail(f"cannot install the node-local rules (retrying): {e}")
        if self.error:
            logger.info("node-local rules are in place again; the earlier error is resolved")
        self.error = ""
        self.retry = FIRST_RETRY
        self.last_reconcile = self.clock()
        self.counts["changed" if changed else "ok"] += 1
        self.report()
        return nl.sync_interval

    def sync_rules(self, plans: dict[int, NodeLocalPlan]) -> bool:
        """Bring both families in line with ``plans`` (a family without addresses loses its
        chains); read back; whether anything changed."""
        chain = chain_name(self.config.nodelocal.interface)
        changed = False
        for family in (4, 6):
            plan = plans.get(family)
            try:
                nf = self.manager.netfilter(family)
            except IptablesMissing:
                if plan is None:
                    continue  # no ip6tables and nothing to do with it
                raise
            raw, filt = nf.save("raw"), nf.save("filter")
            text = sync_text(plan, raw, filt) if plan else remove_text(chain, raw, filt)
            if not text:
                if plan is not None:
                    self.installed[family] = plan
                continue
            logger.debug("iptables-restore --noflush <<EOF\n%sEOF", text)
            nf.restore(text, lock_wait=LOCK_WAIT)
            changed = True
            if plan is None:
                logger.info("removed the IPv%d node-local rules left in %s", family, chain)
                continue
            left = sync_text(plan, nf.save("raw"), nf.save("filter"))
            if left:
                raise IptablesError(f"the {chain} rules did not stick (still to do: {left!r})")
            if self.installed.get(family) != plan:
                logger.info(
                    "installed the IPv%d node-local rules (%s%s)",
                    family,
                    "NOTRACK and " if plan.notrack else "",
                    "ACCEPT",
                )
            else:
                logger.warning("the %s rules had been changed by someone else: restored", chain)
            self.installed[family] = plan
        return changed

    def _health(self) -> None:
        port = self.config.nodelocal.health_port
        if self.health is None and port:
            try:
                self.health = bind_health(self.config.listen, port)
            except BootError as e:
                logger.error("%s (retrying)", e)

    def why_unhealthy(self) -> str:
        return self.why_not_answering(HEALTH_PROBE_TIMEOUT)

    # ------------------------------------------------------------------------ shutdown

    def teardown(self) -> None:
        nl = self.config.nodelocal
        if not nl.teardown:
            logger.info(
                "teardown: false: leaving the node-local rules and interface %s in place",
                nl.interface,
            )
            return
        chain = chain_name(nl.interface)
        for family in (4, 6):
            try:
                nf = self.manager.netfilter(family)
                text = remove_text(chain, nf.save("raw"), nf.save("filter"))
                if text:
                    nf.restore(text, lock_wait=LOCK_WAIT)
                    logger.info("removed the IPv%d node-local rules", family)
            except IptablesMissing:
                continue
            except IptablesError as e:
                logger.error("could not remove the IPv%d node-local rules: %s", family, e)
        try:
            if links.remove(nl.interface):
                logger.info("removed interface %s", nl.interface)
        except LinkError as e:
            logger.error("could not remove interface %s: %s", nl.interface, e)
        self.installed = {}

    # ------------------------------------------------------------------------ signals, loop

    def reload(self) -> None:
        ports = read_ports_file(self.ports_path)
        if ports is not None and ports != (self.udp_port, self.tcp_port):
            self.udp_port, self.tcp_port = ports
            self.answered = False
        if self.config.path:
            try:
                new = load_config(self.config.path)
            except ConfigError as e:
                logger.error("keeping the previous node-local config: %s", "; ".join(e.problems))
            else:
                if new.nodelocal.interface != self.config.nodelocal.interface:
                    logger.warning("fastdns.nodelocal.interface changes only at a restart")
                elif new.nodelocal.enabled:
                    if new.listen_addresses != self.config.listen_addresses:
                        self.answered = False  # no rule for an address before it answers
                    self.config = new
        self.retry = FIRST_RETRY

    def _on_signal(self, sig: int, frame: object) -> None:
        self.pending.append(sig)

    def _wait(self, timeout: float, wake: int) -> None:
        deadline = time.monotonic() + timeout
        while not self.pending and (left := deadline - time.monotonic()) > 0:
            fds = [wake] + ([self.health] if self.health is not None else [])
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except InterruptedError:
                continue
            for fd in ready:
                if fd is self.health:
                    answer_one(self.health, self.why_unhealthy)
                else:
                    try:
                        os.read(wake, 512)
                    except BlockingIOError:
                        pass

    def run(self) -> int:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_fd = signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            self.report()
            delay = 0.0
            while True:
                self._wait(delay, r)
                while self.pending:
                    got = self.pending.pop(0)
                    if got in (signal.SIGTERM, signal.SIGINT):
                        self.stopping = True
                    elif got == signal.SIGHUP:
                        self.reload()
                if self.stopping:
                    break
                delay = self.step()
            self.teardown()
            self.report()
            return ExitCode.OK
        finally:
            signal.set_wakeup_fd(old_fd)
            os.close(r)
            os.close(w)
            if self.health is not None:
                self.health.close()
            self.sender.close()


def run(
    config: Config,
    udp_port: int,
    tcp_port: int,
    status_path: str | None = None,
    *,
    ports_path: str | None = None,
    control: ControlWriter | None = None,
) -> int:
    """The node-local entry of the rules process (``fastdns.supervise.children.child_rules``)."""
    return NodeLocalProcess(
        config, udp_port, tcp_port, status_path, ports_path=ports_path, control=control
    ).run()
