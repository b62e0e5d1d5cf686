# Types of the compiled datapath, fastdns/serve/cengine/ (docs/datapath.md).
from collections.abc import Callable
from typing import Any, Final, Literal

ABI: Final[int]
MAX_BATCH: int
MAX_BACKLOG: int
SIZE_BUCKETS: tuple[float, ...]  # fastdns.metrics.stats.SIZE_BUCKETS, as tally.c bisects them

# ---- the Engine (cengine/engine.c) ------------------------------------------------------------
# What the relay hands up (cengine/relay.h): (kind 0 reply / 1 error / 2 timeout / 3 late reply
# / 4 late error / 5 follow, seq, the query as the client sent it, the reply or None, the
# client's address, read at, sent at, the query's fields: id, flags, qname length, qtype,
# qclass, qend, has_opt, udp_size, do, edns_version, key)
QueryParts = tuple[int, int, int, int, int, int, bool, int, bool, int, bytes]
# the cache's verdict on an answer (admission.py Verdict), None: not cacheable, False: not
# classified in C
Classified = tuple[int, int, int, tuple[int, ...], bool] | None | bool
RelayItem = tuple[
    int, int, bytes, bytes | None, Any, float, float, QueryParts, Classified, bytes | None
]
# an answer the engine sent and counted itself (tally.h): (seq, key, qend, reply, verdict,
# the reply sent)
StoredItem = tuple[
    int, bytes, int, bytes, tuple[int, int, int, tuple[int, ...], bool] | None, bytes
]
# Engine.relay_tallies: per (qtype, do, rcode, request size slot, its bytes, response size
# slot, its bytes) the answers, their durations by slot and in sum; per rcode the upstream's
# replies, their times by slot and in sum
RequestTally = tuple[int, bool, int, int, int, int, int, int, tuple[int, ...], float]
ReplyTally = tuple[int, int, tuple[int, ...], float]

class Engine:
    """A worker's UDP socket read and written in C (fastdns/serve/cengine/engine.c)."""

    def __init__(
        self,
        fd: int,
        batch: int,
        upcall: Callable[[bytes, Any], object],
        want_write: Callable[[], object],
        capacity: int = ...,
        *,
        relayed: Callable[[list[RelayItem], list[StoredItem]], object] | None = ...,
        arm: Callable[[float], object] | None = ...,
        max_inflight: int = ...,
    ) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def upstream_fd(self) -> int: ...
    @property
    def inflight(self) -> int: ...
    def on_upstream(self) -> None: ...
    def expire(self) -> float | None: ...
    def relay_policy(
        self,
        server: tuple[str, int] | None,
        timeout: float,
        deadline: float,
        mark: int,
        endings: tuple[bytes, ...] | None,
        suffix: bytes,
        ipv6_local: bool,
        native: tuple[tuple[int, ...], bool, int, bool, tuple[bytes, ...]] | None,
        nss: bool,
        /,
    ) -> None: ...
    def relay_cache(self, limits: tuple[int, int, int, int] | None, /) -> None: ...
    def relay_render(
        self, store: tuple[int, int, int] | None, lima_compat: bool, edns_max_udp: int, /
    ) -> None: ...
    def relay_tallies(self) -> tuple[list[RequestTally], list[ReplyTally]]: ...
    def key_add(self, key: bytes, /) -> None: ...
    def key_discard(self, key: bytes, /) -> None: ...
    def key_clear(self) -> None: ...
    def on_readable(self) -> None: ...
    def on_writable(self) -> bool: ...
    def sendto(self, data: bytes, addr: Any, /) -> None: ...
    def install(
        self,
        form: bytes,
        body: bytes,
        until: float,
        token: Any,
        stored: float = ...,
        stamp: int = ...,
        ttls: tuple[int, ...] = ...,
        /,
    ) -> bool: ...
    def drop(self, form: bytes, /) -> None: ...
    def clear(self) -> None: ...
    def allow(self, host: str, /) -> bool: ...
    def forget(self) -> None: ...
    # (token, hits, seconds, slower hits, their seconds, their counts by duration slot or
    # None, first hit's read time, last's)
    def fold(
        self,
    ) -> list[tuple[Any, int, float, int, float, tuple[int, ...] | None, float, float]]: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    def _fail_sends(self, errno: int, count: int, /) -> None: ...

# ---- the query parser and reply checks (cengine/wire.c, cengine/wirebind.c) ----------------
# parse_query's answer for a query: the fields of fastdns.dns.wire.Query in this order.
QueryFields = tuple[
    int,  # id
    int,  # flags
    bytes,  # qname: wire format, case kept
    int,  # qtype
    int,  # qclass
    int,  # qend: offset just past the question
    bool,  # has_opt
    int,  # udp_size
    bool,  # do
    int,  # edns_version
    bytes,  # key: lower-cased qname + type + class + DO byte + CD byte
]

def parse_query(
    data: bytes, /
) -> tuple[Literal["drop"]] | tuple[Literal["rcode"], int] | QueryFields: ...
def question_matches(reply: bytes, query: bytes, /) -> bool: ...
def reply_header(reply: bytes, /) -> tuple[int, int, bool] | None: ...
def classify(
    query: bytes, reply: bytes, limits: tuple[int, int, int, int], hint: int | None, /
) -> tuple[int, int, int, tuple[int, ...], bool] | None: ...
def render(
    query: bytes, reply: bytes, limits: tuple[int, int, int, int], store: tuple[int, int, int], /
) -> bytes | None: ...

# ---- end of the wire block ------------------------------------------------------------------
