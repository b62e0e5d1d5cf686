"""Riding out a config file caught half rewritten (resolv.conf, the hosts file).

Editors and some VPN clients rewrite a file in place: truncate, then write a moment later (measured:
150 ms; docs/configuration.md, "Files rewritten in place"). A poll in between reads an empty file.
Acting on it at once meant "no usable nameserver" (SERVFAIL for every forwarded query) or an empty
hosts table (NXDOMAIN from upstream for hosts-file names), plus a cache flush, for a file that was
about to be the same as before. ``GraceHold`` keeps the last good contents through such a read for
``FILE_GRACE`` seconds; a file still empty or unreadable after that is acted on as before (a real
"no nameserver", a hosts file really emptied). Atomic replacement (write a temporary file, rename it
over) never shows an empty file and never waits.

Pure: the caller reads the file and passes a clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Seconds an empty or unreadable file is taken to be half written. Longer than an in-place
# rewrite takes (truncate + write: milliseconds, 150 ms measured) plus one poll interval
# (fastdns.worker.TICK, 1 s), short enough that a file really emptied is acted on within
# seconds: a change is picked up within GRACE + TICK, at most 4 s.
FILE_GRACE = 3.0


class GraceHold:
    """Decides, for each new read of one file, whether to act on it or keep the last good one.

    ``check(usable)`` is called with every read; ``holding`` says the caller must read the file
    again at its next poll even if it looks unchanged (the grace may run out meanwhile). A
    held read is logged once (not once per poll); giving up and recovering once each too.
    """

    def __init__(
        self,
        path: str,
        what: str,
        *,
        grace: float = FILE_GRACE,
        clock: Callable[[], float] = time.monotonic,
        log: bool = True,
    ) -> None:
        self.path = path
        self.what = what  # what the last good contents were, for the log: "nameservers"
        self.grace = grace
        self.clock = clock
        self.log = log
        self._good = False  # a usable read has been acted on
        self._since: float | None = None  # the first unusable read of this episode
        self._gave_up = False  # the episode outlasted the grace: acted on

    @property
    def holding(self) -> bool:
        """An unusable read is being held back: read again at the next poll."""
        return self._since is not None and not self._gave_up

    def check(self, usable: bool) -> bool:
        """True: act on this read. False: keep the last good contents (the read is held)."""
        if usable:
            if self._since is not None and self.log:
                logger.info("%s is usable again after %.1fs", self.path, self.clock() - self._since)
            self._good, self._since, self._gave_up = True, None, False
            return True
        if not self._good:
            return True  # nothing to keep (the first read, or already given up): as read
        now = self.clock()
        if self._since is None:
            self._since = now
            if self.log:
                logger.warning(
                    "%s is empty or unreadable (rewritten in place?): keeping its "
                    "previous %s for up to %gs",
                    self.path,
                    self.what,
                    self.grace,
                )
            return False
        if now - self._since < self.grace:
            return False
        self._gave_up, self._good = True, False
        if self.log:
            logger.warning(
                "%s is still empty or unreadable after %gs: using it as it is",
                self.path,
                self.grace,
            )
        return True
