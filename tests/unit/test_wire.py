"""fastdns.wire: header+question parsing, reply building, truncation and splicing on bytes."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from fastdns.dns import compose, wire


def query_bytes(
    name: str = "Example.COM",
    rdtype: str = "A",
    *,
    qid: int = 0x1234,
    edns: int | None = None,
    do: bool = False,
    options: list[dns.edns.Option] | None = None,
    rdclass: str = "IN",
) -> bytes:
    if edns is None and not do and not options:
        return dns.message.make_query(name, rdtype, rdclass, id=qid).to_wire()
    q = dns.message.make_query(
        name,
        rdtype,
        rdclass,
        use_edns=0,
        payload=edns or 1232,
        want_dnssec=do,
        options=options,
        id=qid,
    )
    return q.to_wire()


def header(
    qid: int = 1, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x04test\x00\x00\x01\x00\x01"


def malformed(buf: bytes) -> wire.Malformed:
    with pytest.raises(wire.Malformed) as info:
        wire.parse_query(buf)
    return info.value


# ------------------------------------------------------------------------------ parse_query


def test_parse_plain_query() -> None:
    buf = query_bytes()
    q = wire.parse_query(buf)
    assert q.id == 0x1234
    assert q.rd and not q.cd
    assert q.qname == b"\x07Example\x03COM\x00"  # case kept
    assert q.name == "Example.COM."
    assert (q.qtype, q.qclass) == (wire.A, wire.CLASS_IN)
    assert q.qend == len(buf)
    assert q.question == buf[12:]
    assert not q.has_opt and q.udp_size == 512 and not q.do and q.edns_version == 0
    assert q.key == b"\x07example\x03com\x00\x00\x01\x00\x01\x00\x00"


def test_parse_edns_query() -> None:
    buf = query_bytes(edns=4096, do=True)
    q = wire.parse_query(buf)
    assert q.has_opt and q.udp_size == 4096 and q.do and q.edns_version == 0
    assert q.qend < len(buf)
    assert q.key.endswith(b"\x01\x00")  # DO is part of the key


def test_small_edns_size_counts_as_512() -> None:
    assert wire.parse_query(query_bytes(edns=100)).udp_size == 512


def test_key_ignores_case_and_id_but_not_type_or_cd() -> None:
    a = wire.parse_query(query_bytes("A.Test", qid=1))
    b = wire.parse_query(query_bytes("a.test", qid=2))
    c = wire.parse_query(query_bytes("a.test", "AAAA"))
    assert a.key == b.key != c.key
    m = dns.message.make_query("a.test", "A")
    m.flags |= dns.flags.CD
    assert wire.parse_query(m.to_wire()).key != b.key


def test_edns_version_is_read() -> None:
    m = dns.message.make_query("a.test", "A", use_edns=1)
    assert wire.parse_query(m.to_wire()).edns_version == 1


def test_root_name_query() -> None:
    q = wire.parse_query(header() + b"\x00\x00\x02\x00\x01")
    assert q.qname == b"\x00" and q.name == "." and q.qtype == wire.NS


def test_name_of_exactly_255_bytes_is_accepted() -> None:
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"  # 3*64 + 62 + 1 = 255
    assert len(name) == 255
    q = wire.parse_query(header() + name + b"\x00\x01\x00\x01")
    assert len(q.qname) == 255


@pytest.mark.parametrize(
    ("buf", "rcode"),
    [
        (b"", None),
        (b"\x12\x34\x01", None),
        (header()[:11], None),
        (header(flags=0x8100) + QUESTION, None),  # QR=1: a response, dropped
        (header(flags=0x0100 | (5 << 11)) + QUESTION, wire.NOTIMP),  # UPDATE
        (header(flags=0x0100 | (2 << 11)) + QUESTION, wire.NOTIMP),  # STATUS
        (header(flags=0x0100 | (4 << 11)) + QUESTION, wire.NOTIMP),  # NOTIFY
        (header(flags=0x0100 | (15 << 11)) + QUESTION, wire.NOTIMP),
        (header(qd=0), wire.FORMERR),
        (header(qd=0) + QUESTION, wire.FORMERR),
        (header(qd=2) + QUESTION + QUESTION, wire.FORMERR),
        (header(qd=0xFFFF) + QUESTION, wire.FORMERR),
        (header(), wire.FORMERR),  # question missing
        (header() + b"\x03www", wire.FORMERR),  # cut in the name
        (header() + b"\x03www\x04test\x00\x00\x01", wire.FORMERR),  # cut in type/class
        (header() + b"\x03ww", wire.FORMERR),  # label runs past the end
        (header() + b"\x43www\x00\x00\x01\x00\x01", wire.FORMERR),  # label type 0x40
        (header() + b"\x83www\x00\x00\x01\x00\x01", wire.FORMERR),  # label type 0x80
        (header() + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer to itself
        (header() + b"\xc0\xff\x00\x01\x00\x01", wire.FORMERR),  # pointer past the end
        (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", wire.FORMERR),  # 257
        (header() + QUESTION + b"\x00", wire.FORMERR),  # trailing garbage
        (header() + QUESTION + b"garbage!", wire.FORMERR),
        (header(an=1) + QUESTION, wire.FORMERR),  # count says a record that is not there
        (header(an=0xFFFF, ns=0xFFFF, ar=0xFFFF) + QUESTION, wire.FORMERR),  # huge counts
    ],
)
def test_malformed_queries(buf: bytes, rcode: int | None) -> None:
    assert malformed(buf).rcode == rcode


def _opt(size: int = 1232, ttl: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00" + struct.pack("!HHIH", wire.OPT, size, ttl, len(rdata)) + rdata


def test_two_opt_records_are_formerr() -> None:
    assert malformed(header(ar=2) + QUESTION + _opt() + _opt()).rcode == wire.FORMERR


def test_opt_rdata_running_past_the_end_is_formerr() -> None:
    buf = header(ar=1) + QUESTION + b"\x00" + struct.pack("!HHIH", wire.OPT, 1232, 0, 10) + b"ab"
    assert malformed(buf).rcode == wire.FORMERR


def test_trailing_garbage_after_opt_is_formerr() -> None:
    assert malformed(header(ar=1) + QUESTION + _opt() + b"\x00").rcode == wire.FORMERR


def test_record_with_pointer_loop_is_formerr() -> None:
    # an additional record whose owner points at itself
    base = len(header() + QUESTION)
    rec = b"\xc0" + bytes([base]) + struct.pack("!HHIH", wire.A, 1, 0, 4) + b"\x01\x02\x03\x04"
    buf = header(ar=1) + QUESTION + rec
    assert malformed(buf).rcode == wire.FORMERR


def test_record_with_two_hop_pointer_loop_is_formerr() -> None:
    # record 1 owner: label "x" then pointer to record 2's owner; record 2 owner: pointer back
    base = len(header() + QUESTION)
    rec1 = b"\x01x\xc0" + bytes([base + 4 + 10]) + struct.pack("!HHIH", wire.A, 1, 0, 0)
    rec2 = b"\xc0" + bytes([base]) + struct.pack("!HHIH", wire.A, 1, 0, 0)
    assert malformed(header(an=2) + QUESTION + rec1 + rec2).rcode == wire.FORMERR


def test_record_pointing_past_the_end_is_formerr() -> None:
    rec = b"\xc0\x7f" + struct.pack("!HHIH", wire.A, 1, 0, 0)
    assert malformed(header(ar=1) + QUESTION + rec).rcode == wire.FORMERR


def test_backward_pointer_in_a_record_is_fine() -> None:
    rec = b"\xc0\x0c" + struct.pack("!HHIH", wire.A, 1, 0, 4) + b"\x01\x02\x03\x04"
    q = wire.parse_query(header(an=1) + QUESTION + rec)
    assert q.name == "www.test." and not q.has_opt


def test_query_with_a_big_edns_option_is_parsed() -> None:
    pad = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 700)
    buf = query_bytes("a.test", edns=1232, options=[pad])
    assert len(buf) > 512
    q = wire.parse_query(buf)
    assert q.has_opt and q.udp_size == 1232


def test_header_only_reply() -> None:
    buf = header(qid=0xBEEF, flags=0x0100 | (5 << 11)) + b"junk"
    reply = compose.header_only_reply(buf, wire.NOTIMP)
    assert reply is not None
    qid, flags, *counts = struct.unpack("!HHHHHH", reply)
    assert qid == 0xBEEF
    assert flags & wire.QR and flags & wire.RD and flags & wire.RA
    assert (flags >> 11) & 0xF == 5 and flags & 0xF == wire.NOTIMP
    assert counts == [0, 0, 0, 0]
    assert compose.header_only_reply(b"short", wire.FORMERR) is None


# ------------------------------------------------------------------------------ build_reply


def test_build_reply_echoes_question_and_sets_flags() -> None:
    q = wire.parse_query(query_bytes("My.Host"))
    answers = [wire.rr(wire.POINTER_TO_QNAME, wire.A, 5, bytes([10, 0, 0, 1]))]
    reply = compose.build_reply(q, wire.NOERROR, answers)
    m = dns.message.from_wire(reply)
    assert m.id == q.id
    assert m.flags & dns.flags.QR and m.flags & dns.flags.RA and m.flags & dns.flags.RD
    assert not m.flags & dns.flags.AA
    assert m.edns == -1  # no OPT in, no OPT out
    assert str(m.question[0].name) == "My.Host."
    assert m.answer[0].to_text() == "My.Host. 5 IN A 10.0.0.1"


def test_build_reply_rd_copied_when_clear() -> None:
    m = dns.message.make_query("a.test", "A")
    m.flags &= ~dns.flags.RD
    reply = compose.build_reply(wire.parse_query(m.to_wire()))
    assert not dns.message.from_wire(reply).flags & dns.flags.RD


def test_build_reply_has_opt_iff_query_had_one() -> None:
    q = wire.parse_query(query_bytes(edns=4096, do=True))
    m = dns.message.from_wire(compose.build_reply(q, opt_size=1232))
    assert m.edns == 0 and m.payload == 1232 and m.ednsflags & dns.flags.DO


def test_badvers_uses_the_extended_rcode() -> None:
    m = dns.message.make_query("a.test", "A", use_edns=1)
    q = wire.parse_query(m.to_wire())
    r = dns.message.from_wire(compose.error_reply(q, wire.BADVERS))
    assert r.rcode() == dns.rcode.BADVERS


def test_name_to_wire_and_back() -> None:
    assert wire.name_to_wire("a.B.c.") == b"\x01a\x01B\x01c\x00"
    assert wire.name_to_wire(".") == b"\x00"
    assert wire.name_to_text(b"\x01a\x01B\x00") == "a.B."
    for bad in ("a..b", "x" * 64, ".".join(["abcdefghi"] * 30)):
        with pytest.raises(ValueError):
            wire.name_to_wire(bad)


def test_rdata_encoders() -> None:
    assert wire.rdata_address("10.0.0.1") == (wire.A, b"\x0a\x00\x00\x01")
    assert wire.rdata_address("fe80::1%lo")[0] == wire.AAAA
    assert wire.rdata_txt([b"ab", b""]) == b"\x02ab\x00"
    with pytest.raises(ValueError):
        wire.rdata_txt([b"x" * 256])
    assert wire.reverse_name("192.168.5.2") == "2.5.168.192.in-addr.arpa."


# ------------------------------------------------------------------------------ upstream replies


def response(
    qname: str = "big.test",
    n: int = 60,
    *,
    edns: bool = False,
    extra_sets: int = 0,
    additional: int = 0,
) -> bytes:
    qname = qname.rstrip(".") + "."
    q = dns.message.make_query(qname, "A", use_edns=0 if edns else False)
    r = dns.message.make_response(q)
    r.answer.append(
        dns.rrset.from_text_list(
            qname, 300, "IN", "A", [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(n)]
        )
    )
    for k in range(extra_sets):
        txt = '"' + "x" * 100 + '"'
        r.answer.append(dns.rrset.from_text(f"s{k}.{qname}", 300, "IN", "TXT", txt))
    for k in range(additional):
        r.additional.append(dns.rrset.from_text(f"g{k}.{qname}", 300, "IN", "A", "192.0.2.1"))
    return r.to_wire()


def rrsets_complete(reply: bytes, full: bytes) -> bool:
    got = dns.message.from_wire(reply)
    whole = dns.message.from_wire(full)
    for section, whole_section in ((got.answer, whole.answer), (got.authority, whole.authority)):
        for rrset in section:
            match = [w for w in whole_section if w.name == rrset.name and w.rdtype == rrset.rdtype]
            if not match or len(match[0]) != len(rrset):
                return False
    return True


def test_truncate_leaves_small_replies_alone() -> None:
    r = response(n=2)
    assert compose.truncate(r, 512) is r


def test_truncate_drops_a_whole_rrset_and_sets_tc() -> None:
    r = response(n=60)
    assert len(r) > 512
    t = compose.truncate(r, 512)
    assert len(t) <= 512
    m = dns.message.from_wire(t)
    assert m.flags & dns.flags.TC
    assert m.answer == []  # the one RRset did not fit: none of it is sent
    assert m.id == dns.message.from_wire(r).id


def test_truncate_keeps_the_rrsets_that_fit() -> None:
    r = response(n=3, extra_sets=8)
    t = compose.truncate(r, 512)
    m = dns.message.from_wire(t)
    assert len(t) <= 512 and m.flags & dns.flags.TC
    assert 1 <= len(m.answer) < 9
    assert rrsets_complete(t, r)


def test_truncate_keeps_opt() -> None:
    r = response(n=60, edns=True)
    t = compose.truncate(r, 600)
    m = dns.message.from_wire(t)
    assert len(t) <= 600 and m.flags & dns.flags.TC and m.edns == 0


def test_dropping_only_additional_data_does_not_set_tc() -> None:
    r = response(n=20, additional=30, edns=True)
    t = compose.truncate(r, 512)
    m = dns.message.from_wire(t)
    assert len(t) <= 512 and not m.flags & dns.flags.TC  # RFC 2181 §9
    assert len(m.answer[0]) == 20 and m.edns == 0


def test_truncate_with_opt_not_last() -> None:
    # RFC 6891 does not require OPT to be the last additional record: put it first.
    body = response(n=20, additional=30)  # no EDNS
    no_glue = response(n=20)  # the same header, question and answer, nothing else
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", body)
    raw = (
        struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar + 1)
        + no_glue[12:]
        + _opt(1232)
        + body[len(no_glue) :]
    )
    m = dns.message.from_wire(raw)  # sanity: a valid message with OPT first
    assert m.edns == 0 and len(m.additional) == 30
    t = compose.truncate(raw, 512)
    assert len(t) <= 512
    m = dns.message.from_wire(t)  # raises if OPT got duplicated or counts are off
    assert m.edns == 0 and len(m.answer[0]) == 20


def test_iter_records_and_min_ttl() -> None:
    r = response(n=2, extra_sets=1)
    records = list(wire.iter_records(r))
    assert [rec.rtype for rec in records] == [wire.A, wire.A, wire.TXT]
    assert records[0].owner == b"\x03big\x04test\x00"
    assert compose.min_ttl(r) == 300
    with pytest.raises(wire.Malformed):
        list(wire.iter_records(r + b"x"))
    with pytest.raises(wire.Malformed):
        list(wire.iter_records(r[:-3]))


def test_read_name_decompresses_and_rejects_loops() -> None:
    buf = header() + QUESTION + b"\x03sub\xc0\x0c"
    name, end = wire.read_name(buf, len(header() + QUESTION))
    assert name == b"\x03sub\x03www\x04test\x00" and end == len(buf)
    with pytest.raises(wire.Malformed):
        wire.read_name(header() + b"\xc0\x0c", 12)


# ------------------------------------------------------------------------------ splice, match


def test_splice_puts_back_the_clients_id_and_question_case() -> None:
    upstream_reply = response("big.test", n=2)
    client = wire.parse_query(query_bytes("BiG.TeSt", qid=0xABCD))
    out = compose.splice(upstream_reply, client.id, client.question)
    m = dns.message.from_wire(out)
    assert m.id == 0xABCD
    assert str(m.question[0].name) == "BiG.TeSt."
    assert len(m.answer[0]) == 2
    assert out[4:12] == upstream_reply[4:12]
    assert out[12 + len(client.question) :] == upstream_reply[12 + len(client.question) :]
    assert not dns.message.from_wire(upstream_reply).flags & dns.flags.RA
    assert m.flags & dns.flags.RA  # fastdns offers recursion whoever answered
    assert m.flags & dns.flags.RD and m.rcode() == dns.rcode.NOERROR


def test_splice_copies_the_clients_rd() -> None:
    upstream_reply = response("big.test", n=2)  # RD=1, from a query with RD=1
    client = wire.parse_query(query_bytes("big.test"))
    out = compose.splice(upstream_reply, client.id, client.question, False)
    assert not dns.message.from_wire(out).flags & dns.flags.RD
    out = compose.splice(out, client.id, client.question, True)
    m = dns.message.from_wire(out)
    assert m.flags & dns.flags.RD and m.flags & dns.flags.QR and not m.flags & dns.flags.TC


def test_question_matches_ignores_name_case() -> None:
    q = wire.parse_query(query_bytes("Big.Test"))
    assert wire.question_matches(response("big.test"), q)
    assert wire.question_matches(response("BIG.TEST"), q)


def test_question_matches_rejects_other_questions() -> None:
    q = wire.parse_query(query_bytes("big.test"))
    assert not wire.question_matches(response("bag.test"), q)
    assert not wire.question_matches(response("wrong.big.test"), q)
    assert not wire.question_matches(query_bytes("big.test"), q)  # QR=0: not a response
    assert not wire.question_matches(response("big.test")[:20], q)
    two = bytearray(response("big.test"))
    two[5] = 2
    assert not wire.question_matches(bytes(two), q)


def test_question_matches_compares_type_and_class_exactly() -> None:
    # qtype 65 (HTTPS) is b"\x00A", qtype 97 is b"\x00a": a case fold must not equate them.
    q = wire.parse_query(query_bytes("a.test", "HTTPS"))
    reply = bytearray(dns.message.make_response(dns.message.from_wire(q.wire)).to_wire())
    assert wire.question_matches(bytes(reply), q)
    reply[q.qend - 3] = 97
    assert not wire.question_matches(bytes(reply), q)
    reply[q.qend - 3] = 65
    reply[q.qend - 1] = wire.CLASS_CH
    assert not wire.question_matches(bytes(reply), q)


def test_id_helpers() -> None:
    r = response(n=1)
    assert wire.reply_id(wire.set_id(r, 77)) == 77
    assert wire.reply_rcode(r) == wire.NOERROR


def test_match_opt_adds_or_removes_opt() -> None:
    plain = wire.parse_query(query_bytes("big.test"))
    edns = wire.parse_query(query_bytes("big.test", edns=4096, do=True))
    without = response("big.test", n=2, additional=1)
    with_opt = response("big.test", n=2, additional=1, edns=True)
    assert compose.match_opt(without, plain, 1232) is without
    assert compose.match_opt(with_opt, edns, 1232) is with_opt
    added = dns.message.from_wire(compose.match_opt(without, edns, 1232))
    assert added.edns == 0 and added.payload == 1232 and added.ednsflags & dns.flags.DO
    assert len(added.answer[0]) == 2 and len(added.additional) == 1
    removed = dns.message.from_wire(compose.match_opt(with_opt, plain, 1232))
    assert removed.edns == -1 and len(removed.answer[0]) == 2 and len(removed.additional) == 1


def _reply_with(
    qname: str, qtype: str, *rrsets: tuple[str, str, str], rcode: int = 0
) -> tuple[bytes, wire.Query]:
    q = dns.message.make_query(qname, qtype)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for name, rdtype, value in rrsets:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, value))
    return r.to_wire(), wire.parse_query(q.to_wire())


@pytest.mark.parametrize(
    ("qtype", "rrsets", "rcode", "want"),
    [
        ("A", [("a.example.", "A", "192.0.2.1")], 0, True),
        ("A", [("a.example.", "CNAME", "b.example."), ("b.example.", "A", "192.0.2.1")], 0, True),
        ("A", [("a.example.", "CNAME", "b.example.")], 0, False),  # a chain to nothing
        ("A", [("a.example.", "AAAA", "2001:db8::1")], 0, False),  # the other family
        ("AAAA", [("a.example.", "AAAA", "2001:db8::1")], 0, True),
        ("A", [], 0, False),  # NODATA
        ("A", [], 3, False),  # NXDOMAIN
        ("A", [("a.example.", "A", "192.0.2.1")], 2, False),  # SERVFAIL, whatever it holds
    ],
)
def test_has_answer_wants_a_record_of_the_asked_type(
    qtype: str, rrsets: list[tuple[str, str, str]], rcode: int, want: bool
) -> None:
    reply, q = _reply_with("a.example.", qtype, *rrsets, rcode=rcode)
    assert compose.has_answer(reply, q.qend, q.qtype) is want


def test_has_answer_is_false_on_damaged_replies() -> None:
    reply, q = _reply_with("a.example.", "A", ("a.example.", "A", "192.0.2.1"))
    for cut in range(len(reply) - 1, q.qend - 1, -1):  # every cut through the answer
        got = compose.has_answer(reply[:cut], q.qend, q.qtype)
        assert got is (cut >= q.qend + 12)  # owner pointer and fixed fields still whole
    assert compose.has_answer(b"\x00" * 5, 5, 1) is False


def test_truncate_never_splits_an_rrset_whose_owners_are_spelled_differently() -> None:
    """One RRset, the second record's owner written out (``X.example``) where the first points
    at the question: the two are one RRset, kept or dropped together."""
    q = dns.message.make_query("x.example.", "A")
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("x.example.", 60, "IN", "A", "192.0.2.1", "192.0.2.2"))
    data = r.to_wire()
    second = data.rindex(b"\xc0\x0c")  # the second record's owner pointer
    data = data[:second] + b"\x01X\x07example\x00" + data[second + 2 :]
    assert len(dns.message.from_wire(data).answer[0]) == 2
    cut = compose.truncate(data, second + 2)  # room for the first record only
    m = dns.message.from_wire(cut)
    assert m.flags & dns.flags.TC and not m.answer
    assert compose.truncate(data, len(data)) == data


def test_truncate_drops_the_options_of_an_opt_record_that_cannot_fit() -> None:
    # Found by tests/fuzz: an upstream OPT carrying 800 bytes of padding (RFC 7830) was
    # re-appended whole, so a reply "truncated" to 512 bytes went out at 900. The minimal
    # response is header, question and an OPT record (RFC 6891 §7): without its options.
    q = dns.message.make_query("pad.test", "A", use_edns=0, payload=4096)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("pad.test.", 300, "IN", "A", "192.0.2.1"))
    r.use_edns(0, 0, 4096, options=[dns.edns.GenericOption(12, bytes(800))])  # padding
    raw = r.to_wire()
    assert len(raw) > 512
    t = compose.truncate(raw, 512)
    assert len(t) <= 512
    m = dns.message.from_wire(t)
    assert m.edns == 0 and m.payload == 4096 and not m.options
    assert not m.flags & dns.flags.TC and len(m.answer[0]) == 1  # the answer fits beside it
