"""A steady, bounded UDP query load from a background thread, for tests that disturb a server
while it serves (kill a worker, reload, stop).

Each query leaves from a fresh socket, so a fresh source port: the kernel's SO_REUSEPORT hash
then spreads the queries over all workers, as many independent clients would. Loopback only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Collection

import dns.message
import dns.rcode
import dns.rdatatype

from support import require_loopback
from support.clients import make_query

MAX_DURATION = 60.0  # a load never runs longer than this, whatever the test forgets


class QueryLoad:
    """Ask ``name`` every ``interval`` seconds until ``stop()``.

    ``retries=1`` models a stub resolver that retries once (RFC 1536 / glibc ``attempts:2``):
    a query counts as failed only when every try timed out. ``first_try_failures`` counts the
    tries that timed out either way. ``answers`` counts the first A/AAAA/TXT value of each
    reply (or the rcode name when there is none).

    ``ok`` counts replies of any kind; ``correct`` only NOERROR replies whose first value is
    in ``expect`` (any value when ``expect`` is None); ``wrong`` the other replies (SERVFAIL,
    REFUSED, a wrong address). "Nothing lost" means ``correct == sent``, not ``failed == 0``.
    """

    def __init__(
        self,
        address: str,
        port: int,
        name: str,
        rdtype: str = "A",
        *,
        interval: float = 0.003,
        timeout: float = 1.0,
        retries: int = 0,
        expect: Collection[str] | None = None,
    ) -> None:
        self.target = (require_loopback(address), port)
        self.query = make_query(name, rdtype)
        self.interval = interval
        self.timeout = timeout
        self.retries = retries
        self.expect = None if expect is None else frozenset(expect)
        self.sent = 0
        self.ok = 0
        self.correct = 0
        self.wrong = 0
        self.failed = 0
        self.first_try_failures = 0
        self.answers: Counter[str] = Counter()
        self.last_answer = ""
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="query-load", daemon=True)

    def __enter__(self) -> QueryLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> QueryLoad:
        self._thread.start()
        return self

    def stop(self) -> QueryLoad:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.timeout * (self.retries + 1) + 5)
        return self

    def wait_for_answer(self, answer: str, timeout: float) -> bool:
        """Wait until a reply carried ``answer`` (bounded); True if one did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.answers[answer]:
                    return True
            time.sleep(0.02)
        return False

    def wait_for_count(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ok + self.failed >= count:
                return True
            time.sleep(0.02)
        return False

    def _run(self) -> None:
        end = time.monotonic() + MAX_DURATION
        next_at = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            reply = None
            for attempt in range(self.retries + 1):
                reply = self._ask()
                if reply is not None:
                    break
                self.first_try_failures += attempt == 0
            with self.lock:
                self.sent += 1
                if reply is None:
                    self.failed += 1
                else:
                    rcode, value = reply
                    answer = value if value is not None else rcode
                    self.ok += 1
                    right = (
                        rcode == "NOERROR"
                        and value is not None
                        and (self.expect is None or value in self.expect)
                    )
                    self.correct += right
                    self.wrong += not right
                    self.answers[answer] += 1
                    self.last_answer = answer
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()

    def _ask(self) -> tuple[str, str | None] | None:
        """(rcode name, first A/AAAA/TXT value or None), or None on a timeout."""
        query = self.query
        query.id = (query.id + 1) & 0xFFFF
        wire = query.to_wire()
        deadline = time.monotonic() + self.timeout
        with socket.socket(
            socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET, socket.SOCK_DGRAM
        ) as sock:
            sock.sendto(wire, self.target)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except (TimeoutError, ConnectionRefusedError):
                    return None
                try:
                    reply = dns.message.from_wire(data)
                except Exception:
                    continue
                if reply.id != query.id:
                    continue
                rcode = dns.rcode.to_text(reply.rcode())
                for rrset in reply.answer:
                    if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TXT):
                        return rcode, str(rrset[0])
                return rcode, None
        return None
