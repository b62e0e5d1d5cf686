"""``python -m bench.flood [--packets 1000000]``: a million hostile packets against the real
``fastdns serve`` (2 workers) in a loopback-only network namespace.

The flood of tests/e2e/test_flood.py (``tests/support/flood.py``: random and mutated UDP
datagrams, hostile TCP streams, a valid query every 100 datagrams checked against the
FakeUpstream's answer), scaled up. Prints packets sent, valid queries answered correctly,
workers replaced, peak RSS per worker and elapsed time; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import netns

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the FakeUpstream and server runner of the tests
RSS_LIMIT_KB = 200 * 1024
UPSTREAM = "127.0.0.53"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=1_000_000, help="UDP datagrams (default 1e6)")
    p.add_argument(
        "--streams",
        type=int,
        default=None,
        help="TCP streams (default: one per 1,000 datagrams, at least 1,000)",
    )
    p.add_argument("--seed", type=int, default=1, help="random seed: a run is reproducible")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--budget", type=float, default=900.0, help="seconds before giving up")
    return p


def _serve_upstream(address: str, ready: Any, stop: Any) -> None:
    """The FakeUpstream of tests/e2e/test_flood.py, serving until ``stop`` is set."""
    from support.flood import NAMES, ZONE, address_of, name_of
    from support.upstream import FakeUpstream

    with FakeUpstream(address) as up:
        up.add_zone(ZONE)
        up.add_zone("fuzz.test")  # the names of the mutated queries: NXDOMAIN, at once
        for i in range(NAMES):
            up.add(name_of(i), "A", address_of(i))
        ready.set()
        stop.wait(3600)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if not netns.isolated():
        netns.reexec_isolated(argv, module="bench.flood")  # does not return
    netns.bring_up_loopback()
    from support.fixtures import FastDNSFactory
    from support.flood import Flood, name_of

    streams = args.streams if args.streams is not None else max(1_000, args.packets // 1_000)
    # The FakeUpstream serves from its own process: in this one it would share the GIL with
    # the flood's sending loop and answer late, and fastdns would rightly answer SERVFAIL.
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    upstream = multiprocessing.Process(target=_serve_upstream, args=(UPSTREAM, ready, stop))
    upstream.start()
    if not ready.wait(10):
        upstream.kill()
        raise SystemExit("bench.flood: the FakeUpstream did not start")
    with tempfile.TemporaryDirectory(prefix="fastdns-flood-") as tmp:
        factory = FastDNSFactory(Path(tmp))
        try:
            server = factory(
                {"fastdns": {"workers": args.workers, "upstream_timeout": 1.0, "deadline": 2.0}},
                upstreams=[UPSTREAM],
            )
            workers = list(server.state["workers"])
            peak = {pid: rss_kb(pid) for pid in workers}

            def tick(n: int) -> None:
                for pid in workers:
                    peak[pid] = max(peak[pid], rss_kb(pid))
                if n and n % 100_000 == 0:
                    print(f"  {n:,} packets, {time.monotonic() - t0:.0f}s", flush=True)

            flood = Flood(server.address, server.udp_port, server.tcp_port, seed=args.seed)
            t0 = time.monotonic()
            try:
                # every 100th datagram is a valid query: send ``packets`` junk ones besides
                tally = flood.run(
                    args.packets + args.packets // 99, streams, budget=args.budget, tick=tick
                )
            finally:
                flood.close()
            elapsed = time.monotonic() - t0
            tick(0)
            after = (server.read_state() or {}).get("workers", [])
            replaced = len(set(workers) - set(after))
            alive = server.proc.poll() is None and server.query(name_of(3)).rcode() == 0
        finally:
            factory.close()
            stop.set()
            upstream.join(10)
    sent = tally.udp_packets + tally.valid_sent + tally.retries
    print(f"datagrams sent:        {sent:,} ({tally.udp_packets:,} hostile)")
    print(f"TCP streams:           {tally.tcp_streams:,}")
    print(
        f"valid queries:         {tally.valid_ok:,} of {tally.valid_sent:,} answered correctly"
        f" ({tally.retries} UDP retries)"
    )
    print(f"replies to junk:       {tally.replies_to_junk:,} read back (FORMERR/NOTIMP)")
    print(f"workers replaced:      {replaced}")
    print("peak RSS per worker:   " + ", ".join(f"{kb / 1024:.1f} MB" for kb in peak.values()))
    print(f"elapsed:               {elapsed:.1f}s")
    print(f"server answers after:  {'yes' if alive else 'NO'}")
    failures = list(tally.failures)
    if replaced:
        failures.append(f"{replaced} workers replaced")
    if max(peak.values()) > RSS_LIMIT_KB:
        failures.append(f"a worker's RSS exceeded {RSS_LIMIT_KB // 1024} MB")
    if not alive:
        failures.append("the server no longer answers")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
