"""Load and validate a Lima instance config (``lima.yaml``) plus its optional ``fastdns:`` section.

``load_config`` is the only reader of YAML. Every problem is reported with its YAML key path;
all problems are collected before raising one ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from fastdns.configfile import (
    Source,
    did_you_mean,
    parse,
    top_level_typos,
    unknown_host_resolver_keys,
)
from fastdns.dns.wire import name_to_wire
from fastdns.errors import ConfigError
from fastdns.policy.acl import ACL_ACTIONS, AclConfig, parse_cidr
from fastdns.policy.ratelimit import RateLimitConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Lima's fixed addresses on its user-mode network (docs: "Default user-mode network").
LIMA_HOST_IP = "192.168.5.2"
LIMA_GUEST_IP = "192.168.5.15"
LIMA_VIRTUAL_DNS = "192.168.5.3"
# Lima falls back to these when resolv.conf cannot be read (pkg/hostagent/dns/dns.go).
DEFAULT_FALLBACK = ("8.8.8.8", "1.1.1.1")

HookName = Literal["PREROUTING", "OUTPUT"]


@dataclass(frozen=True, slots=True)
class NativeConfig:
    """The native (c-ares) path for A, AAAA, CNAME, TXT, NS, MX and SRV."""

    enabled: bool = True
    timeout: float = 2.0  # hard deadline of one native lookup (lima#524: .local misses hang)
    negative_ttl: int = 5  # NXDOMAIN/NODATA from c-ares carry no SOA
    hosts_ttl: int = 5  # TTL of answers that came from the hosts file (c-ares reports 0)
    max_inflight: int = 512  # per worker; above it the query is forwarded raw
    # A name c-ares would try as is first (at least ndots dots): forward it raw first and
    # answer that reply when it has what c-ares wanted; c-ares only runs when it has not and
    # the search list could still find it. Same answers, a quarter of the CPU.
    forward_first: bool = True


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The per-worker wire-level packet cache (CoreDNS cache semantics)."""

    enabled: bool = True
    capacity: int = 10000  # positive entries
    denial_capacity: int = 5000  # NXDOMAIN / NODATA entries
    min_ttl: int = 0
    max_ttl: int = 3600
    denial_max_ttl: int = 1800
    servfail_ttl: int = 5  # 0 = do not cache SERVFAIL
    serve_stale: int = 3600  # seconds an expired entry may still be served (RFC 8767); 0 = off
    stale_ttl: int = 30  # TTL of a stale answer (RFC 8767 §4)
    # "immediate": answer stale at once, refresh behind; "verify": ask the upstream first and
    # answer stale only when it fails (CoreDNS serve_stale's REFRESH_MODE).
    stale_refresh: str = "immediate"
    prefetch: int = 10  # hits before an entry counts as popular; 0 = no prefetch
    prefetch_percent: int = 10  # refresh a popular entry when this much of its TTL is left
    prefetch_duration: int = 60  # hits count towards ``prefetch`` while no gap exceeds this


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # "host:port"; empty = no metrics endpoint


@dataclass(frozen=True, slots=True)
class RulesConfig:
    enabled: bool = False
    virtual_ip: str = LIMA_VIRTUAL_DNS
    target: str = ""  # DNAT target address; empty = fastdns.listen
    hooks: tuple[HookName, ...] = ("PREROUTING", "OUTPUT")
    chain: str = "FASTDNS"
    reconcile_interval: float = 10.0
    iptables: str = "auto"  # auto | nft | legacy | /path/to/iptables
    # PREROUTING only from these (iptables -i names, "veth+" wildcards); () = the interfaces
    # that hold fastdns.host_ip; ("any",) = every interface (issue 13: the side door).
    interfaces: tuple[str, ...] = ()
    # SO_MARK of fastdns's upstream sockets, exempt from the OUTPUT jump; 0 = exempt by uid.
    # 0x53 ("53") avoids the bits kube-proxy (0x4000, 0x8000), Calico (0xffff0000), Cilium
    # (0x0f00) and Tailscale (0xff0000) use.
    mark: int = 0x53


@dataclass(frozen=True, slots=True)
class Config:
    """Everything fastdns needs, immutable; built only by ``load_config``."""

    path: str = ""
    # hostResolver.* and dns: as Lima defines them
    enabled: bool = True
    ipv6: bool = False
    hosts: tuple[tuple[str, str], ...] = ()  # (name, value) in file order, built-ins last
    dns: tuple[str, ...] = ()
    # fastdns:
    instance: str = ""
    listen: str = "127.0.0.1"
    udp_port: int = 0
    tcp_port: int = 0
    resolv_conf: str = "/etc/resolv.conf"
    hosts_file: str = "/etc/hosts"
    fallback: tuple[str, ...] = DEFAULT_FALLBACK
    upstream_timeout: float = 1.0
    deadline: float = 4.0
    lima_compat: bool = False
    static_ttl: int = 5
    edns_max_udp: int = 1232
    host_ip: str = LIMA_HOST_IP
    guest_ip: str = LIMA_GUEST_IP
    max_inflight: int = 1000  # per worker; REFUSED above it (CoreDNS max_concurrent)
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 256  # per worker
    tcp_max_connections_per_source: int = 64  # per worker and client address
    tcp_frame_timeout: float = 2.0  # first byte of a frame to its last (fastdns.tcp)
    tcp_max_write_buffer: int = 256 * 1024  # unsent reply bytes per connection
    workers: int = 0  # 0 = number of CPUs
    graceful_timeout: float = 5.0
    worker_timeout: float = 10.0  # a worker whose loop is silent this long is replaced
    user: str = ""  # drop workers to this user after binding (when root)
    native: NativeConfig = field(default_factory=NativeConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    warnings: tuple[str, ...] = ()

    @property
    def udp_payload_cap(self) -> int:
        """Largest UDP reply a client may get (lima#380: Lima always uses 512)."""
        return 512 if self.lima_compat else self.edns_max_udp

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Validation helpers: each records a problem with its key path instead of raising.


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []  # (key path, "path: message")

    def add(self, path: str, message: str) -> None:
        self.items.append((path, f"{path}: {message}"))


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _get_bool(m: Mapping[str, Any], key: str, path: str, default: bool, p: _Problems) -> bool:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        p.add(f"{path}.{key}", f"must be true or false, got {_type_name(value)} {value!r}")
        return default
    return value


def _get_number(
    m: Mapping[str, Any],
    key: str,
    path: str,
    default: T,
    p: _Problems,
    *,
    kind: Callable[[Any], T],
    low: float,
    high: float,
) -> T:
    value = m.get(key)
    if value is None:
        return default
    ok_types: tuple[type, ...] = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        expected = "an integer" if kind is int else "a number"
        p.add(f"{path}.{key}", f"must be {expected}, got {_type_name(value)} {value!r}")
        return default
    if not low <= value <= high:
        p.add(f"{path}.{key}", f"must be between {low:g} and {high:g}, got {value!r}")
        return default
    return kind(value)


def _get_str(m: Mapping[str, Any], key: str, path: str, default: str, p: _Problems) -> str:
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        p.add(f"{path}.{key}", f"must be a string, got {_type_name(value)} {value!r}")
        return default
    return value


def _get_choice(m: Mapping[str, Any], key: str, path: str, default: str,
                choices: tuple[str, ...], p: _Problems) -> str:  # fmt: skip
    value = _get_str(m, key, path, default, p)
    if value not in choices:
        p.add(f"{path}.{key}", f"must be one of {', '.join(choices)}, got {value!r}")
        return default
    return value


def _check_ip(value: object, path: str, p: _Problems, *, scoped: bool = False) -> str | None:
    if not isinstance(value, str):
        p.add(path, f"must be an IP address string, got {_type_name(value)} {value!r}")
        return None
    text = value.strip()
    bare = text.split("%", 1)[0] if scoped else text
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        p.add(path, f"not a valid IP address: {value!r}")
        return None
    return text


def _get_ip(m: Mapping[str, Any], key: str, path: str, default: str, p: _Problems) -> str:
    if m.get(key) is None:
        return default
    return _check_ip(m[key], f"{path}.{key}", p) or default


def _get_ip_list(
    m: Mapping[str, Any], key: str, path: str, default: tuple[str, ...], p: _Problems
) -> tuple[str, ...]:
    value = m.get(key)
    if value is None:
        return default
    where = f"{path}.{key}" if path else key  # top-level ``dns``, not ``.dns``
    if not isinstance(value, list):
        p.add(where, f"must be a list of IP addresses, got {_type_name(value)}")
        return default
    out = []
    for i, item in enumerate(value):
        ip = _check_ip(item, f"{where}[{i}]", p, scoped=True)
        if ip is not None:
            out.append(ip)
    return tuple(out)


def _section(m: Mapping[str, Any], key: str, path: str, p: _Problems) -> Mapping[str, Any]:
    value = m.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add(f"{path}.{key}" if path else key, f"must be a mapping, got {_type_name(value)}")
        return {}
    return value


def _reject_unknown(m: Mapping[str, Any], allowed: set[str], path: str, p: _Problems) -> None:
    for key in m:
        if key not in allowed:
            p.add(f"{path}.{key}", "unknown key" + did_you_mean(str(key), allowed))


# --------------------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """Lower-case, no trailing dot: the form static host keys are compared in."""
    return name.strip().rstrip(".").lower()


def instance_hostname(instance: str) -> str:
    """``lima-<instance>`` with ``.`` and ``_`` turned into ``-`` (Lima hostname.FromInstName)."""
    return "lima-" + instance.replace(".", "-").replace("_", "-")


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


def _load_hosts(
    resolver: Mapping[str, Any], p: _Problems, warnings: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    raw = resolver.get("hosts")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        p.add(
            "hostResolver.hosts", f"must be a mapping of name to IP or name, got {_type_name(raw)}"
        )
        return []
    by_key: dict[str, tuple[str, str]] = {}
    for name, value in raw.items():
        path = f"hostResolver.hosts.{name}"
        if not isinstance(name, str) or not canonical_name(name):
            p.add(f"hostResolver.hosts[{name!r}]", "a host name must be a non-empty string")
            continue
        if not isinstance(value, str) or not value.strip():
            p.add(path, f"must be an IP address or a host name, got {_type_name(value)} {value!r}")
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
            warnings.append((path, f"{path}: duplicates {by_key[key][0]!r} "
                                   f"(case or trailing dot differ); the later entry wins"))
            del by_key[key]
        by_key[key] = (name.strip(), value.strip())
    return list(by_key.values())


_FASTDNS_KEYS = {
    "instance", "listen", "udp_port", "tcp_port", "resolv_conf", "hosts_file", "fallback",
    "upstream_timeout", "deadline", "lima_compat", "static_ttl", "edns_max_udp", "host_ip",
    "guest_ip", "max_inflight", "tcp_idle_timeout", "tcp_max_connections",
    "tcp_max_connections_per_source", "tcp_frame_timeout", "tcp_max_write_buffer", "workers",
    "graceful_timeout", "worker_timeout", "user", "native", "cache", "metrics", "rules",
    "acl", "ratelimit",
}  # fmt: skip


def _load_native(m: Mapping[str, Any], p: _Problems) -> NativeConfig:
    path, d = "fastdns.native", NativeConfig()
    _reject_unknown(m, set(NativeConfig.__dataclass_fields__), path, p)
    return NativeConfig(
        enabled=_get_bool(m, "enabled", path, d.enabled, p),
        timeout=_get_number(m, "timeout", path, d.timeout, p, kind=float, low=0.05, high=60),
        negative_ttl=_get_number(m, "negative_ttl", path, d.negative_ttl, p, kind=int, low=0,
                                 high=86400),
        hosts_ttl=_get_number(m, "hosts_ttl", path, d.hosts_ttl, p, kind=int, low=0, high=86400),
        max_inflight=_get_number(m, "max_inflight", path, d.max_inflight, p, kind=int, low=1,
                                 high=100000),
        forward_first=_get_bool(m, "forward_first", path, d.forward_first, p),
    )  # fmt: skip


def _load_cache(m: Mapping[str, Any], p: _Problems) -> CacheConfig:
    path, d = "fastdns.cache", CacheConfig()
    _reject_unknown(m, set(CacheConfig.__dataclass_fields__), path, p)

    def num(key: str, low: int, high: int) -> int:
        return _get_number(m, key, path, getattr(d, key), p, kind=int, low=low, high=high)

    return CacheConfig(
        enabled=_get_bool(m, "enabled", path, d.enabled, p),
        capacity=num("capacity", 0, 10_000_000),
        denial_capacity=num("denial_capacity", 0, 10_000_000),
        min_ttl=num("min_ttl", 0, 86400),
        max_ttl=num("max_ttl", 0, 7 * 86400),
        denial_max_ttl=num("denial_max_ttl", 0, 7 * 86400),
        servfail_ttl=num("servfail_ttl", 0, 300),  # RFC 2308 §7.1: at most 5 minutes
        serve_stale=num("serve_stale", 0, 7 * 86400),
        stale_ttl=num("stale_ttl", 0, 86400),
        stale_refresh=_get_choice(m, "stale_refresh", path, d.stale_refresh,
                                  ("immediate", "verify"), p),
        prefetch=num("prefetch", 0, 1_000_000),
        prefetch_percent=num("prefetch_percent", 1, 99),
        prefetch_duration=num("prefetch_duration", 1, 86400),
    )


def _rules_interfaces(value: object, path: str, p: _Problems) -> tuple[str, ...]:
    """``any``, or a non-empty list of interface names (``-i`` syntax: ``veth+`` is a prefix)."""
    if value is None:
        return ()
    if value == "any":
        return ("any",)
    if not isinstance(value, list) or not value:
        p.add(path, "must be `any` or a non-empty list of interface names "
                    "(omit it to use the interfaces that hold fastdns.host_ip)")  # fmt: skip
        return ()
    for i, name in enumerate(value):
        # IFNAMSIZ: 15 characters; no '/', whitespace or ':' (iptables rejects them).
        base = name.removesuffix("+") if isinstance(name, str) else ""
        if not 0 < len(base) <= 15 or any(c in base for c in "/: +!\t") or name == "any":
            p.add(f"{path}[{i}]", f"not an interface name: {name!r}")
            return ()
    return tuple(sorted(set(value)))


def _load_rules(m: Mapping[str, Any], p: _Problems) -> RulesConfig:
    path, d = "fastdns.rules", RulesConfig()
    _reject_unknown(m, set(RulesConfig.__dataclass_fields__), path, p)
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
            hooks = tuple(dict.fromkeys(good))  # type: ignore[arg-type]
    chain = _get_str(m, "chain", path, d.chain, p)
    if not chain or len(chain) > 28 or not all(c.isalnum() or c in "-_" for c in chain):
        p.add(f"{path}.chain", f"must be 1-28 letters, digits, '-' or '_', got {chain!r}")
    target = _get_str(m, "target", path, d.target, p)
    if target:
        target = _check_ip(target, f"{path}.target", p) or ""
    iptables = _get_str(m, "iptables", path, d.iptables, p)
    if iptables not in ("auto", "nft", "legacy") and not iptables.startswith("/"):
        p.add(
            f"{path}.iptables", f"must be auto, nft, legacy or an absolute path, got {iptables!r}"
        )
    return RulesConfig(
        interfaces=_rules_interfaces(m.get("interfaces"), f"{path}.interfaces", p),
        mark=_get_number(m, "mark", path, d.mark, p, kind=int, low=0, high=0xFFFFFFFF),
        enabled=_get_bool(m, "enabled", path, d.enabled, p),
        virtual_ip=_get_ip(m, "virtual_ip", path, d.virtual_ip, p),
        target=target,
        hooks=hooks,
        chain=chain,
        reconcile_interval=_get_number(m, "reconcile_interval", path, d.reconcile_interval, p,
                                       kind=float, low=0.1, high=86400),
        iptables=iptables,
    )  # fmt: skip


def _load_metrics(m: Mapping[str, Any], p: _Problems) -> MetricsConfig:
    path = "fastdns.metrics"
    _reject_unknown(m, set(MetricsConfig.__dataclass_fields__), path, p)
    listen = _get_str(m, "listen", path, "", p)
    if listen:
        host, sep, port = listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            p.add(f"{path}.listen", f"must be HOST:PORT, got {listen!r}")
        else:
            _check_ip(host, f"{path}.listen", p)
    return MetricsConfig(listen=listen)


def _get_cidrs(m: Mapping[str, Any], key: str, path: str, default: tuple[str, ...],
               p: _Problems) -> tuple[str, ...]:  # fmt: skip
    """A list of networks (fastdns.acl); each bad one is a problem naming its value."""
    value = m.get(key)
    if value is None:
        return default
    if not isinstance(value, list):
        p.add(f"{path}.{key}",
              f"must be a list of CIDRs such as 10.0.0.0/8, got {_type_name(value)}")
        return default
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(parse_cidr(item)))
        except ValueError as e:
            p.add(f"{path}.{key}[{i}]", str(e))
    return tuple(out)


def _load_acl(m: Mapping[str, Any], p: _Problems) -> AclConfig:
    path, d = "fastdns.acl", AclConfig()
    _reject_unknown(m, set(AclConfig.__dataclass_fields__), path, p)
    return AclConfig(
        allow=_get_cidrs(m, "allow", path, d.allow, p),
        action=_get_choice(m, "action", path, d.action, ACL_ACTIONS, p),  # type: ignore[arg-type]
    )


def _load_ratelimit(m: Mapping[str, Any], p: _Problems) -> RateLimitConfig:
    path, d = "fastdns.ratelimit", RateLimitConfig()
    _reject_unknown(m, set(RateLimitConfig.__dataclass_fields__) - {"enabled"}, path, p)

    def num(key: str, kind: Callable[[Any], T], low: float, high: float) -> T:
        return _get_number(m, key, path, getattr(d, key), p, kind=kind, low=low, high=high)

    return RateLimitConfig(
        qps=num("qps", float, 0, 1e7),
        burst=num("burst", float, 0, 1e8),
        ipv4_prefix=num("ipv4_prefix", int, 8, 32),
        ipv6_prefix=num("ipv6_prefix", int, 16, 128),
        max_clients=num("max_clients", int, 1, 10_000_000),
        slip=num("slip", int, 0, 100),
        exempt=_get_cidrs(m, "exempt", path, d.exempt, p),
    )


def _relative_to(config_path: str, value: str) -> str:
    """Relative file paths in a config are relative to the config file's folder."""
    if not value or os.path.isabs(value) or not config_path:
        return value
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), value)


def build_config(
    doc: Mapping[str, Any],
    path: str = "",
    source: Source | None = None,
    duplicates: Sequence[tuple[str, str]] = (),
) -> Config:
    """Validate a parsed lima.yaml document; raise ``ConfigError`` listing every problem.

    With ``source`` (``configfile.parse``) every problem and warning starts with FILE:LINE;
    ``duplicates`` are the document's duplicate-key warnings."""
    p = _Problems()
    warnings: list[tuple[str, str]] = [*duplicates, *top_level_typos(dict(doc))]
    d = Config()
    resolver = _section(doc, "hostResolver", "", p)
    warnings += unknown_host_resolver_keys(dict(resolver))
    enabled = _get_bool(resolver, "enabled", "hostResolver", d.enabled, p)
    ipv6 = _get_bool(resolver, "ipv6", "hostResolver", d.ipv6, p)
    hosts = _load_hosts(resolver, p, warnings)
    dns = _get_ip_list(doc, "dns", "", (), p) if "dns" in doc else ()
    # A dns: value that is itself invalid is reported as such, not also as "empty".
    dns_given_empty = doc.get("dns") is None or doc.get("dns") == []
    if enabled and dns:
        # Lima pkg/limayaml/validate.go
        p.add("dns", "field `dns` must be empty when field `HostResolver.Enabled` is true")

    f = _section(doc, "fastdns", "", p)
    _reject_unknown(f, _FASTDNS_KEYS, "fastdns", p)
    fp = "fastdns"

    def num(key: str, kind: Callable[[Any], T], low: float, high: float) -> T:
        return _get_number(f, key, fp, getattr(d, key), p, kind=kind, low=low, high=high)

    instance = _get_str(f, "instance", fp, "", p)
    if not instance and path and Path(path).name == "lima.yaml":
        instance = Path(path).resolve().parent.name  # ~/.lima/<instance>/lima.yaml
    host_ip = _get_ip(f, "host_ip", fp, d.host_ip, p)
    guest_ip = _get_ip(f, "guest_ip", fp, d.guest_ip, p)
    # Built-ins overwrite user entries with the same name (Lima hostagent.go).
    builtins = [("host.lima.internal", host_ip)]
    if instance:
        builtins.append((instance_hostname(instance), guest_ip))
    builtin_keys = {canonical_name(n) for n, _ in builtins}
    hosts = [(n, v) for n, v in hosts if canonical_name(n) not in builtin_keys] + builtins

    upstream_timeout = num("upstream_timeout", float, 0.01, 30)
    deadline = num("deadline", float, 0.05, 60)
    user = _get_str(f, "user", fp, "", p)
    workers = num("workers", int, 0, 256)
    cfg = Config(
        path=path,
        enabled=enabled,
        ipv6=ipv6,
        hosts=tuple(hosts),
        dns=dns,
        instance=instance,
        listen=_get_ip(f, "listen", fp, d.listen, p),
        udp_port=num("udp_port", int, 0, 65535),
        tcp_port=num("tcp_port", int, 0, 65535),
        resolv_conf=_relative_to(path, _get_str(f, "resolv_conf", fp, d.resolv_conf, p)),
        hosts_file=_relative_to(path, _get_str(f, "hosts_file", fp, d.hosts_file, p)),
        fallback=_get_ip_list(f, "fallback", fp, d.fallback, p),
        upstream_timeout=upstream_timeout,
        deadline=deadline,
        lima_compat=_get_bool(f, "lima_compat", fp, d.lima_compat, p),
        static_ttl=num("static_ttl", int, 0, 86400),
        edns_max_udp=num("edns_max_udp", int, 512, 65535),
        host_ip=host_ip,
        guest_ip=guest_ip,
        max_inflight=num("max_inflight", int, 1, 1_000_000),
        tcp_idle_timeout=num("tcp_idle_timeout", float, 0.1, 3600),
        tcp_max_connections=num("tcp_max_connections", int, 1, 100000),
        tcp_max_connections_per_source=num("tcp_max_connections_per_source", int, 1, 100000),
        tcp_frame_timeout=num("tcp_frame_timeout", float, 0.05, 60),
        # at least one largest reply (65535 + 2) over the pause mark (fastdns.tcp.WRITE_HIGH)
        tcp_max_write_buffer=num("tcp_max_write_buffer", int, 128 * 1024, 1 << 30),
        workers=workers,
        graceful_timeout=num("graceful_timeout", float, 0, 600),
        worker_timeout=num("worker_timeout", float, 1, 3600),
        user=user,
        native=_load_native(_section(f, "native", fp, p), p),
        cache=_load_cache(_section(f, "cache", fp, p), p),
        metrics=_load_metrics(_section(f, "metrics", fp, p), p),
        rules=_load_rules(_section(f, "rules", fp, p), p),
        acl=_load_acl(_section(f, "acl", fp, p), p),
        ratelimit=_load_ratelimit(_section(f, "ratelimit", fp, p), p),
        warnings=tuple(_located(warnings, source)),
    )
    if not enabled and not dns and dns_given_empty:
        p.add(
            "dns",
            "hostResolver.enabled is false and dns is empty: there is nothing to forward to "
            "(Lima would use the slirp DNS here; fastdns needs a dns: list)",
        )
    if upstream_timeout > deadline:
        p.add("fastdns.upstream_timeout", "must not exceed fastdns.deadline")
    if p.items:
        raise ConfigError(_located(p.items, source))
    return cfg


def _located(items: Sequence[tuple[str, str]], source: Source | None) -> list[str]:
    if source is None:
        return [message for _, message in items]
    return [source.locate(path, message) for path, message in items]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read ``path`` as lima.yaml; raise ``ConfigError`` with every problem found."""
    text_path = os.fspath(path)
    try:
        with open(text_path, encoding="utf-8") as fh:
            text = fh.read()
        doc, source, duplicates = parse(text, text_path)
    except OSError as e:
        raise ConfigError([f"{text_path}: cannot read: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{text_path}: not UTF-8 text: {e.reason}"]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{text_path}: not valid YAML{where}: {problem}"]) from e
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([f"{text_path}: the top level must be a mapping, got {_type_name(doc)}"])
    return build_config(doc, text_path, source, duplicates)
