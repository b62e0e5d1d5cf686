"""Ready replies per exact query form: the UDP cache-hit fast lane.

A stub resolver (and dnsperf) repeats the same query bytes with a new ID each time. Once a
query form, the bytes after the ID, has been answered from the cache, its whole reply but the
ID is kept here until the second in which its TTLs change (or prefetch or expiry is due). The
compiled datapath's copy (``mirror``) counts the TTLs down itself: it gets where they sit and
keeps a form until prefetch or expiry is due (``end``). The
next query with those bytes is then answered with one dict lookup and one join, in the
datagram callback, without parsing: equal bytes parse equally, so the reply made for the first
is right for every later one. CPU per hit is what decides a cache's capacity (docs/cache.md,
"Cost and memory").

Per-hit accounting is two plain increments on the form; ``ServerState.flush_fronts`` folds them
into the worker's stats once a tick, before each snapshot. Forms that are replaced, evicted or
cleared with counts not yet folded wait in ``retired`` for that flush, so no hit goes uncounted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from fastdns.dns import wire

# Forms kept per worker: the hot set. Each costs about 400 bytes; past this many distinct hot
# forms the oldest one's next hit takes the slower path (parse, render: about 3 us more).
CAPACITY = 8192
# A hit measured at or under this many seconds falls in the first bucket of the duration
# histogram (stats.TIME_BUCKETS[0]); longer ones are observed one by one.
FIRST_BUCKET = 0.00025


class Front:
    """One query form's reply without its first two bytes, valid while ``now < until``.

    With its TTLs counted down (the compiled datapath: ``ttl_fields``), valid while
    ``now < end``: ``body`` shows the TTLs at age ``stamp``, ``ttls`` are the rendered
    Form's (offset after the question, TTL at age 0) pairs, ``base`` where that part starts."""

    __slots__ = (
        "base",
        "body",
        "dur",
        "end",
        "entry",
        "first",
        "last",
        "late",
        "n",
        "q",
        "stamp",
        "stored",
        "ttls",
        "until",
    )

    def __init__(
        self,
        q: wire.Query,
        entry: Any,
        body: bytes,
        until: float,
        end: float | None = None,
        stored: float = 0.0,
        stamp: int = 0,
        ttls: tuple[int, ...] | None = None,
        base: int = 0,
    ) -> None:
        self.q = q  # the parsed query these bytes stand for
        self.entry = entry  # the cache entry rendered (its hit count takes ours at a flush)
        self.body = body
        self.until = until
        self.end = until if end is None or ttls is None else end
        self.stored = stored  # the entry's: the age is whole seconds since
        self.stamp = stamp
        self.ttls = ttls  # None: no countdown (valid until ``until`` only)
        self.base = base
        self.n = 0  # hits answered within FIRST_BUCKET since the last flush
        self.dur = 0.0  # their summed duration
        self.late = 0  # hits answered slower (their durations were observed one by one)
        self.first = 0.0  # when the first and last hits counted elsewhere were read (0: unknown)
        self.last = 0.0

    def ttl_fields(self) -> tuple[int, ...] | None:
        """(offset in ``body``, TTL at age 0) pairs, or None when there is no countdown (or
        a field would not lie inside the body: then the form lives until ``until``)."""
        ttls, base, size = self.ttls, self.base, len(self.body)
        if ttls is None:
            return None
        out = tuple(v + base if i % 2 == 0 else v for i, v in enumerate(ttls))
        if any(out[i] + 4 > size or out[i] < 0 for i in range(0, len(out), 2)):
            return None
        return out


# A form whose TTLs a mirror counts down goes back through ``PacketCache.renew`` at least this
# often even when its entry lives longer.
FORM_LIFE = 300.0


def counted_down(
    q: wire.Query, e: Any, reply: bytes, until: float, now: float, ttls: tuple[int, ...]
) -> Front:
    """The Front for ``reply`` to ``q`` from the cache entry ``e`` (``stored``, ``ttl``,
    ``prefetch_at``), rendered now with the Form whose TTL pairs are ``ttls``: valid for the
    Python fast lane until ``until``, for a mirror that counts its TTLs down until prefetch
    or expiry is due (or FORM_LIFE)."""
    end = e.stored + e.ttl
    if end > e.prefetch_at:
        end = e.prefetch_at
    if end > now + FORM_LIFE:
        end = now + FORM_LIFE
    age = int(now - e.stored)
    # the rendered Form's body follows the header and the question in the reply
    return Front(q, e, reply[2:], until, end, e.stored, age, ttls, q.qend - 2)


class FormMirror(Protocol):
    """A copy of the table kept elsewhere (the compiled datapath's, fastdns/serve/cdatapath.py):
    told every install, drop, eviction and clear; this table stays the one that decides."""

    def install(
        self,
        form: bytes,
        body: bytes,
        until: float,
        token: Front,
        stored: float,
        stamp: int,
        ttls: tuple[int, ...],
        /,
    ) -> object: ...

    def drop(self, form: bytes, /) -> object: ...

    def clear(self) -> object: ...


class FrontTable:
    """Forms in insertion order, bounded; the oldest goes first."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.forms: OrderedDict[bytes, Front] = OrderedDict()
        self.retired: list[Front] = []
        self.mirror: FormMirror | None = None

    def __len__(self) -> int:
        return len(self.forms)

    def install(self, form: bytes, front: Front) -> None:
        forms = self.forms
        old = forms.pop(form, None)
        if old is not None and (old.n or old.late):
            self.retired.append(old)
        forms[form] = front
        mirror = self.mirror
        if mirror is not None:
            self.mirror_install(form, front)
        if len(forms) > self.capacity:
            gone_form, gone = forms.popitem(last=False)
            if mirror is not None:
                mirror.drop(gone_form)
            if gone.n or gone.late:
                self.retired.append(gone)

    def mirror_install(self, form: bytes, front: Front) -> None:
        """Tell the mirror: with the TTL countdown when ``front`` has one, else until
        ``until``."""
        if self.mirror is None:
            return
        fields = front.ttl_fields()
        if fields is None:
            self.mirror.install(form, front.body, front.until, front, 0.0, 0, ())
        else:
            self.mirror.install(
                form, front.body, front.end, front, front.stored, front.stamp, fields
            )

    def discard(self, front: Front) -> None:
        """Drop ``front`` if it is still the one kept for its form."""
        form = front.q.wire[2:]
        if self.forms.get(form) is front:
            self.drop(form)

    def drop(self, form: bytes) -> None:
        old = self.forms.pop(form, None)
        if self.mirror is not None:
            self.mirror.drop(form)
        if old is not None and (old.n or old.late):
            self.retired.append(old)

    def clear(self) -> None:
        """Forget every form (in place: the UDP server holds ``forms``)."""
        self.retired.extend(f for f in self.forms.values() if f.n or f.late)
        self.forms.clear()
        if self.mirror is not None:
            self.mirror.clear()

    def retire(self, front: Front) -> None:
        """``front`` gets hits counted elsewhere (the compiled datapath's fold): keep it for the
        next fold when it is no longer in the table and not kept already (no counts yet)."""
        if not (front.n or front.late) and self.forms.get(front.q.wire[2:]) is not front:
            self.retired.append(front)

    def counted(self) -> Iterator[Front]:
        """Every form with hits not yet folded into the stats, retired ones first; the caller
        folds and zeroes each."""
        retired, self.retired = self.retired, []
        yield from retired
        for f in self.forms.values():
            if f.n or f.late:
                yield f
