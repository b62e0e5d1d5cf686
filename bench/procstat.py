"""CPU accounting from /proc: per process (``/proc/<pid>/stat``) and per CPU (``/proc/stat``).

Times are in clock ticks (``CLK_TCK``, usually 100 Hz): 10 ms resolution per process, well
under 1 % of a multi-second run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Proc:
    ppid: int
    comm: str
    utime: int
    stime: int
    start: int  # start time after boot, in ticks: tells a reused pid apart

    @property
    def ticks(self) -> int:
        return self.utime + self.stime


Snapshot = dict[int, Proc]


def read_proc(pid: int) -> Proc | None:
    """One process (all its threads); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            raw = fh.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    head, _, tail = raw.rpartition(")")
    f = tail.split()  # f[0] is field 3 (state); proc(5) field n is f[n - 3]
    return Proc(int(f[1]), head.partition("(")[2], int(f[11]), int(f[12]), int(f[19]))


def snapshot() -> Snapshot:
    """Every process visible in /proc."""
    out: Snapshot = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (p := read_proc(int(entry))) is not None:
            out[int(entry)] = p
    return out


def descendants(roots: Iterable[int], snap: Snapshot) -> set[int]:
    """``roots`` and every process below them (NSD and fastdns fork their workers)."""
    children: dict[int, list[int]] = {}
    for pid, p in snap.items():
        children.setdefault(p.ppid, []).append(pid)
    out: set[int] = set()
    todo = [r for r in roots if r in snap]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, ()))
    return out


def kernel_net_threads(snap: Snapshot) -> set[int]:
    """ksoftirqd/N: loopback packet processing lands there under load; it is bench work."""
    return {pid for pid, p in snap.items() if p.comm.startswith("ksoftirqd/")}


def delta(before: Snapshot, after: Snapshot, pids: Iterable[int]) -> tuple[int, int]:
    """(utime, stime) ticks used by ``pids`` between two snapshots.

    A pid only in ``after`` was born in between and counts in full; one that vanished in
    between loses its last share (no server here forks or exits mid-run).
    """
    ut = st = 0
    for pid in pids:
        a = after.get(pid)
        if a is None:
            continue
        b = before.get(pid)
        if b is not None and b.start != a.start:
            b = None  # pid reused
        ut += a.utime - (b.utime if b else 0)
        st += a.stime - (b.stime if b else 0)
    return ut, st


@dataclass(frozen=True, slots=True)
class Cpu:
    user: int  # user + nice
    system: int
    softirq: int  # irq + softirq
    idle: int  # idle + iowait
    steal: int  # the hypervisor ran someone else: a noisy neighbour

    @property
    def busy(self) -> int:
        return self.user + self.system + self.softirq

    def __sub__(self, o: Cpu) -> Cpu:
        return Cpu(
            self.user - o.user,
            self.system - o.system,
            self.softirq - o.softirq,
            self.idle - o.idle,
            self.steal - o.steal,
        )


@dataclass(frozen=True, slots=True)
class System:
    total: Cpu
    per_cpu: dict[int, Cpu]
    forks: int  # processes created since boot


def system() -> System:
    per_cpu: dict[int, Cpu] = {}
    total = Cpu(0, 0, 0, 0, 0)
    forks = 0
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            f = line.split()
            if f[0].startswith("cpu"):
                user, nice, sys_, idle, iowait, irq, softirq, steal = (int(v) for v in f[1:9])
                cpu = Cpu(user + nice, sys_, irq + softirq, idle + iowait, steal)
                if f[0] == "cpu":
                    total = cpu
                else:
                    per_cpu[int(f[0][3:])] = cpu
            elif f[0] == "processes":
                forks = int(f[1])
    return System(total, per_cpu, forks)


def udp_counters() -> dict[str, int]:
    """This network namespace's UDP counters (InErrors, RcvbufErrors, ...) from /proc/net/snmp."""
    with open("/proc/self/net/snmp", encoding="ascii") as fh:
        rows = [line.split() for line in fh if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], (int(v) for v in rows[1][1:]), strict=True))


def ticks_to_s(ticks: float) -> float:
    return ticks / CLK_TCK


def parse_vmrss_kb(status_text: str) -> int | None:
    """``VmRSS`` of a ``/proc/<pid>/status`` text, in kB; None when absent (a kernel thread,
    a zombie) or malformed."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
            return None
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MB (2**20 bytes); None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            kb = parse_vmrss_kb(fh.read())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None if kb is None else kb / 1024.0
