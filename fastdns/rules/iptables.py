"""The I/O side of the rules: finding the iptables binaries, applying and removing the ruleset
(``iptables-save`` → diff → one ``iptables-restore --noflush`` → read back), route_localnet and
conntrack. What to install is decided in ``fastdns.rules``.

The binaries are called rather than a library: python-iptables (libiptc) writes to the legacy
tables, invisible to the ``iptables-nft`` that most distributions ship.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from fastdns.errors import FastDNSError
from fastdns.rules.plan import (
    RulePlan,
    Table,
    dnat_rules,
    guard_chain_name,
    guard_jump,
    guard_rules,
    guarded_interfaces,
    hook_jumps,
    parse_save,
    sync_chain,
    transaction,
    unhook_chain,
)

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 15.0  # seconds; iptables-restore -w waits up to 5 s for the xtables lock
LOCK_WAIT = "5"
SYSCTL_ROOT = "/proc/sys/net/ipv4/conf"


class IptablesError(FastDNSError):
    """An iptables command failed or its result did not stick."""


class XtablesLocked(IptablesError):
    """Another program held the xtables lock for longer than we wait (retried later)."""


XTABLES_LOCK = "/run/xtables.lock"  # iptables' default; XTABLES_LOCKFILE overrides it there too
LOCK_POLL = 0.05  # seconds between attempts to take the xtables lock


def xtables_lock_path() -> str:
    return os.environ.get("XTABLES_LOCKFILE") or XTABLES_LOCK


@contextlib.contextmanager
def xtables_lock(wait: float, hold: bool = True) -> Iterator[None]:
    """Wait up to ``wait`` seconds for the xtables lock (the ``flock`` every legacy iptables
    takes, kube-proxy's included); ``XtablesLocked`` when it stays held. With ``hold`` it is
    kept for the ``with`` body (for an nf_tables backend, which takes no lock itself), else
    released at once (a legacy backend takes it itself; holding it would block it).
    No lock file (no /run, or not writable) means nobody can hold it: go ahead."""
    path = xtables_lock_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise XtablesLocked(
                        f"another program holds the xtables lock {path} (waited {wait:g}s)"
                    ) from None
                time.sleep(LOCK_POLL)
        if not hold:
            fcntl.flock(fd, fcntl.LOCK_UN)
        yield
    finally:
        os.close(fd)


class IptablesMissing(IptablesError):
    """The iptables binaries are not installed (yet): cloud-init may still be installing them."""


@dataclass(frozen=True, slots=True)
class Tools:
    restore: str
    save: str

    def __str__(self) -> str:
        return os.path.basename(self.save).removesuffix("-save")


def tool_names(spec: str, family: int) -> tuple[str, str]:
    """(restore, save) names or paths for ``rules.iptables`` = auto | nft | legacy | /path."""
    if spec.startswith("/"):
        base = spec
        if family == 6:
            head, tail = os.path.split(spec)
            base = os.path.join(head, tail.replace("iptables", "ip6tables", 1))
    else:
        base = "iptables" if family == 4 else "ip6tables"
        if spec in ("nft", "legacy"):
            base += "-" + spec
    return base + "-restore", base + "-save"


def find_tools(spec: str, family: int, path: str | None = None) -> Tools:
    """Locate the restore and save binaries (``auto``: the distribution's ``iptables``
    alternative, as Lima and Docker use); ``IptablesMissing`` with the reason otherwise.
    Looked up on every call: iptables may be installed while fastdns runs."""
    found = []
    search = path if path is not None else os.environ.get("PATH", os.defpath)
    for name in tool_names(spec, family):
        if name.startswith("/"):
            hit = name if os.access(name, os.X_OK) else None
        else:
            hit = shutil.which(name, path=search)
        if hit is None:
            where = "" if name.startswith("/") else f" in PATH ({search})"
            raise IptablesMissing(f"{name} not found{where}")
        found.append(hit)
    return Tools(found[0], found[1])


Runner = Callable[[Sequence[str], str | None], subprocess.CompletedProcess[str]]


def run_command(argv: Sequence[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise IptablesError(f"{argv[0]} did not finish within {COMMAND_TIMEOUT:g}s") from e
    except OSError as e:
        raise IptablesError(f"cannot run {argv[0]}: {e.strerror or e}") from e


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return "; ".join(lines[:3]) or f"exit status {proc.returncode}"


class Netfilter:
    """``iptables-save`` and ``iptables-restore --noflush`` for one family."""

    def __init__(self, tools: Tools, runner: Runner = run_command) -> None:
        self.tools = tools
        self.runner = runner
        self.version = ""  # e.g. "iptables-save v1.8.9 (nf_tables)", from the save header

    def save_text(self, table: str) -> str:
        proc = self.runner([self.tools.save, "-t", table], None)
        if proc.returncode != 0:
            raise IptablesError(f"{self.tools.save} -t {table} failed: {_why(proc)}")
        for line in proc.stdout.splitlines()[:1]:
            if line.startswith("# Generated by "):
                self.version = line[len("# Generated by ") :].split(" on ", 1)[0]
        return proc.stdout

    def save(self, table: str) -> Table:
        return parse_save(self.save_text(table)).get(table, Table())

    def restore(self, text: str, lock_wait: float = 0.0) -> None:
        """One ``iptables-restore --noflush`` transaction; with ``lock_wait``, first wait
        that long for the xtables lock (``XtablesLocked``), held throughout unless the
        backend is legacy (it takes the lock itself, with ``-w``)."""
        if lock_wait > 0:
            with xtables_lock(lock_wait, hold="legacy" not in self.version):
                self._restore(text)
        else:
            self._restore(text)

    def _restore(self, text: str) -> None:
        proc = self.runner([self.tools.restore, "-w", LOCK_WAIT, "--noflush"], text)
        if proc.returncode != 0:
            raise IptablesError(f"{self.tools.restore} failed: {_why(proc)}")


class RouteLocalnet:
    """net.ipv4.conf.<interface>.route_localnet through /proc/sys (``root`` for tests)."""

    def __init__(self, root: str = SYSCTL_ROOT) -> None:
        self.root = root

    def interfaces(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except OSError:
            return []
        return sorted(n for n in names if n not in ("all", "default", "lo"))

    def get(self, iface: str) -> int | None:
        try:
            with open(os.path.join(self.root, iface, "route_localnet"), encoding="ascii") as fh:
                return int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return None

    def set(self, iface: str, value: int) -> bool:
        try:
            with open(
                os.path.join(self.root, iface, "route_localnet"), "w", encoding="ascii"
            ) as fh:
                fh.write(f"{value}\n")
        except OSError as e:
            logger.warning(
                "cannot set net.ipv4.conf.%s.route_localnet=%d: %s", iface, value, e.strerror or e
            )
            return False
        return True


def localnet_to_enable(plan: RulePlan, sysctl: RouteLocalnet) -> list[str]:
    """Interfaces in the plan's PREROUTING scope where route_localnet must be turned on (only
    there: elsewhere it would open 127.0.0.0/8 to that link)."""
    if not plan.needs_localnet or sysctl.get("all") == 1:
        return []
    return [i for i in sysctl.interfaces() if plan.scoped(i) and sysctl.get(i) == 0]


def forget_flows(plan: RulePlan, runner: Runner = run_command, path: str | None = None) -> str:
    """Delete the conntrack entries of flows to ``virtual_ip``:53: NAT is decided on a flow's
    first packet, so a client that keeps its source port would otherwise keep reaching the old
    target (or, for a flow seen before the rules existed, nowhere). Returns a problem or ""."""
    binary = shutil.which("conntrack", path=path if path is not None else os.environ.get("PATH"))
    if binary is None:
        return "conntrack not found: existing flows keep their old mapping until they expire"
    family = "ipv4" if plan.family == 4 else "ipv6"
    for proto in ("udp", "tcp"):
        proc = runner(
            [
                binary,
                "-D",
                "-f",
                family,
                "-p",
                proto,
                "--orig-dst",
                plan.virtual_ip,
                "--orig-port-dst",
                "53",
            ],
            None,
        )
        # Exit status 1 with "0 flow entries have been deleted" just means there were none.
        none = proc.returncode == 1 and "0 flow entries" in proc.stderr + proc.stdout
        if proc.returncode != 0 and not none:
            return f"conntrack -D failed: {_why(proc)}"
    return ""


@dataclass(slots=True)
class Outcome:
    changed: bool  # something was (re)installed or route_localnet was set
    mapping_changed: bool  # the DNAT rules themselves differ from what was there
    stale: bool  # rules were found that this process did not install
    warnings: list[str]
    nat_repaired: bool = False  # the nat chain or its jumps had to be (re)written


class RulesManager:
    """Brings the kernel in line with a RulePlan, or removes it; one call = one reconcile."""

    def __init__(
        self,
        spec: str,
        *,
        runner: Runner = run_command,
        sysctl: RouteLocalnet | None = None,
        path: str | None = None,
    ) -> None:
        self.spec = spec
        self.runner = runner
        self.sysctl = sysctl or RouteLocalnet()
        self.path = path  # PATH override (tests); None = the environment's, read on each call
        self.tools: dict[int, Tools] = {}

    def netfilter(self, family: int) -> Netfilter:
        tools = find_tools(self.spec, family, self.path)
        if self.tools.get(family) != tools:
            logger.info("using %s and %s", tools.restore, tools.save)
            self.tools[family] = tools
        return Netfilter(tools, self.runner)

    # ------------------------------------------------------------------------ install

    def apply(self, plan: RulePlan, *, owned: bool = False) -> Outcome:
        """Install or repair ``plan``. ``owned``: this process installed it before (else rules
        already present are reported as stale, left by a fastdns that was killed)."""
        nf = self.netfilter(plan.family)
        nat = nf.save("nat")
        desired = dnat_rules(plan)
        hooks = hook_jumps(plan)
        old_body = nat.body(plan.chain)
        stale = not owned and plan.chain in nat.chains
        parts = {"nat": sync_chain(nat, plan.chain, desired, hooks)}
        warnings: list[str] = []
        enable: list[str] = []
        if plan.family == 4:
            filter_lines, enable, restore_first = self._localnet(nf, plan)
            parts["filter"] = filter_lines
            for iface in restore_first:
                self._restore_localnet(iface)
        text = transaction(parts)
        if text:
            logger.debug("iptables-restore --noflush <<EOF\n%sEOF", text)
            nf.restore(text)
        for iface in enable:
            if self.sysctl.set(iface, 1):
                logger.info(
                    "set net.ipv4.conf.%s.route_localnet=1 (was 0): packets DNAT'ed to "
                    "%s from PREROUTING are dropped without it",
                    iface,
                    plan.target,
                )
        if text:
            self._verify(nf, plan, desired, hooks)
        mapping_changed = old_body != desired
        if mapping_changed:
            problem = forget_flows(plan, self.runner, self.path)
            if problem:
                warnings.append(problem)
        return Outcome(bool(text or enable), mapping_changed, stale, warnings, bool(parts["nat"]))

    def _localnet(self, nf: Netfilter, plan: RulePlan) -> tuple[list[str], list[str], list[str]]:
        """(filter-table lines, interfaces to enable after them, interfaces to restore first)."""
        filt = nf.save("filter")
        recorded = guarded_interfaces(filt, plan.chain)
        guard = guard_chain_name(plan.chain)
        if not plan.needs_localnet:
            return unhook_chain(filt, guard), [], recorded
        present = self.sysctl.interfaces()
        enable = localnet_to_enable(plan, self.sysctl)
        # Interfaces an earlier run enabled that are out of scope now go back to 0 first.
        restore = [i for i in recorded if not plan.scoped(i)]
        keep = sorted((set(recorded) - set(restore) | set(enable)) & set(present))
        if not keep:
            return unhook_chain(filt, guard), enable, restore
        # The guard (our record of these interfaces) goes in before the sysctl is written.
        lines = sync_chain(
            filt, guard, guard_rules(plan.chain, keep), {"INPUT": guard_jump(plan.chain)}
        )
        return lines, enable, restore

    def _restore_localnet(self, iface: str) -> None:
        if self.sysctl.get(iface) == 1 and self.sysctl.set(iface, 0):
            logger.info("restored net.ipv4.conf.%s.route_localnet=0", iface)

    def _verify(
        self,
        nf: Netfilter,
        plan: RulePlan,
        desired: list[str],
        hooks: Mapping[str, str | Sequence[str]],
    ) -> None:
        """Read the table back: a backend that accepted the transaction but shows something
        else (another tool racing us, nft/legacy confusion) is an error, not a success."""
        left = sync_chain(nf.save("nat"), plan.chain, desired, hooks)
        if left:
            raise IptablesError(
                f"the {plan.chain} rules did not stick (still to do: {'; '.join(left)})"
            )

    # ------------------------------------------------------------------------ remove

    def remove(self, chain: str, family: int) -> bool:
        """Delete the chain, its jumps and its route_localnet guard; restore route_localnet.
        Returns whether anything was there."""
        nf = self.netfilter(family)
        parts = {"nat": unhook_chain(nf.save("nat"), chain)}
        if family == 4:
            filt = nf.save("filter")
            for iface in guarded_interfaces(filt, chain):
                self._restore_localnet(iface)
            parts["filter"] = unhook_chain(filt, guard_chain_name(chain))
        text = transaction(parts)
        if text:
            nf.restore(text)
        return bool(text)

    def installed(self, plan: RulePlan) -> bool:
        """Whether ``plan`` is in place right now (no changes made)."""
        nf = self.netfilter(plan.family)
        return not sync_chain(nf.save("nat"), plan.chain, dnat_rules(plan), hook_jumps(plan))
