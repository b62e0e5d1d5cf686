"""The host's NSS sources for A and AAAA: what the C library resolves and c-ares cannot.

c-ares reads the hosts file and asks DNS; the host's C library also asks the other sources of
the ``hosts:`` line of nsswitch.conf (``myhostname``, ``mdns4_minimal``, ``libvirt``...). Lima
gets those through the OS resolver (cgo). Here, an A or AAAA question that the hosts file and
DNS leave without an address (NXDOMAIN or NODATA), and a ``.local`` name before DNS is asked
(RFC 6762 §3), goes through glibc's ``getaddrinfo`` in a small thread pool, within the client's
deadline; the answer carries ``static_ttl``.

Never DNS: before its first lookup the worker tells glibc which sources to use for ``hosts``
(``__nss_configure_lookup``, glibc's own override of nsswitch.conf): the configured file's
``hosts:`` line without ``files``, ``dns`` and ``resolve`` (fastdns.resolve.native.nsswitch).
glibc then neither re-reads /etc/nsswitch.conf for ``hosts`` nor asks nscd (whose cache would
ask DNS): its dns source, which sends to the servers of /etc/resolv.conf, is never loaded.
Without that entry (not glibc) NSS stays off. An NSS module may still use the resolver itself:
nss-mdns asks /etc/resolv.conf's servers for ``local. SOA``; with ``auto`` its sources are used
only when fastdns's own upstreams come from that same file.

Runs in: workers only. May import what ``fastdns.resolve.native`` may; not pycares.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastdns.config.schema import Config
from fastdns.dns import compose, wire
from fastdns.dns.resolved import Resolved
from fastdns.metrics.stats import WorkerStats
from fastdns.resolve.native.nsswitch import NsswitchError, hosts_line, nss_line

logger = logging.getLogger(__name__)

# getaddrinfo cannot be cancelled: a lookup past its deadline keeps its thread until the NSS
# module gives up (nss-mdns: about 5 s). Two threads and at most 16 lookups queued or running
# per worker; beyond that the question keeps the answer DNS gave (counted as "overload").
THREADS = 2
MAX_PENDING = 16
LOCAL_SUFFIX = b"\x05local\x00"  # RFC 6762 §3: .local is link-local multicast DNS
SYSTEM_RESOLV = "/etc/resolv.conf"  # what glibc's resolver (and nss-mdns) always reads
SOURCE = "nss"  # Resolved.source, the responses series' plugin label
# fastdns_nss_lookups_total{outcome}; fastdns/metrics/definitions.py NSS_OUTCOMES.
OUTCOMES = ("answered", "notfound", "error", "timeout", "overload")
_NOT_FOUND = frozenset(
    getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY") if hasattr(socket, n)
)
_ADDRESS_TYPES = {wire.A: socket.AF_INET, wire.AAAA: socket.AF_INET6}

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


def configure_glibc(line: str) -> str | None:
    """Make ``line`` the process's ``hosts`` sources (glibc ``__nss_configure_lookup``); None
    when done, else why not. Call before the first lookup thread starts (glibc: not
    thread-safe)."""
    try:
        libc = ctypes.CDLL(None)
        configure = libc.__nss_configure_lookup
    except (OSError, AttributeError):
        return "this C library has no __nss_configure_lookup (not glibc)"
    configure.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    configure.restype = ctypes.c_int
    if configure(b"hosts", line.encode("ascii")) != 0:
        return f"glibc rejected the hosts sources {line!r}"
    return None


def read_sources(path: str, *, missing_ok: bool = False, resolver_users: bool = True) -> str:
    """The sources of ``path``'s ``hosts:`` line that fastdns may ask glibc for ("" for none:
    no file, no ``hosts:`` line, only files/dns/resolve, or a line that cannot be parsed).
    ``missing_ok``: no warning when there is no such file (``auto`` on a host without one);
    ``resolver_users``: keep the sources that send DNS to /etc/resolv.conf's servers
    themselves (nsswitch.RESOLVER_USERS)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as e:
        if not (missing_ok and isinstance(e, FileNotFoundError)):
            logger.warning("cannot read %s (%s): no NSS sources", path, e.strerror or e)
        return ""
    value = hosts_line(text)
    if value is None:
        return ""
    try:
        line = nss_line(value)
        if resolver_users:
            return line
        fewer = nss_line(value, resolver_users=False)
        if fewer != line:
            logger.warning(
                "NSS: not using the mdns sources of %s (%s): nss-mdns asks the servers of "
                "/etc/resolv.conf for local. SOA, and fastdns.resolv_conf is another file; "
                "fastdns.native.nss: on uses them anyway",
                path,
                line,
            )
        return fewer
    except NsswitchError as e:
        logger.warning("%s: %s: no NSS sources", path, e)
        return ""


def lookup_name(qname: bytes) -> str | None:
    """The text name for getaddrinfo (lower case, no final dot: no search list applies), or None
    for names it cannot take faithfully (the root, dots, backslashes, spaces or non-ASCII bytes
    in a label, IP literals)."""
    labels = []
    i = 0
    while qname[i]:
        label = qname[i + 1 : i + 1 + qname[i]]
        if not label.isascii() or any(c <= 0x20 or c in b".\\\x7f" for c in label):
            return None
        labels.append(label.decode("ascii").lower())
        i += qname[i] + 1
    if not labels:
        return None
    name = ".".join(labels)
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
        return None  # getaddrinfo would echo a literal back
    except OSError:
        return name


def addresses(results: list[tuple[Any, ...]], family: int) -> list[bytes]:
    """The packed addresses of ``family`` in getaddrinfo ``results``, in order, once each."""
    out: list[bytes] = []
    for fam, _type, _proto, _canon, sockaddr in results:
        if fam != family:
            continue
        packed = socket.inet_pton(family, str(sockaddr[0]).split("%", 1)[0])
        if packed not in out:
            out.append(packed)
    return out


class NssResolver:
    """The pipeline's NSS hook (``fastdns.resolve.pipeline.NssLookup``)."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        stats: WorkerStats,
        getaddrinfo: GetAddrInfo = socket.getaddrinfo,
    ) -> None:
        self.loop = loop
        self.stats = stats
        self.ttl = config.static_ttl
        self.timeout = config.native.timeout
        self.opt_size = config.udp_payload_cap
        self.getaddrinfo = getaddrinfo
        self.pending = 0  # lookups queued or running, deadline passed or not
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="fastdns-nss")

    # -------------------------------------------------------------- which questions

    @staticmethod
    def applies(q: wire.Query) -> bool:
        # DO/CD: a validating client would find an unsigned answer where DNS proved there is
        # no name (the native path declines these too).
        return q.qtype in _ADDRESS_TYPES and q.qclass == wire.CLASS_IN and not (q.do or q.cd)

    def first(self, q: wire.Query) -> bool:
        """True for a ``.local`` A/AAAA question: NSS (mDNS) before DNS (RFC 6762 §3)."""
        return q.qname.lower().endswith(LOCAL_SUFFIX) and self.applies(q)

    def wants(self, q: wire.Query, reply: bytes) -> bool:
        """True when ``reply`` (from the hosts file or DNS) left the A/AAAA question ``q``
        without an address: NXDOMAIN, or NOERROR with no answer record (NODATA)."""
        if not self.applies(q) or q.qname.lower().endswith(LOCAL_SUFFIX):
            return False  # (.local was asked first)
        rcode = reply[3] & wire.RCODE_MASK
        return rcode == wire.NXDOMAIN or (rcode == wire.NOERROR and reply[6:8] == b"\0\0")

    # -------------------------------------------------------------- lookups

    async def __call__(self, q: wire.Query, deadline: float) -> Resolved | None:
        """The NSS answer for ``q``, or None (no address, failure, overload, deadline)."""
        name = lookup_name(q.qname)
        if name is None:
            return self._count("notfound")
        if self.pending >= MAX_PENDING:
            return self._count("overload")
        budget = min(self.timeout, deadline - self.loop.time())
        if budget <= 0:
            return self._count("timeout")
        family = _ADDRESS_TYPES[q.qtype]
        self.pending += 1
        fut = self.loop.run_in_executor(self.pool, self._lookup, name, family)
        fut.add_done_callback(self._done)
        done, _ = await asyncio.wait((fut,), timeout=budget)
        if not done:
            return self._count("timeout")  # its thread finishes behind, still in ``pending``
        try:
            found = fut.result()
        except socket.gaierror as e:
            return self._count("notfound" if e.errno in _NOT_FOUND else "error")
        except (OSError, UnicodeError, ValueError):
            return self._count("error")
        if not found:
            return self._count("notfound")
        self.stats.inc("nss_lookups", "answered")
        answers = [wire.rr(wire.POINTER_TO_QNAME, q.qtype, self.ttl, a) for a in found]
        reply = compose.build_reply(q, wire.NOERROR, answers, opt_size=self.opt_size)
        return Resolved(reply, SOURCE, self.ttl)

    def _lookup(self, name: str, family: int) -> list[bytes]:
        """In a pool thread. No AI_ADDRCONFIG (a loopback-only host still gets its
        addresses), no canonical name; SOCK_STREAM so that each address comes once."""
        return addresses(self.getaddrinfo(name, None, family, socket.SOCK_STREAM), family)

    def _done(self, fut: asyncio.Future[list[bytes]]) -> None:
        self.pending -= 1
        if not fut.cancelled():
            fut.exception()  # retrieved: a lookup past its deadline has no reader

    def _count(self, outcome: str) -> Resolved | None:
        """Count a lookup that gave no answer; None, the hook's "keep the DNS answer"."""
        self.stats.inc("nss_lookups", outcome)
        return None

    def close(self) -> None:
        """The worker stops: drop queued lookups; running ones end in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def start_nss(
    config: Config, loop: asyncio.AbstractEventLoop, stats: WorkerStats
) -> NssResolver | None:
    """The NSS hook for this worker per ``fastdns.native.nss``, or None (off, nothing to ask,
    or not glibc). Configures glibc's ``hosts`` sources for the whole process."""
    mode, path = config.native.nss, config.native.nsswitch
    if mode == "off" or not config.enabled:
        return None
    # auto: no source that would send DNS to servers other than fastdns's own upstreams.
    system_resolver = os.path.realpath(config.resolv_conf) == os.path.realpath(SYSTEM_RESOLV)
    line = read_sources(
        path, missing_ok=mode == "auto", resolver_users=mode == "on" or system_resolver
    )
    if not line:
        if mode == "on":
            logger.warning(
                "fastdns.native.nss is on, but the hosts: line of %s names no source beyond "
                "files, dns and resolve: NSS lookups are off",
                path,
            )
        return None
    problem = configure_glibc(line)
    if problem is not None:
        (logger.error if mode == "on" else logger.warning)("%s: NSS lookups are off", problem)
        return None
    logger.info("NSS sources for A/AAAA (from %s): %s", path, line)
    return NssResolver(config, loop, stats)
