"""Measure the process model: queries/s with 1 and 2 workers, and what a worker crash or a
reload costs in lost queries, with dnsperf against ``fastdns serve``.

    tests/netns-run /work/venv/bin/python bench/process_model.py [--seconds 8] [--runs 2]

Runs only inside a loopback-only network namespace. dnsmasq on 127.0.0.53:53 is the upstream
(it answers ``*.fwd.test`` itself, from an ``address=`` rule, so it is fast and never forwards);
fastdns answers ``*.static.test`` from hostResolver.hosts and forwards ``*.fwd.test`` raw (its
packet cache and the c-ares path are off: this measures the process model, not the caches).
Throughput runs let dnsperf go as fast as it can (``-c 20 -q 200``). The disruption runs hold
a fixed rate (``-Q``), kill a worker or send SIGHUP half way, and compare the lost queries with
an undisturbed run at the same rate (dnsperf counts what is still in flight at the end as lost).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = "127.0.0.53"
NAMES = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
NO_DETACH = (
    "import sys, fastdns.system.sockets as s\n"
    "s.leave_reuseport_group = lambda sock: False\n"
    "from fastdns.cli import main\n"
    "sys.argv[0] = 'fastdns'\n"
    "raise SystemExit(main())\n"
)


def check_isolated() -> None:
    names = sorted(name for _, name in socket.if_nameindex())
    if names != ["lo"] or os.environ.get("FASTDNS_TEST_NETNS") != "1":
        raise SystemExit(f"run me inside tests/netns-run (interfaces: {names})")


def start_dnsmasq(workdir: Path) -> subprocess.Popen[bytes]:
    with open(workdir / "dnsmasq.log", "wb") as log:
        proc = subprocess.Popen(
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--user=root",
                "--pid-file",
                f"--listen-address={UPSTREAM}",
                "--bind-interfaces",
                "--port=53",
                "--address=/fwd.test/10.1.1.1",
                "--cache-size=0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["dig", "+short", "+time=1", "+tries=1", f"@{UPSTREAM}", "a.fwd.test"],
            capture_output=True,
            text=True,
        ).stdout
        if "10.1.1.1" in out:
            return proc
        time.sleep(0.1)
    raise SystemExit("dnsmasq did not start")


def write_files(workdir: Path) -> Path:
    (workdir / "resolv.conf").write_text(f"nameserver {UPSTREAM}\n")
    (workdir / "hosts").write_text("127.0.0.1 localhost\n")
    hosts = {f"h{i}.static.test": f"10.2.{i // 250}.{i % 250 + 1}" for i in range(NAMES)}
    doc = {
        "hostResolver": {"hosts": hosts},
        "fastdns": {
            "resolv_conf": str(workdir / "resolv.conf"),
            "hosts_file": str(workdir / "hosts"),
            "fallback": [],
            "graceful_timeout": 2.0,
            # the raw forward path: no packet cache, no c-ares (and its query cache)
            "cache": {"enabled": False},
            "native": {"enabled": False},
        },
    }
    config = workdir / "fastdns.yaml"
    config.write_text(yaml.safe_dump(doc))
    (workdir / "static.txt").write_text("".join(f"h{i}.static.test A\n" for i in range(NAMES)))
    (workdir / "fwd.txt").write_text("".join(f"n{i}.fwd.test A\n" for i in range(NAMES)))
    return config


class Server:
    def __init__(self, config: Path, workdir: Path, workers: int, *, detach: bool = True) -> None:
        self.state_path = workdir / f"state-{workers}-{time.monotonic_ns()}.json"
        prog = ["-m", "fastdns"] if detach else ["-c", NO_DETACH]
        with open(workdir / "fastdns.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *prog,
                    "serve",
                    str(config),
                    "--state-file",
                    str(self.state_path),
                    "--workers",
                    str(workers),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                cwd=REPO,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self.state = json.loads(self.state_path.read_text())
                if self.state.get("ready"):
                    return
            except (FileNotFoundError, ValueError):
                pass
            if self.proc.poll() is not None:
                raise SystemExit("fastdns exited at start; see fastdns.log")
            time.sleep(0.05)
        raise SystemExit("fastdns not ready")

    def pids(self) -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == self.proc.pid:  # process group
                    out.append(int(entry))
        return out

    def cpu_ticks(self, pids: list[int] | None = None) -> int:
        total = 0
        for pid in self.pids() if pids is None else pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def dnsperf(
    server: Server, names: Path, seconds: float, *, rate: int = 0, during: Any = None
) -> dict[str, float]:
    args = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(server.state["udp_port"]),
        "-d",
        str(names),
        "-l",
        str(seconds),
        "-c",
        "20",
        "-q",
        "200",
        "-t",
        "1",
    ]
    if rate:
        args += ["-Q", str(rate)]
    before, supervisor_before = server.cpu_ticks(), server.cpu_ticks([server.proc.pid])
    busy_before, client_before = busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if during is not None:
        time.sleep(seconds / 2)
        during(server)
    out, _ = proc.communicate(seconds + 30)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy = busy_cpu_s() - busy_before
    cpu = (server.cpu_ticks() - before) / CLK_TCK
    supervisor = (server.cpu_ticks([server.proc.pid]) - supervisor_before) / CLK_TCK
    client = (
        client_after.ru_utime
        + client_after.ru_stime
        - client_before.ru_utime
        - client_before.ru_stime
    )
    # Everything else that ran meanwhile (other users of this shared machine): a noisy run.
    result = {
        "cpu_s": cpu,
        "supervisor_cpu_s": supervisor,
        "dnsperf_cpu_s": round(client, 2),
        "others_cpu_s": round(busy - cpu - client, 2),
    }
    # (after a kill or a reload, the CPU of the processes that exited is not counted)
    for key, pattern in (
        ("sent", r"Queries sent:\s+(\d+)"),
        ("completed", r"Queries completed:\s+(\d+)"),
        ("lost", r"Queries lost:\s+(\d+)"),
        ("qps", r"Queries per second:\s+([\d.]+)"),
    ):
        m = re.search(pattern, out)
        result[key] = float(m.group(1)) if m else float("nan")
    result["us_per_query"] = cpu / max(result["completed"], 1) * 1e6
    return result


def busy_cpu_s() -> float:
    """Non-idle CPU time of the whole machine (/proc/stat), in seconds."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def kill_worker(server: Server) -> None:
    os.kill(server.state["workers"][0], signal.SIGKILL)


def reload(server: Server) -> None:
    server.proc.send_signal(signal.SIGHUP)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=10000, help="static names, disruption runs")
    parser.add_argument("--fwd-rate", type=int, default=2500, help="forwarded names, ditto")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    check_isolated()
    workdir = Path(tempfile.mkdtemp(prefix="fastdns-process-model-"))
    upstream = start_dnsmasq(workdir)
    config = write_files(workdir)
    rows = []
    try:
        for workers in () if args.skip_throughput else (1, 2):
            for workload in ("static", "fwd"):
                for run in range(args.runs):
                    server = Server(config, workdir, workers)
                    try:
                        r = dnsperf(server, workdir / f"{workload}.txt", args.seconds)
                    finally:
                        server.stop()
                    rows.append(
                        {
                            "test": "throughput",
                            "workers": workers,
                            "workload": workload,
                            "run": run,
                            **r,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
        for workload in ("static", "fwd"):
            for name, during, detach in (
                ("baseline", None, True),
                ("kill -9", kill_worker, True),
                ("reload", reload, True),
                ("reload, no detach", reload, False),
            ):
                rate = args.rate if workload == "static" else args.fwd_rate
                for run in range(args.runs):
                    server = Server(config, workdir, 2, detach=detach)
                    try:
                        r = dnsperf(
                            server,
                            workdir / f"{workload}.txt",
                            args.seconds,
                            rate=rate,
                            during=during,
                        )
                    finally:
                        server.stop()
                    rows.append(
                        {
                            "test": name,
                            "workers": 2,
                            "workload": workload,
                            "run": run,
                            "rate": rate,
                            **r,
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
    (workdir / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"results: {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
