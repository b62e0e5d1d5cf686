"""Load and validate a Lima instance config (``lima.yaml``) plus its optional ``fastdns:`` section.

``load_config`` is the only reader of YAML. Every problem is reported with its YAML key path;
all problems are collected before raising one ``ConfigError``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import yaml

from fastdns.config.schema import (
    DATAPATHS,
    CacheConfig,
    Config,
    ForwardConfig,
    MetricsConfig,
    NativeConfig,
    NodeLocalConfig,
    RulesConfig,
    TlsConfig,
    canonical_name,
    instance_hostname,
)
from fastdns.config.sections import (
    load_acl,
    load_cache,
    load_forward,
    load_hosts,
    load_metrics,
    load_native,
    load_nodelocal,
    load_ratelimit,
    load_rules,
)
from fastdns.config.values import (
    Problems,
    get_bool,
    get_choice,
    get_ip,
    get_ip_list,
    get_number,
    get_str,
    reject_unknown,
    section,
    type_name,
)
from fastdns.config.yamlfile import (
    HOST_RESOLVER_KEYS,
    Source,
    parse,
    top_level_typos,
    unknown_host_resolver_keys,
)
from fastdns.errors import ConfigError
from fastdns.policy.acl import AclConfig
from fastdns.policy.ratelimit import RateLimitConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")

_FASTDNS_KEYS = {
    "instance",
    "listen",
    "udp_port",
    "tcp_port",
    "resolv_conf",
    "hosts_file",
    "fallback",
    "upstream_timeout",
    "deadline",
    "lima_compat",
    "static_ttl",
    "edns_max_udp",
    "host_ip",
    "guest_ip",
    "max_inflight",
    "tcp_idle_timeout",
    "tcp_max_connections",
    "tcp_max_connections_per_source",
    "tcp_frame_timeout",
    "tcp_max_write_buffer",
    "workers",
    "graceful_timeout",
    "worker_timeout",
    "user",
    "datapath",
    "datapath_batch",
    "native",
    "forward",
    "cache",
    "metrics",
    "rules",
    "nodelocal",
    "acl",
    "ratelimit",
}


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

    With ``source`` (``yamlfile.parse``) every problem and warning starts with FILE:LINE;
    ``duplicates`` are the document's duplicate-key warnings."""
    p = Problems()
    warnings: list[tuple[str, str]] = [*duplicates, *top_level_typos(dict(doc))]
    d = Config()
    resolver = section(doc, "hostResolver", "", p)
    warnings += unknown_host_resolver_keys(dict(resolver))
    enabled = get_bool(resolver, "enabled", "hostResolver", d.enabled, p)
    ipv6 = get_bool(resolver, "ipv6", "hostResolver", d.ipv6, p)
    hosts = load_hosts(resolver, p, warnings)
    dns = get_ip_list(doc, "dns", "", (), p) if "dns" in doc else ()
    # A dns: value that is itself invalid is reported as such, not also as "empty".
    dns_given_empty = doc.get("dns") is None or doc.get("dns") == []
    if enabled and dns:
        # Lima pkg/limayaml/validate.go
        p.add("dns", "field `dns` must be empty when field `HostResolver.Enabled` is true")

    f = section(doc, "fastdns", "", p)
    reject_unknown(f, _FASTDNS_KEYS, "fastdns", p)
    fp = "fastdns"

    def num(key: str, kind: Callable[[Any], T], low: float, high: float) -> T:
        default = cast(T, getattr(d, key))  # the field of the same name: ``kind`` is its type
        return get_number(f, key, fp, default, p, kind=kind, low=low, high=high)

    instance = get_str(f, "instance", fp, "", p)
    if not instance and path and Path(path).name == "lima.yaml":
        instance = Path(path).resolve().parent.name  # ~/.lima/<instance>/lima.yaml
    host_ip = get_ip(f, "host_ip", fp, d.host_ip, p)
    guest_ip = get_ip(f, "guest_ip", fp, d.guest_ip, p)
    # Built-ins overwrite user entries with the same name (Lima hostagent.go).
    builtins = [("host.lima.internal", host_ip)]
    if instance:
        builtins.append((instance_hostname(instance), guest_ip))
    builtin_keys = {canonical_name(n) for n, _ in builtins}
    hosts = [(n, v) for n, v in hosts if canonical_name(n) not in builtin_keys] + builtins

    upstream_timeout = num("upstream_timeout", float, 0.01, 30)
    deadline = num("deadline", float, 0.05, 60)
    user = get_str(f, "user", fp, "", p)
    workers = num("workers", int, 0, 256)
    nodelocal = load_nodelocal(section(f, "nodelocal", fp, p), p)
    listen = get_ip(f, "listen", fp, d.listen, p)
    udp_port = num("udp_port", int, 0, 65535)
    tcp_port = num("tcp_port", int, 0, 65535)
    if nodelocal.enabled:
        listen = _nodelocal_listen(f, nodelocal, listen, p)
        udp_port = udp_port if "udp_port" in f else 53
        tcp_port = tcp_port if "tcp_port" in f else 53
    cfg = Config(
        path=path,
        enabled=enabled,
        ipv6=ipv6,
        hosts=tuple(hosts),
        dns=dns,
        instance=instance,
        listen=listen,
        udp_port=udp_port,
        tcp_port=tcp_port,
        resolv_conf=_relative_to(path, get_str(f, "resolv_conf", fp, d.resolv_conf, p)),
        hosts_file=_relative_to(path, get_str(f, "hosts_file", fp, d.hosts_file, p)),
        fallback=get_ip_list(f, "fallback", fp, d.fallback, p),
        upstream_timeout=upstream_timeout,
        deadline=deadline,
        lima_compat=get_bool(f, "lima_compat", fp, d.lima_compat, p),
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
        datapath=get_choice(f, "datapath", fp, d.datapath, DATAPATHS, p),
        datapath_batch=num("datapath_batch", int, 1, 1024),
        native=load_native(section(f, "native", fp, p), p),
        cache=load_cache(section(f, "cache", fp, p), p),
        forward=load_forward(
            section(f, "forward", fp, p), p, lambda value: _relative_to(path, value)
        ),
        metrics=load_metrics(section(f, "metrics", fp, p), p),
        rules=load_rules(section(f, "rules", fp, p), p),
        nodelocal=nodelocal,
        acl=load_acl(section(f, "acl", fp, p), p),
        ratelimit=load_ratelimit(section(f, "ratelimit", fp, p), p),
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


def _nodelocal_listen(
    f: Mapping[str, Any], nodelocal: NodeLocalConfig, listen: str, p: Problems
) -> str:
    """The listen address in node-local mode: the first node-local address unless set, and
    then one of them (docs/nodelocal.md). The workers serve every node-local address
    (``Config.listen_addresses``); this one comes first."""
    if "listen" not in f and nodelocal.addresses:
        listen = nodelocal.addresses[0]
    elif listen not in nodelocal.addresses:
        p.add(
            "fastdns.listen",
            f"in node-local mode must be one of fastdns.nodelocal.addresses "
            f"({', '.join(nodelocal.addresses)}) or be left out, got {listen}",
        )
    rules = f.get("rules")
    if isinstance(rules, Mapping) and rules.get("enabled") is True:
        p.add(
            "fastdns.rules.enabled",
            "node-local mode (fastdns.nodelocal.enabled) has no DNAT: turn one of them off",
        )
    return listen


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
        raise ConfigError([f"{text_path}: the top level must be a mapping, got {type_name(doc)}"])
    return build_config(doc, text_path, source, duplicates)


def known_keys() -> frozenset[str]:
    """Every key path ``build_config`` reads, dotted as in its messages (``fastdns.cache.min_ttl``).

    Built from the same sets the loaders reject unknown keys against, so docs/configuration.md
    can be checked against it (tests/unit/test_docs.py)."""
    keys = {f"hostResolver.{key}" for key in HOST_RESOLVER_KEYS} | {"dns"}
    sections: dict[str, type[DataclassInstance]] = {
        "native": NativeConfig,
        "forward": ForwardConfig,
        "cache": CacheConfig,
        "metrics": MetricsConfig,
        "rules": RulesConfig,
        "nodelocal": NodeLocalConfig,
        "acl": AclConfig,
        "ratelimit": RateLimitConfig,
    }
    keys |= {f"fastdns.forward.{f}" for f in ForwardConfig.__dataclass_fields__ if f != "tls"}
    keys |= {f"fastdns.forward.tls.{f}" for f in TlsConfig.__dataclass_fields__}
    for key in _FASTDNS_KEYS - {"forward"}:
        if key in sections:
            keys |= {f"fastdns.{key}.{f}" for f in sections[key].__dataclass_fields__}
        else:
            keys.add(f"fastdns.{key}")
    return frozenset(keys)
