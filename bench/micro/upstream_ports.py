"""What random-port forwarding costs, measured against one socket in the same process.

    tests/netns-run .venv/bin/python bench/micro/upstream_ports.py [QUERIES] [ROUNDS]

A real worker (``support.inproc.InProcessServer``) forwards QUERIES distinct names (every one a
cache miss) per round to an echo upstream on 127.0.0.2:53, from a client keeping 100 queries
in flight; upstream and client are separate processes, so the worker thread's CPU time
(``time.thread_time``) is the forward path's alone. Rounds alternate between the shipped
settings of ``upsock`` (POOL_SIZE sockets, a new port every MAX_USES queries) and one
socket that never changes port (what fastdns did before RFC 5452 §9.2 ports), so both see the
same machine load; on a shared machine this ratio is far steadier than two separate runs.
Prints the first quartile and median of CPU us per query for each, and their ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from support.inproc import InProcessServer
from support.server import write_resolv_conf

from fastdns.resolve.forward import upsock

UPSTREAM = "127.0.0.2"
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:  # NOERROR, no records, the question echoed: a valid reply for any query
    data, addr = s.recvfrom(4096)
    s.sendto(data[:2] + bytes((data[2] | 0x80, 0x80)) + data[4:], addr)
"""
CLIENT = """
import socket, struct, sys
port, n, window, tag = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect(("127.0.0.1", port))
s.settimeout(2.0)
def query(i):
    labels = (f"n{i}{tag}".encode(), b"bench", b"test")
    name = b"".join(bytes((len(x),)) + x for x in labels) + b"\\0"
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\\0\\1\\0\\1"
sent = got = 0
while sent < min(window, n):
    s.send(query(sent)); sent += 1
while got < n:
    try:
        s.recv(4096)
    except socket.timeout:
        break
    got += 1
    if sent < n:
        s.send(query(sent)); sent += 1
print(got)
"""
SETTINGS = {
    "random ports": {
        "POOL_SIZE": upsock.POOL_SIZE,
        "MAX_USES": upsock.MAX_USES,
        "MAX_AGE": upsock.MAX_AGE,
    },
    "one socket": {"POOL_SIZE": 1, "MAX_USES": 1 << 40, "MAX_AGE": 1e12},
}


def main() -> None:
    queries = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    if os.environ.get("FASTDNS_TEST_NETNS") != "1":
        sys.exit("run me under tests/netns-run (loopback-only network namespace)")
    echo = subprocess.Popen(
        [sys.executable, "-c", ECHO, UPSTREAM], stdout=subprocess.PIPE, text=True
    )
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    tmp = Path(tempfile.mkdtemp())
    resolv = write_resolv_conf(tmp / "resolv.conf", UPSTREAM)
    srv = InProcessServer(
        {
            "fastdns": {
                "resolv_conf": str(resolv),
                "native": {"enabled": False},
                "cache": {"enabled": True},
            }
        },
        tmp,
    )
    cpu: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        for r in range(rounds):
            name = list(SETTINGS)[r % len(SETTINGS)]
            for key, value in SETTINGS[name].items():
                setattr(upsock, key, value)  # read per query by UdpChannel.pick
            t0 = srv.call(time.thread_time)
            client = [sys.executable, "-c", CLIENT, str(srv.udp_port), str(queries), "100", f"r{r}"]
            out = subprocess.run(client, capture_output=True, text=True, check=True)
            t1 = srv.call(time.thread_time)
            answered = int(out.stdout)
            cpu[name].append((t1 - t0) * 1e6 / max(answered, 1))
    finally:
        srv.close()
        echo.kill()
        for key, value in SETTINGS["random ports"].items():
            setattr(upsock, key, value)
    stats = {}
    for name, values in cpu.items():
        values.sort()
        stats[name] = (values[len(values) // 4], values[len(values) // 2])
        print(f"{name:>13}: CPU us/query q1 {stats[name][0]:.1f} median {stats[name][1]:.1f}")
    a, b = stats["random ports"], stats["one socket"]
    print(f"random ports / one socket: q1 {a[0] / b[0]:.2f}, median {a[1] / b[1]:.2f}")


if __name__ == "__main__":
    main()
