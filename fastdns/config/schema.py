"""The config schema: frozen dataclasses for everything fastdns reads from lima.yaml.

Built only by ``fastdns.config.load.build_config``; every field has its default here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from fastdns.policy.acl import AclConfig
from fastdns.policy.ratelimit import RateLimitConfig

# Lima's fixed addresses on its user-mode network (docs: "Default user-mode network").
LIMA_HOST_IP = "192.168.5.2"
LIMA_GUEST_IP = "192.168.5.15"
LIMA_VIRTUAL_DNS = "192.168.5.3"
# Lima falls back to these when resolv.conf cannot be read (pkg/hostagent/dns/dns.go).
DEFAULT_FALLBACK = ("8.8.8.8", "1.1.1.1")

HookName = Literal["PREROUTING", "OUTPUT"]
NssMode = Literal["auto", "on", "off"]
NSS_MODES: tuple[NssMode, ...] = ("auto", "on", "off")
# The UDP datapath (docs/datapath.md): auto = compiled when its extension imports.
DatapathName = Literal["auto", "python", "compiled"]
DATAPATHS: tuple[DatapathName, ...] = ("auto", "python", "compiled")


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
    # The host's NSS sources for A/AAAA (myhostname, mdns4_minimal, libvirt...) through glibc's
    # getaddrinfo, never its dns source (fastdns/resolve/native/nss.py). auto: on when the
    # hosts: line of ``nsswitch`` names a source beyond files, dns and resolve.
    nss: NssMode = "auto"
    nsswitch: str = "/etc/nsswitch.conf"


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


Transport = Literal["udp", "tcp", "tls"]


@dataclass(frozen=True, slots=True)
class RouteServer:
    """One server of a forwarding route: ``IP``, ``IP:port``, ``[v6]:port``, ``tcp://...``
    or ``tls://...`` (fastdns.config.routes.parse_server)."""

    host: str
    port: int
    transport: Transport = "udp"

    def label(self) -> str:
        """``host:port`` as the upstream metrics name it (``tcp://`` prefixed for TCP)."""
        prefix = "" if self.transport == "udp" else f"{self.transport}://"
        return f"{prefix}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Names under any of ``domains`` (lower case, no final dot) go to ``servers`` only."""

    domains: tuple[str, ...]
    servers: tuple[RouteServer, ...]
    tls_name: str = ""
    timeout: float | None = None  # per attempt; None: fastdns.upstream_timeout
    origin: str = "config"  # "config", or the resolver_dir file it came from


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """DNS over TLS to the default upstreams (RFC 7858; docs/tls.md)."""

    enabled: bool = False
    port: int = 853  # RFC 7858 §3.1
    # The name every default upstream's certificate must carry (RFC 8310: the
    # authentication domain name), also sent as SNI. Required while ``verify`` is on.
    tls_name: str = ""
    ca_file: str = ""  # PEM trust anchors; empty = the system's CA store
    # false: encrypt without authenticating the server (the opportunistic profile of RFC 8310);
    # an explicit opt-out, never a silent downgrade.
    verify: bool = True
    idle_timeout: float = 10.0  # a pooled connection with nothing in flight closes after this


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    """How queries go to upstreams beyond the plain resolv.conf defaults: per-domain routes
    (docs/routing.md) and DNS over TLS to the defaults (docs/tls.md)."""

    domains: tuple[RouteConfig, ...] = ()
    resolver_dir: str = ""  # macOS-style /etc/resolver directory; "" = none
    tls: TlsConfig = field(default_factory=TlsConfig)


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
    # that hold fastdns.host_ip; ("any",) = every interface (docs/rules.md: closed by default).
    interfaces: tuple[str, ...] = ()
    # SO_MARK of fastdns's upstream sockets, exempt from the OUTPUT jump; 0 = exempt by uid.
    # 0x53 ("53") avoids the bits kube-proxy (0x4000, 0x8000), Calico (0xffff0000), Cilium
    # (0x0f00) and Tailscale (0xff0000) use.
    mark: int = 0x53


@dataclass(frozen=True, slots=True)
class NodeLocalConfig:
    """Node-local cache mode (docs/nodelocal.md): an interface holding link-local addresses,
    NOTRACK and ACCEPT rules for them, owned by the rules process."""

    enabled: bool = False
    interface: str = "fastdns0"
    addresses: tuple[str, ...] = ("169.254.20.10",)  # 1-8, all served (listen among them)
    notrack: bool = True  # raw-table NOTRACK: no conntrack entry, no insert race
    teardown: bool = True  # remove rules and interface on SIGTERM (false: for upgrades)
    health_port: int = 8080  # GET /health on the listen address; 0 = none
    sync_interval: float = 60.0  # seconds between checks of interface and rules


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
    datapath: DatapathName = "auto"
    datapath_batch: int = 64  # UDP datagrams read per wakeup by the compiled datapath
    native: NativeConfig = field(default_factory=NativeConfig)
    forward: ForwardConfig = field(default_factory=ForwardConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    nodelocal: NodeLocalConfig = field(default_factory=NodeLocalConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    warnings: tuple[str, ...] = ()

    @property
    def udp_payload_cap(self) -> int:
        """Largest UDP reply a client may get (lima#380: Lima always uses 512)."""
        return 512 if self.lima_compat else self.edns_max_udp

    @property
    def rules_process(self) -> bool:
        """Whether a rules process runs: DNAT rules, or node-local mode (docs/nodelocal.md)."""
        return self.rules.enabled or self.nodelocal.enabled

    @property
    def listen_addresses(self) -> tuple[str, ...]:
        """Every address the workers serve: ``listen``, then in node-local mode the other
        node-local addresses (docs/nodelocal.md)."""
        if not self.nodelocal.enabled:
            return (self.listen,)
        return (self.listen, *(a for a in self.nodelocal.addresses if a != self.listen))

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


def canonical_name(name: str) -> str:
    """Lower-case, no trailing dot: the form static host keys are compared in."""
    return name.strip().rstrip(".").lower()


def instance_hostname(instance: str) -> str:
    """``lima-<instance>`` with ``.`` and ``_`` turned into ``-`` (Lima hostname.FromInstName)."""
    return "lima-" + instance.replace(".", "-").replace("_", "-")
