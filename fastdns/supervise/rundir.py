"""The supervisor's private run directory (the metrics stats socket, the rules ports file).

It is ``$TMPDIR/fastdns-<pid>-XXXXXXXX`` (mode 0700), and the supervisor holds an exclusive
flock(2) on it for its whole life. The kernel drops that lock when the process dies, even by
SIGKILL, so the next start can tell a directory left by a killed supervisor (lock free, pid
gone) from a live instance's (lock held) without trusting a pid file alone: pids are reused,
and a supervisor in another pid namespace may share the same /tmp.

Standard library only: the supervisor imports this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Collection

logger = logging.getLogger(__name__)

PREFIX = "fastdns-"
# mkdtemp's suffix: 8 characters of [a-z0-9_]. Nothing else in the temp dir is ever ours.
_NAME = re.compile(r"fastdns-([1-9][0-9]{0,9})-[a-z0-9_]{8}\Z")
_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunDir:
    """A fresh run directory, locked by this process until ``remove``."""

    def __init__(self, parent: str | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)
        self.fd = os.open(self.path, _OPEN_FLAGS)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else holds it

    def chown(self, uid: int, gid: int) -> None:
        os.chown(self.fd, uid, gid)

    def remove(self) -> None:
        """Delete the directory, then let go of the lock (a cleaner then finds nothing)."""
        if self.fd < 0:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.fd)
        self.fd = -1


def remove_stale(parent: str | None = None, owners: Collection[int] = ()) -> list[str]:
    """Remove the run directories of dead supervisors in ``parent`` (the temp dir); return them.

    Only directories named like ours, owned by a uid in ``owners`` (default: ours), not a
    symlink, whose lock nobody holds and whose creator pid is gone or no fastdns any more.
    """
    parent = parent or tempfile.gettempdir()
    owners = set(owners) or {os.geteuid()}
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError as e:
        logger.debug("cannot list %s: %s", parent, e)
        return removed
    for entry in entries:
        match = _NAME.match(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners:
            continue
        if _is_stale(entry.path, int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
            logger.info(
                "removed %s, left by a supervisor (pid %s) that is gone", entry.path, match.group(1)
            )
            removed.append(entry.path)
    return removed


def _is_stale(path: str, pid: int) -> bool:
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: a live supervisor's
        # Unlocked. Its creator may still be between mkdtemp and flock: only a pid that is
        # gone, or that is no fastdns any more, makes it stale.
        return not _fastdns_alive(pid)
    finally:
        os.close(fd)


def _fastdns_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's: leave it
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return not os.path.isdir("/proc/self")  # no /proc to look in: assume it is ours
    return b"fastdns" in cmdline


def close_in_child(rundir: RunDir | None) -> None:
    """A forked child drops its copy of the lock fd (the lock stays the supervisor's)."""
    if rundir is not None and rundir.fd >= 0:
        with contextlib.suppress(OSError):
            os.close(rundir.fd)
        rundir.fd = -1
