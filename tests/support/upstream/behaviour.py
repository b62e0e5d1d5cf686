"""How a fake upstream misbehaves: rules set by ``FakeUpstream.behave`` and the behaviour one
query gets from them (the most specific matching rule wins, knob by knob)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

import dns.name

from .names import as_name, as_rcode, as_rdtype
from .seen import Transport

# How a spoofed reply (wrong ID or wrong question) is sent: alone, or followed by the real one.
Spoof = Literal["only", "then-correct"]
Scope = tuple[dns.name.Name | None, int | None, Transport | None]


@dataclass(slots=True)
class Rule:
    knobs: dict[str, Any]
    remaining: int | None  # queries it still applies to; None = forever


@dataclass(slots=True)
class Behaviour:
    rcode: dns.rcode.Rcode | None = None
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False
    wrong_id: Spoof | None = None
    wrong_question: Spoof | None = None


def spoof(value: bool | Spoof | None) -> Spoof | None:
    if value is None or value is False:
        return None
    if value is True:
        return "only"
    if value not in ("only", "then-correct"):
        raise ValueError(f"expected True, 'only' or 'then-correct', got {value!r}")
    return value


class Rules:
    """The behaviour rules of one fake, keyed by scope (name, qtype, transport); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: dict[Scope, Rule] = {}

    def set(
        self,
        name: str,
        qtype: str | int | None,
        transport: Transport | None,
        times: int | None,
        knobs: dict[str, Any],
    ) -> None:
        """Replace the rule for this scope; no knobs clears it (see ``FakeUpstream.behave``)."""
        scope: Scope = (
            None if name == "*" else as_name(name),
            None if qtype is None else as_rdtype(qtype),
            transport,
        )
        if "rcode" in knobs:
            knobs["rcode"] = as_rcode(knobs["rcode"])
        if "delay" in knobs:
            knobs["delay"] = float(knobs["delay"])
        for key in ("wrong_id", "wrong_question"):
            if key in knobs:
                knobs[key] = spoof(knobs[key])
        with self._lock:
            if knobs:
                self._rules[scope] = Rule(knobs, times)
            else:
                self._rules.pop(scope, None)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def for_query(self, qname: dns.name.Name, qtype: int, transport: Transport) -> Behaviour:
        """The behaviour for one query; counts it against every ``times=N`` rule that matched."""
        with self._lock:
            matching = [
                (scope, rule)
                for scope, rule in self._rules.items()
                if scope[0] in (None, qname)
                and scope[1] in (None, qtype)
                and scope[2] in (None, transport)
                and (rule.remaining is None or rule.remaining > 0)
            ]
            matching.sort(key=lambda sr: tuple(part is not None for part in sr[0]))
            b = Behaviour()
            for _, rule in matching:  # least specific first, so the most specific wins
                for key, value in rule.knobs.items():
                    setattr(b, key, value)
                if rule.remaining is not None:
                    rule.remaining -= 1
            return b
