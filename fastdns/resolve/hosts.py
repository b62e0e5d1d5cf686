"""Static names: Lima's ``hostResolver.hosts`` (with built-ins) and the host's hosts file.

Pure lookups over canonical names (lower case, no trailing dot). The pipeline turns a
``StaticAnswer`` into wire bytes; nothing here knows about sockets.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field

from fastdns.config.schema import canonical_name
from fastdns.dns import wire
from fastdns.system.files import GraceHold

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StaticAnswer:
    """What the static tables say about a question.

    kind: ``answer`` (``records`` are (rtype, rdata) owned by the query name), ``nodata``,
    ``alias`` (resolve ``target`` elsewhere and answer under the query name), ``servfail``
    (alias cycle).
    """

    kind: str
    records: tuple[tuple[int, bytes], ...] = ()
    target: str = ""


NODATA = StaticAnswer("nodata")
SERVFAIL = StaticAnswer("servfail")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_name(name: str) -> bool:
    """True when ``name`` can be written on the wire (labels 1-63 bytes, at most 255 in all)."""
    try:
        wire.name_to_wire(name)
    except ValueError:  # UnicodeError (IDNA) is a ValueError too
        return False
    return True


@dataclass
class StaticHosts:
    """``hostResolver.hosts``: exact names, ``*.suffix`` wildcards, aliases and reverse names."""

    ips: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    wild_ips: dict[str, str] = field(default_factory=dict)  # suffix -> ip, for "*.suffix"
    wild_aliases: dict[str, str] = field(default_factory=dict)
    reverse: dict[str, list[str]] = field(default_factory=dict)  # in-addr name -> names
    cycles: set[str] = field(default_factory=set)

    @classmethod
    def from_pairs(
        cls, pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]], *, log: bool = True
    ) -> StaticHosts:
        """The tables for ``pairs`` (later pairs win); alias cycles are logged unless ``log`` is
        false (``check-config`` prints ``cycle_warnings()`` itself)."""
        h = cls()
        for name, value in pairs:
            key = canonical_name(name)
            wild = key.startswith("*.")
            if wild:
                key = key[2:]
            if _is_ip(value):
                (h.wild_ips if wild else h.ips)[key] = value
                if not wild and _is_name(key):  # a PTR target must encode at query time
                    h.reverse.setdefault(canonical_name(wire.reverse_name(value)), []).append(key)
            else:
                (h.wild_aliases if wild else h.aliases)[key] = canonical_name(value)
        for key in h.aliases:
            if h._follow(key)[1]:
                h.cycles.add(key)
        if log:
            for warning in h.cycle_warnings():
                logger.warning("%s", warning)
        return h

    def cycle_warnings(self) -> list[str]:
        """One message per alias that ends in a cycle (docs/lima-differences.md: alias cycles)."""
        return [
            f"hostResolver.hosts.{key}: alias cycle; queries for it get SERVFAIL"
            for key in sorted(self.cycles)
        ]

    def __len__(self) -> int:
        return len(self.ips) + len(self.aliases) + len(self.wild_ips) + len(self.wild_aliases)

    def _entry(self, name: str) -> tuple[str, str] | None:
        """('ip', value) or ('alias', target) for ``name``; exact entries beat wildcards and
        the most specific wildcard wins; ``*.x`` does not match ``x`` itself."""
        if name in self.ips:
            return "ip", self.ips[name]
        if name in self.aliases:
            return "alias", self.aliases[name]
        if self.wild_ips or self.wild_aliases:
            rest = name
            while "." in rest:
                rest = rest.split(".", 1)[1]
                if rest in self.wild_ips:
                    return "ip", self.wild_ips[rest]
                if rest in self.wild_aliases:
                    return "alias", self.wild_aliases[rest]
        return None

    def _follow(self, name: str) -> tuple[str, bool, str | None]:
        """Follow aliases from ``name``: (last name, cycle?, ip or None)."""
        seen = {name}
        current = name
        while True:
            entry = self._entry(current)
            if entry is None:
                return current, False, None
            kind, value = entry
            if kind == "ip":
                return current, False, value
            if value in seen:
                return value, True, None
            seen.add(value)
            current = value

    def lookup(self, name: str, qtype: int, ipv6: bool) -> StaticAnswer | None:
        """The static verdict for (canonical ``name``, ``qtype``), or None when not static."""
        if qtype == wire.PTR and name in self.reverse:
            targets = self.reverse[name]
            return StaticAnswer("answer", tuple((wire.PTR, wire.name_to_wire(t)) for t in targets))
        entry = self._entry(name)
        if entry is None:
            return None
        final, cycle, ip = self._follow(name)
        if cycle:
            return SERVFAIL
        if qtype == wire.CNAME:
            if entry[0] == "alias":
                # Lima answers the final target of the chain, not the next hop.
                return StaticAnswer("answer", ((wire.CNAME, wire.name_to_wire(final)),))
            return NODATA  # no self-CNAME for a plain static host (Lima bf5d66dc)
        if qtype not in (wire.A, wire.AAAA):
            return NODATA  # RFC 8020: the name exists, never NXDOMAIN
        if ip is None:
            return StaticAnswer("alias", target=final)
        rtype, packed = wire.rdata_address(ip)
        if rtype != qtype or (rtype == wire.AAAA and not ipv6):
            return NODATA
        return StaticAnswer("answer", ((rtype, packed),))


def parse_hosts(lines: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """hosts(5) lines -> (name -> addresses, reverse name -> names), in file order."""
    names: dict[str, list[str]] = {}
    reverse: dict[str, list[str]] = {}
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not _is_ip(fields[0].split("%", 1)[0]):
            continue
        ip = fields[0]
        for n in fields[1:]:
            key = canonical_name(n)
            if not _is_name(key):
                continue  # e.g. "a..b": it could never be asked, and PTR could not encode it
            if ip not in names.setdefault(key, []):
                names[key].append(ip)
            rev = canonical_name(wire.reverse_name(ip))
            if key not in reverse.setdefault(rev, []):
                reverse[rev].append(key)
    return names, reverse


@dataclass
class HostsFile:
    """A hosts(5) file, re-read when its mtime, size or inode changes (checked by ``refresh``).

    An empty or unreadable read keeps the previous entries for a while (``hold``, see
    fastdns.files): a file rewritten in place is empty for a moment.
    """

    path: str
    names: dict[str, list[str]] = field(default_factory=dict)
    reverse: dict[str, list[str]] = field(default_factory=dict)
    hold: GraceHold | None = None
    _stamp: tuple[int, int, int] | None = None
    _loaded: bool = False  # a missing file (stamp None) must not look changed on every tick

    def __post_init__(self) -> None:
        if self.hold is None:
            self.hold = GraceHold(self.path, "entries")

    @property
    def hold_pending(self) -> bool:
        """An empty or unreadable read is being held: ``refresh`` soon."""
        return self.hold is not None and self.hold.holding

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the entries changed (a rewrite with the
        same entries is no change, and a held empty read neither)."""
        assert self.hold is not None
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = None
        if self._loaded and stamp == self._stamp and not self.hold.holding:
            return False
        first = not self._loaded
        self._stamp = stamp
        self._loaded = True
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except OSError:
            lines = []
        names, reverse = parse_hosts(lines)
        if not self.hold.check(bool(names)):
            return False
        if not first and names == self.names and reverse == self.reverse:
            return False
        self.names, self.reverse = names, reverse
        return True

    def lookup(self, name: str, qtype: int, ipv6: bool) -> StaticAnswer | None:
        """Addresses for A/AAAA and names for PTR; None when the file does not know."""
        if qtype == wire.PTR:
            targets = self.reverse.get(name)
            if not targets:
                return None
            return StaticAnswer("answer", tuple((wire.PTR, wire.name_to_wire(t)) for t in targets))
        if qtype not in (wire.A, wire.AAAA) or (qtype == wire.AAAA and not ipv6):
            return None
        ips = self.names.get(name)
        if not ips:
            return None
        records = []
        for ip in ips:
            rtype, packed = wire.rdata_address(ip)
            if rtype == qtype:
                records.append((rtype, packed))
        # Like glibc's "files dns": a name known only for the other family goes on to DNS.
        return StaticAnswer("answer", tuple(records)) if records else None
