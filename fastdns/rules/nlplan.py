"""The node-local rules as text (docs/nodelocal.md): raw-table NOTRACK and filter-table ACCEPT
for DNS (and the health port) to and from the node-local addresses. Pure, like
``fastdns.rules.plan``, whose diff (``sync_chain``), removal (``unhook_chain``) and restore
documents (``transaction``) it reuses: one chain per table, jumped to from position 1 of the
hooks, every change one ``iptables-restore --noflush`` transaction.

NOTRACK is what node-local caching is for: without a conntrack entry, glibc's parallel A and
AAAA queries from one socket cannot race on the conntrack insert (kubernetes#56903, the
"5-second DNS timeouts"), and the conntrack table does not fill with DNS flows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastdns.rules.plan import Table, sync_chain, transaction, unhook_chain

if TYPE_CHECKING:
    from fastdns.config.schema import Config

CHAIN_PREFIX = "FASTDNS-NL-"  # + the interface name (at most 15): within the 28 of iptables
RAW_HOOKS = ("PREROUTING", "OUTPUT")
FILTER_HOOKS = ("INPUT", "OUTPUT")


@dataclass(frozen=True, slots=True)
class NodeLocalPlan:
    """Everything that decides one family's node-local rules."""

    family: int  # 4 or 6
    chain: str
    addresses: tuple[str, ...]  # this family's node-local addresses, compressed
    udp_port: int
    tcp_port: int
    health_port: int  # 0 = none
    notrack: bool

    def prefix(self, address: str) -> str:
        return f"{address}/{32 if self.family == 4 else 128}"

    def flows(self) -> list[tuple[str, int]]:
        """(protocol, port) of every service on the addresses."""
        out = [("udp", self.udp_port), ("tcp", self.tcp_port)]
        if self.health_port:
            out.append(("tcp", self.health_port))
        return list(dict.fromkeys(out))


def chain_name(interface: str) -> str:
    return CHAIN_PREFIX + interface


def plan_nodelocal(config: Config, udp_port: int, tcp_port: int) -> dict[int, NodeLocalPlan]:
    """{family: plan} for the families that have node-local addresses."""
    nl = config.nodelocal
    by_family: dict[int, list[str]] = {}
    for addr in nl.addresses:
        ip = ipaddress.ip_address(addr)
        by_family.setdefault(ip.version, []).append(ip.compressed)
    return {
        family: NodeLocalPlan(
            family,
            chain_name(nl.interface),
            tuple(addrs),
            udp_port,
            tcp_port,
            nl.health_port,
            nl.notrack,
        )
        for family, addrs in sorted(by_family.items())
    }


def _matches(plan: NodeLocalPlan) -> list[str]:
    """The flow matches, as iptables-save prints them: to the service and its replies."""
    out = []
    for addr in plan.addresses:
        for proto, port in plan.flows():
            out.append(f"-d {plan.prefix(addr)} -p {proto} -m {proto} --dport {port}")
            out.append(f"-s {plan.prefix(addr)} -p {proto} -m {proto} --sport {port}")
    return out


def raw_rules(plan: NodeLocalPlan) -> list[str]:
    """The raw chain: NOTRACK (no conntrack entry) for every node-local flow."""
    return [f"-A {plan.chain} {m} -j NOTRACK" for m in _matches(plan)]


def filter_rules(plan: NodeLocalPlan) -> list[str]:
    """The filter chain: ACCEPT every node-local flow before a host firewall's DROP (an
    untracked packet matches no ``--ctstate ESTABLISHED`` rule)."""
    return [f"-A {plan.chain} {m} -j ACCEPT" for m in _matches(plan)]


def jumps(chain: str, hooks: tuple[str, ...]) -> dict[str, str]:
    return {hook: f"-A {hook} -j {chain}" for hook in hooks}


def sync_text(plan: NodeLocalPlan, raw: Table, filt: Table) -> str:
    """The restore document that brings both tables in line with ``plan``; "" when in sync."""
    parts = {
        "raw": (
            sync_chain(raw, plan.chain, raw_rules(plan), jumps(plan.chain, RAW_HOOKS))
            if plan.notrack
            else unhook_chain(raw, plan.chain)
        ),
        "filter": sync_chain(filt, plan.chain, filter_rules(plan), jumps(plan.chain, FILTER_HOOKS)),
    }
    return transaction(parts)


def remove_text(chain: str, raw: Table, filt: Table) -> str:
    """The restore document that removes ``chain`` and its jumps from both tables."""
    return transaction({"raw": unhook_chain(raw, chain), "filter": unhook_chain(filt, chain)})
