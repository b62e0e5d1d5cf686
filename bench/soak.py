"""``python -m bench.soak --minutes 10``: fastdns under cardinality churn, its RSS watched.

The real ``fastdns serve`` (2 workers, the bench's config: bench/servers.py Fastdns) in front of
NSD, in a loopback-only network namespace of its own (bench/netns.py, like ``bench/run``). A
paced Python client sends a mix that never settles: hits on a fixed set of names, ever-new
names that exist (a wildcard) and ever-new names that do not (NXDOMAIN), A and AAAA, from
sockets bound to ever-new source addresses in 127.0.0.0/8 and ephemeral ports (each socket is
replaced after a few hundred queries). Every ``--interval`` seconds it reads every worker's
VmRSS and prints the series; at the end the slope after the warm-up, and exit 1 when a worker's
RSS grew more than ``--max-growth-mb`` after the warm-up, a worker was replaced, the server
died, or more than 1 % of the queries went unanswered. Bounded by ``--minutes``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from bench import netns, procstat
from bench.series import Sample, verdict
from bench.servers import Fastdns, Nsd
from bench.zone import UPSTREAM_IP

ZONE = "soak.example."
HOT = 1000  # names asked again and again: hits once cached
TIMEOUT = 2.0  # a query unanswered after this is lost
SOCKETS = 64  # client sockets open at a time
QUERIES_PER_SOCKET = 300  # then the socket is closed and a new one bound elsewhere
MAX_INFLIGHT = 500
LOST_LIMIT = 0.01


def write_zone(path: Path) -> None:
    """Every name under the zone exists (wildcard, A and AAAA) except under ``nx.``, an empty
    non-terminal: names there are NXDOMAIN (RFC 4592 §2.2.2: no wildcard match below it)."""
    path.write_text(
        f"$ORIGIN {ZONE}\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\n"
        f"ns1 IN A {UPSTREAM_IP}\n* IN A 198.18.0.1\n* IN AAAA 2001:db8::1\n"
        "h.nx IN A 198.18.0.2\n"
    )


def query(qid: int, name: str, qtype: int) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + qname
        + b"\0"
        + struct.pack("!HH", qtype, 1)
    )


@dataclass(slots=True)
class Slot:
    sock: socket.socket
    used: int = 0  # queries sent on it


class Client:
    """Paced UDP queries from rotating source addresses; replies matched by socket and ID."""

    def __init__(self, target: tuple[str, int], rng: random.Random) -> None:
        self.target = target
        self.rng = rng
        self.sel = selectors.DefaultSelector()
        self.sockets: list[Slot] = []
        self.retiring: list[tuple[float, socket.socket]] = []  # (close after, socket), in order
        self.pending: dict[tuple[int, int], float] = {}  # (fileno, id) -> deadline
        self.sent = self.answered = self.lost = self.mismatched = 0
        self.rcodes: dict[int, int] = {}
        self.seq = 0
        self.sources: set[str] = set()
        for _ in range(SOCKETS):
            self.sockets.append(Slot(self._new_socket()))

    def _new_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r = self.rng.randrange
        addr = f"127.{r(1, 255)}.{r(256)}.{r(1, 255)}"
        s.bind((addr, 0))
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ)
        if len(self.sources) < 100_000:  # only counted for the report; bounded
            self.sources.add(addr)
        return s

    def _recycle(self, slot: Slot) -> None:
        """A new socket in the slot; the old one keeps reading its answers until TIMEOUT."""
        self.retiring.append((time.monotonic() + TIMEOUT, slot.sock))
        slot.sock, slot.used = self._new_socket(), 0

    def _close_retired(self, now: float) -> None:
        while self.retiring and self.retiring[0][0] < now:
            _, old = self.retiring.pop(0)
            fd = old.fileno()
            for key in [k for k in self.pending if k[0] == fd]:  # past TIMEOUT: lost
                del self.pending[key]
                self.lost += 1
            self.sel.unregister(old)
            old.close()

    def _name(self) -> tuple[str, int]:
        r = self.rng.random()
        qtype = 28 if self.rng.random() < 0.3 else 1
        self.seq += 1
        if r < 0.5:
            return f"hot{self.rng.randrange(HOT)}.{ZONE}", qtype
        if r < 0.85:
            return f"n{self.seq}-{self.rng.randrange(1 << 30):x}.{ZONE}", qtype
        return f"x{self.seq}.nx.{ZONE}", qtype

    def send_one(self) -> None:
        if len(self.pending) >= MAX_INFLIGHT:
            return
        slot = self.sockets[self.rng.randrange(len(self.sockets))]
        if slot.used >= QUERIES_PER_SOCKET:
            self._recycle(slot)
        s = slot.sock
        qid = self.rng.randrange(65536)
        key = (s.fileno(), qid)
        if key in self.pending:
            return
        name, qtype = self._name()
        try:
            s.sendto(query(qid, name, qtype), self.target)
        except BlockingIOError:
            return
        self.pending[key] = time.monotonic() + TIMEOUT
        slot.used += 1
        self.sent += 1

    def receive(self, timeout: float) -> None:
        for key, _ in self.sel.select(timeout):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            while True:
                try:
                    data = s.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(data) < 12:
                    self.mismatched += 1
                    continue
                qid, flags = struct.unpack("!HH", data[:4])
                if self.pending.pop((s.fileno(), qid), None) is None:
                    self.mismatched += 1
                    continue
                self.answered += 1
                self.rcodes[flags & 0xF] = self.rcodes.get(flags & 0xF, 0) + 1

    def expire(self) -> None:
        now = time.monotonic()
        self._close_retired(now)
        for key in [k for k, d in self.pending.items() if d < now]:
            del self.pending[key]
            self.lost += 1

    def close(self) -> None:
        for s in [slot.sock for slot in self.sockets] + [old for _, old in self.retiring]:
            self.sel.unregister(s)
            s.close()
        self.sel.close()


def worker_rss(state_file: Path) -> tuple[list[int], list[float]]:
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return [], []
    pids = [int(p) for p in state.get("workers", [])]
    return pids, [r if (r := procstat.rss_mb(p)) is not None else 0.0 for p in pids]


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} MB"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    p.add_argument("--qps", type=int, default=2000, help="offered queries/s (default 2000)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--workers", type=int, default=2, help="fastdns workers (default 2)")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="seconds before RSS must stop growing (default: a third of the run, at most 120)",
    )
    p.add_argument("--max-growth-mb", type=float, default=20.0, help="bound after warm-up")
    p.add_argument("--seed", type=int, default=1)
    return p


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if not 0.1 <= args.minutes <= 120 or not 10 <= args.qps <= 50_000 or args.interval < 1:
        parser().error("--minutes 0.1-120, --qps 10-50000, --interval >= 1")
    if not netns.isolated():
        netns.reexec_isolated(argv, module="bench.soak")
    netns.bring_up_loopback()
    signal.signal(signal.SIGTERM, _on_sigterm)  # unwind through the finally that stops servers
    duration = args.minutes * 60.0
    warmup = args.warmup if args.warmup is not None else min(120.0, duration / 3)
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="fastdns-soak-", dir=shm))
    cpus = sorted(os.sched_getaffinity(0))
    client_cpu, server_cpu = str(cpus[0]), str(cpus[-1])
    os.sched_setaffinity(0, {cpus[0]})
    zone_file = workdir / "soak.zone"
    write_zone(zone_file)
    nsd = Nsd(workdir, client_cpu, zone_file, zone=ZONE, probe=f"probe.{ZONE}")
    fd = Fastdns(workdir, server_cpu, args.workers, name="fastdns-soak")
    fd.probe = f"probe.{ZONE}"
    samples: list[Sample] = []
    problems: list[str] = []
    client: Client | None = None
    try:
        nsd.start()
        fd.start()
        pids0, _ = worker_rss(fd.state_file)
        client = Client((fd.endpoint.ip, fd.endpoint.port), random.Random(args.seed))
        print(
            f"soak: {args.minutes:g} min at {args.qps} q/s, {len(pids0)} workers {pids0}, "
            f"warm-up {warmup:.0f} s, bound {args.max_growth_mb:g} MB",
            flush=True,
        )
        print(f"{'t s':>6} {'sent':>9} {'answered':>9} {'lost':>6}  worker RSS MB", flush=True)
        t0 = time.monotonic()
        next_sample = t0
        while (now := time.monotonic()) < t0 + duration:
            due = int((now - t0) * args.qps) - client.sent
            for _ in range(min(due, 200)):
                client.send_one()
            client.receive(0.002)
            client.expire()
            if now >= next_sample:
                pids, rss = worker_rss(fd.state_file)
                if pids != pids0:
                    problems.append(f"workers changed: {pids0} -> {pids}")
                    break
                if fd.proc is None or fd.proc.poll() is not None:
                    problems.append("fastdns exited")
                    break
                samples.append(Sample(now - t0, tuple(rss)))
                print(
                    f"{now - t0:6.0f} {client.sent:9,} {client.answered:9,} {client.lost:6,}  "
                    + " ".join(f"{r:7.1f}" for r in rss),
                    flush=True,
                )
                next_sample += args.interval
        end = time.monotonic() + TIMEOUT  # the last answers
        while client.pending and time.monotonic() < end:
            client.receive(0.05)
        client.expire()
    finally:
        if client is not None:
            client.close()
        fd.stop()
        nsd.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    assert client is not None
    v = verdict(samples, warmup, args.max_growth_mb)
    lost_share = client.lost / client.sent if client.sent else 1.0
    print(
        f"sent {client.sent:,}, answered {client.answered:,}, lost {client.lost:,} "
        f"({lost_share:.2%}), rcodes {dict(sorted(client.rcodes.items()))}, "
        f"source addresses {len(client.sources):,}"
    )
    slope = "-" if v.slope_mb_per_min is None else f"{v.slope_mb_per_min:+.2f} MB/min"
    print(
        f"RSS (largest worker): after warm-up {_mb(v.warmup_mb)}, at the end {_mb(v.final_mb)}; "
        f"slope after warm-up {slope}; {v.reason}"
    )
    if lost_share > LOST_LIMIT:
        problems.append(f"lost {lost_share:.2%} of the queries (limit {LOST_LIMIT:.0%})")
    if not v.ok:
        problems.append(v.reason)
    for p in problems:
        print(f"FAIL: {p}")
    print("soak: " + ("FAIL" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
