"""The ``hosts:`` line of nsswitch.conf, and the part of it fastdns may hand to the C library.

Pure: text in, text out. nsswitch.conf(5): ``hosts: files mdns4_minimal [NOTFOUND=return] dns``
is a list of sources, each followed by optional ``[STATUS=ACTION ...]`` groups that act on that
source's result. fastdns answers ``files`` (its own configured hosts file) and ``dns`` (its own
upstreams) itself; ``resolve`` (systemd-resolved) sends unicast DNS to the host's servers too.
The rest (``myhostname``, ``mdns4_minimal``, ``libvirt``, ``mymachines``...) is what the C
library knows and c-ares does not: ``nss_line`` keeps exactly that, with each kept source's
action groups, so that the line handed to glibc can never reach the system's DNS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastdns.errors import FastDNSError

# Sources fastdns never hands to the C library: it answers these itself (files: its configured
# hosts file; dns: its upstreams), and dns and resolve would send DNS to the host's resolvers
# (glibc's dns source reads /etc/resolv.conf, which fastdns must never use behind its back).
OWN_SOURCES = frozenset(("files", "dns", "resolve"))

# Sources that send unicast DNS themselves, to the servers of /etc/resolv.conf: nss-mdns asks
# them for ``local. SOA`` before a .local lookup (its "unicast SOA heuristic"; always in the
# _minimal variants, which ignore /etc/mdns.allow).
RESOLVER_USERS = frozenset(
    ("mdns", "mdns4", "mdns6", "mdns_minimal", "mdns4_minimal", "mdns6_minimal")
)

_SERVICE = re.compile(r"[A-Za-z0-9_.+-]+")
_ACTION = re.compile(r"!?[A-Za-z]+=[A-Za-z]+")


class NsswitchError(FastDNSError, ValueError):
    """A ``hosts:`` line that cannot be parsed (an unclosed ``[``, a stray character)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One source of the ``hosts:`` line with its action groups, as written."""

    name: str
    actions: tuple[str, ...] = ()  # each one "[...]" group, normalised to single spaces

    def text(self) -> str:
        return " ".join((self.name, *self.actions))


def hosts_line(text: str) -> str | None:
    """The value of the first ``hosts:`` line of an nsswitch.conf (comments removed), or None
    when the file has none (glibc then uses its built-in default)."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        db, sep, value = line.partition(":")
        if sep and db.strip().lower() == "hosts":
            return value.strip()
    return None


def parse_sources(value: str) -> tuple[Source, ...]:
    """The sources of a ``hosts:`` value, in order; NsswitchError when it is malformed."""
    sources: list[Source] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c.isspace():
            i += 1
            continue
        if c == "[":
            end = value.find("]", i)
            if end < 0:
                raise NsswitchError(f"unclosed '[' in {value!r}")
            items = value[i + 1 : end].split()
            if not sources or not items or not all(_ACTION.fullmatch(a) for a in items):
                raise NsswitchError(f"bad action group {value[i : end + 1]!r} in {value!r}")
            last = sources[-1]
            group = "[" + " ".join(items) + "]"
            sources[-1] = Source(last.name, (*last.actions, group))
            i = end + 1
            continue
        m = _SERVICE.match(value, i)
        if m is None:
            raise NsswitchError(f"unexpected {c!r} in {value!r}")
        sources.append(Source(m.group(0)))
        i = m.end()
    return tuple(sources)


def nss_line(value: str, *, resolver_users: bool = True) -> str:
    """The ``hosts:`` value without the sources fastdns answers itself (``OWN_SOURCES``) and
    their action groups: what glibc may be told to use. "" when nothing is left.
    ``resolver_users`` False: without ``RESOLVER_USERS`` too."""
    drop = OWN_SOURCES if resolver_users else OWN_SOURCES | RESOLVER_USERS
    kept = [s.text() for s in parse_sources(value) if s.name.lower() not in drop]
    return " ".join(kept)
