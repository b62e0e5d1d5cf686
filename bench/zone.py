"""The generated zone and the three dnsperf query files (hot, cold, mix).

Everything is derived from a fixed seed, so two runs query exactly the same names. Record data
uses documentation and benchmarking ranges (RFC 2544 198.18.0.0/15, RFC 3849 2001:db8::/32); no
record points at a real host, and nothing here sends a packet.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

ZONE = "bench.example."  # not "test.": unbound ships a default local-zone for it (RFC 6761)
UPSTREAM_IP = "127.0.0.2"
SEED = 20240531

# Which names carry which records; every host name n<i> has an A record.
AAAA_EVERY = 2  # n<i> with i % 2 == 0 has AAAA, the others answer AAAA with NODATA
MX_EVERY = 10
TXT_EVERY = 10
SRV_EVERY = 20  # _sip._udp.n<i>
CNAME_EVERY = 10  # c<i> CNAME n<i>

# The mix workload's qtype shares, in percent; "cname" is an A query on a c<i> alias and "nx"
# an A or AAAA query on a name that does not exist. Shaped like a desktop/CI resolver: mostly
# A/AAAA pairs, some service lookups, a few misses (search-list expansion, typos).
MIX_SHARES: dict[str, int] = {
    "A": 48,
    "AAAA": 27,
    "cname": 6,
    "MX": 3,
    "TXT": 4,
    "SRV": 4,
    "nx": 8,
}
ZIPF_S = 1.0  # popularity exponent of names in the mix workload
NX_NAMES = 20_000  # distinct nonexistent names the mix draws from


@dataclass(frozen=True, slots=True)
class Sizes:
    names: int = 100_000  # host names n<i> in the zone
    hot: int = 1_000  # distinct names in the hot file (looped by dnsperf)
    cold: int = 100_000  # distinct names in the cold file (sent once)
    mix: int = 200_000  # queries in the mix file (sent once)


@dataclass(frozen=True, slots=True)
class Dataset:
    zone_file: Path
    query_files: dict[str, Path]
    records: int


def host(i: int) -> str:
    return f"n{i}.{ZONE}"


def _a(i: int) -> str:
    return f"198.{18 + (i >> 16 & 1)}.{i >> 8 & 0xFF}.{i & 0xFF}"


def write_zone(path: Path, names: int) -> int:
    """Write the zone file; return the number of resource records in it."""
    lines = [
        f"$ORIGIN {ZONE}",
        "$TTL 3600",
        "@ IN SOA ns1 hostmaster 1 3600 600 86400 300",  # 300 s negative TTL (RFC 2308 §5)
        "@ IN NS ns1",
        f"ns1 IN A {UPSTREAM_IP}",
    ]
    for i in range(names):
        n = f"n{i}"
        lines.append(f"{n} IN A {_a(i)}")
        if i % AAAA_EVERY == 0:
            lines.append(f"{n} IN AAAA 2001:db8::{i >> 16 & 0xFFFF:x}:{i & 0xFFFF:x}")
        if i % MX_EVERY == 0:
            lines.append(f"{n} IN MX 10 mx{i % 100}")
        if i % TXT_EVERY == 1:
            lines.append(f'{n} IN TXT "v=spf1 -all" "id={i}"')
        if i % SRV_EVERY == 2:
            lines.append(f"_sip._udp.{n} IN SRV 10 60 5060 {n}")
        if i % CNAME_EVERY == 3:
            lines.append(f"c{i} IN CNAME {n}")
    lines.extend(f"mx{j} IN A 198.18.255.{j}" for j in range(100))
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return len(lines) - 2  # minus $ORIGIN and $TTL


def _members(names: int, every: int, offset: int) -> list[int]:
    return list(range(offset, names, every))


def mix_queries(names: int, count: int, rng: random.Random) -> list[str]:
    """``count`` dnsperf lines: qtypes per MIX_SHARES, names by Zipf popularity."""
    kinds = list(MIX_SHARES)
    kind_of = rng.choices(kinds, weights=[MIX_SHARES[k] for k in kinds], k=count)
    # Zipf over a shuffled ranking, so popularity does not follow the numbering of the zone.
    ranking = list(range(names))
    rng.shuffle(ranking)
    cum = list(itertools.accumulate(1.0 / (r + 1) ** ZIPF_S for r in range(names)))
    pick = [ranking[r] for r in rng.choices(range(names), cum_weights=cum, k=count)]
    mx = _members(names, MX_EVERY, 0)
    txt = _members(names, TXT_EVERY, 1)
    srv = _members(names, SRV_EVERY, 2)
    cname = _members(names, CNAME_EVERY, 3)
    out: list[str] = []
    for kind, i in zip(kind_of, pick, strict=True):
        if kind in ("A", "AAAA"):
            out.append(f"{host(i)} {kind}")
        elif kind == "cname":  # the alias of a popular name, when it has one
            out.append(f"c{cname[i % len(cname)]}.{ZONE} A")
        elif kind == "MX":
            out.append(f"{host(mx[i % len(mx)])} MX")
        elif kind == "TXT":
            out.append(f"{host(txt[i % len(txt)])} TXT")
        elif kind == "SRV":
            out.append(f"_sip._udp.{host(srv[i % len(srv)])} SRV")
        else:
            qtype = "AAAA" if rng.random() < 0.4 else "A"
            out.append(f"nx{rng.randrange(NX_NAMES)}.{ZONE} {qtype}")
    return out


def build(workdir: Path, sizes: Sizes) -> Dataset:
    """Write the zone and the query files into ``workdir``."""
    rng = random.Random(SEED)
    zone_file = workdir / "bench.example.zone"
    records = write_zone(zone_file, sizes.names)
    order = list(range(sizes.names))
    rng.shuffle(order)
    hot = [f"{host(i)} A" for i in order[: sizes.hot]]
    cold = [f"{host(i)} A" for i in order[: min(sizes.cold, sizes.names)]]
    queries = {"hot": hot, "cold": cold, "mix": mix_queries(sizes.names, sizes.mix, rng)}
    files: dict[str, Path] = {}
    for name, lines in queries.items():
        files[name] = workdir / f"{name}.queries"
        files[name].write_text("\n".join(lines) + "\n", encoding="ascii")
    return Dataset(zone_file=zone_file, query_files=files, records=records)
