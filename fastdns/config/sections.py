"""The loaders of ``hostResolver.hosts`` and of each ``fastdns.*`` subsection."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from fastdns.config.routes import load_routes
from fastdns.config.schema import (
    NSS_MODES,
    CacheConfig,
    ForwardConfig,
    HookName,
    MetricsConfig,
    NativeConfig,
    NodeLocalConfig,
    RulesConfig,
    TlsConfig,
    canonical_name,
)
from fastdns.config.values import (
    Problems,
    check_ip,
    get_bool,
    get_choice,
    get_cidrs,
    get_ip,
    get_ip_list,
    get_number,
    get_str,
    reject_unknown,
    section,
    type_name,
)
from fastdns.dns.wire import name_to_wire
from fastdns.policy.acl import ACL_ACTIONS, AclConfig
from fastdns.policy.ratelimit import RateLimitConfig

T = TypeVar("T")


def _host_value_problem(value: str) -> str:
    """Why ``value`` is neither an IP address nor a usable alias target ("" when fine).

    Lima accepts any string as an alias; we reject what can never resolve, so a typo such as
    ``10.0.0.300`` is an error at load, not an alias that fails at query time.
    """
    try:
        ipaddress.ip_address(value)
        return ""
    except ValueError:
        pass
    if ":" in value or all(c.isdigit() or c == "." for c in value):
        return f"not a valid IP address: {value!r}"
    try:
        name_to_wire(value)
    except (ValueError, UnicodeError):
        return f"not a valid IP address or host name: {value!r}"
    return ""


def load_hosts(
    resolver: Mapping[str, Any], p: Problems, warnings: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    raw = resolver.get("hosts")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        p.add(
            "hostResolver.hosts", f"must be a mapping of name to IP or name, got {type_name(raw)}"
        )
        return []
    by_key: dict[str, tuple[str, str]] = {}
    for name, value in raw.items():
        path = f"hostResolver.hosts.{name}"
        if not isinstance(name, str) or not canonical_name(name):
            p.add(f"hostResolver.hosts[{name!r}]", "a host name must be a non-empty string")
            continue
        if not isinstance(value, str) or not value.strip():
            p.add(path, f"must be an IP address or a host name, got {type_name(value)} {value!r}")
            continue
        problem = _host_value_problem(value.strip())
        if problem:
            p.add(path, problem)
            continue
        try:
            name_to_wire(canonical_name(name))
        except ValueError:  # includes IDNA's UnicodeError
            p.add(path, "the key is not a valid host name")
            continue
        key = canonical_name(name)
        if key in by_key:
            # Lima picks one of these at random (Go map order); we keep the later one in file order.
            warnings.append(
                (
                    path,
                    f"{path}: duplicates {by_key[key][0]!r} "
                    f"(case or trailing dot differ); the later entry wins",
                )
            )
            del by_key[key]
        by_key[key] = (name.strip(), value.strip())
    return list(by_key.values())


def load_native(m: Mapping[str, Any], p: Problems) -> NativeConfig:
    path, d = "fastdns.native", NativeConfig()
    reject_unknown(m, set(NativeConfig.__dataclass_fields__), path, p)
    nsswitch = get_str(m, "nsswitch", path, d.nsswitch, p)
    if not nsswitch.startswith("/"):
        p.add(f"{path}.nsswitch", f"must be an absolute path, got {nsswitch!r}")
        nsswitch = d.nsswitch
    return NativeConfig(
        enabled=get_bool(m, "enabled", path, d.enabled, p),
        timeout=get_number(m, "timeout", path, d.timeout, p, kind=float, low=0.05, high=60),
        negative_ttl=get_number(
            m, "negative_ttl", path, d.negative_ttl, p, kind=int, low=0, high=86400
        ),
        hosts_ttl=get_number(m, "hosts_ttl", path, d.hosts_ttl, p, kind=int, low=0, high=86400),
        max_inflight=get_number(
            m, "max_inflight", path, d.max_inflight, p, kind=int, low=1, high=100000
        ),
        forward_first=get_bool(m, "forward_first", path, d.forward_first, p),
        nss=get_choice(m, "nss", path, d.nss, NSS_MODES, p),
        nsswitch=nsswitch,
    )


def load_cache(m: Mapping[str, Any], p: Problems) -> CacheConfig:
    path, d = "fastdns.cache", CacheConfig()
    reject_unknown(m, set(CacheConfig.__dataclass_fields__), path, p)

    def num(key: str, low: int, high: int) -> int:
        default: int = getattr(d, key)  # the CacheConfig field of the same name
        return get_number(m, key, path, default, p, kind=int, low=low, high=high)

    return CacheConfig(
        enabled=get_bool(m, "enabled", path, d.enabled, p),
        capacity=num("capacity", 0, 10_000_000),
        denial_capacity=num("denial_capacity", 0, 10_000_000),
        min_ttl=num("min_ttl", 0, 86400),
        max_ttl=num("max_ttl", 0, 7 * 86400),
        denial_max_ttl=num("denial_max_ttl", 0, 7 * 86400),
        servfail_ttl=num("servfail_ttl", 0, 300),  # RFC 2308 §7.1: at most 5 minutes
        serve_stale=num("serve_stale", 0, 7 * 86400),
        stale_ttl=num("stale_ttl", 0, 86400),
        stale_refresh=get_choice(
            m, "stale_refresh", path, d.stale_refresh, ("immediate", "verify"), p
        ),
        prefetch=num("prefetch", 0, 1_000_000),
        prefetch_percent=num("prefetch_percent", 1, 99),
        prefetch_duration=num("prefetch_duration", 1, 86400),
    )


def _rules_interfaces(value: object, path: str, p: Problems) -> tuple[str, ...]:
    """``any``, or a non-empty list of interface names (``-i`` syntax: ``veth+`` is a prefix)."""
    if value is None:
        return ()
    if value == "any":
        return ("any",)
    if not isinstance(value, list) or not value:
        p.add(
            path,
            "must be `any` or a non-empty list of interface names "
            "(omit it to use the interfaces that hold fastdns.host_ip)",
        )
        return ()
    for i, name in enumerate(value):
        # IFNAMSIZ: 15 characters; no '/', whitespace or ':' (iptables rejects them).
        base = name.removesuffix("+") if isinstance(name, str) else ""
        if not 0 < len(base) <= 15 or any(c in base for c in "/: +!\t") or name == "any":
            p.add(f"{path}[{i}]", f"not an interface name: {name!r}")
            return ()
    return tuple(sorted(set(value)))


def load_rules(m: Mapping[str, Any], p: Problems) -> RulesConfig:
    path, d = "fastdns.rules", RulesConfig()
    reject_unknown(m, set(RulesConfig.__dataclass_fields__), path, p)
    hooks: tuple[HookName, ...] = d.hooks
    raw_hooks = m.get("hooks")
    if raw_hooks is not None:
        if not isinstance(raw_hooks, list) or not raw_hooks:
            p.add(f"{path}.hooks", "must be a non-empty list of PREROUTING and/or OUTPUT")
        else:
            good = [h for h in raw_hooks if h in ("PREROUTING", "OUTPUT")]
            for i, h in enumerate(raw_hooks):
                if h not in ("PREROUTING", "OUTPUT"):
                    p.add(f"{path}.hooks[{i}]", f"must be PREROUTING or OUTPUT, got {h!r}")
            hooks = tuple(dict.fromkeys(good))
    chain = get_str(m, "chain", path, d.chain, p)
    if not chain or len(chain) > 28 or not all(c.isalnum() or c in "-_" for c in chain):
        p.add(f"{path}.chain", f"must be 1-28 letters, digits, '-' or '_', got {chain!r}")
    target = get_str(m, "target", path, d.target, p)
    if target:
        target = check_ip(target, f"{path}.target", p) or ""
    iptables = get_str(m, "iptables", path, d.iptables, p)
    if iptables not in ("auto", "nft", "legacy") and not iptables.startswith("/"):
        p.add(
            f"{path}.iptables", f"must be auto, nft, legacy or an absolute path, got {iptables!r}"
        )
    return RulesConfig(
        interfaces=_rules_interfaces(m.get("interfaces"), f"{path}.interfaces", p),
        mark=get_number(m, "mark", path, d.mark, p, kind=int, low=0, high=0xFFFFFFFF),
        enabled=get_bool(m, "enabled", path, d.enabled, p),
        virtual_ip=get_ip(m, "virtual_ip", path, d.virtual_ip, p),
        target=target,
        hooks=hooks,
        chain=chain,
        reconcile_interval=get_number(
            m, "reconcile_interval", path, d.reconcile_interval, p, kind=float, low=0.1, high=86400
        ),
        iptables=iptables,
    )


def interface_name_problem(name: object) -> str:
    """Why ``name`` cannot be a Linux interface name (IFNAMSIZ: 15 bytes), or ""."""
    if (
        not isinstance(name, str)
        or not 0 < len(name.encode()) <= 15
        or name in (".", "..")
        or any(c in name for c in "/: \t\n%")
    ):
        return f"not an interface name (1-15 characters, no '/', ':', '%' or space): {name!r}"
    return ""


MAX_NODELOCAL_ADDRESSES = 8


def _unicast(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """A unicast address a node-local interface can hold and workers can bind without a
    scope: not unspecified, loopback, multicast, reserved (240/4, the broadcast address),
    link-local IPv6 (it needs a scope) or IPv4-mapped IPv6."""
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast:
        return False
    if isinstance(ip, ipaddress.IPv4Address):
        return not ip.is_reserved
    return not ip.is_link_local and ip.ipv4_mapped is None


def load_nodelocal(m: Mapping[str, Any], p: Problems) -> NodeLocalConfig:
    path, d = "fastdns.nodelocal", NodeLocalConfig()
    reject_unknown(m, set(NodeLocalConfig.__dataclass_fields__), path, p)
    interface = get_str(m, "interface", path, d.interface, p)
    problem = interface_name_problem(interface)
    if problem:
        p.add(f"{path}.interface", problem)
    addresses = get_ip_list(m, "addresses", path, d.addresses, p)
    if not addresses:
        p.add(f"{path}.addresses", "must name at least one address")
    elif len(addresses) > MAX_NODELOCAL_ADDRESSES:
        p.add(
            f"{path}.addresses",
            f"at most {MAX_NODELOCAL_ADDRESSES} addresses (each costs every worker a UDP and "
            f"a TCP socket), got {len(addresses)}",
        )
    seen: set[str] = set()
    for i, addr in enumerate(addresses):
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
        if "%" in addr or not _unicast(ip):
            p.add(f"{path}.addresses[{i}]", f"not an address an interface can hold: {addr}")
        elif ip.compressed in seen:
            p.add(f"{path}.addresses[{i}]", f"{ip.compressed} twice")
        seen.add(ip.compressed)
    return NodeLocalConfig(
        enabled=get_bool(m, "enabled", path, d.enabled, p),
        interface=interface,
        addresses=tuple(
            dict.fromkeys(ipaddress.ip_address(a.split("%", 1)[0]).compressed for a in addresses)
        ),
        notrack=get_bool(m, "notrack", path, d.notrack, p),
        teardown=get_bool(m, "teardown", path, d.teardown, p),
        health_port=get_number(
            m, "health_port", path, d.health_port, p, kind=int, low=0, high=65535
        ),
        sync_interval=get_number(
            m, "sync_interval", path, d.sync_interval, p, kind=float, low=0.1, high=86400
        ),
    )


def load_metrics(m: Mapping[str, Any], p: Problems) -> MetricsConfig:
    path = "fastdns.metrics"
    reject_unknown(m, set(MetricsConfig.__dataclass_fields__), path, p)
    listen = get_str(m, "listen", path, "", p)
    if listen:
        host, sep, port = listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            p.add(f"{path}.listen", f"must be HOST:PORT, got {listen!r}")
        else:
            check_ip(host, f"{path}.listen", p)
    return MetricsConfig(listen=listen)


def load_acl(m: Mapping[str, Any], p: Problems) -> AclConfig:
    path, d = "fastdns.acl", AclConfig()
    reject_unknown(m, set(AclConfig.__dataclass_fields__), path, p)
    return AclConfig(
        allow=get_cidrs(m, "allow", path, d.allow, p),
        action=get_choice(m, "action", path, d.action, ACL_ACTIONS, p),
    )


def load_ratelimit(m: Mapping[str, Any], p: Problems) -> RateLimitConfig:
    path, d = "fastdns.ratelimit", RateLimitConfig()
    reject_unknown(m, set(RateLimitConfig.__dataclass_fields__) - {"enabled"}, path, p)

    def num(key: str, kind: Callable[[Any], T], low: float, high: float) -> T:
        default = cast(T, getattr(d, key))  # the field of the same name: ``kind`` is its type
        return get_number(m, key, path, default, p, kind=kind, low=low, high=high)

    return RateLimitConfig(
        qps=num("qps", float, 0, 1e7),
        burst=num("burst", float, 0, 1e8),
        ipv4_prefix=num("ipv4_prefix", int, 8, 32),
        ipv6_prefix=num("ipv6_prefix", int, 16, 128),
        max_clients=num("max_clients", int, 1, 10_000_000),
        slip=num("slip", int, 0, 100),
        exempt=get_cidrs(m, "exempt", path, d.exempt, p),
    )


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def _tls_name_ok(name: str) -> bool:
    """A name a certificate can carry (RFC 6125: a DNS-ID) or an IP address (iPAddress)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return len(name) <= 253 and all(_LABEL.match(label) for label in name.split("."))


def load_forward(
    m: Mapping[str, Any], p: Problems, relative: Callable[[str], str]
) -> ForwardConfig:
    """``fastdns.forward``; ``relative`` resolves a file path against the config's folder."""
    path = "fastdns.forward"
    reject_unknown(m, set(ForwardConfig.__dataclass_fields__), path, p)
    return ForwardConfig(
        domains=load_routes(m, p),
        resolver_dir=relative(get_str(m, "resolver_dir", path, "", p)),
        tls=_load_tls(section(m, "tls", path, p), p, relative),
    )


def _load_tls(m: Mapping[str, Any], p: Problems, relative: Callable[[str], str]) -> TlsConfig:
    path, d = "fastdns.forward.tls", TlsConfig()
    reject_unknown(m, set(TlsConfig.__dataclass_fields__), path, p)
    enabled = get_bool(m, "enabled", path, d.enabled, p)
    verify = get_bool(m, "verify", path, d.verify, p)
    tls_name = get_str(m, "tls_name", path, d.tls_name, p).strip().rstrip(".")
    if tls_name and not _tls_name_ok(tls_name):
        p.add(
            f"{path}.tls_name",
            f"not a host name (A-labels, xn-- for IDN) or IP address: {tls_name!r}",
        )
    elif not tls_name and enabled and verify:
        p.add(
            f"{path}.tls_name",
            "required when forward.tls is enabled: the name each upstream's certificate must "
            "carry (RFC 8310); set verify: false to encrypt without authenticating",
        )
    ca_file = relative(get_str(m, "ca_file", path, d.ca_file, p))
    if ca_file and enabled:
        try:  # a bad bundle is a config error now, not a handshake failure per query later
            ssl.create_default_context().load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as e:
            p.add(f"{path}.ca_file", f"cannot load CA certificates from {ca_file!r}: {e}")
    return TlsConfig(
        enabled=enabled,
        port=get_number(m, "port", path, d.port, p, kind=int, low=1, high=65535),
        tls_name=tls_name,
        ca_file=ca_file,
        verify=verify,
        idle_timeout=get_number(
            m, "idle_timeout", path, d.idle_timeout, p, kind=float, low=0.1, high=3600
        ),
    )
