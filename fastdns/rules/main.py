"""The rules process: the only fastdns process that touches iptables (CAP_NET_ADMIN).

Forked by the supervisor once the workers serve (``supervise.children.child_rules``), or run
alone by ``fastdns rules run``. It installs the DNAT rules, re-checks them every
``reconcile_interval`` and on SIGHUP (restoring what a ``iptables -t nat -F`` or a firewalld
reload removed), follows port changes (ports file + SIGHUP), keeps retrying with backoff while
iptables is missing or failing, and removes the rules on SIGTERM before the workers drain.
It never exits because of iptables: fastdns keeps serving on its ports either way, and the
state is reported in the log and in the "rules" status datagram (``/ready``, metrics).

Standard library and fastdns's pure modules only: the supervisor imports this lazily.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pwd
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
from fastdns.ipc import StatusSender
from fastdns.metrics.stats import rules_message
from fastdns.resolve.resolvconf import plan_upstreams, read_resolv_conf
from fastdns.rules.ifaddrs import interface_addresses
from fastdns.rules.iptables import IptablesError, IptablesMissing, RulesManager
from fastdns.rules.plan import NoInterface, RulePlan, RulesError, plan_for
from fastdns.system.statefile import write_json

logger = logging.getLogger("fastdns.rules")

LOOP_REPROBES = 3  # probes again of upstreams that did not answer the loop probe
LOOP_REPROBE_DELAY = 2.0  # seconds before each
FIRST_RETRY = 0.5  # seconds; doubles up to reconcile_interval while iptables is missing/failing
PROBE_TIMEOUT = 1.0  # listener and loop probes
CH = 3  # class CHAOS: fastdns answers it at once (REFUSED), without forwarding


def write_ports_file(path: str, udp_port: int, tcp_port: int) -> None:
    """Atomically write ``{"udp_port": u, "tcp_port": t}`` (the supervisor → rules channel)."""
    write_json(path, {"udp_port": udp_port, "tcp_port": tcp_port}, sync=False)


def read_ports_file(path: str | None) -> tuple[int, int] | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        return int(doc["udp_port"]), int(doc["tcp_port"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("ignoring unreadable ports file %s: %s", path, e)
        return None


def exempt_uid(config: Config) -> int:
    """The uid fastdns's workers send upstream queries as: its OUTPUT traffic is never
    redirected (with uid 0 that exempts every root process: set fastdns.user)."""
    if config.user and os.geteuid() == 0:
        try:
            return pwd.getpwnam(config.user).pw_uid
        except KeyError:
            logger.warning(
                "fastdns.user %r does not exist: exempting uid %d instead",
                config.user,
                os.geteuid(),
            )
    return os.geteuid()


def addresses_for(config: Config) -> dict[str, list[str]]:
    """The interfaces' addresses when PREROUTING is scoped to the holders of host_ip, else {}."""
    rules = config.rules
    if "PREROUTING" not in rules.hooks or rules.interfaces:
        return {}
    try:
        return interface_addresses()
    except OSError as e:
        raise IptablesError(f"cannot list the interfaces' addresses: {e}") from e


def probe_address(plan: RulePlan) -> str:
    if plan.target:
        return plan.target
    return "127.0.0.1" if plan.family == 4 else "::1"


def listener_answers(
    host: str, udp_port: int, tcp_port: int, timeout: float = PROBE_TIMEOUT, token: str = ""
) -> str:
    """Why fastdns does not answer on ``host`` (a CHAOS query over UDP, a TCP connect), or "".

    With the instance ``token`` the question is ``loopguard.self_check_name``, which the
    workers recognise and leave out of the client counts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    name = loopguard.self_check_name(token) if token else "version.bind."
    query = loopguard.probe_query(name, qtype=16, qclass=CH)  # TXT
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((host, udp_port))
            s.send(query)
            reply = s.recv(512)
            if len(reply) < 12 or reply[:2] != query[:2]:
                return f"no DNS reply from {host} udp/{udp_port}"
        with socket.create_connection((host, tcp_port), timeout=timeout):
            pass
    except OSError as e:
        return f"fastdns does not answer on {host} (udp/{udp_port} tcp/{tcp_port}): {e}"
    return ""


def probe_for_loop(
    config: Config, udp_port: int, timeout: float = PROBE_TIMEOUT, silent: list[str] | None = None
) -> list[str]:
    """Send one loop probe to each upstream fastdns would forward to; return the upstreams
    whose answer came back from fastdns itself (a forwarding loop). Those that did not answer
    within ``timeout`` are appended to ``silent``."""
    plan = plan_upstreams(config, read_resolv_conf(config.resolv_conf), udp_port)
    token = loopguard.instance_token(config.listen, udp_port)
    pending: dict[socket.socket, tuple[str, bytes]] = {}
    looped: list[str] = []
    try:
        for host, port in plan.servers:
            try:
                # numeric only (never a name lookup); keeps an IPv6 %scope
                family, _, _, _, addr = socket.getaddrinfo(
                    host, port, type=socket.SOCK_DGRAM, flags=socket.AI_NUMERICHOST
                )[0]
            except (OSError, IndexError):
                continue
            s = socket.socket(family, socket.SOCK_DGRAM)
            try:
                s.setblocking(False)
                s.connect(addr)
                query = loopguard.probe_query(loopguard.probe_name(token))
                s.send(query)
            except OSError:
                s.close()
                continue
            pending[s] = (host, query[:2])
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(pending), [], [], left)
            for s in ready:
                host, qid = pending[s]
                try:
                    reply = s.recv(65535)
                except OSError:
                    reply = b""
                if reply[:2] != qid and reply:
                    continue  # not ours; keep waiting
                del pending[s]
                s.close()
                if loopguard.is_marker(reply):
                    looped.append(host)
    finally:
        for s in pending:
            s.close()
    if silent is not None:
        silent += [host for host, _ in pending.values()]
    return looped


class RulesProcess:
    """The reconcile loop; ``run()`` returns the exit code."""

    def __init__(
        self,
        config: Config,
        udp_port: int,
        tcp_port: int,
        status_path: str | None = None,
        *,
        ports_path: str | None = None,
        manager: RulesManager | None = None,
        exempt: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.exempt = exempt  # uid override (``rules run --exempt-uid``)
        self.udp_port, self.tcp_port = read_ports_file(ports_path) or (udp_port, tcp_port)
        self.ports_path = ports_path
        self.manager = manager or RulesManager(config.rules.iptables)
        self.sender = StatusSender(status_path or None)
        self.clock = clock
        self.counts = {"ok": 0, "changed": 0, "error": 0}
        self.installed: RulePlan | None = None  # what this process has in the kernel
        self.error = ""
        self.loop_error = ""
        self.last_reconcile = 0.0
        self.retry = FIRST_RETRY
        self.listener_ok = False
        self.loop_checked: RulePlan | None = None
        self.loop_retry_plan: RulePlan | None = None  # the plan loop_retries counts for
        self.loop_retries = LOOP_REPROBES
        self.pending: list[int] = []
        self.stopping = False
        self.planned = False  # a plan was made once: later planning errors are not boot errors

    # ------------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        msg = rules_message(
            True,
            self.installed is not None,
            self.error or self.loop_error,
            self.counts,
            self.last_reconcile,
        )
        if self.installed is not None:
            msg["mapping"] = self.installed.mapping
        return msg

    def report(self) -> None:
        self.sender.send(self.status())

    def _fail(self, error: str, *, installed: bool | None = None) -> None:
        if error != self.error:
            logger.error("%s", error)
        self.error = error
        self.counts["error"] += 1
        self.last_reconcile = self.clock()
        if installed is False:
            self.installed = None

    # ------------------------------------------------------------------------ one reconcile

    def plan(self) -> RulePlan:
        uid = self.exempt if self.exempt is not None else exempt_uid(self.config)
        addresses = addresses_for(self.config)
        return plan_for(self.config, self.udp_port, self.tcp_port, uid, addresses)

    def step(self) -> float:
        """One reconcile; returns the seconds until the next one."""
        interval = self.config.rules.reconcile_interval
        try:
            plan = self.plan()
        except NoInterface as e:
            if not self.planned:  # refuse to start rather than serve every network (docs/rules.md)
                raise BootError(f"fastdns.rules: {e}") from e
            self._fail(f"rules cannot be updated: {e}")
            self.report()
            return interval
        except RulesError as e:
            self._fail(f"rules cannot be installed: {e}")
            self.report()
            return interval  # a config problem: only a reload (SIGHUP) can fix it
        except IptablesError as e:
            self._fail(f"cannot find the guest-facing interfaces (retrying): {e}")
            self.report()
            return self._backoff(interval)
        self.planned = True
        if not self.listener_ok:
            token = loopguard.instance_token(self.config.listen, plan.udp_port)
            why = listener_answers(probe_address(plan), plan.udp_port, plan.tcp_port, token=token)
            if why:
                self._fail(f"waiting for fastdns to serve before installing rules: {why}")
                self.report()
                return self._backoff(interval)
            self.listener_ok = True
        old = self.installed
        try:
            if old is not None and (old.chain, old.family) != (plan.chain, plan.family):
                self.manager.remove(old.chain, old.family)
                self.installed = None
            outcome = self.manager.apply(plan, owned=self.installed is not None)
        except IptablesMissing as e:
            self._fail(
                f"iptables is not available, DNS is served on the bound ports only (retrying): {e}"
            )
            self.report()
            return self._backoff(interval)
        except IptablesError as e:
            self._fail(f"cannot install the rules (retrying): {e}")
            self.report()
            return self._backoff(interval)
        self.retry = FIRST_RETRY
        self.last_reconcile = self.clock()
        if outcome.stale:
            logger.warning(
                "found rules left by a previous fastdns in chain %s: %s",
                plan.chain,
                "replaced them" if outcome.nat_repaired else "they match, kept them",
            )
        elif old is None:
            logger.info("installed %s (%s)", plan.mapping, ", ".join(plan.hooks))
        elif outcome.mapping_changed and old != plan:
            logger.info("updated the rules: %s", plan.mapping)
        elif outcome.nat_repaired:
            logger.warning(
                "the %s rules had been removed or changed by someone else: restored them",
                plan.chain,
            )
        for warning in outcome.warnings:
            logger.warning("%s", warning)
        if self.error:
            logger.info("rules are installed again; the earlier error is resolved")
        self.error = ""
        self.counts["changed" if outcome.changed else "ok"] += 1
        self.installed = plan
        self.report()
        if self.loop_checked != plan:
            if self.loop_retry_plan != plan:
                self.loop_retry_plan, self.loop_retries = plan, LOOP_REPROBES
            self.loop_checked = plan
            silent: list[str] = []
            if self.check_loop(plan, silent):
                self.report()
            if silent and self.loop_retries > 0:
                # An upstream that did not answer may be a local stub still starting (or a
                # busy machine): probe again soon rather than never.
                self.loop_retries -= 1
                self.loop_checked = None
                return min(interval, LOOP_REPROBE_DELAY)
        return interval

    def _backoff(self, interval: float) -> float:
        delay = min(self.retry, interval)
        self.retry = min(self.retry * 2, interval)
        return delay

    def check_loop(self, plan: RulePlan, silent: list[str] | None = None) -> bool:
        """Warn about a resolv.conf that names the virtual address and probe for loops;
        returns whether the loop state changed (upstreams that did not answer: ``silent``)."""
        cfg = self.config
        names = read_resolv_conf(cfg.resolv_conf).nameservers if cfg.enabled else cfg.dns
        if "OUTPUT" in plan.hooks and any(_same(ns, plan.virtual_ip) for ns in names):
            logger.warning(
                "%s names the virtual DNS address %s: fastdns does not forward to it "
                "(it would be forwarding to itself)",
                cfg.resolv_conf if cfg.enabled else "dns:",
                plan.virtual_ip,
            )
        before = self.loop_error
        looped = probe_for_loop(cfg, plan.udp_port, silent=silent)
        if looped:
            self.loop_error = (
                f"forwarding loop: queries fastdns forwards to {', '.join(looped)} come back to "
                f"fastdns (probably through {plan.virtual_ip}, which the rules redirect to "
                f"fastdns); point {cfg.resolv_conf} at a resolver that does not use "
                f"{plan.virtual_ip}"
            )
            logger.error("%s", self.loop_error)
        else:
            self.loop_error = ""
        return self.loop_error != before

    # ------------------------------------------------------------------------ signals, loop

    def reload(self) -> None:
        """SIGHUP: new ports from the ports file, a new config from its file, then reconcile."""
        ports = read_ports_file(self.ports_path)
        if ports is not None and ports != (self.udp_port, self.tcp_port):
            logger.info("ports changed to udp/%d tcp/%d", *ports)
            self.udp_port, self.tcp_port = ports
            self.listener_ok = False
        if self.config.path:
            try:
                new = load_config(self.config.path)
            except ConfigError as e:
                logger.error("keeping the previous rules config: %s", "; ".join(e.problems))
            else:
                if new.rules != self.config.rules or new.listen != self.config.listen:
                    logger.info("rules config reloaded from %s", new.path)
                self.config = new
                self.manager.spec = new.rules.iptables
        self.loop_checked = self.loop_retry_plan = None  # probe again, with fresh re-probes
        self.retry = FIRST_RETRY

    def _on_signal(self, sig: int, frame: object) -> None:
        self.pending.append(sig)

    def _wait(self, timeout: float, wake: int) -> None:
        """Sleep up to ``timeout`` seconds; a signal ends the wait early."""
        deadline = time.monotonic() + timeout
        while not self.pending and (left := deadline - time.monotonic()) > 0:
            try:
                ready, _, _ = select.select([wake], [], [], left)
            except InterruptedError:
                continue
            if ready:
                try:
                    os.read(wake, 512)
                except BlockingIOError:
                    pass

    def _handle_signals(self) -> None:
        while self.pending:
            sig = self.pending.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                self.stopping = True
            elif sig == signal.SIGHUP:
                self.reload()

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
                self._wait(delay, r)  # a signal ends the wait early
                self._handle_signals()
                if self.stopping:
                    break
                delay = self.step()
            return self.shutdown()
        finally:
            signal.set_wakeup_fd(old_fd)
            os.close(r)
            os.close(w)
            self.sender.close()

    def shutdown(self) -> int:
        """Remove what this process installed (SIGTERM: before the workers drain)."""
        plan = self.installed
        if plan is None:
            try:
                plan = self.plan()
            except (RulesError, IptablesError):
                plan = None
        if plan is not None:
            try:
                if self.manager.remove(plan.chain, plan.family):
                    logger.info("removed the %s rules", plan.chain)
            except IptablesError as e:
                level = logging.ERROR if self.installed is not None else logging.DEBUG
                logger.log(level, "could not remove the rules: %s", e)
        self.installed = None
        self.error = ""
        self.report()
        return ExitCode.OK


def _same(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b)
    except ValueError:
        return False


def run(
    config: Config,
    udp_port: int,
    tcp_port: int,
    status_path: str | None = None,
    *,
    ports_path: str | None = None,
    die_with_parent: bool = True,
) -> int:
    """The rules process entry (``fastdns.supervise.children.child_rules``)."""
    if die_with_parent:
        from fastdns.system.process import die_with_parent as arm

        # Orphaned, the rules would keep sending traffic to ports nobody serves: SIGTERM
        # (→ remove the rules) when the supervisor dies.
        if not arm(os.getppid()):
            return ExitCode.OK
    return RulesProcess(config, udp_port, tcp_port, status_path, ports_path=ports_path).run()
