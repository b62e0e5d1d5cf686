"""macOS-style resolver directories (``fastdns.forward.resolver_dir``; resolver(5)).

Each regular file is one route: its name is the domain (``/etc/resolver/corp.example``), its
lines are ``nameserver IP`` (up to MAX_NAMESERVERS, in order), ``port N`` (for all of them),
``domain NAME`` (overrides the file name), ``search_order N`` (among files for the same
domain, the lowest wins, then the file name) and ``timeout SECONDS`` (per attempt). Other
keys (``search``, ``options``, ``sortlist``) are read and ignored, as macOS does for what it
does not use; ``#`` starts a comment.

A file that cannot be used (no nameserver, a bad address, a bad number, a file name that is no
domain) is warned about once per version of the file and skipped. A file that was good and now
reads empty or unreadable (rewritten in place) keeps its last good contents for
``FILE_GRACE`` seconds first (fastdns/system/files.py): a routed name is never sent to the
default upstreams because a VPN client was in the middle of rewriting its file.

``parse_resolver_file`` is pure; ``ResolverDir`` reads the directory when asked (the worker's
tick, fastdns/serve/worker.py), never blocking on more than MAX_FILES small files.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Callable

from fastdns.config.routes import parse_server, parse_suffix
from fastdns.config.schema import RouteConfig, RouteServer
from fastdns.system.files import FILE_GRACE

__all__ = ["DEFAULT_SEARCH_ORDER", "MAX_FILES", "ResolverDir", "parse_resolver_file"]

logger = logging.getLogger(__name__)

MAX_FILES = 256  # files read per directory; more are warned about and left out
MAX_BYTES = 64 * 1024  # a resolver file is a few lines; a bigger one is not one
MAX_NAMESERVERS = 16
DEFAULT_SEARCH_ORDER = 100000  # resolver(5): files without search_order sort after the rest

Stamp = tuple[int, int, int]  # (mtime_ns, size, inode)


def parse_resolver_file(
    filename: str, text: str, origin: str = ""
) -> tuple[RouteConfig | None, int, str]:
    """(the route, its search_order, "") or (None, 0, why the file is skipped)."""
    addrs: list[str] = []
    port = 53
    domain = filename
    order = DEFAULT_SEARCH_ORDER
    timeout: float | None = None
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        key, args = fields[0].lower(), fields[1:]
        if key not in ("nameserver", "port", "domain", "search_order", "timeout"):
            continue
        if len(args) != 1:
            return None, 0, f"line {n}: {key} takes one value"
        value = args[0]
        if key == "nameserver":
            addrs.append(value)
        elif key == "domain":
            domain = value
        elif key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                timeout = math.nan
            if not (math.isfinite(timeout) and 0.01 <= timeout <= 30):
                return None, 0, f"line {n}: timeout must be 0.01-30 seconds, got {value!r}"
        elif not value.isdigit():
            return None, 0, f"line {n}: {key} must be a number, got {value!r}"
        elif key == "port":
            port = int(value)
            if not 0 < port <= 65535:
                return None, 0, f"line {n}: bad port {value!r}"
        else:
            order = int(value)
    suffix, problem = parse_suffix(domain)
    if problem:
        return None, 0, f"the domain (file name or domain line): {problem}"
    if not addrs:
        return None, 0, "no nameserver line"
    if len(addrs) > MAX_NAMESERVERS:
        return None, 0, f"more than {MAX_NAMESERVERS} nameservers"
    servers: list[RouteServer] = []
    for a in addrs:
        server = parse_server(a)
        if isinstance(server, str) or a.count(":") == 1 or "://" in a or a.startswith("["):
            return None, 0, f"nameserver {a!r}: not an IP address (the port is a port line)"
        servers.append(RouteServer(server.host, port))
    return RouteConfig((suffix,), tuple(servers), "", timeout, origin or filename), order, ""


class ResolverDir:
    """The routes of one resolver directory, read again when its files change."""

    def __init__(
        self, path: str, *, log: bool = True, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.log = log
        self.clock = clock
        self._stamps: dict[str, Stamp] | None = None
        self._good: dict[str, tuple[RouteConfig, int]] = {}  # file -> last good route, order
        self._bad_since: dict[str, float] = {}  # good files now read empty: since when
        self._warned: set[tuple[str, Stamp, str]] = set()
        self.routes: tuple[RouteConfig, ...] = ()

    @property
    def holding(self) -> bool:
        """A good file reads empty now: read again at the next poll (the grace may end)."""
        return bool(self._bad_since)

    def _scan(self) -> dict[str, Stamp]:
        stamps: dict[str, Stamp] = {}
        try:
            entries = sorted(os.scandir(self.path), key=lambda e: e.name)
        except OSError:
            return stamps
        for e in entries:
            if e.name.startswith("."):
                continue  # editors' and installers' temporary files
            try:
                st = e.stat()
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if len(stamps) >= MAX_FILES:
                self._warn(e.name, (0, 0, 0), f"more than {MAX_FILES} files: the rest are ignored")
                break
            stamps[e.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stamps

    def refresh(self) -> bool:
        """Read the directory again if a file came, went or changed (or one is held);
        True when ``routes`` changed."""
        stamps = self._scan()
        if stamps == self._stamps and not self._bad_since:
            return False
        self._stamps = stamps
        now = self.clock()
        chosen: dict[str, tuple[int, str, RouteConfig]] = {}
        for name, stamp in stamps.items():
            route, order = self._read(name, stamp, now)
            if route is None:
                continue
            domain = route.domains[0]
            old = chosen.get(domain)
            if old is None or (order, name) < (old[0], old[1]):
                chosen[domain] = (order, name, route)
        for name in list(self._good):
            if name not in stamps:  # removed: its route goes at once
                del self._good[name]
                self._bad_since.pop(name, None)
        routes = tuple(r for _, _, r in sorted(chosen.values(), key=lambda c: (c[0], c[1])))
        if routes == self.routes:
            return False
        self.routes = routes
        return True

    def _read(self, name: str, stamp: Stamp, now: float) -> tuple[RouteConfig | None, int]:
        path = os.path.join(self.path, name)
        text: str | None = None
        if stamp[1] > MAX_BYTES:
            problem = f"larger than {MAX_BYTES} bytes"
        else:
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read(MAX_BYTES + 1)
            except OSError as e:
                problem = f"cannot read: {e.strerror or e}"
        if text is not None:
            route, order, problem = parse_resolver_file(name, text, path)
            if route is not None:
                self._good[name] = (route, order)
                self._bad_since.pop(name, None)
                return route, order
        held = self._good.get(name)
        if held is not None and not (text or "").strip():
            since = self._bad_since.setdefault(name, now)
            if now - since < FILE_GRACE:
                return held  # half rewritten, most likely: keep the last good contents
        self._good.pop(name, None)
        self._bad_since.pop(name, None)
        self._warn(name, stamp, problem)
        return None, 0

    def _warn(self, name: str, stamp: Stamp, problem: str) -> None:
        key = (name, stamp, problem)
        if key in self._warned:
            return
        if len(self._warned) > 4 * MAX_FILES:
            self._warned.clear()
        self._warned.add(key)
        if self.log:
            logger.warning(
                "resolver_dir %s: skipping %s: %s",
                self.path,
                os.path.join(self.path, name),
                problem,
            )
