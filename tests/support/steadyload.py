"""A steady UDP DNS load that counts every query: which answer it got, or that it got none.

``python tests/support/steadyload.py SERVER PORT NAME RATE SECONDS`` sends RATE A queries per
second for NAME to SERVER:PORT for SECONDS (in 10 ms slices, over SOCKETS source ports so
the kernel's SO_REUSEPORT hash spreads them), waits up to WAIT seconds for the last replies,
and prints one JSON object: ``sent``, ``answers`` ({the one A record: count}), ``lost`` (no
reply at all; no retries), ``other`` (any other reply), ``s`` (seconds it took: more than
SECONDS + WAIT when this client could not keep the rate). It prints ``started``
on stderr once the first query is out. Bounded: at most RATE*SECONDS queries, SECONDS+WAIT
seconds. Only test addresses (support.netns) and loopback.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import time

import dns.message

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support.netns import require_test_address

SOCKETS = 32
SLICE = 0.01  # seconds
WAIT = 2.0  # seconds for the last replies
MAX_RATE = 20000
MAX_SECONDS = 60


def main(server: str, port: int, name: str, rate: int, seconds: float) -> dict[str, object]:
    require_test_address(server)
    if not (0 < rate <= MAX_RATE and 0 < seconds <= MAX_SECONDS):
        raise SystemExit(f"rate must be 1-{MAX_RATE} and seconds 0-{MAX_SECONDS}")
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    socks = []
    for _ in range(SOCKETS):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((server, port))
        socks.append(s)
    wire = bytearray(dns.message.make_query(name, "A", use_edns=False).to_wire())
    pending: dict[tuple[int, int], None] = {}
    answers: dict[str, int] = {}
    other = sent = 0
    total = int(rate * seconds)
    start = time.monotonic()

    def receive(timeout: float) -> None:
        nonlocal other
        ready, _, _ = select.select(socks, [], [], timeout)
        for s in ready:
            while True:
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    break
                key = (s.fileno(), int.from_bytes(data[:2], "big"))
                if key not in pending:
                    continue
                del pending[key]
                # Parsing every reply would cost more CPU than the server spends on it: a
                # reply with one answer and nothing after it ends with the A record's address.
                if len(data) >= 16 and data[6:8] == b"\x00\x01" and data[8:12] == bytes(4):
                    value = socket.inet_ntoa(data[-4:])
                    answers[value] = answers.get(value, 0) + 1
                else:
                    other += 1

    while sent < total:
        due = min(total, int((time.monotonic() - start) / SLICE + 1) * rate * SLICE)
        while sent < due:
            s = socks[sent % SOCKETS]
            qid = (sent // SOCKETS) & 0xFFFF
            wire[0:2] = qid.to_bytes(2, "big")
            pending[(s.fileno(), qid)] = None
            try:
                s.send(wire)
            except BlockingIOError:
                pass  # counted as lost: the client's own queue was full
            if sent == 0:
                print("started", file=sys.stderr, flush=True)
            sent += 1
        next_slice = start + (int((time.monotonic() - start) / SLICE) + 1) * SLICE
        receive(max(0.0, next_slice - time.monotonic()))
    deadline = time.monotonic() + WAIT
    while pending and (left := deadline - time.monotonic()) > 0:
        receive(left)
    elapsed = round(time.monotonic() - start, 2)
    return {"sent": sent, "answers": answers, "lost": len(pending), "other": other, "s": elapsed}


if __name__ == "__main__":
    server, port, name, rate, seconds = sys.argv[1:6]
    print(json.dumps(main(server, int(port), name, int(rate), float(seconds))))
