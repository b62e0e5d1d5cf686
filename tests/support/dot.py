"""DNS-over-TLS servers for tests, on loopback port 853 (RFC 7858): Debian's unbound with a
certificate the test generates (``openssl`` CLI), and ``ReorderingTlsServer``, a small Python
TLS DNS server that answers pipelined queries in reverse order (unbound may answer in order):
a real server on loopback, for what unbound cannot be made to do.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rrset

from support import require_loopback

DOT_PORT = 853
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Certs:
    """A test CA (``ca``), a server certificate it signed for ``name`` (and the server's IP)
    with its key, and a second CA that signed nothing (an untrusted anchor)."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    name: str


_EC = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(directory: Path, stem: str) -> tuple[Path, Path]:
    _openssl(
        *f"req -x509 {_EC} -keyout {stem}.key -out {stem}.pem -days 2 -subj /CN=fastdns-{stem}"
        " -addext basicConstraints=critical,CA:TRUE"
        " -addext keyUsage=critical,keyCertSign,cRLSign".split(),
        cwd=directory,
    )
    return directory / f"{stem}.pem", directory / f"{stem}.key"


def make_certs(directory: Path, name: str, ip: str) -> Certs:
    """Generate the CA, the server certificate (SAN: DNS ``name``, IP ``ip``) and another CA."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed (scripts/install)")
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca(directory, "ca")
    other_ca, _ = _ca(directory, "other-ca")
    (directory / "server.ext").write_text(
        f"subjectAltName=DNS:{name},IP:{ip}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        *f"req {_EC} -keyout server.key -out server.csr -subj /CN={name}".split(), cwd=directory
    )
    _openssl(
        *f"x509 -req -in server.csr -CA {ca.name} -CAkey {ca_key.name} -CAcreateserial"
        " -out server.pem -days 2 -extfile server.ext".split(),
        cwd=directory,
    )
    return Certs(ca, directory / "server.pem", directory / "server.key", other_ca, name)


def wait_listening(address: str, port: int, timeout: float = START_TIMEOUT) -> None:
    """Until a TCP connect to ``address:port`` succeeds (RuntimeError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"nothing listens on {address}:{port}") from None
            time.sleep(0.02)


class UnboundDoT:
    """unbound serving DNS over TLS on ``address:853``, authoritative (``local-data``) for
    ``dot.test.`` (``a.dot.test`` A 192.0.2.1) and for every name under ``bulk.dot.test.``
    (A 192.0.2.7, a ``redirect`` zone); everything else is NXDOMAIN from the ``.`` static zone,
    so it never looks anything up itself."""

    def __init__(self, address: str, certs: Certs, workdir: Path, *, start: bool = True) -> None:
        if shutil.which("unbound") is None:
            raise RuntimeError("unbound is not installed (scripts/install)")
        self.address = require_loopback(address)
        self.port = DOT_PORT
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "unbound.conf"
        self.log = workdir / "unbound.log"
        self.conf.write_text(
            f"""server:
  interface: {address}@{DOT_PORT}
  tls-port: {DOT_PORT}
  tls-service-key: "{certs.key}"
  tls-service-pem: "{certs.cert}"
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 1
  num-threads: 1
  so-reuseport: no
  do-ip6: no
  outgoing-range: 16
  incoming-num-tcp: 64
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "." static
  local-zone: "dot.test." static
  local-data: "dot.test. 60 IN SOA ns.dot.test. h.dot.test. 1 60 60 60 60"
  local-data: "a.dot.test. 60 IN A 192.0.2.1"
  local-zone: "bulk.dot.test." redirect
  local-data: "bulk.dot.test. 60 IN A 192.0.2.7"
remote-control:
  control-enable: no
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        if start:
            self.start()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unbound", "-d", "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_listening(self.address, self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"unbound did not start:\n{self.log.read_text()[-2000:]}") from None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()


class ReorderingTlsServer:
    """A TLS DNS server on ``address:853`` (a thread per connection) that reads ``batch``
    pipelined queries, then writes a reply with an unknown ID and one with a known ID but
    another question (both must be dropped by the client), then the real replies in reverse
    order: ``<qname> A 192.0.2.<i>`` where ``i`` is the query's position (1-based) in the
    batch, so a mismatch shows as a wrong address. A ``batch`` never reached is a server
    that accepts queries and stays silent."""

    def __init__(self, address: str, certs: Certs, batch: int) -> None:
        self.address = require_loopback(address)
        self.batch = batch
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(certs.cert, certs.key)
        self.listener = socket.create_server((address, DOT_PORT))
        self.listener.settimeout(0.2)
        self.errors: list[BaseException] = []
        self.answered = 0
        self.accepted = 0
        self.order: list[str] = []  # question names in the order they arrived
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            t = threading.Thread(target=self._handle, args=(raw,), daemon=True)
            self._threads.append(t)
            t.start()

    def _handle(self, raw: socket.socket) -> None:
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as conn:
                self._conns.append(conn)  # (``raw`` is detached: its descriptor is conn's)
                conn.settimeout(10.0)
                self._connection(conn)
        except (ConnectionError, EOFError, TimeoutError, ssl.SSLError):
            pass  # the client went away (or the test closed the server): fine
        except BaseException as e:
            if not self._stop.is_set():
                self.errors.append(e)

    def _connection(self, conn: ssl.SSLSocket) -> None:
        while not self._stop.is_set():
            queries = []
            for _ in range(self.batch):
                queries.append(dns.message.from_wire(self._frame(conn)))
                self.order.append(queries[-1].question[0].name.to_text())
            stray = dns.message.make_response(queries[0])
            stray.id = (max(q.id for q in queries) + 1) & 0xFFFF
            while any(stray.id == q.id for q in queries):
                stray.id = (stray.id + 1) & 0xFFFF
            other = dns.message.make_query("other.dot.test.", "A")
            other.id = queries[0].id
            wrong = dns.message.make_response(other)
            wrong.answer.append(
                dns.rrset.from_text("other.dot.test.", 60, "IN", "A", "192.0.2.254")
            )
            out = [stray, wrong]
            for i, q in reversed(list(enumerate(queries, 1))):
                r = dns.message.make_response(q)
                r.answer.append(
                    dns.rrset.from_text(q.question[0].name, 60, "IN", "A", f"192.0.2.{i}")
                )
                out.append(r)
            self.answered += len(queries)  # before the client can see them
            conn.sendall(b"".join(_framed(m.to_wire()) for m in out))

    @staticmethod
    def _frame(conn: ssl.SSLSocket) -> bytes:
        size = int.from_bytes(_exactly(conn, 2), "big")
        return _exactly(conn, size)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for conn in self._conns:  # wakes the threads blocked reading
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)


def _framed(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def _exactly(conn: ssl.SSLSocket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out
