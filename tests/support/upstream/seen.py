"""The recorded-query type: one query as a fake upstream received it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import dns.message

Transport = Literal["udp", "tcp"]


@dataclass(frozen=True, slots=True)
class Seen:
    """One query as the fake received it. ``qname`` keeps the client's case, no final dot."""

    transport: Transport
    qname: str  # "" when the query could not be parsed
    qtype: str  # "A", "TYPE65534", "" when unparsed
    qid: int  # -1 when shorter than a header
    flags: int
    raw_bytes: bytes
    src: tuple[Any, ...]
    edns: int | None = None  # the client's advertised UDP size, None without OPT
    at: float = 0.0  # time.monotonic() on receipt

    def message(self) -> dns.message.Message:
        return dns.message.from_wire(self.raw_bytes)


Handler = Callable[[dns.message.Message, Seen], dns.message.Message | bytes | None]
