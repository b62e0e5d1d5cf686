"""The DNAT rules for the virtual DNS address, as text: what to install, what differs, how to
remove it. Pure: no processes, no files (the I/O is in ``fastdns.rules.iptables``).

fastdns keeps its rules in one nat chain (``rules.chain``, Lima: ``LIMADNS``) holding one DNAT
rule per protocol, jumped to from position 1 of each hooked chain so they run before Docker's
jumps (colima#18). Every change is one ``iptables-restore --noflush`` transaction computed from
``iptables-save`` output, so a reader never sees a half-installed state and re-applying an
in-sync ruleset changes nothing. All rule texts are written exactly as ``iptables-save`` prints
them, which is what makes "in sync" a text comparison.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastdns.errors import FastDNSError

if TYPE_CHECKING:
    from fastdns.config.schema import Config, RulesConfig

DNS_PORT = 53
PROTOCOLS = ("udp", "tcp")
LOCALNET = ipaddress.ip_network("127.0.0.0/8")
GUARD_SUFFIX = "-LOCALNET"
MAX_CHAIN = 28  # iptables chain names: XT_EXTENSION_MAXNAMELEN - 1


class RulesError(FastDNSError):
    """A rules configuration that cannot work (reported, never retried until it changes)."""


class NoInterface(RulesError):
    """PREROUTING has no interface to be scoped to (a boot error when the rules start)."""


@dataclass(frozen=True, slots=True)
class RulePlan:
    """Everything that decides the installed rules; equal plans give identical rules."""

    family: int  # 4 or 6
    chain: str
    virtual_ip: str  # compressed form, as iptables-save prints it
    target: str  # DNAT address; "" = REDIRECT (fastdns listens on a wildcard address)
    udp_port: int
    tcp_port: int
    hooks: tuple[str, ...]
    exempt_uid: int | None = None  # fastdns's own uid: its traffic is never redirected
    exempt_mark: int = 0  # SO_MARK of fastdns's upstream sockets (fastdns.sockmark): the same
    # PREROUTING only from these interfaces (-i syntax); None = from any interface
    interfaces: tuple[str, ...] | None = None

    @property
    def prefix(self) -> str:
        return f"{self.virtual_ip}/{32 if self.family == 4 else 128}"

    @property
    def needs_localnet(self) -> bool:
        """DNAT from PREROUTING to 127.0.0.0/8 is dropped unless route_localnet is on for the
        interface the packet came in on (ip-sysctl: route_localnet; docs/rules.md)."""
        return (
            self.family == 4
            and "PREROUTING" in self.hooks
            and bool(self.target)
            and ipaddress.ip_address(self.target) in LOCALNET
        )

    @property
    def guard_chain(self) -> str:
        return guard_chain_name(self.chain)

    @property
    def mapping(self) -> str:
        """Human form: ``192.168.5.3:53 -> 127.0.0.1 udp/5353 tcp/5354``."""
        to = self.target or "local address (REDIRECT)"
        return f"{self.virtual_ip}:{DNS_PORT} -> {to} udp/{self.udp_port} tcp/{self.tcp_port}"

    def port(self, proto: str) -> int:
        return self.udp_port if proto == "udp" else self.tcp_port

    def scoped(self, iface: str) -> bool:
        """Whether PREROUTING takes packets from ``iface`` (route_localnet goes only there)."""
        return self.interfaces is None or any(
            iface.startswith(i[:-1]) if i.endswith("+") else iface == i for i in self.interfaces
        )


def guard_chain_name(chain: str) -> str:
    return chain[: MAX_CHAIN - len(GUARD_SUFFIX)] + GUARD_SUFFIX


def scope_interfaces(
    rules: RulesConfig, host_ip: str, addresses: Mapping[str, Sequence[str]]
) -> tuple[str, ...] | None:
    """The interfaces PREROUTING takes packets from: ``rules.interfaces``, else those of
    ``addresses`` (interface -> its addresses) that hold ``host_ip`` (the address guests use
    for the host, Lima's gateway); None = any. ``NoInterface`` when there are none: unscoped,
    a loopback-only fastdns would answer every network this host routes (docs/rules.md)."""
    if "PREROUTING" not in rules.hooks or rules.interfaces == ("any",):
        return None
    if rules.interfaces:
        return rules.interfaces
    want = ipaddress.ip_address(host_ip)
    found = []
    for iface, addrs in addresses.items():
        for addr in addrs:
            try:
                if ipaddress.ip_address(addr.split("%", 1)[0]) == want:
                    found.append(iface)
                    break
            except ValueError:
                continue
    if not found:
        raise NoInterface(
            f"no interface holds fastdns.host_ip {host_ip}, so there is no guest-facing "
            "interface to limit PREROUTING to: set fastdns.host_ip to the address guests use "
            "for this host, or fastdns.rules.interfaces to the guest-facing interfaces "
            "(`interfaces: any` accepts every interface, exposing fastdns to every network "
            "this host routes), or rules.hooks to [OUTPUT]"
        )
    return tuple(sorted(found))


def plan_rules(
    rules: RulesConfig,
    listen: str,
    udp_port: int,
    tcp_port: int,
    exempt_uid: int | None = None,
    interfaces: tuple[str, ...] | None = None,
) -> RulePlan:
    """The plan for ``rules`` with fastdns bound to ``listen`` udp/``udp_port`` tcp/``tcp_port``,
    PREROUTING scoped to ``interfaces`` (None: any); ``RulesError`` when it cannot work.

    fastdns's own traffic is exempt from OUTPUT by its mark, and by ``exempt_uid`` unless that
    is root: a uid-0 exemption would also exempt every root client on the host."""
    for name, port in (("UDP", udp_port), ("TCP", tcp_port)):
        if not 0 < port < 65536:
            raise RulesError(
                f"no {name} port to redirect to (got {port}): fastdns's bound ports "
                "are needed (a port of 0 is chosen at bind time)"
            )
    vip = ipaddress.ip_address(rules.virtual_ip)
    target = rules.target or listen
    to = ipaddress.ip_address(target.split("%", 1)[0])
    if to.version != vip.version:
        raise RulesError(
            f"rules.virtual_ip {rules.virtual_ip} is IPv{vip.version} but the DNAT "
            f"target {target} is IPv{to.version}"
        )
    if not rules.hooks:
        raise RulesError("rules.hooks is empty: nothing to hook")
    if len(rules.chain) > MAX_CHAIN:
        raise RulesError(f"rules.chain {rules.chain!r} is longer than {MAX_CHAIN} characters")
    if vip.version == 6 and to.is_loopback and "PREROUTING" in rules.hooks:
        # IPv6 has no route_localnet: the kernel never routes a packet from outside to ::1.
        raise RulesError(
            "IPv6 packets from other hosts cannot be DNAT'ed to ::1 (IPv6 has no "
            "route_localnet): set rules.target to an address fastdns listens on, "
            "or rules.hooks to [OUTPUT]"
        )
    return RulePlan(
        family=vip.version,
        chain=rules.chain,
        virtual_ip=vip.compressed,
        target="" if to.is_unspecified else to.compressed,
        udp_port=udp_port,
        tcp_port=tcp_port,
        hooks=tuple(rules.hooks),
        exempt_uid=None if exempt_uid == 0 and rules.mark else exempt_uid,
        exempt_mark=rules.mark,
        interfaces=interfaces if "PREROUTING" in rules.hooks else None,
    )


def plan_for(
    config: Config,
    udp_port: int,
    tcp_port: int,
    exempt_uid: int | None,
    addresses: Mapping[str, Sequence[str]],
) -> RulePlan:
    """The plan for ``config``; ``addresses`` (interface -> addresses) scopes PREROUTING."""
    scope = scope_interfaces(config.rules, config.host_ip, addresses)
    return plan_rules(config.rules, config.listen, udp_port, tcp_port, exempt_uid, scope)


# ---------------------------------------------------------------------------------------------
# Rule texts, exactly as iptables-save prints them.


def dnat_rules(plan: RulePlan) -> list[str]:
    """The body of the chain: one rule per protocol."""
    out = []
    for proto in PROTOCOLS:
        match = f"-A {plan.chain} -d {plan.prefix} -p {proto} -m {proto} --dport {DNS_PORT}"
        port = plan.port(proto)
        if not plan.target:
            out.append(f"{match} -j REDIRECT --to-ports {port}")
        elif plan.family == 6:
            out.append(f"{match} -j DNAT --to-destination [{plan.target}]:{port}")
        else:
            out.append(f"{match} -j DNAT --to-destination {plan.target}:{port}")
    return out


def jump_rules(plan: RulePlan, hook: str) -> list[str]:
    """``-A <hook> ... -j <chain>``: on PREROUTING one per interface in scope; on OUTPUT
    fastdns's own traffic (its mark, its uid) is exempt (loop guard: its upstream queries to
    the virtual address must not come back to itself)."""
    if hook == "PREROUTING" and plan.interfaces is not None:
        return [f"-A PREROUTING -i {i} -j {plan.chain}" for i in plan.interfaces]
    match = ""
    if hook == "OUTPUT":
        if plan.exempt_mark:
            match += f" -m mark ! --mark 0x{plan.exempt_mark:x}"
        if plan.exempt_uid is not None:
            match += f" -m owner ! --uid-owner {plan.exempt_uid}"
    return [f"-A {hook}{match} -j {plan.chain}"]


def jump_rule(plan: RulePlan, hook: str) -> str:
    """The first jump of ``hook`` (the only one except on a PREROUTING scoped to several
    interfaces)."""
    return jump_rules(plan, hook)[0]


def hook_jumps(plan: RulePlan) -> dict[str, list[str]]:
    return {hook: jump_rules(plan, hook) for hook in plan.hooks}


def guard_rules(chain: str, interfaces: Iterable[str]) -> list[str]:
    """filter-table rules that undo route_localnet's side effect on the interfaces fastdns
    enabled it on: packets to 127.0.0.0/8 from outside are dropped unless fastdns's DNAT sent
    them there (kube-proxy's CVE-2020-8558 fix). They also record those interfaces in the
    kernel, so a later run can restore route_localnet after this process was killed."""
    guard = guard_chain_name(chain)
    return [
        f"-A {guard} -d 127.0.0.0/8 -i {iface} -m conntrack ! --ctstate "
        "RELATED,ESTABLISHED,DNAT -j DROP"
        for iface in sorted(set(interfaces))
    ]


def guard_jump(chain: str) -> str:
    return f"-A INPUT -j {guard_chain_name(chain)}"


# ---------------------------------------------------------------------------------------------
# Reading iptables-save output.


@dataclass(slots=True)
class Table:
    """One table of ``iptables-save`` output: declared chains (name -> policy) and rules."""

    chains: dict[str, str] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)

    def body(self, chain: str) -> list[str]:
        head = f"-A {chain} "
        return [r for r in self.rules if r.startswith(head)]

    def jumps_to(self, chain: str) -> list[tuple[str, int, str]]:
        """(parent chain, 0-based position in parent, rule) of every jump to ``chain``."""
        out = []
        positions: dict[str, int] = {}
        for rule in self.rules:
            parts = rule.split()
            parent = parts[1]
            pos = positions.get(parent, 0)
            positions[parent] = pos + 1
            if _jump_target(parts) == chain:
                out.append((parent, pos, rule))
        return out


def _jump_target(parts: Sequence[str]) -> str | None:
    for i, word in enumerate(parts[:-1]):
        if word in ("-j", "-g", "--jump", "--goto"):
            return parts[i + 1]
    return None


def parse_save(text: str) -> dict[str, Table]:
    """``iptables-save`` text -> {table name: Table}; comments and counters are dropped."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and "] " in line:
            line = line.split("] ", 1)[1]  # iptables-save -c counters
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], Table())
        elif line == "COMMIT":
            current = None
        elif current is not None and line.startswith(":"):
            name, _, rest = line[1:].partition(" ")
            current.chains[name] = rest.split(" ", 1)[0]
        elif current is not None and line.startswith("-A "):
            current.rules.append(line)
    return tables


# ---------------------------------------------------------------------------------------------
# Differences as restore commands.


def _delete(rule: str) -> str:
    return "-D" + rule[2:]


def sync_chain(
    table: Table, chain: str, body: list[str], hooks: Mapping[str, str | Sequence[str]]
) -> list[str]:
    """Restore lines that make ``chain`` hold ``body`` and be jumped to from the first
    positions of each hook in ``hooks`` (hook -> its jump rules, in order) and from nowhere
    else; ``[]`` when it already does."""
    want = {h: [j] if isinstance(j, str) else list(j) for h, j in hooks.items()}
    lines: list[str] = []
    if chain not in table.chains or table.body(chain) != body:
        lines.append(f":{chain} - [0:0]")  # with --noflush: creates the chain or empties it
        lines.extend(body)
    by_parent: dict[str, list[tuple[int, str]]] = {}
    for parent, pos, rule in table.jumps_to(chain):
        by_parent.setdefault(parent, []).append((pos, rule))
    for parent, found in by_parent.items():
        wanted = want.get(parent)
        if wanted is not None and found == list(enumerate(wanted)):
            continue
        # Delete by rule text, never by number: a number could name another tool's rule if the
        # chain changed since we read it; a vanished text makes the transaction fail instead.
        lines.extend(_delete(rule) for _, rule in found)
    for hook, jumps in want.items():
        if by_parent.get(hook) != list(enumerate(jumps)):
            lines += [f"-I {hook} {n} {jump.split(' ', 2)[2]}" for n, jump in enumerate(jumps, 1)]
    return lines


def unhook_chain(table: Table, chain: str) -> list[str]:
    """Restore lines that delete every jump to ``chain`` and then the chain itself."""
    if chain not in table.chains:
        return []
    lines = [_delete(rule) for _, _, rule in table.jumps_to(chain)]
    return [*lines, f"-F {chain}", f"-X {chain}"]


def transaction(parts: dict[str, list[str]]) -> str:
    """An ``iptables-restore --noflush`` document for {table: lines}; "" when nothing to do."""
    text = []
    for table, lines in parts.items():
        if lines:
            text += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(text) + "\n" if text else ""


def install_text(plan: RulePlan, guard_interfaces: Iterable[str] = ()) -> str:
    """The whole ruleset as a restore document for an empty table (``rules show``)."""
    parts = {"nat": sync_chain(Table(), plan.chain, dnat_rules(plan), hook_jumps(plan))}
    interfaces = list(guard_interfaces)
    if plan.needs_localnet and interfaces:
        parts["filter"] = sync_chain(
            Table(),
            plan.guard_chain,
            guard_rules(plan.chain, interfaces),
            {"INPUT": guard_jump(plan.chain)},
        )
    return transaction(parts)


def guarded_interfaces(table: Table, chain: str) -> list[str]:
    """Interfaces named in the guard chain: those a fastdns set route_localnet on."""
    out = []
    for rule in table.body(guard_chain_name(chain)):
        parts = rule.split()
        if "-i" in parts[:-1]:
            out.append(parts[parts.index("-i") + 1])
    return out


# ---------------------------------------------------------------------------------------------
# Commands for humans: ``rules show`` and the guest-side script.


def iptables_commands(plan: RulePlan, binary: str = "iptables") -> list[str]:
    """The same ruleset as idempotent shell commands (Lima's 09-host-dns-setup.sh shape)."""
    b, c = binary, plan.chain
    lines = [f"{b} -t nat -N {c} 2>/dev/null || {b} -t nat -F {c}"]
    lines += [f"{b} -t nat {r}" for r in dnat_rules(plan)]
    for hook in plan.hooks:
        for n, jump in enumerate(jump_rules(plan, hook), 1):
            args = " ".join(shlex.quote(a) for a in shlex.split(jump)[2:])
            lines.append(
                f"{b} -t nat -C {hook} {args} 2>/dev/null || {b} -t nat -I {hook} {n} {args}"
            )
    return lines


def guest_script(config: Config, udp_port: int, tcp_port: int) -> str:
    """A POSIX sh script for inside a guest: send ``virtual_ip``:53 to fastdns on the host
    (``host_ip``, Lima's 192.168.5.2) at the bound ports. The equivalent of Lima's
    ``boot.Linux/09-host-dns-setup.sh``, plus what it lacks: jumps are checked with ``-C``
    (never duplicated) and the chain is refilled in one ``iptables-restore`` transaction."""
    rules = config.rules
    plan = plan_rules(rules, config.host_ip, udp_port, tcp_port, exempt_uid=None)
    # Inside the guest there is no fastdns process to exempt, and Lima hooks both chains.
    body = "\n".join(dnat_rules(plan))
    b = "ip6tables" if plan.family == 6 else "iptables"
    jumps = "\n".join(
        f'{b} -w -t nat -C {h} -j "$CHAIN" 2>/dev/null || {b} -w -t nat -I {h} 1 -j "$CHAIN"'
        for h in plan.hooks
    )
    return f"""#!/bin/sh
# Generated by `fastdns guest-script {config.path or "lima.yaml"}`: run inside the guest (as root)
# on every boot, like Lima's boot.Linux/09-host-dns-setup.sh. It sends {plan.virtual_ip}:53
# (UDP and TCP) to fastdns on the host at {plan.target} (udp/{udp_port}, tcp/{tcp_port}).
set -eu
CHAIN={shlex.quote(plan.chain)}
if ! command -v {b} >/dev/null 2>&1 || ! command -v {b}-restore >/dev/null 2>&1; then
  echo "{b} is not installed yet: DNS stays on the default resolver" >&2
  exit 0
fi
# Create or empty the chain and fill it in one transaction (no window without rules).
{b}-restore -w 5 --noflush <<'EOF'
*nat
:{plan.chain} - [0:0]
{body}
COMMIT
EOF
# Jump to it from position 1, so it runs before Docker's nat rules (colima#18).
{jumps}
# A packet to an address with no route fails (ENETUNREACH) before the nat OUTPUT chain sees
# it. Lima's user-mode network routes {plan.virtual_ip} (it is on the guest's /24); a guest
# on a veth or a bridge may have no route that covers it: add one via the host.
if command -v ip >/dev/null 2>&1 && ! ip route get {plan.virtual_ip} >/dev/null 2>&1; then
  ip route replace {plan.prefix} via {plan.target}
fi
"""
