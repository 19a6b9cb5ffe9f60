"""The wire parser and builders, checked against dnspython's reading of the same bytes."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.wire import Drop, FormErr, NotImp, parse_answer, parse_query


def q(name: str = "www.Example.com", rdtype: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, rdtype, **kw).to_wire()


def test_plain_query() -> None:
    data = q("www.Example.com", "AAAA")
    p = parse_query(data)
    assert p.qtype == 28 and p.qclass == 1
    assert data[12 : p.name_end] == b"\x03www\x07Example\x03com\x00"
    assert p.edns_size == 0 and not p.do


def test_edns_query_with_do_and_size() -> None:
    p = parse_query(q(use_edns=0, payload=4096, want_dnssec=True))
    assert p.edns_size == 4096 and p.do and p.edns_version == 0


def test_small_edns_size_reads_as_512() -> None:
    assert parse_query(q(use_edns=0, payload=100)).edns_size == 512


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d[:11], Drop),
        (lambda d: d[:2] + bytes([d[2] | 0x80]) + d[3:], Drop),  # QR=1: a response
        (lambda d: d[:2] + bytes([d[2] | (4 << 3)]) + d[3:], NotImp),  # NOTIFY
        (lambda d: d[:4] + b"\x00\x00" + d[6:], FormErr),  # QDCOUNT 0
        (lambda d: d[:4] + b"\x00\x02" + d[6:], FormErr),  # QDCOUNT 2
        (lambda d: d[:12] + b"\xc0\x0c" + d[-4:], FormErr),  # pointer in the question
        (lambda d: d[:14], FormErr),  # name runs past the end
        (lambda d: d[:-2], FormErr),  # class missing
        (lambda d: d[:10] + b"\x00\x01" + d[12:], FormErr),  # ARCOUNT 1, nothing there
    ],
)
def test_bad_queries(mutate, error) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        parse_query(mutate(q()))


def test_two_opt_records_are_formerr() -> None:
    data = bytearray(q(use_edns=0))
    opt = data[-11:]
    data += opt
    struct.pack_into(">H", data, 10, 2)
    with pytest.raises(FormErr):
        parse_query(bytes(data))


def test_name_conversion_round_trip() -> None:
    w = wire.name_to_wire("WWW.Bad.Bet.")
    assert w == b"\x03www\x03bad\x03bet\x00"
    assert wire.wire_to_name(w) == "www.bad.bet"
    with pytest.raises(ValueError):
        wire.name_to_wire("a" * 64 + ".bet")


def _reply(rcode: int = 0, answers: int = 1, soa: bool = False, edns: bool = True, cname: bool = False) -> bytes:
    query = dns.message.make_query("x.test", "A", use_edns=0 if edns else None)
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    if cname:
        r.answer.append(dns.rrset.from_text("x.test.", 100, "IN", "CNAME", "Target.Bad.test."))
    for i in range(answers):
        r.answer.append(dns.rrset.from_text("x.test." if not cname else "target.bad.test.", 100 + i, "IN", "A", f"192.0.2.{i + 1}"))
    if soa:
        r.authority.append(dns.rrset.from_text("test.", 900, "IN", "SOA", "ns.test. h.test. 1 2 3 4 60"))
    return r.to_wire()


def test_parse_answer_finds_ttls_and_strips_opt() -> None:
    raw = _reply(answers=2)
    p = parse_answer(raw)
    assert p.ttls == (100, 101)
    for off, ttl in zip(p.ttl_offsets, p.ttls, strict=True):
        assert struct.unpack_from(">I", p.body, off)[0] == ttl
    assert struct.unpack_from(">H", p.body, 10)[0] == 0  # OPT removed
    msg = dns.message.from_wire(p.body)
    assert msg.edns == -1 and len(msg.answer[0]) == 2
    assert not msg.flags & dns.flags.AA


def test_parse_answer_negative_ttl_is_min_of_soa_ttl_and_minimum() -> None:
    p = parse_answer(_reply(rcode=3, answers=0, soa=True))
    assert p.rcode == 3 and p.neg_ttl == 60


def test_parse_answer_collects_cname_targets_lower_case() -> None:
    p = parse_answer(_reply(cname=True))
    assert p.cname_targets == (b"\x06target\x03bad\x04test\x00",)


def test_error_response_echoes_question_and_opt() -> None:
    data = q("a.test", use_edns=0)
    resp = wire.error_response(data, parse_query(data), wire.REFUSED, 1232, wire.ede_option(18, "no"))
    m = dns.message.from_wire(resp)
    assert m.rcode() == dns.rcode.REFUSED and m.id == dns.message.from_wire(data).id
    assert m.options[0].otype == dns.edns.OptionType.EDE and m.options[0].code == 18 and m.options[0].text == "no"


def test_badvers_goes_in_the_opt_record() -> None:
    data = q("a.test", use_edns=0)
    resp = wire.error_response(data, parse_query(data), wire.BADVERS, 1232)
    assert dns.message.from_wire(resp).rcode() == dns.rcode.BADVERS


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_raises_anything_but_wire_errors(data: bytes) -> None:
    try:
        parse_query(data)
    except wire.WireError:
        pass
    try:
        parse_answer(data)
    except wire.WireError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_queries_parse_or_fail_cleanly(data: st.DataObject) -> None:
    base = bytearray(q("cdn.casino.test", use_edns=0, want_dnssec=True))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    try:
        p = parse_query(bytes(base))
    except wire.WireError:
        return
    assert 12 < p.name_end <= len(base) - 4


def test_every_answer_carries_ra_whatever_the_upstream_set() -> None:
    # An authoritative upstream sets AA and no RA: we answer as a recursive resolver.
    raw = bytearray(_reply())
    struct.pack_into(">H", raw, 2, (struct.unpack_from(">H", raw, 2)[0] | 0x0400) & ~0x0080)
    body = parse_answer(bytes(raw)).body
    assert struct.unpack_from(">H", body, 2)[0] & 0x0080 and not struct.unpack_from(">H", body, 2)[0] & 0x0400
    # Even the FORMERR for a question that cannot be read.
    resp = wire.error_response(b"\x12\x34\x01\x00\x00\x02", None, wire.FORMERR, 1232)
    assert struct.unpack_from(">H", resp, 2)[0] & 0x0080
