"""The fake upstream's data: RRsets and the zones it is authoritative for, and how a question
is answered from them (CNAME chasing, NXDOMAIN/NODATA with the SOA, RFC 2308)."""

from __future__ import annotations

import ipaddress
import threading

import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TXT import TXT

from .names import as_name, as_rdtype

RecordValue = str | bytes | list[str | bytes] | tuple[str | bytes, ...] | dns.rdata.Rdata

_MAX_CNAME_CHAIN = 16


class Zone:
    """Records and zone apexes; thread-safe (tests add records while the server answers)."""

    def __init__(self, outside_rcode: dns.rcode.Rcode) -> None:
        self.outside_rcode = outside_rcode
        self._lock = threading.RLock()
        self._nodes: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._zones: set[dns.name.Name] = set()

    def add(self, name: str, rdtype: str | int, *values: RecordValue, ttl: int = 300) -> None:
        """See ``FakeUpstream.add``."""
        if not values:
            raise ValueError("add() needs at least one value")
        owner, rtype = as_name(name), as_rdtype(rdtype)
        rdatas = [_rdata(rtype, v) for v in values]
        with self._lock:
            node = self._nodes.setdefault(owner, {})
            rrset = node.get(rtype)
            if rrset is None:
                rrset = node[rtype] = dns.rrset.RRset(owner, dns.rdataclass.IN, rtype)
            for rd in rdatas:
                rrset.add(rd, ttl)

    def big(self, name: str, n: int, *, ttl: int = 300) -> None:
        """Give ``name`` ``n`` A records (198.18.0.0/15, RFC 2544), to overflow 512 bytes."""
        base = int(ipaddress.IPv4Address("198.18.0.1"))
        self.add(name, "A", *(str(ipaddress.IPv4Address(base + i)) for i in range(n)), ttl=ttl)

    def remove(self, name: str, rdtype: str | int | None = None) -> None:
        """Drop the RRset ``name``/``rdtype``, or every RRset at ``name``."""
        owner = as_name(name)
        with self._lock:
            if rdtype is None:
                self._nodes.pop(owner, None)
            else:
                self._nodes.get(owner, {}).pop(as_rdtype(rdtype), None)

    def add_zone(self, apex: str, *, soa_minimum: int, soa_ttl: int, serial: int) -> None:
        """See ``FakeUpstream.add_zone``."""
        origin = as_name(apex)
        soa = f"ns.{origin} hostmaster.{origin} {serial} 3600 600 86400 {soa_minimum}"
        with self._lock:
            self._zones.add(origin)
            self.remove(apex, "SOA")
            self.add(apex, "SOA", soa, ttl=soa_ttl)

    def fill(self, response: dns.message.Message, forced: dns.rcode.Rcode | None) -> None:
        """Set the rcode, answer and authority of ``response`` to its question (``forced``: that
        rcode and no records, the SOA for NOERROR/NXDOMAIN)."""
        q = response.question[0]
        with self._lock:
            if forced is not None:
                response.set_rcode(forced)
                if forced in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    response.authority.extend(self._soa_for(q.name))
            elif q.rdclass != dns.rdataclass.IN:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                rcode, answer, authority = self._resolve(q.name, q.rdtype)
                response.set_rcode(rcode)
                response.answer.extend(answer)
                response.authority.extend(authority)

    def _resolve(
        self, qname: dns.name.Name, qtype: int
    ) -> tuple[dns.rcode.Rcode, list[dns.rrset.RRset], list[dns.rrset.RRset]]:
        """rcode, answer and authority for ``qname``/``qtype``, chasing CNAMEs in our data."""
        answer: list[dns.rrset.RRset] = []
        name, visited = qname, set[dns.name.Name]()
        for _ in range(_MAX_CNAME_CHAIN):
            visited.add(name)
            node = self._nodes.get(name)
            if not node:
                if self._has_descendants(name):  # empty non-terminal: NODATA (RFC 8020)
                    return dns.rcode.NOERROR, answer, self._soa_for(name)
                if self._zone_of(name) is None:
                    # A chain that leaves our data ends here, as if chased elsewhere.
                    return (dns.rcode.NOERROR if answer else self.outside_rcode), answer, []
                return dns.rcode.NXDOMAIN, answer, self._soa_for(name)  # RFC 6604 §2
            if qtype == dns.rdatatype.ANY:
                return dns.rcode.NOERROR, answer + list(node.values()), []
            if qtype in node:
                return dns.rcode.NOERROR, [*answer, node[qtype]], []
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                return dns.rcode.NOERROR, answer, self._soa_for(name)  # NODATA
            answer.append(cname)
            name = next(iter(cname)).target
            if name in visited:  # a loop: return what we have
                break
        return dns.rcode.NOERROR, answer, []

    def _has_descendants(self, name: dns.name.Name) -> bool:
        return any(
            n != name and n.is_subdomain(name) and rrsets for n, rrsets in self._nodes.items()
        )

    def _zone_of(self, name: dns.name.Name) -> dns.name.Name | None:
        apexes = [z for z in self._zones if name.is_subdomain(z)]
        return max(apexes, key=len) if apexes else None

    def _soa_for(self, name: dns.name.Name) -> list[dns.rrset.RRset]:
        apex = self._zone_of(name)
        soa = self._nodes.get(apex, {}).get(dns.rdatatype.SOA) if apex is not None else None
        if apex is None or soa is None:
            return []
        rd = next(iter(soa))
        return [dns.rrset.from_rdata(apex, min(soa.ttl, rd.minimum), rd)]  # RFC 2308 §5


def _rdata(rdtype: dns.rdatatype.RdataType, value: RecordValue) -> dns.rdata.Rdata:
    if isinstance(value, dns.rdata.Rdata):
        return value
    if rdtype == dns.rdatatype.TXT:
        strings = [value] if isinstance(value, str | bytes) else list(value)
        raw = [s.encode() if isinstance(s, str) else s for s in strings]
        return TXT(dns.rdataclass.IN, dns.rdatatype.TXT, raw)
    if not isinstance(value, str):
        raise TypeError(f"rdata for {dns.rdatatype.to_text(rdtype)} must be text or Rdata")
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False
    )
