"""The TLS step of the forwarding state machine (fastdns/resolve/forward/attempts.py): servers
named in ``tls`` are asked over TLS with the same rules as UDP; the others stay on UDP, so one
list may mix both (how a route with ``tls://`` servers uses it, docs/tls.md)."""

from __future__ import annotations

from fastdns.dns import wire
from fastdns.resolve.forward.attempts import DONE, GIVE_UP, TLS, UDP, WAIT, Attempts, TlsTarget

A, B = ("127.0.0.2", 853), ("127.0.0.3", 53)
TLS_A = {A: TlsTarget("127.0.0.2", 853, "dns.test")}


def test_a_tls_server_is_a_tls_step_with_the_udp_timeout_and_failover() -> None:
    m = Attempts((A, B), {}, 1, 1.0, 10.0, tls=TLS_A)
    assert (m.start(0.0), m.server, m.seq, m.until) == (TLS, A, 0, 1.0)
    assert m.tls is not None and m.tls[m.server].name == "dns.test"
    # its timeout moves on to the next server, over UDP (not in ``tls``) ...
    assert (m.on_timeout(1.0), m.server, m.seq) == (UDP, B, 1)
    # ... and the TLS attempt's late reply still answers, as a UDP one would
    assert (m.on_reply(0, wire.NOERROR, False, 1.5), m.server, m.seq) == (DONE, A, 0)


def test_a_failed_tls_connection_fails_over_at_once_and_servfail_fails_over() -> None:
    m = Attempts((A, B), {}, 1, 1.0, 10.0, tls=TLS_A)
    m.start(0.0)
    assert (m.on_error(0, 0.01), m.server) == (UDP, B)
    assert m.on_reply(1, wire.SERVFAIL, False, 0.02) == GIVE_UP
    m = Attempts((A,), {}, 2, 1.0, 10.0, tls=TLS_A)
    m.start(0.0)
    assert (m.on_reply(0, wire.SERVFAIL, False, 0.1)) == GIVE_UP  # not asked again


def test_rounds_retry_a_tls_server_and_wait_for_its_reply_until_the_deadline() -> None:
    m = Attempts((A,), {}, 2, 1.0, 3.0, tls=TLS_A)
    assert m.start(0.0) == TLS
    assert (m.on_timeout(1.0), m.seq) == (TLS, 1)  # round two
    assert (m.on_timeout(2.0), m.until) == (WAIT, 3.0)  # both may still answer
    assert m.on_timeout(3.0) == GIVE_UP


def test_without_tls_every_step_is_udp() -> None:
    m = Attempts((A, B), {}, 1, 1.0, 10.0)
    assert m.start(0.0) == UDP and m.on_timeout(1.0) == UDP
