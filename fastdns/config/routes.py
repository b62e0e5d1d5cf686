"""The loader of ``fastdns.forward``: per-domain forwarding routes (docs/routing.md).

``parse_server`` and ``parse_suffix`` are pure and shared with the resolver-directory reader
(``fastdns.resolve.forward.resolverdir``), so a server or a domain means the same in both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from fastdns.config.schema import RouteConfig, RouteServer, Transport
from fastdns.config.values import Problems, get_str, reject_unknown, type_name
from fastdns.dns.wire import name_to_wire

__all__ = [
    "MAX_ROUTES",
    "MAX_SERVERS",
    "TLS_NEEDS_NAME",
    "load_routes",
    "parse_server",
    "parse_suffix",
]

MAX_ROUTES = 256  # routes (explicit plus resolver_dir files): bounds the metrics' route label
MAX_SERVERS = 16  # servers per route
DEFAULT_PORTS: dict[Transport, int] = {"udp": 53, "tcp": 53, "tls": 853}  # RFC 7858 §3.1
TLS_NEEDS_NAME = "tls:// servers need tls_name: the name their certificate must carry (RFC 8310)"
_SCHEMES: dict[str, Transport] = {"udp": "udp", "dns": "udp", "tcp": "tcp", "tls": "tls"}


def parse_server(text: object) -> RouteServer | str:
    """``IP``, ``IP:port``, ``[v6]:port``, ``v6``, ``v6%scope``, with an optional
    ``udp://``/``dns://``, ``tcp://`` or ``tls://`` in front: the server, or why not."""
    if not isinstance(text, str):
        return f"must be a server address string, got {type_name(text)} {text!r}"
    rest = text.strip()
    transport: Transport = "udp"
    scheme, sep, after = rest.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            return f"unknown scheme {scheme!r} in {text!r} (use IP, tcp://IP or tls://IP)"
        transport, rest = _SCHEMES[scheme.lower()], after
    port = DEFAULT_PORTS[transport]
    host = rest
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            return f"not an address: {text!r} (IPv6 with a port is [v6]:port)"
        if tail:
            port_text = tail[1:]
            if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
                return f"bad port in {text!r}"
            port = int(port_text)
    elif rest.count(":") == 1:  # IPv4:port (a bare IPv6 address has two or more colons)
        host, _, port_text = rest.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
            return f"bad port in {text!r}"
        port = int(port_text)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # only IPv6 may carry a %zone
    except ValueError:
        return f"not an IP address: {text!r} (servers are numeric: no DNS to find DNS)"
    if "%" in host and ip.version == 4:
        return f"not an IP address: {text!r}"
    return RouteServer(host, port, transport)


def parse_suffix(text: object) -> tuple[str, str]:
    """(the domain suffix in canonical form: lower case, no final dot; "") or ("", why not)."""
    if not isinstance(text, str):
        return "", f"must be a domain name string, got {type_name(text)} {text!r}"
    name = text.strip().rstrip(".").lower()
    if not name:
        return "", "the root is not a route: names no route matches go to the default upstreams"
    if name.startswith("*"):
        return "", f"{text!r}: write the suffix without '*.' (a route covers every name under it)"
    if any(c.isspace() or c == "/" for c in name):
        return "", f"not a valid domain name: {text!r}"
    try:
        name_to_wire(name)
    except (ValueError, UnicodeError):
        return "", f"not a valid domain name: {text!r}"
    return name, ""


def load_routes(m: Mapping[str, Any], p: Problems) -> tuple[RouteConfig, ...]:
    """``fastdns.forward.domains``: the explicit routes, in order."""
    path = "fastdns.forward"
    raw = m.get("domains")
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    if raw is not None and not isinstance(raw, list):
        p.add(f"{path}.domains", f"must be a list of routes, got {type_name(raw)}")
    elif raw is not None:
        if len(raw) > MAX_ROUTES:
            p.add(f"{path}.domains", f"at most {MAX_ROUTES} routes, got {len(raw)}")
        for i, item in enumerate(raw[:MAX_ROUTES]):
            route = _load_route(item, f"{path}.domains[{i}]", p)
            if route is None:
                continue
            for d in route.domains:
                if d in seen:
                    p.add(f"{path}.domains[{i}]", f"{d!r} is already routed by domains[{seen[d]}]")
                seen[d] = i
            routes.append(route)
    return tuple(routes)


def _load_route(item: object, path: str, p: Problems) -> RouteConfig | None:
    if not isinstance(item, dict):
        p.add(path, f"must be a mapping with domains and servers, got {type_name(item)}")
        return None
    before = len(p.items)
    reject_unknown(item, {"domains", "servers", "tls_name"}, path, p)
    domains = _string_list(item.get("domains"), f"{path}.domains", "domain suffixes", p)
    suffixes = []
    for j, d in enumerate(domains):
        s, problem = parse_suffix(d)
        if problem:
            p.add(f"{path}.domains[{j}]", problem)
        elif s not in suffixes:
            suffixes.append(s)
    texts = _string_list(item.get("servers"), f"{path}.servers", "server addresses", p)
    if len(texts) > MAX_SERVERS:
        p.add(f"{path}.servers", f"at most {MAX_SERVERS} servers per route, got {len(texts)}")
    servers = []
    for j, t in enumerate(texts[:MAX_SERVERS]):
        server = parse_server(t)
        if isinstance(server, str):
            p.add(f"{path}.servers[{j}]", server)
        else:
            servers.append(server)
    tls_name = get_str(item, "tls_name", path, "", p)
    if not tls_name and any(s.transport == "tls" for s in servers):
        p.add(f"{path}.tls_name", TLS_NEEDS_NAME)
    if tls_name:
        try:
            name_to_wire(tls_name)
        except (ValueError, UnicodeError):
            p.add(f"{path}.tls_name", f"not a valid host name: {tls_name!r}")
    if len(p.items) > before:
        return None
    return RouteConfig(tuple(suffixes), tuple(servers), tls_name)


def _string_list(value: object, path: str, what: str, p: Problems) -> list[Any]:
    if value is None:
        p.add(path, f"required: a non-empty list of {what}")
        return []
    if isinstance(value, str):
        value = [value]  # one suffix or server may be written without the list
    if not isinstance(value, list) or not value:
        p.add(path, f"must be a non-empty list of {what}, got {type_name(value)} {value!r}")
        return []
    return value
