"""The servers under test: the NSD upstream, dnsmasq, unbound, dnsdist and fastdns.

Each one is started in the foreground under ``taskset``, configured to talk to nothing but the
loopback upstream, probed with a real query until it answers, and stopped with SIGTERM
(SIGKILL after a bound). A server is started fresh for every measured run, so "cold" is cold.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.zone import UPSTREAM_IP, ZONE, host

PROBE_NAME = host(0)
START_TIMEOUT = 30.0  # NSD loads a ~190k-record zone in a few seconds
STOP_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parent.parent


class ServerUnavailable(Exception):
    """The server cannot run here (binary or package missing): skip it, say why."""


class ServerFailed(Exception):
    """The server was started but did not come up."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int


def _probe_packet(qid: int, name: str = PROBE_NAME) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split("."))
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)  # RD, one question
    return header + qname + b"\0" + struct.pack("!HH", 1, 1)  # A, IN


def answers(ep: Endpoint, timeout: float = 0.5, name: str = PROBE_NAME) -> bool:
    """True when ``ep`` answers an A query for ``name`` with NOERROR and an answer."""
    qid = int.from_bytes(os.urandom(2), "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(_probe_packet(qid, name), (ep.ip, ep.port))
            data = s.recv(4096)
        except OSError:
            return False
    if len(data) < 12:
        return False
    rid, flags, _, ancount = struct.unpack("!HHHH", data[:8])
    return bool(rid == qid and flags & 0x8000 and flags & 0xF == 0 and ancount > 0)


def _require(binary: str, package: str) -> str:
    for d in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin"]:
        path = os.path.join(d, binary)
        if os.access(path, os.X_OK):
            return path
    raise ServerUnavailable(f"{binary} not found (apt-get install -y {package})")


class Server:
    """A server process started by the bench."""

    name = "server"
    probe = PROBE_NAME  # a name in the upstream's zone: "ready" means it answers this

    def __init__(self, workdir: Path, cpus: str) -> None:
        self.workdir = workdir
        self.cpus = cpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = Endpoint("127.0.0.1", 0)

    # Subclasses fill these in.
    def command(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ServerUnavailable when this server cannot run on this machine."""

    def env(self) -> dict[str, str] | None:
        return None  # inherit

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if answers(self.endpoint, name=self.probe):
                return
            self._check_alive()
            time.sleep(0.05)
        raise ServerFailed(f"{self.name}: no answer from {self.endpoint} in {START_TIMEOUT:.0f} s")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_tail()
            raise ServerFailed(f"{self.name} exited with {self.proc.returncode}: {tail}")

    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.stderr"

    def log_tail(self, chars: int = 600) -> str:
        try:
            return self.log_path().read_text(errors="replace")[-chars:].strip()
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        self.check()
        with open(self.log_path(), "wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                ["taskset", "-c", self.cpus, *self.command()],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env(),
                start_new_session=True,  # its own process group, for the SIGKILL fallback
            )
        try:
            self._wait_ready(time.monotonic() + START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def roots(self) -> list[int]:
        """Processes whose whole trees are this server (for CPU accounting)."""
        return [self.proc.pid] if self.proc else []

    def rss_mb(self) -> list[float]:
        """Resident memory of each process of the server (MB): its "workers"."""
        pids = procstat.descendants(self.roots(), procstat.snapshot())
        return [r for r in (procstat.rss_mb(p) for p in sorted(pids)) if r is not None]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Only our own process group: start_new_session made the server its leader.
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)


class Nsd(Server):
    """The authoritative upstream: NSD serving the generated zone on UPSTREAM_IP:53."""

    name = "nsd"

    def __init__(
        self, workdir: Path, cpus: str, zone_file: Path, zone: str = ZONE, probe: str = PROBE_NAME
    ) -> None:
        super().__init__(workdir, cpus)
        self.zone_file = zone_file
        self.zone = zone
        self.probe = probe
        self.endpoint = Endpoint(UPSTREAM_IP, 53)

    def check(self) -> None:
        self.binary = _require("nsd", "nsd")

    def command(self) -> list[str]:
        d = self.workdir
        conf = d / "nsd.conf"
        conf.write_text(
            f"""server:
  ip-address: {UPSTREAM_IP}
  port: 53
  do-ip6: no
  server-count: 1
  tcp-count: 100
  # Response rate limiting is compiled in and on by default (200 qps per /24 and answer):
  # it would truncate or drop most of the bench's queries. Off.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
  username: ""
  chroot: ""
  zonesdir: "{d}"
  database: ""
  zonelistfile: "{d}/nsd.zonelist"
  xfrdfile: "{d}/nsd.xfrd"
  xfrdir: "{d}"
  pidfile: "{d}/nsd.pid"
  logfile: "{d}/nsd.log"
  verbosity: 0
  hide-version: yes
  refuse-any: yes
remote-control:
  control-enable: no
zone:
  name: "{self.zone}"
  zonefile: "{self.zone_file}"
"""
        )
        return [self.binary, "-d", "-c", str(conf)]


class Dnsmasq(Server):
    """dnsmasq forwarding to the upstream only; ``cache_size=0`` is the forward-only variant."""

    def __init__(self, workdir: Path, cpus: str, cache_size: int) -> None:
        super().__init__(workdir, cpus)
        self.cache_size = cache_size
        self.name = "dnsmasq" if cache_size else "dnsmasq-nocache"
        self.endpoint = Endpoint("127.0.0.1", 5301)

    def check(self) -> None:
        self.binary = _require("dnsmasq", "dnsmasq-base")

    def command(self) -> list[str]:
        return [
            self.binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--log-facility=-",
            "--user=root",
            "--group=root",
            f"--server={UPSTREAM_IP}#53",
            f"--listen-address={self.endpoint.ip}",
            f"--port={self.endpoint.port}",
            "--bind-interfaces",
            f"--cache-size={self.cache_size}",
            # Default 150 would drop cold queries at --outstanding above it (e.g. 500).
            "--dns-forward-max=1000",
        ]


class Unbound(Server):
    """unbound as a caching forwarder to the upstream only (no recursion, no validation)."""

    name = "unbound"

    def __init__(self, workdir: Path, cpus: str) -> None:
        super().__init__(workdir, cpus)
        self.endpoint = Endpoint("127.0.0.1", 5302)

    def check(self) -> None:
        self.binary = _require("unbound", "unbound")

    def command(self) -> list[str]:
        d = self.workdir
        conf = d / "unbound.conf"
        conf.write_text(
            f"""server:
  interface: {self.endpoint.ip}
  port: {self.endpoint.port}
  do-ip4: yes
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  num-threads: 1
  so-reuseport: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: "{d}/unbound.pid"
  logfile: ""
  use-syslog: no
  verbosity: 0
  module-config: "iterator"
  do-not-query-localhost: no
  qname-minimisation: no
  prefetch: no
  msg-cache-size: 64m
  rrset-cache-size: 128m
  num-queries-per-thread: 1024
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: {UPSTREAM_IP}@53
"""
        )
        return [self.binary, "-d", "-c", str(conf)]


class Dnsdist(Server):
    """dnsdist load-balancing to the upstream as its only backend; ``cache_size=0`` has no
    packet cache (pure forwarding), otherwise a packet cache of that many entries.

    Its generated Lua config opens nothing but the one UDP+TCP frontend on loopback: no
    console (``--supervised``, no ``controlSocket``), no web server, no carbon, security
    polling off, and the backend marked up by hand so no health-check query is ever sent.
    dnsdist runs several threads (UDP listener, backend responder, TCP acceptor and workers,
    maintenance); ``taskset`` pins them all, and they are all in ``/proc/<pid>/stat``.
    """

    def __init__(self, workdir: Path, cpus: str, cache_size: int) -> None:
        super().__init__(workdir, cpus)
        self.cache_size = cache_size
        self.name = "dnsdist" if cache_size else "dnsdist-nocache"
        self.endpoint = Endpoint("127.0.0.1", 5303)

    def check(self) -> None:
        self.binary = _require("dnsdist", "dnsdist")

    def command(self) -> list[str]:
        conf = self.workdir / f"{self.name}.conf"
        cache = (
            f"pc = newPacketCache({self.cache_size}, {{maxTTL=86400, minTTL=0, "
            "temporaryFailureTTL=60, staleTTL=60, dontAge=false})\n"
            'getPool(""):setCache(pc)\n'
            if self.cache_size
            else "-- no packet cache: every query is forwarded\n"
        )
        conf.write_text(
            f"""-- generated by bench/servers.py
setSecurityPollSuffix("")
setLocal("{self.endpoint.ip}:{self.endpoint.port}")
setACL({{"127.0.0.0/8"}})
backend = newServer({{address="{UPSTREAM_IP}:53", name="nsd"}})
-- 1.7 has no healthCheckMode; a server forced up gets no health-check queries at all.
backend:setUp()
{cache}"""
        )
        return [self.binary, "--supervised", "--disable-syslog", "-C", str(conf)]


def fastdns_importable(python: str = sys.executable) -> str | None:
    """None when ``import fastdns`` works from the repository, else the reason it does not."""
    r = subprocess.run(
        [python, "-c", "import fastdns"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    if r.returncode == 0:
        return None
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}"


DATAPATHS = ("python", "compiled")


def _check_config(python: str, yaml_text: str) -> tuple[int, str]:
    """``fastdns check-config`` on ``yaml_text``: (exit status, last line of its output)."""
    with tempfile.TemporaryDirectory(prefix="fastdns-bench-check-") as d:
        cfg = Path(d) / "check.yaml"
        cfg.write_text(yaml_text)
        r = subprocess.run(
            [python, "-m", "fastdns", "check-config", str(cfg)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    lines = (r.stderr + r.stdout).strip().splitlines()
    return r.returncode, lines[0] if lines else ""


@functools.cache
def datapath_support(datapath: str, python: str = sys.executable) -> str | None:
    """None when this fastdns accepts ``fastdns.datapath: DATAPATH``, else why not.

    A fastdns from before the compiled datapath (an older tree measured with this bench, for
    an A/B) has no such key and only the Python datapath: its python rows then write no key
    and its compiled rows are skipped, as they are when the extension is not built
    (``check-config`` refuses ``compiled`` then, as ``serve`` would)."""
    code, line = _check_config(
        python,
        f"fastdns: {{datapath: {datapath}, resolv_conf: /dev/null, hosts_file: /dev/null, "
        "fallback: []}\n",
    )
    return None if code == 0 else f"fastdns.datapath: {datapath} not accepted ({line[:160]})"


class Fastdns(Server):
    """``python -m fastdns serve`` with its state file; ``workers`` processes.

    ``native=False`` turns the c-ares path off (``native: {enabled: false}``): every query
    that misses the cache is forwarded raw over UDP, the "fastdns-fwd" row.
    ``forward_first=False`` sends every A/AAAA miss through c-ares (``native.forward_first:
    false``), the "fastdns-cares" row: the native path as c-ares alone runs it.
    ``datapath`` is ``fastdns.datapath`` (python or compiled); a fastdns that has no such
    key runs only the Python datapath: the python rows then leave the key out, the compiled
    ones are skipped. ``cache_capacity`` is ``cache.capacity`` (None: fastdns's default).
    """

    def __init__(
        self,
        workdir: Path,
        cpus: str,
        workers: int,
        native: bool = True,
        forward_first: bool = True,
        *,
        datapath: str = "python",
        cache_capacity: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(workdir, cpus)
        if datapath not in DATAPATHS:
            raise ValueError(f"datapath {datapath!r}: not one of {DATAPATHS}")
        self.workers = workers
        self.native = native
        self.forward_first = forward_first
        self.datapath = datapath
        self.cache_capacity = cache_capacity
        self.name = name or (
            f"fastdns-{workers}w"
            if native and forward_first
            else "fastdns-fwd"
            if not native
            else "fastdns-cares"
        )
        self.state_file = workdir / f"{self.name}.state.json"
        self.state: dict[str, object] = {}
        self.datapath_key = False  # set by check(): write fastdns.datapath

    def check(self) -> None:
        reason = fastdns_importable()
        if reason is not None:
            raise ServerUnavailable(f"fastdns not available ({reason})")
        why = datapath_support(self.datapath)
        if why is None:
            self.datapath_key = True
        elif self.datapath != "python":
            raise ServerUnavailable(why)

    def rss_mb(self) -> list[float]:
        """Resident memory of each worker (the state file's pids), in MB; [] when unknown."""
        workers = self.state.get("workers")
        pids = [int(w) for w in workers] if isinstance(workers, list) else []
        return [r for r in (procstat.rss_mb(p) for p in pids) if r is not None]

    def config_yaml(self) -> str:
        """The whole config file; writes the resolv.conf and hosts file it names."""
        d = self.workdir
        (d / "resolv.conf").write_text(f"nameserver {UPSTREAM_IP}\n")  # port 53: no port field
        (d / "hosts").write_text("")
        # the host's NSS sources (myhostname, mdns) stay out of the comparison: no peer asks
        # them, and the machine's /etc/nsswitch.conf must not decide what a row measures
        (d / "nsswitch.conf").write_text("hosts: files dns\n")
        cache = "enabled: true" + (
            f", capacity: {self.cache_capacity}" if self.cache_capacity is not None else ""
        )
        datapath = f"  datapath: {self.datapath}\n" if self.datapath_key else ""
        return f"""hostResolver: {{enabled: true, ipv6: true}}
fastdns:
  listen: 127.0.0.1
  udp_port: 0
  tcp_port: 0
  resolv_conf: {d / "resolv.conf"}
  hosts_file: {d / "hosts"}
  fallback: []
  workers: {self.workers}
  cache: {{{cache}}}
  native:
    enabled: {str(self.native).lower()}
    forward_first: {str(self.forward_first).lower()}
    nsswitch: {d / "nsswitch.conf"}
{datapath}"""

    def command(self) -> list[str]:
        cfg = self.workdir / f"{self.name}.yaml"
        cfg.write_text(self.config_yaml())
        self.state_file.unlink(missing_ok=True)
        return [
            sys.executable,
            "-m",
            "fastdns",
            "serve",
            str(cfg),
            "--state-file",
            str(self.state_file),
            "--log-level",
            "warning",
        ]

    def env(self) -> dict[str, str] | None:
        pp = os.environ.get("PYTHONPATH")
        return os.environ | {"PYTHONPATH": f"{REPO}{os.pathsep}{pp}" if pp else str(REPO)}

    def _wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                state = json.loads(self.state_file.read_text())
            except (FileNotFoundError, ValueError):
                state = {}
            if state.get("ready"):
                self.state = state
                self.endpoint = Endpoint(str(state["listen"]), int(state["udp_port"]))
                return super()._wait_ready(deadline)
            self._check_alive()
            time.sleep(0.05)
        raise ServerFailed(f"{self.name}: no ready state file in {START_TIMEOUT:.0f} s")

    def roots(self) -> list[int]:
        # Workers are children of the server today; the state file's list also covers workers
        # that were re-parented or re-exec'd.
        workers = self.state.get("workers")
        extra = [int(w) for w in workers] if isinstance(workers, list) else []
        return sorted({*super().roots(), *extra})


LIMA_ENV = "FASTDNS_BENCH_LIMA"


class Lima(Server):
    """Lima's own host-agent DNS server, when a build of it is named by ``$FASTDNS_BENCH_LIMA``:
    a command that takes ``UDPPORT TCPPORT`` as ``limactl debug dns`` does (e.g.
    ``limactl debug dns``, or a small binary that starts ``pkg/hostagent/dns`` the same way).

    Lima reads ``/etc/resolv.conf`` itself and forwards to port 53, and answers A/AAAA/...
    through Go's resolver, which reads it too: the server runs in a mount namespace of its own
    where a generated resolv.conf naming only the loopback upstream is bind-mounted over
    ``/etc/resolv.conf``, and an empty hosts file over ``/etc/hosts``. Nothing else changes.
    ``-6`` (Lima's ``hostResolver.ipv6: true``), as the fastdns rows have it: AAAA is looked up.
    """

    name = "lima"

    def __init__(self, workdir: Path, cpus: str) -> None:
        super().__init__(workdir, cpus)
        self.endpoint = Endpoint("127.0.0.1", 5304)  # Lima always listens on 127.0.0.1
        self.lima: list[str] = []

    def check(self) -> None:
        self.lima = shlex.split(os.environ.get(LIMA_ENV, ""))
        if not self.lima:
            raise ServerUnavailable(
                f"no build of Lima's DNS server (set {LIMA_ENV}, see bench/README.md)"
            )
        if not os.access(self.lima[0], os.X_OK):
            raise ServerUnavailable(f"{LIMA_ENV}: {self.lima[0]} is not an executable")
        self.unshare = _require("unshare", "util-linux")

    def command(self) -> list[str]:
        d = self.workdir
        resolv, hosts = d / "lima-resolv.conf", d / "lima-hosts"
        resolv.write_text(f"nameserver {UPSTREAM_IP}\n")
        hosts.write_text("")
        script = (
            'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && '
            'shift 2 && exec "$@"'
        )
        return [
            self.unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(resolv),
            str(hosts),
            *self.lima,
            str(self.endpoint.port),
            str(self.endpoint.port + 1),
            "-6",
        ]
