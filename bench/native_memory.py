"""Worker memory on the native path over many distinct names (docs/answering.md, "c-ares' own
cache: off").

Starts ``fastdns serve`` (one worker, default cache settings) against a minimal loopback
upstream that answers every A question with one address, TTL 300, and asks N distinct
single-label names: the resolv.conf search list sends each through c-ares. Prints the worker's
VmRSS (``/proc``) along the way. Run it inside the loopback-only namespace:

    tests/netns-run .venv/bin/python bench/native_memory.py --names 200000
    tests/netns-run .venv/bin/python bench/native_memory.py --code /tmp/old-tree  # an older tree

Not part of the test suite (``tests/e2e/test_native_qcache.py`` checks the mechanism).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.server import FastDNSProcess, write_resolv_conf  # noqa: E402

UPSTREAM = "127.0.0.2"
WINDOW = 200  # queries in flight
TTL = 300


def upstream(stop: threading.Event) -> None:
    """Answer every question with ``A 192.0.2.1`` (TTL 300); OPT dropped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((UPSTREAM, 53))
    sock.settimeout(0.2)
    rr = struct.pack("!HHHIH", 0xC00C, 1, 1, TTL, 4) + socket.inet_aton("192.0.2.1")
    while not stop.is_set():
        try:
            data, addr = sock.recvfrom(4096)
        except TimeoutError:
            continue
        end = data.index(0, 12) + 5
        qtype = struct.unpack_from("!H", data, end - 4)[0]
        an = 1 if qtype == 1 else 0
        head = data[:2] + struct.pack("!HHHHH", 0x8180, 1, an, 0, 0)
        sock.sendto(head + data[12:end] + (rr if an else b""), addr)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ask_all(port: int, names: int, tag: str, report: int, pid: int) -> tuple[int, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(2.0)
    sent = answered = lost = 0
    outstanding: set[int] = set()
    while sent < names or outstanding:
        while sent < names and len(outstanding) < WINDOW:
            qid = sent & 0xFFFF
            label = f"{tag}{sent}".encode()
            sock.send(
                struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
                + bytes([len(label)])
                + label
                + b"\x00\x00\x01\x00\x01"
            )
            outstanding.add(qid)
            sent += 1
            if sent % report == 0:
                print(f"  {sent:>7} names: worker VmRSS {rss_kb(pid) / 1024:.1f} MB", flush=True)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            lost += len(outstanding)
            outstanding.clear()
            continue
        qid = struct.unpack_from("!H", data)[0]
        if qid in outstanding:
            outstanding.discard(qid)
            answered += struct.unpack_from("!H", data, 6)[0] > 0
    return answered, lost


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=50000)
    parser.add_argument("--code", help="a fastdns source tree to run instead of this one")
    parser.add_argument("--cache-capacity", type=int, default=None)
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(target=upstream, args=(stop,), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        resolv = write_resolv_conf(work / "resolv.conf", UPSTREAM, search=["corp.test"])
        section: dict[str, object] = {"resolv_conf": str(resolv), "workers": 1}
        if args.cache_capacity is not None:
            section["cache"] = {"capacity": args.cache_capacity}
        env = {"PYTHONPATH": args.code} if args.code else None
        with FastDNSProcess({"fastdns": section}, work, env=env) as server:
            pid = server.state["workers"][0]
            print(
                f"fastdns from {args.code or REPO}; worker {pid} VmRSS at start "
                f"{rss_kb(pid) / 1024:.1f} MB",
                flush=True,
            )
            t0 = time.monotonic()
            tag = f"n{random.randrange(1 << 30):x}x"
            answered, lost = ask_all(server.udp_port, args.names, tag, max(args.names // 8, 1), pid)
            took = time.monotonic() - t0
            time.sleep(1.5)
            print(
                f"{args.names} names in {took:.1f}s ({answered} answered, {lost} lost); "
                f"worker VmRSS at end {rss_kb(pid) / 1024:.1f} MB",
                flush=True,
            )
    stop.set()
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    raise SystemExit(main())
