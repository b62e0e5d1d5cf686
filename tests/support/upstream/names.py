"""Conversions shared by the fake upstream's parts: text or number to dnspython's types."""

from __future__ import annotations

import dns.name
import dns.rcode
import dns.rdatatype


def as_name(name: str | dns.name.Name) -> dns.name.Name:
    return name if isinstance(name, dns.name.Name) else dns.name.from_text(name)


def as_rdtype(rdtype: str | int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rdtype)


def as_rcode(rcode: str | int) -> dns.rcode.Rcode:
    return dns.rcode.Rcode.make(rcode)


def norm(name: str) -> str:
    return name.rstrip(".").lower()
