"""``GET /health`` on the node-local address (``fastdns.nodelocal.health_port``), the
endpoint node-local-dns's liveness probe uses: 200 when this fastdns's workers answer a DNS
probe on the node-local address, 503 with the reason otherwise.

Served from the node-local loop (``fastdns.rules.nodelocal``), one request at a time, each
bounded (request size, a deadline): a probe every few seconds is all it is for. The socket
joins a SO_REUSEPORT group like the DNS ports, so an upgrade's second fastdns shares it
(docs/nodelocal.md, "Upgrades"), and may be bound before the address exists (IP_FREEBIND).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from fastdns.errors import BootError
from fastdns.system.sockets import set_freebind

MAX_REQUEST = 4096  # bytes of request head read at most
REQUEST_DEADLINE = 1.0  # seconds for the whole request to arrive


def bind_health(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        set_freebind(sock)
        sock.bind((host, port))
        sock.listen(16)
    except OSError as e:
        sock.close()
        raise BootError(f"cannot listen for health checks on {host}:{port}: {e}") from e
    sock.setblocking(False)
    return sock


def _read_head(conn: socket.socket) -> bytes:
    deadline = time.monotonic() + REQUEST_DEADLINE
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn.settimeout(left)
        chunk = conn.recv(MAX_REQUEST - len(data))
        if not chunk:
            break
        data += chunk
    return data


def answer_one(listener: socket.socket, why_unhealthy: Callable[[], str]) -> None:
    """Accept one connection and answer it (never raises for a client's misbehaviour)."""
    try:
        conn, _ = listener.accept()
    except OSError:
        return
    with conn:
        try:
            head = _read_head(conn)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                status, body = "400 Bad Request", "bad request\n"
            elif parts[1].split(b"?", 1)[0] != b"/health":
                status, body = "404 Not Found", "fastdns node-local: /health\n"
            else:
                why = why_unhealthy()
                status, body = ("200 OK", "OK\n") if not why else ("503 Service Unavailable", why)
            payload = body.rstrip("\n").encode() + b"\n"
            conn.settimeout(REQUEST_DEADLINE)
            conn.sendall(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + (payload if parts[:1] != [b"HEAD"] else b"")
            )
        except OSError:
            pass
