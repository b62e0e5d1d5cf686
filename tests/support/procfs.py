"""Looking at fastdns's processes from outside, through /proc: titles, threads, mapped
libraries, credentials and which process holds which listening socket."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any


def cmdline(pid: int) -> str:
    """The process title as ``ps`` shows it (setproctitle rewrites argv)."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    raise KeyError(name)


def threads(pid: int) -> int:
    return int(status_field(pid, "Threads"))


def uids(pid: int) -> tuple[int, ...]:
    """(real, effective, saved, filesystem) uid."""
    return tuple(int(x) for x in status_field(pid, "Uid").split())


def mapped_files(pid: int) -> set[str]:
    """Paths of the files (shared libraries, extension modules) mapped into ``pid``."""
    paths = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                paths.add(parts[5].strip())
    return paths


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, ppid, process group) of every process that is not a zombie."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()  # state, ppid, pgrp, ...
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[0] != b"Z":
            yield int(entry.name), int(fields[1]), int(fields[2])


def children(pid: int) -> list[int]:
    return sorted(p for p, ppid, _ in live_processes() if ppid == pid)


def children_titled(pid: int) -> dict[int, str]:
    """The children of ``pid`` and their titles, without those that exit between the listing
    and the read (a child just killed and reaped: its /proc entry is gone)."""
    titled = {}
    for p in children(pid):
        try:
            titled[p] = cmdline(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return titled


def socket_inodes(pid: int) -> set[int]:
    """Inodes of every socket ``pid`` holds an fd to."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def bound_sockets(proto: str, port: int) -> set[int]:
    """Inodes of the UDP sockets bound to ``port`` (or TCP sockets listening on it), IPv4+6."""
    inodes = set()
    for table in (f"/proc/net/{proto}", f"/proc/net/{proto}6"):
        try:
            with open(table, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port != port:
                continue
            if proto == "tcp" and fields[3] != "0A":  # LISTEN
                continue
            if proto == "udp" and remote_port != 0:  # connected: left the reuseport group
                continue
            inodes.add(int(fields[9]))
    return inodes


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` passes
    (then the last false value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
