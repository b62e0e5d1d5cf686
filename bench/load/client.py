"""A small DNS load client for the pytest-benchmark load runs (no dnsperf).

A few connected, non-blocking UDP sockets share a window of at most ``window`` queries in
flight; replies are matched to queries by (socket, ID) and checked against the question that
was sent. A query unanswered after ``timeout`` seconds is lost, and a run stops by itself after
``cap`` seconds whatever happens. Each query carries the answer the zone should give (NXDOMAIN
for ``nx<k>`` names, an answer section for every positive name that has the record), so the
client also counts answers a user would see as wrong.

Throughput is bounded by this Python loop (tens of thousands of queries/s on one core), not by
a fast server: compare servers on CPU per query, and on cold and mix.
"""

from __future__ import annotations

import os
import selectors
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.zone import AAAA_EVERY

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
ERROR_RCODES = ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP")
NOERROR, NXDOMAIN = 0, 3
# Everything after the ID: RD set, one question, no other sections (no EDNS, like dnsperf -e off).
HEADER_TAIL = struct.pack("!HHHHH", 0x0100, 1, 0, 0, 0)
EXAMPLES = 5  # wrong answers kept for the assertion message


@dataclass(frozen=True, slots=True)
class Query:
    line: str  # "name QTYPE", as in the dnsperf query files
    question: bytes  # the question section on the wire, name in lower case
    rcode: int  # the rcode the zone gives
    needs_answer: bool  # the zone has the record: the answer section must not be empty


def encode_name(name: str) -> bytes:
    labels = [p.encode("ascii") for p in name.rstrip(".").split(".") if p]
    return b"".join(bytes([len(p)]) + p for p in labels) + b"\0"


def parse_line(line: str) -> Query:
    """One dnsperf query line, with the answer the bench zone gives for it."""
    name, qtype = line.split()
    first = name.split(".", 1)[0].lower()
    if first.startswith("nx"):  # the mix's nonexistent names
        rcode, needs_answer = NXDOMAIN, False
    elif qtype == "AAAA" and first.startswith("n"):  # only n<i> with i % AAAA_EVERY == 0
        rcode, needs_answer = NOERROR, int(first[1:]) % AAAA_EVERY == 0
    else:  # A on n<i> and on c<i> aliases; MX, TXT, SRV only on names that have them
        rcode, needs_answer = NOERROR, True
    question = encode_name(name.lower()) + struct.pack("!HH", QTYPES[qtype], 1)
    return Query(line, question, rcode, needs_answer)


def read_queries(path: Path) -> list[Query]:
    return [parse_line(line) for line in path.read_text(encoding="ascii").splitlines() if line]


@dataclass(slots=True)
class Result:
    planned: int
    sent: int = 0
    answered: int = 0
    lost: int = 0  # no answer within the timeout, or still in flight at the cap
    unsent: int = 0  # not sent before the cap
    late: int = 0  # replies to no query in flight (after their timeout, or unknown IDs)
    mismatched: int = 0  # the ID matched but the reply was not a reply to that question
    unexpected: int = 0  # rcode other than the zone's, or an empty answer where it has data
    truncated: int = 0  # TC set
    send_errors: int = 0
    rcodes: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    capped: bool = False  # the run hit its time cap
    examples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Answers with SERVFAIL, REFUSED, FORMERR or NOTIMP."""
        return sum(self.rcodes.get(c, 0) for c in ERROR_RCODES)

    @property
    def qps(self) -> float:
        return self.answered / self.wall_s if self.wall_s > 0 else 0.0

    def ok(self) -> bool:
        """Everything answered, as the zone says, within the cap."""
        return (
            self.answered == self.planned
            and not (self.lost or self.unsent or self.mismatched or self.unexpected)
            and not (self.errors or self.send_errors or self.capped)
        )

    def summary(self) -> str:
        return (
            f"planned {self.planned}, sent {self.sent}, answered {self.answered}, lost "
            f"{self.lost}, unsent {self.unsent}, late {self.late}, mismatched {self.mismatched}, "
            f"unexpected {self.unexpected}, truncated {self.truncated}, send errors "
            f"{self.send_errors}, capped {self.capped}, rcodes {dict(self.rcodes)}"
            + (f"; e.g. {'; '.join(self.examples)}" if self.examples else "")
        )


def run(
    queries: Sequence[Query],
    endpoint: tuple[str, int],
    *,
    window: int = 100,
    timeout: float = 2.0,
    cap: float = 20.0,
    sockets: int = 4,
) -> Result:
    """Send ``queries`` in order to ``endpoint`` (a loopback address), at most ``window`` in
    flight, and count what comes back. Returns after the last reply or timeout, or at ``cap``."""
    if not endpoint[0].startswith("127."):
        raise ValueError(f"loopback only: {endpoint}")
    res = Result(planned=len(queries))
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    sel = selectors.DefaultSelector()
    try:
        for idx, s in enumerate(socks):
            s.setblocking(False)
            s.connect(endpoint)  # replies from anyone else are dropped by the kernel
            sel.register(s, selectors.EVENT_READ, idx)
        _loop(queries, socks, sel, res, window, timeout, cap)
    finally:
        sel.close()
        for s in socks:
            s.close()
    return res


def _loop(
    queries: Sequence[Query],
    socks: list[socket.socket],
    sel: selectors.BaseSelector,
    res: Result,
    window: int,
    timeout: float,
    cap: float,
) -> None:
    nsock, total = len(socks), len(queries)
    inflight: dict[int, int] = {}  # (socket index << 16 | ID) -> query index
    expiry: deque[tuple[float, int, int]] = deque()  # (deadline, key, query index), in order
    ids = [int.from_bytes(os.urandom(2), "big") for _ in socks]
    pack_id = struct.Struct("!H").pack
    unpack_header = struct.Struct("!HHHH").unpack_from
    nxt = 0
    t0 = time.monotonic()
    hard = t0 + cap
    while True:
        now = time.monotonic()
        if now >= hard:
            res.capped = True
            break
        # Fill the window.
        while len(inflight) < window and nxt < total:
            sidx = nxt % nsock
            qid = ids[sidx]
            key = sidx << 16 | qid
            while key in inflight:  # an ID still in flight on this socket: take the next one
                qid = (qid + 1) & 0xFFFF
                key = sidx << 16 | qid
            ids[sidx] = (qid + 1) & 0xFFFF
            try:
                socks[sidx].send(pack_id(qid) + HEADER_TAIL + queries[nxt].question)
            except BlockingIOError:
                break  # send buffer full: retry after some replies
            except OSError:
                res.send_errors += 1
                res.sent += 1
                res.lost += 1
                nxt += 1
                continue
            inflight[key] = nxt
            expiry.append((now + timeout, key, nxt))
            nxt += 1
            res.sent += 1
        # Expire queries past their timeout.
        while expiry and expiry[0][0] <= now:
            _, key, qi = expiry.popleft()
            if inflight.get(key) == qi:
                del inflight[key]
                res.lost += 1
        if not inflight:
            if nxt >= total:
                break
            time.sleep(0.001)  # nothing in flight yet nothing could be sent: a full buffer
            continue
        wait = max(0.0, min(expiry[0][0] if expiry else hard, hard) - time.monotonic())
        for skey, _ in sel.select(wait):
            sock: socket.socket = skey.fileobj  # type: ignore[assignment]
            base = skey.data << 16
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                except OSError:  # ICMP port unreachable on a connected socket: server gone
                    break
                if len(data) < 12:
                    res.late += 1
                    continue
                rid, flags, _qd, ancount = unpack_header(data)
                qi = inflight.pop(base | rid, -1)
                if qi < 0:
                    res.late += 1
                    continue
                res.answered += 1
                q = queries[qi]
                n = len(q.question) - 4
                end = 12 + n
                if (
                    not flags & 0x8000
                    or data[12:end].lower() != q.question[:n]
                    or data[end : end + 4] != q.question[n:]
                ):
                    res.mismatched += 1
                    continue
                rcode = flags & 0xF
                res.rcodes[RCODES.get(rcode, str(rcode))] += 1
                if flags & 0x0200:
                    res.truncated += 1
                if rcode != q.rcode or (q.needs_answer and ancount == 0):
                    res.unexpected += 1
                    if len(res.examples) < EXAMPLES:
                        got = RCODES.get(rcode, str(rcode))
                        res.examples.append(f"{q.line}: {got}, {ancount} answers")
    res.wall_s = time.monotonic() - t0
    res.lost += len(inflight)  # still in flight at the cap
    res.unsent = total - nxt
