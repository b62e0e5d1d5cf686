"""SERVFAILs while resolv.conf is rewritten in place under load (docs/configuration.md, "Files
rewritten in place").

``fastdns serve`` (two workers, default settings) forwards to a FakeUpstream; four client
threads ask two cached names (TTL 300) and two uncached ones (TTL 0) while resolv.conf is
truncated, left empty ``--blank`` seconds, and written again with the same contents,
``--rewrites`` times. Prints the replies by rcode and how often the upstream was asked for the
cached names after warm-up. Run it inside the loopback-only namespace:

    tests/netns-run .venv/bin/python bench/file_rewrites.py
    tests/netns-run .venv/bin/python bench/file_rewrites.py --code /tmp/old-tree  # older tree

Not part of the test suite (``tests/e2e/test_file_rewrites.py`` is).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.load import QueryLoad  # noqa: E402
from support.server import FastDNSProcess, resolv_conf_text  # noqa: E402
from support.upstream import FakeUpstream  # noqa: E402

NAMES = {"c1.test": 300, "c2.test": 300, "u1.test": 0, "u2.test": 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewrites", type=int, default=50)
    parser.add_argument("--blank", type=float, default=0.15)
    parser.add_argument("--gap", type=float, default=0.35, help="seconds between rewrites")
    parser.add_argument("--code", help="a fastdns source tree to run instead of this one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeUpstream("127.0.0.2") as up:
        up.add_zone("test")
        for i, (name, ttl) in enumerate(NAMES.items()):
            up.add(name, "A", f"192.0.2.{i + 1}", ttl=ttl)
        resolv = Path(tmp) / "resolv.conf"
        text = resolv_conf_text(up)
        resolv.write_text(text)
        env = {"PYTHONPATH": args.code} if args.code else None
        config = {"fastdns": {"workers": 2, "resolv_conf": str(resolv)}}
        with FastDNSProcess(config, Path(tmp), env=env) as server:
            loads = [
                QueryLoad(server.address, server.udp_port, name, interval=0.005) for name in NAMES
            ]
            for load in loads:
                load.start()
            time.sleep(1.0)
            warm = sum(up.count(n, "A") for n, ttl in NAMES.items() if ttl)
            t0 = time.monotonic()
            for _ in range(args.rewrites):
                with open(resolv, "w") as fh:
                    fh.flush()
                    time.sleep(args.blank)
                    fh.write(text)
                time.sleep(args.gap)
            time.sleep(1.5)
            for load in loads:
                load.stop()
            took = time.monotonic() - t0
            cached_asks = sum(up.count(n, "A") for n, ttl in NAMES.items() if ttl) - warm
    total: Counter[str] = Counter()
    for load, (name, ttl) in zip(loads, NAMES.items(), strict=True):
        rcodes = Counter("NOERROR" if "." in a else a for a in load.answers.elements())
        rcodes["(no reply)"] = load.failed
        total.update(rcodes)
        print(f"  {name} (TTL {ttl}): {dict(rcodes)}")
    print(
        f"fastdns from {args.code or REPO}: {args.rewrites} in-place rewrites "
        f"(blank {args.blank * 1000:.0f} ms) in {took:.0f}s: {dict(total)}; upstream asked "
        f"{cached_asks} times for the cached names after warm-up"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
