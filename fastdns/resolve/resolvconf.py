"""resolv.conf(5) reading and the choice of upstream servers.

Upstreams are, in order of preference: the nameservers of the configured resolv.conf; the
``dns:`` list when ``hostResolver.enabled`` is false; the fallback servers when resolv.conf is
missing, unreadable or names no usable nameserver (Lima: 8.8.8.8 and 1.1.1.1).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from dataclasses import dataclass, field, replace

from fastdns.config.schema import Config

logger = logging.getLogger(__name__)

DNS_PORT = 53


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    rotate: bool = False
    readable: bool = True


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf text; unknown lines are ignored as libc does."""
    servers: list[str] = []
    search: tuple[str, ...] = ()
    ndots, timeout, attempts, rotate = 1, 5.0, 2, False
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if not fields:
            continue
        key, args = fields[0], fields[1:]
        if key == "nameserver" and args:
            addr = args[0]
            try:
                ipaddress.ip_address(addr)  # only IPv6 may carry a %zone (RFC 4007)
            except ValueError:
                logger.warning("resolv.conf: ignoring bad nameserver %r", addr)
                continue
            servers.append(addr)
        elif key in ("search", "domain") and args:
            domains = args if key == "search" else args[:1]
            search = tuple(d for d in (a.rstrip(".") for a in domains) if d)  # "." adds nothing
        elif key == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                try:
                    if name == "ndots":
                        ndots = min(max(int(value), 0), 15)  # glibc RES_MAXNDOTS
                    elif name == "timeout" and math.isfinite(float(value)):
                        timeout = max(float(value), 0.1)
                    elif name == "attempts":
                        attempts = min(max(int(value), 1), 5)
                except ValueError:
                    continue
                if name == "rotate":
                    rotate = True
    return ResolvConf(tuple(servers), search, ndots, timeout, attempts, rotate)


def read_resolv_conf(path: str) -> ResolvConf:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return parse_resolv_conf(fh.read())
    except OSError:
        return ResolvConf(readable=False)


@dataclass(frozen=True, slots=True)
class UpstreamPlan:
    """The servers to forward to, and where they came from (for logs and metrics)."""

    servers: tuple[tuple[str, int], ...]
    source: str  # "resolv_conf" | "dns" | "fallback" | "none"
    resolv: ResolvConf = field(default_factory=ResolvConf)

    @property
    def answers_as(self) -> str:
        """The source label of the answers forwarded to these servers (the metrics' plugin)."""
        return "fallback" if self.source == "fallback" else "forward"


def same_plan(a: UpstreamPlan, b: UpstreamPlan) -> bool:
    """True when ``a`` and ``b`` forward alike: same servers, source and resolv.conf settings
    (search, ndots, options). A resolv.conf rewritten with the same contents is no change."""
    return (a.servers, a.source, replace(a.resolv, readable=True)) == (
        b.servers,
        b.source,
        replace(b.resolv, readable=True),
    )


def plan_upstreams(config: Config, resolv: ResolvConf, own_port: int | None) -> UpstreamPlan:
    """Pick the upstream servers for ``config``; skip fastdns's own listen address."""

    redirected = config.rules.enabled and "OUTPUT" in config.rules.hooks
    # DNS over TLS (docs/tls.md): every default upstream on its TLS port instead. Our own
    # address and the virtual one are still skipped: neither serves DNS over TLS.
    port = config.forward.tls.port if config.forward.tls.enabled else DNS_PORT

    def usable(addrs: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
        out = []
        for a in addrs:
            if own_port == DNS_PORT and _is_own(a, config):
                continue  # a nameserver that is fastdns itself would loop
            if redirected and _same_ip(a, config.rules.virtual_ip):
                continue  # the virtual address is fastdns itself (loop guard, docs/rules.md)
            out.append((a, port))
        return tuple(out)

    if not config.enabled:
        return UpstreamPlan(usable(config.dns), "dns", resolv)
    servers = usable(resolv.nameservers)
    if servers:
        return UpstreamPlan(servers, "resolv_conf", resolv)
    fallback = usable(config.fallback)
    return UpstreamPlan(fallback, "fallback" if fallback else "none", resolv)


def loops_back(config: Config, server: tuple[str, int], own_port: int | None) -> bool:
    """Whether forwarding to ``server`` (a route's) would reach fastdns itself: its own
    listen address and port, or the rules' virtual address (docs/rules.md)."""
    host, port = server
    if own_port is not None and port == own_port and _is_own(host, config):
        return True
    redirected = config.rules.enabled and "OUTPUT" in config.rules.hooks
    return redirected and port == DNS_PORT and _same_ip(host, config.rules.virtual_ip)


def _is_own(nameserver: str, config: Config) -> bool:
    """Whether ``nameserver`` is one of the addresses fastdns serves (``listen``, and in
    node-local mode every node-local address, docs/nodelocal.md)."""
    return any(_is_self(nameserver, listen) for listen in config.listen_addresses)


def _is_self(nameserver: str, listen: str) -> bool:
    """Whether ``nameserver``:53 reaches fastdns listening on ``listen``:53.

    On a wildcard listen address (0.0.0.0, ::) that is also every loopback address and the
    unspecified one (glibc reads ``nameserver 0.0.0.0`` as "this host"); other local interface
    addresses are not known here.
    """
    try:
        ns = ipaddress.ip_address(nameserver.split("%", 1)[0])
        own = ipaddress.ip_address(listen)
    except ValueError:
        return False
    if ns == own:
        return True
    if not own.is_unspecified or not (ns.is_loopback or ns.is_unspecified):
        return False
    return own.version == 6 or ns.version == 4  # "::" is dual-stack on Linux by default


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.split("%", 1)[0]) == ipaddress.ip_address(b)
    except ValueError:
        return False


class FileWatch:
    """Cheap change detection for a file by (mtime_ns, size, inode); polled, never blocking."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = self._read()

    def _read(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        stamp = self._read()
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False
