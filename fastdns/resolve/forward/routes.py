"""Per-domain forwarding routes: which servers a query name goes to (pure, no I/O).

A route maps domain suffixes to its own servers (``fastdns.forward.domains`` and the files of
``fastdns.forward.resolver_dir``, docs/routing.md). The longest matching suffix wins, compared
case-insensitively on the wire name, so a 0x20-mixed query (``wWw.CoRp.example``) matches
``corp.example`` and is still sent with its own case. A routed name goes to its route's
servers only: never to the default upstreams, never through c-ares.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fastdns.config.schema import RouteConfig, RouteServer
from fastdns.dns import wire
from fastdns.resolve.forward.attempts import TlsTarget

__all__ = ["Route", "RouteTable", "merge_routes"]

Server = tuple[str, int]


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One route as the forwarder uses it. ``name`` (its first domain) labels its metrics."""

    name: str
    domains: tuple[str, ...]
    servers: tuple[Server, ...]  # in order; empty: every name of it gets SERVFAIL
    tcp: frozenset[Server]  # servers asked over pooled TCP connections only (tcp://)
    timeout: float | None  # per attempt; None: fastdns.upstream_timeout
    origin: str
    # servers asked over DNS over TLS (tls://), with the name their certificate must carry
    tls: dict[Server, TlsTarget] = field(default_factory=dict)

    def key(self) -> tuple[object, ...]:
        """What makes two routes forward alike (``RouteTable.same``)."""
        return (self.domains, self.servers, self.tcp, self.timeout, tuple(self.tls.values()))


class RouteTable:
    """Longest-suffix lookup of wire query names; empty tables match nothing, cheaply."""

    __slots__ = ("_by_suffix", "routes")

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._by_suffix: dict[bytes, Route] = {}
        for route in self.routes:
            for d in route.domains:
                # The first route naming a suffix keeps it (explicit config comes first).
                self._by_suffix.setdefault(wire.name_to_wire(d).lower(), route)

    def __bool__(self) -> bool:
        return bool(self._by_suffix)

    def match(self, qname: bytes) -> Route | None:
        """The route of the longest suffix of ``qname`` (uncompressed wire labels), or None.

        ``bytes.lower`` changes only ASCII letters; a length byte is below 64, so labels and
        lengths compare exactly as DNS compares names (RFC 4343)."""
        by_suffix = self._by_suffix
        if not by_suffix:
            return None
        name = qname.lower()
        i, end = 0, len(name)
        while i < end:
            route = by_suffix.get(name[i:] if i else name)
            if route is not None:
                return route
            n = name[i]
            if n == 0:
                return None
            i += n + 1
        return None

    def servers(self) -> set[Server]:
        return {s for r in self.routes for s in r.servers}

    def same(self, other: RouteTable) -> bool:
        return [r.key() for r in self.routes] == [r.key() for r in other.routes]


def merge_routes(
    explicit: Iterable[RouteConfig],
    from_dir: Iterable[RouteConfig],
    is_self: Callable[[Server], bool] | None = None,
) -> tuple[RouteTable, list[str]]:
    """The table of ``explicit`` routes, then the resolver-directory ones for suffixes no
    explicit route names (explicit config wins); servers that ``is_self`` (fastdns itself: a
    loop) are left out with a warning. Returns the table and the warnings."""
    warnings: list[str] = []
    taken: set[str] = set()
    out: list[Route] = []
    for cfg in (*explicit, *from_dir):
        domains = tuple(d for d in cfg.domains if d not in taken)
        if cfg.origin != "config" and len(domains) < len(cfg.domains):
            warnings.append(f"{cfg.origin}: {cfg.domains[0]} is routed by fastdns.forward.domains")
        if not domains:
            continue
        taken.update(domains)
        servers: list[Server] = []
        tcp: set[Server] = set()
        tls: dict[Server, TlsTarget] = {}
        for s in cfg.servers:
            key = (s.host, s.port)
            if is_self is not None and is_self(key):
                warnings.append(
                    f"{cfg.origin}: route {domains[0]}: server {_text(s)} is fastdns itself "
                    "(a forwarding loop): left out"
                )
                continue
            if key in servers:
                continue
            servers.append(key)
            if s.transport == "tcp":
                tcp.add(key)
            elif s.transport == "tls":
                tls[key] = TlsTarget(s.host, s.port, cfg.tls_name)
        out.append(
            Route(
                domains[0],
                domains,
                tuple(servers),
                frozenset(tcp),
                cfg.timeout,
                cfg.origin,
                tls,
            )
        )
    return RouteTable(out), warnings


def _text(s: RouteServer) -> str:
    try:
        v6 = ipaddress.ip_address(s.host.split("%", 1)[0]).version == 6
    except ValueError:
        v6 = False
    host = f"[{s.host}]" if v6 else s.host
    return f"{'' if s.transport == 'udp' else s.transport + '://'}{host}:{s.port}"
