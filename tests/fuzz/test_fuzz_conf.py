"""Fuzz: the host's files, which fastdns reads but does not own (a Lima host's resolv.conf and
hosts file may hold anything): ``parse_resolv_conf`` and ``HostsFile.refresh``.

Never an exception; nameservers are IP addresses a socket can take, the options are in the
ranges c-ares accepts, hosts names are lower case and encodable on the wire.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from support.fuzzing import FUZZ

from fastdns.config.schema import canonical_name
from fastdns.dns import wire
from fastdns.resolve.hosts import HostsFile
from fastdns.resolve.resolvconf import parse_resolv_conf

WORDS = st.sampled_from(
    (
        "nameserver",
        "search",
        "domain",
        "options",
        "ndots:",
        "timeout:",
        "attempts:",
        "rotate",
        "127.0.0.1",
        "::1",
        "fe80::1%lo",
        "1.2.3.4%eth0",
        "10.0.0.300",
        "0x7f.1",
        "-1",
        "1e400",
        "nan",
        "inf",
        "99999999999999999999",
        "#",
        ";",
        ".",
        "..",
        "a..b",
        "localhost",
        "LOCALHOST.",
        "xn--nxasmq6b",
        "ünï",
        "*",
        "\t",
        "\x00",
        "\ufeff",
        "\r",
    )
)
TOKENS = st.one_of(WORDS, st.text(max_size=12))
OPTIONS = st.builds(
    "{}:{}".format,
    st.sampled_from(("ndots", "timeout", "attempts")),
    st.one_of(
        WORDS,
        st.integers(-(2**40), 2**40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
    ),
)
LINE = st.one_of(
    st.lists(TOKENS, max_size=6).map(" ".join),
    st.tuples(
        st.sampled_from(("nameserver", "search", "domain", "options", " options")),
        st.lists(st.one_of(OPTIONS, TOKENS), min_size=1, max_size=4).map(" ".join),
    ).map(" ".join),
)
LINES = st.lists(LINE, max_size=12).map("\n".join)


def valid_ip(value: str) -> bool:
    try:
        addr = ipaddress.ip_address(value)  # IPv6 may carry a %scope (RFC 4007); IPv4 may not
    except ValueError:
        return False
    return addr.version == 6 or "%" not in value


@FUZZ
@given(text=st.one_of(LINES, st.text(max_size=400)))
def test_resolv_conf_parses_to_sane_values(text: str) -> None:
    rc = parse_resolv_conf(text)
    for server in rc.nameservers:
        assert valid_ip(server), server
    assert 0 <= rc.ndots <= 15
    assert math.isfinite(rc.timeout) and rc.timeout > 0
    assert 1 <= rc.attempts <= 5
    assert all(isinstance(s, str) and s for s in rc.search)


@FUZZ
@given(
    text=st.one_of(
        LINES,
        st.text(max_size=400),
        st.lists(
            st.tuples(
                st.sampled_from(("127.0.0.1", "::1", "fe80::1%lo", "10.0.0.300", "x")),
                st.lists(TOKENS, max_size=4).map(" ".join),
            ).map(" ".join),
            max_size=8,
        ).map("\n".join),
    )
)
def test_hosts_file_parses_to_lower_case_wire_names(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hosts")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write(text)
        hosts = HostsFile(path)
        assert hosts.refresh()
    for name, ips in hosts.names.items():
        assert name == canonical_name(name) and name == name.lower()
        wire.name_to_wire(name)  # encodable: a query can ask it, PTR can answer it
        for ip in ips:
            assert valid_ip(ip) or ipaddress.ip_address(ip.split("%", 1)[0])
        for qtype in (wire.A, wire.AAAA):
            hosts.lookup(name, qtype, True)
    for rev, names in hosts.reverse.items():
        answer = hosts.lookup(rev, wire.PTR, True)
        assert answer is not None and len(answer.records) == len(names)
