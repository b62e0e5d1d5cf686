"""The metrics process's I/O: the stats datagram sink and the HTTP endpoint.

``/metrics`` (Prometheus text, or OpenMetrics when the scraper asks for it; gzip on request),
``/health`` and ``/ready`` (200 or 503 with a one-line reason, CoreDNS *health* / *ready*).
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import BaseServer, ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit

from fastdns.config.schema import Config
from fastdns.errors import BootError
from fastdns.ipc import STATUS_SNDBUF
from fastdns.metrics.aggregator import StatsAggregator

logger = logging.getLogger(__name__)

MAX_HTTP_THREADS = 8  # concurrent HTTP requests; more are refused (bound everything)
HTTP_TIMEOUT = 10.0  # seconds a client may take to send its request


class _Handler(BaseHTTPRequestHandler):
    server: MetricsHTTPServer
    server_version = "fastdns-metrics"
    timeout = HTTP_TIMEOUT

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        agg = self.server.aggregator
        if path == "/metrics":
            self._metrics()
        elif path in ("/health", "/ready"):
            with agg.lock:
                ok, why = agg.health() if path == "/health" else agg.readiness()
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
        elif path == "/":
            body = b"fastdns metrics: /metrics /health /ready\n"
            self._send(200, body, "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _metrics(self) -> None:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
        body = encoder(self.server.registry)
        gz = "gzip" in self.headers.get("Accept-Encoding", "")
        self._send(
            200,
            gzip.compress(body, 1) if gz else body,
            content_type,
            {"Content-Encoding": "gzip"} if gz else {},
        )

    def _send(
        self, code: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would flood the log


class MetricsHTTPServer(ThreadingMixIn, HTTPServer):
    """A threaded HTTP server on an already-bound listening socket.

    Built on ``BaseServer`` directly: ``HTTPServer.server_bind`` calls ``socket.getfqdn``,
    a reverse DNS lookup we must never make. At most MAX_HTTP_THREADS requests at once.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket, aggregator: StatsAggregator, registry: Any) -> None:
        BaseServer.__init__(self, sock.getsockname()[:2], _Handler)
        self.socket = sock
        self.server_name = "fastdns"
        self.server_port = sock.getsockname()[1]
        self.aggregator = aggregator
        self.registry = registry
        self.slots = threading.BoundedSemaphore(MAX_HTTP_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many scrapes at once: refuse, never queue
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_registry(aggregator: StatsAggregator) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(aggregator)
    return registry


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (validated by config) -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bind_http(listen: str) -> socket.socket:
    """A listening TCP socket for ``fastdns.metrics.listen``; ``BootError`` when it fails.

    The supervisor may call this before forking the metrics process and pass the socket in,
    so the port (0 = any free one) stays the same when the metrics process is restarted.
    """
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        raise BootError(f"cannot listen for metrics on {listen}: {e.strerror or e}") from e
    sock.set_inheritable(True)
    return sock


def bind_stats(path: str) -> socket.socket:
    """The stats sink: an AF_UNIX datagram socket at ``path`` (a stale socket is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by a metrics process that died
    except FileNotFoundError:
        pass
    except OSError as e:
        raise BootError(f"cannot use stats socket path {path}: {e.strerror or e}") from e
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(path)
        # Workers may drop to another user after binding; the supervisor's private directory
        # is the access control, not the socket's mode.
        os.chmod(path, 0o666)
    except OSError as e:
        sock.close()
        raise BootError(f"cannot bind the stats socket {path}: {e.strerror or e}") from e
    return sock


def serve(
    config: Config,
    stats_path: str,
    should_stop: Callable[[], bool],
    *,
    on_ready: Callable[[int], None] = lambda port: None,
    http_sock: socket.socket | None = None,
) -> None:
    """Bind (``BootError`` on failure), call ``on_ready(http_port)``, serve until
    ``should_stop()`` (checked twice a second), then close everything."""
    stats_sock = bind_stats(stats_path)
    try:
        sock = http_sock if http_sock is not None else bind_http(config.metrics.listen)
    except BootError:
        stats_sock.close()
        raise
    stats_inode = os.lstat(stats_path).st_ino
    aggregator = StatsAggregator(config)
    httpd = MetricsHTTPServer(sock, aggregator, make_registry(aggregator))
    thread = threading.Thread(
        target=httpd.serve_forever, args=(0.5,), name="metrics-http", daemon=True
    )
    thread.start()
    logger.info("metrics on http://%s/metrics", _host_port(sock))
    try:
        on_ready(int(sock.getsockname()[1]))
        receive(stats_sock, aggregator, should_stop)
    finally:
        httpd.shutdown()
        httpd.server_close()
        stats_sock.close()
        _unlink_if_ours(stats_path, stats_inode)


def receive(
    sock: socket.socket, aggregator: StatsAggregator, should_stop: Callable[[], bool]
) -> None:
    """Feed datagrams to the aggregator until ``should_stop()`` (checked twice a second)."""
    sock.settimeout(0.5)
    while not should_stop():
        try:
            data = sock.recv(STATUS_SNDBUF)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        aggregator.feed(data)


def _host_port(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _unlink_if_ours(path: str, inode: int) -> None:
    # A successor may already have bound a new socket at the same path; leave that one alone.
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass
