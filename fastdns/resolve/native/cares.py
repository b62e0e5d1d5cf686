"""pycares 5 (c-ares) driven by an asyncio loop: one Channel per ``AresDriver``.

Socket-state callbacks feed ``loop.add_reader``/``add_writer``, and one timer is armed from
``channel.timeout()`` (measured 1.5-2x faster than c-ares' own event thread, and callbacks
run on the loop thread; docs/answering.md, "Deadlines, concurrency, reloads"). No thread per
query. Also home of the workaround for pycares' string options (``make_channel``).

Import this only in a serving process: the first ``Channel`` starts pycares' shutdown thread,
and a channel made before ``fork()`` hangs in the child (tests/unit/test_layers.py). Nothing
here runs at import time.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pycares

from fastdns.errors import FastDNSError

# c-ares ares.h getaddrinfo flags that pycares does not export.
AI_NOSORT = 1 << 7  # keep DNS order: RFC 6724 sorting would connect() a socket per address
AI_ENVHOSTS = 1 << 8  # read the hosts file named by $CARES_HOSTS (pycares has no hosts_path)
GAI_FLAGS = AI_NOSORT | AI_ENVHOSTS
E = pycares.errno

Outcome = tuple[Any, int | None]  # (pycares result or None, c-ares status or None)
TIMER_MAX = 0.25  # seconds: c-ares' smallest per-try timeout (see AresDriver._rearm)


class _KeepAliveFFI:
    """Delegates to pycares' cffi ``FFI`` but keeps every ``new()`` buffer referenced.

    pycares 5.2.1 writes ``options.lookups = _ffi.new(...)`` and the same for
    ``resolvconf_path``: the temporary buffer is freed as soon as it is stored, before
    ``ares_init_options`` copies it. Measured here: 200 of 200 channels made with
    ``resolvconf_path`` ignored the file and used c-ares' default 127.0.0.1, and a garbage
    ``lookups`` made every getaddrinfo fail with ECONNREFUSED. Kept alive, 200 of 200 read it.
    """

    def __init__(self, ffi: Any) -> None:
        self._ffi = ffi
        self.kept: list[Any] = []

    def new(self, *args: Any, **kwargs: Any) -> Any:
        obj = self._ffi.new(*args, **kwargs)
        self.kept.append(obj)
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ffi, name)


class QueryCacheUnsupported(FastDNSError, RuntimeError):
    """``make_channel(qcache_max_ttl=...)`` on a pycares or c-ares (< 1.23) without the option."""


class _QueryCacheLib:
    """Delegates to pycares' cffi ``lib`` but adds c-ares' query-cache option to
    ``ares_init_options``: pycares 5.2 has the ``qcache_max_ttl`` field in its
    ``struct ares_options`` but neither a keyword for it nor the ``ARES_OPT_QUERY_CACHE`` bit."""

    def __init__(self, lib: Any, max_ttl: int) -> None:
        self._lib = lib
        self._max_ttl = max_ttl

    def ares_init_options(self, channel: Any, options: Any, optmask: int) -> int:
        options.qcache_max_ttl = self._max_ttl
        return int(self._lib.ares_init_options(channel, options, optmask | ARES_OPT_QUERY_CACHE))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lib, name)


# c-ares ares.h (1.23+): ``#define ARES_OPT_QUERY_CACHE (1 << 21)``, between
# ARES_OPT_MAXTIMEOUTMS (1 << 20) and ARES_OPT_EVENT_THREAD (1 << 22), which pycares exports.
ARES_OPT_QUERY_CACHE = 1 << 21

_channel_lock = threading.Lock()


def make_channel(*, qcache_max_ttl: int | None = None, **options: Any) -> pycares.Channel:
    """``pycares.Channel(**options)`` with string options that survive until c-ares reads them.

    ``qcache_max_ttl``: the longest time c-ares' own query cache keeps an answer (0 turns the
    cache off; None leaves c-ares' default, 3600 s). Raises ``RuntimeError`` when this pycares
    cannot set it: ``QueryCacheUnsupported`` (``query_cache_ttl`` reads back what the channel
    uses).
    """
    with _channel_lock:
        real = getattr(pycares, "_ffi", None)
        real_lib = getattr(pycares, "_lib", None)
        if qcache_max_ttl is not None:
            if real_lib is None or not _has_query_cache(real_lib, real):
                raise QueryCacheUnsupported("this pycares/c-ares cannot configure its query cache")
            setattr(pycares, "_lib", _QueryCacheLib(real_lib, qcache_max_ttl))  # noqa: B010
        try:
            if real is None:  # a pycares without the module-level FFI: nothing to work around
                return pycares.Channel(**options)
            setattr(pycares, "_ffi", _KeepAliveFFI(real))  # noqa: B010 (a private name)
            try:
                return pycares.Channel(**options)
            finally:
                setattr(pycares, "_ffi", real)  # noqa: B010
        finally:
            if real_lib is not None:
                setattr(pycares, "_lib", real_lib)  # noqa: B010


def _has_query_cache(lib: Any, ffi: Any) -> bool:
    """The bit is where ares.h puts it (checked against its neighbour) and the struct has the
    field: c-ares 1.23 or later."""
    if ffi is None or getattr(lib, "ARES_OPT_EVENT_THREAD", None) != ARES_OPT_QUERY_CACHE << 1:
        return False
    fields = {name for name, _ in ffi.typeof("struct ares_options").fields}
    return "qcache_max_ttl" in fields


def query_cache_ttl(channel: pycares.Channel) -> int | None:
    """The query cache's max TTL a channel runs with (c-ares ``ares_save_options``), or None
    when it was left at c-ares' default (or cannot be read)."""
    lib, ffi = getattr(pycares, "_lib", None), getattr(pycares, "_ffi", None)
    handle = getattr(channel, "_channel", None)
    if lib is None or ffi is None or handle is None or not hasattr(lib, "ares_save_options"):
        return None
    options = ffi.new("struct ares_options *")
    mask = ffi.new("int *")
    if lib.ares_save_options(handle[0], options, mask) != lib.ARES_SUCCESS:
        return None
    try:
        return int(options.qcache_max_ttl) if mask[0] & ARES_OPT_QUERY_CACHE else None
    finally:
        lib.ares_destroy_options(options)


@dataclass
class TXTStrings(pycares.TXTRecordData):
    """pycares' TXT payload plus the record's strings as received (``data`` joins them)."""

    strings: tuple[bytes, ...] = ()


def keep_txt_strings() -> bool:
    """Make pycares' record parser keep each TXT record's strings; True when in place.

    pycares 5 joins a TXT record's <character-string>s into one ``bytes`` (``extract_record_
    data``), which loses what DNS-SD (RFC 6763 §6) and ``key=value`` records depend on. The
    wrapper reads the strings again from the same c-ares record (``ares_dns_rr_get_abin``) and
    returns a ``TXTStrings``; every other type goes through untouched. Idempotent.
    """
    from pycares import _cares

    lib, ffi = _cares.lib, _cares.ffi
    original: Callable[[Any, int], Any] = pycares.extract_record_data
    if getattr(original, "keeps_txt_strings", False):
        return True
    needed = (
        "ares_dns_rr_get_abin_cnt",
        "ares_dns_rr_get_abin",
        "ARES_RR_TXT_DATA",
        "ARES_REC_TYPE_TXT",
    )
    if not all(hasattr(lib, n) for n in needed):
        return False
    txt, key = lib.ARES_REC_TYPE_TXT, lib.ARES_RR_TXT_DATA

    def extract_record_data(rr: Any, record_type: int) -> Any:
        data = original(rr, record_type)
        if record_type != txt:
            return data
        length = ffi.new("size_t *")
        strings = []
        for i in range(lib.ares_dns_rr_get_abin_cnt(rr, key)):
            ptr = lib.ares_dns_rr_get_abin(rr, key, i, length)
            strings.append(ffi.buffer(ptr, length[0])[:] if ptr != ffi.NULL else b"")
        return TXTStrings(data=data.data, strings=tuple(strings))

    # A marker on the function (read back with getattr) that the patch is ours.
    extract_record_data.keeps_txt_strings = True  # type: ignore[attr-defined]
    pycares.extract_record_data = extract_record_data
    return True


class AresDriver:
    """One pycares Channel driven by one asyncio loop (sock_state_cb mode).

    Callbacks may arrive on other threads (``reinit()``/``close()`` internals): they are bounced
    to the loop with ``call_soon_threadsafe``. Futures are completed at most once and only if
    still pending. Results of cache hits, hosts-file hits and bad names arrive synchronously
    inside ``getaddrinfo()``/``search()``; nothing here starts a query from a callback.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, servers: list[str], **options: Any):
        self.loop = loop
        self._thread = threading.get_ident()
        self._fds: dict[int, tuple[bool, bool]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.pending = 0  # lookups c-ares still holds (including ones we stopped waiting for)
        self.closed = False
        self.on_idle: Callable[[AresDriver], None] | None = None
        self.channel = make_channel(sock_state_cb=self._sock_state_cb, **options)
        self.channel.servers = servers

    # -------------------------------------------------------------- loop integration

    def _sock_state_cb(self, fd: int, readable: bool, writable: bool) -> None:
        if threading.get_ident() != self._thread:
            self._bounce(self._sock_state_cb, fd, readable, writable)
            return
        if self.closed:
            return  # the fd number may already belong to another channel's socket
        r0, w0 = self._fds.get(fd, (False, False))
        if readable != r0:
            if readable:
                self.loop.add_reader(fd, self._on_read, fd)
            else:
                self.loop.remove_reader(fd)
        if writable != w0:
            if writable:
                self.loop.add_writer(fd, self._on_write, fd)
            else:
                self.loop.remove_writer(fd)
        if readable or writable:
            self._fds[fd] = (readable, writable)
        else:
            self._fds.pop(fd, None)
        self._rearm()

    def _bounce(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the loop thread; from pycares' shutdown thread the loop may be gone."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the channel is being destroyed with the process
            pass

    def _on_read(self, fd: int) -> None:
        if not self.closed:
            self.channel.process_read_fd(fd)
            self._rearm()

    def _on_write(self, fd: int) -> None:
        if not self.closed:
            self.channel.process_write_fd(fd)
            self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        if not self.closed:
            # Timeouts and retries (ARES_SOCKET_BAD twice = "no fd is ready, just check").
            self.channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
            self._rearm()

    def _rearm(self) -> None:
        """Keep one timer armed while work is pending, never more than TIMER_MAX away.

        Every deadline c-ares sets lies at least TIMER_MAX ahead (its per-try timeouts have a
        250 ms floor; ``native.channel_options`` never configures less), so an armed timer
        always fires before any deadline set since it was armed: it is left alone, and
        ``channel.timeout()`` (about 20 us through pycares) is not asked per query. When it
        fires, c-ares handles what is due and the timer is re-armed at the next deadline.
        """
        if self.closed or not (self._fds or self.pending):
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is None:
            # timeout(max) = min(max, next c-ares deadline); bare timeout() is 0.0 when idle.
            # pycares's Channel.timeout has no annotations.
            delay = max(float(self.channel.timeout(TIMER_MAX)), 0.001)  # type: ignore[no-untyped-call]
            self._timer = self.loop.call_later(delay, self._on_timer)

    # -------------------------------------------------------------- lookups

    def getaddrinfo(self, name: str, family: socket.AddressFamily) -> asyncio.Future[Outcome]:
        return self._submit(
            lambda cb: self.channel.getaddrinfo(
                name, None, family=family, flags=GAI_FLAGS, callback=cb
            )
        )

    def search(self, name: str, qtype: int) -> asyncio.Future[Outcome]:
        return self._submit(lambda cb: self.channel.search(name, qtype, callback=cb))

    def _submit(
        self, start: Callable[[Callable[[Any, int | None], None]], None]
    ) -> asyncio.Future[Outcome]:
        fut: asyncio.Future[Outcome] = self.loop.create_future()
        finished = False

        def finish(result: Any, status: int | None) -> None:  # on the loop thread
            nonlocal finished
            if finished:
                return  # EBADNAME is reported by callback *and* exception
            finished = True
            self.pending -= 1
            if not fut.done():  # we may have given up waiting (deadline) or been cancelled
                fut.set_result((result, status))
            if self.pending == 0 and self.on_idle is not None:
                self.loop.call_soon(self.on_idle, self)  # never close inside a c-ares callback

        def callback(result: Any, status: int | None) -> None:
            if threading.get_ident() != self._thread:
                self._bounce(finish, result, status)
            else:
                finish(result, status)

        self.pending += 1
        try:
            start(callback)
        except pycares.AresError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else E.ARES_EBADNAME
            finish(None, code)
        except (RuntimeError, ValueError, UnicodeError):  # closed channel; unencodable name
            finish(None, E.ARES_EBADNAME)
        self._rearm()  # a query on an already open socket changes no socket state
        return fut

    def close(self) -> None:
        """Cancel what is pending (callbacks run now, on this thread) and destroy the channel."""
        if self.closed:
            return
        try:
            self.channel.cancel()  # ECANCELLED + fd removals happen here, on the loop thread
        except RuntimeError:
            pass
        self.closed = True
        for fd, (readable, writable) in self._fds.items():
            if readable:
                self.loop.remove_reader(fd)
            if writable:
                self.loop.remove_writer(fd)
        self._fds.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.channel.close()
