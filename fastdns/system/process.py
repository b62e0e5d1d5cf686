"""What every forked fastdns process does to itself: title, log prefix, signals, parent-death
signal, privileges.

Standard library (plus setproctitle) only: the supervisor imports this module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import signal
import sys
from dataclasses import dataclass

from fastdns.errors import BootError

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Signals a child must not inherit from the supervisor. A worker that kept SIG_DFL for HUP,
# TTIN or TTOU would die or stop when someone signals the whole process group, so those are
# ignored; INT belongs to the supervisor (a terminal's Ctrl+C reaches every process in the
# group, and the supervisor then stops the children in order).
CHILD_IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)
CHILD_DEFAULT = (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD, signal.SIGUSR1)


def set_role(role: str) -> None:
    """``ps`` shows ``fastdns: <role>``; log lines start with ``fastdns-<role>[pid]``."""
    try:
        from setproctitle import setproctitle
    except ImportError:  # pragma: no cover - a dependency; titles are cosmetic
        pass
    else:
        setproctitle(f"fastdns: {role}")
    prefix = "fastdns" if role == "supervisor" else "fastdns-" + role.replace(" ", "")
    formatter = logging.Formatter(LOG_FORMAT.format(role=prefix))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


def reset_child_signals() -> None:
    """Drop the supervisor's handlers in a freshly forked child (gunicorn init_signals)."""
    signal.set_wakeup_fd(-1)
    for sig in CHILD_IGNORED:
        signal.signal(sig, signal.SIG_IGN)
    for sig in CHILD_DEFAULT:
        signal.signal(sig, signal.SIG_DFL)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` when the parent dies; False if it is already gone.

    Call it after any change of uid/gid: the kernel clears the setting on a credential change
    (prctl(2)). The getppid check closes the race with a parent that died before the prctl.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
                logger.warning(
                    "prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno())
                )
        except (OSError, AttributeError):
            logger.warning("prctl is not available: children may outlive a killed supervisor")
    return os.getppid() == parent_pid


@dataclass(frozen=True, slots=True)
class Credentials:
    """Whom children drop to after binding (``fastdns.user``)."""

    name: str
    uid: int
    gid: int


def resolve_user(name: str) -> Credentials | None:
    """The credentials to drop to, or None when there is nothing to drop.

    Raises ``BootError`` for an unknown user. Without root there is nothing to drop to: if the
    user is another one, that is logged and ignored (the process already is unprivileged).
    """
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        # The user is the operator's to create (deploy/systemd/fastdns.sysusers does it).
        raise BootError(
            f"fastdns.user: no such user {name!r}: create it with `useradd --system "
            f"--no-create-home --shell /usr/sbin/nologin {name}` (or systemd-sysusers "
            "with deploy/systemd/fastdns.sysusers), or remove fastdns.user to run "
            "the workers as root"
        ) from None
    if os.geteuid() != 0:
        if entry.pw_uid != os.geteuid():
            logger.warning(
                "fastdns.user is %r but fastdns does not run as root: staying uid %d",
                name,
                os.geteuid(),
            )
        return None
    return Credentials(name, entry.pw_uid, entry.pw_gid)


def drop_privileges(creds: Credentials) -> None:
    """setgroups/setgid/setuid to ``creds`` for good; ``BootError`` when the kernel refuses."""
    try:
        os.initgroups(creds.name, creds.gid)
        os.setgid(creds.gid)
        os.setuid(creds.uid)
    except OSError as e:
        raise BootError(
            f"cannot drop privileges to user {creds.name!r} (uid {creds.uid}): {e.strerror or e}"
        ) from e
    if os.getuid() != creds.uid or os.geteuid() != creds.uid:  # pragma: no cover - paranoia
        raise BootError(f"still uid {os.geteuid()} after dropping to {creds.name!r}")
