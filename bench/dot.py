"""DoT forwarding, cold: CPU per query of fastdns (``fastdns.forward.tls``) against unbound's
``forward-tls-upstream``, both forwarding to the same DNS-over-TLS upstream (docs/tls.md).

    python -m bench.dot [--queries N] [--outstanding N]

Isolated like the main bench (``bench.netns``: a network namespace with only ``lo``). The
upstream is unbound serving DNS over TLS on 127.0.0.2:853 with a certificate generated here
(``openssl``), answering every ``n<i>.bench.example`` from a ``redirect`` local zone. Each
forwarder is started fresh (so every query is a cache miss: cold), listens on UDP, and gets
``--queries`` distinct names from dnsperf (``-n 1``, ``--outstanding`` in flight); its CPU
time (user + system, all its processes, from /proc) over the run divided by the queries
answered is the row. Both verify the upstream's certificate and name and keep one pooled
connection per worker/thread; fastdns runs one worker, unbound one thread.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import netns, procstat
from bench.servers import Endpoint, answers

UPSTREAM = "127.0.0.2"
NAME = "dns.bench.example"  # the upstream certificate's name
FORWARDER = Endpoint("127.0.0.3", 53)
PROBE = "n0.bench.example"  # bench.servers.answers asks for this one (bench.zone.host(0))
EC = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def certs(d: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for NAME and UPSTREAM."""

    def openssl(args: str) -> None:
        subprocess.run(["openssl", *args.split()], cwd=d, check=True, capture_output=True)

    openssl(
        f"req -x509 {EC} -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca"
        " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign"
    )
    (d / "ext").write_text(
        f"subjectAltName=DNS:{NAME},IP:{UPSTREAM}\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl(f"req {EC} -keyout server.key -out server.csr -subj /CN={NAME}")
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem"
        " -days 2 -extfile ext"
    )
    return d / "ca.pem", d / "server.pem", d / "server.key"


UNBOUND_COMMON = """  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 1
  so-reuseport: no
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
remote-control:
  control-enable: no
"""


def upstream_conf(d: Path, cert: Path, key: Path) -> Path:
    conf = d / "upstream.conf"
    conf.write_text(
        f"""server:
  interface: {UPSTREAM}@853
  tls-port: 853
  tls-service-key: "{key}"
  tls-service-pem: "{cert}"
  incoming-num-tcp: 100
  local-zone: "." static
  local-zone: "bench.example." redirect
  local-data: "bench.example. 300 IN A 198.18.0.1"
"""
        + UNBOUND_COMMON.format(d=d)
    )
    return conf


def unbound_forwarder_conf(d: Path, ca: Path) -> Path:
    conf = d / "unbound-fwd.conf"
    conf.write_text(
        f"""server:
  interface: {FORWARDER.ip}@{FORWARDER.port}
  tls-cert-bundle: "{ca}"
  msg-cache-size: 64m
  rrset-cache-size: 64m
  prefetch: no
  do-not-query-localhost: no
"""
        + UNBOUND_COMMON.format(d=d)
        + f"""forward-zone:
  name: "."
  forward-addr: {UPSTREAM}@853#{NAME}
  forward-tls-upstream: yes
"""
    )
    return conf


def fastdns_conf(d: Path, ca: Path) -> Path:
    (d / "resolv.conf").write_text(f"nameserver {UPSTREAM}\n")
    (d / "hosts").write_text("127.0.0.1 localhost\n")
    conf = d / "fastdns.yaml"
    conf.write_text(
        f"""fastdns:
  listen: {FORWARDER.ip}
  udp_port: {FORWARDER.port}
  tcp_port: {FORWARDER.port}
  workers: 1
  resolv_conf: {d / "resolv.conf"}
  hosts_file: {d / "hosts"}
  fallback: []
  forward:
    tls: {{enabled: true, tls_name: {NAME}, ca_file: {ca}}}
"""
    )
    return conf


def start(argv: list[str], log: Path, probe: Endpoint | None) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
    deadline = time.monotonic() + 20
    while probe is not None and not answers(probe):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise SystemExit(f"{argv[0]} did not come up:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(name: str, proc: subprocess.Popen[bytes], d: Path, args: argparse.Namespace) -> dict:
    """Run dnsperf against the forwarder once; its CPU per answered query."""
    data = d / f"{name}.queries"
    data.write_text("".join(f"q{name}{i}.bench.example A\n" for i in range(args.queries)))
    before = procstat.snapshot()
    pids = procstat.descendants([proc.pid], before)
    t0 = time.monotonic()
    out = subprocess.run(
        [
            *("dnsperf", "-s", FORWARDER.ip, "-p", str(FORWARDER.port), "-d", str(data)),
            *("-n", "1", "-q", str(args.outstanding), "-l", "120", "-t", "5"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wall = time.monotonic() - t0
    after = procstat.snapshot()
    ticks, _ = procstat.delta(before, after, pids | procstat.descendants([proc.pid], after))
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    noerror = re.search(r"NOERROR (\d+)", out)
    cpu = procstat.ticks_to_s(ticks)
    return {
        "server": name,
        "queries": args.queries,
        "answered": completed,
        "noerror": int(noerror.group(1)) if noerror else 0,
        "qps": completed / wall if wall else 0.0,
        "cpu_s": cpu,
        "us_per_query": cpu / completed * 1e6 if completed else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.dot", description=__doc__.split("\n")[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--outstanding", type=int, default=100)
    args = p.parse_args(argv)
    if not netns.isolated():
        netns.reexec_isolated(sys.argv[1:], module="bench.dot")
    netns.bring_up_loopback()
    for tool in ("unbound", "dnsperf", "openssl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"bench.dot: {tool} not found (scripts/install)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="bench-dot-") as tmp:
        d = Path(tmp)
        ca, cert, key = certs(d)
        up = start(["unbound", "-d", "-c", str(upstream_conf(d, cert, key))], d / "up.log", None)
        time.sleep(0.5)
        rows = []
        try:
            runs = {
                "fastdns-dot": [sys.executable, "-m", "fastdns", "serve", str(fastdns_conf(d, ca))],
                "unbound-dot": ["unbound", "-d", "-c", str(unbound_forwarder_conf(d, ca))],
            }
            for name, cmd in runs.items():
                proc = start(cmd, d / f"{name}.log", FORWARDER)
                try:
                    rows.append(measure(name, proc, d, args))
                finally:
                    stop(proc)
        finally:
            stop(up)
    print(f"DoT forwarding, cold: {args.queries} distinct names, {args.outstanding} in flight")
    print(f"{'server':<14}{'answered':>10}{'NOERROR':>10}{'qps':>10}{'CPU s':>8}{'us/query':>10}")
    for r in rows:
        print(
            f"{r['server']:<14}{r['answered']:>10}{r['noerror']:>10}{r['qps']:>10.0f}"
            f"{r['cpu_s']:>8.2f}{r['us_per_query']:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
