# Types of the compiled datapath, fastdns/serve/cengine/ (docs/datapath.md).
from typing import Final, Literal

ABI: Final[int]

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

# ---- end of the wire block ------------------------------------------------------------------
