"""DNS wire format for the hot path: read a query's header, question and OPT straight from the
bytes, and build answers by patching bytes.

Owns: the query parser (bounds-checked, no compression pointers in the question), the answer
walker that finds the TTL offsets and SOA of an upstream reply (run once per cache insert), and
the small builders (error answers, truncated answers, OPT records, name conversion).

dnslib is deliberately not used here: decoding every packet with it costs ~10x the whole fast
path. Must not import any other betblock module but the error base (``config.errors``) and
the name codec (``config.names``, plain functions).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from config.errors import BetblockError
from config.names import to_text

HEADER = struct.Struct(">HHHHHH")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
TYPE_CLASS = struct.Struct(">HH")
RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
OPT_FIXED = struct.Struct(">HHBBHH")  # type, udp size, ext rcode, version, flags, rdlength

# Header flag bits.
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
CD = 0x0010

# Response codes.
NOERROR = 0
FORMERR = 1
SERVFAIL = 2
NXDOMAIN = 3
NOTIMP = 4
REFUSED = 5
BADVERS = 16  # extended: upper 8 bits go in the OPT record

# Types and classes.
T_A = 1
T_CNAME = 5
T_SOA = 6
T_HINFO = 13
T_AAAA = 28
T_OPT = 41
T_ANY = 255
C_IN = 1

EDNS_DO = 0x8000

# Extended DNS Error info codes (RFC 8914).
EDE_OTHER = 0
EDE_STALE = 3
EDE_CENSORED = 16
EDE_PROHIBITED = 18
EDE_STALE_NXDOMAIN = 19
EDE_NO_REACHABLE_AUTHORITY = 22
OPT_CODE_EDE = 15

MAX_NAME_WIRE = 255


class WireError(BetblockError):
    """A packet that cannot be read."""


class Drop(WireError):
    """Not answerable at all: too short for a header, or a response rather than a query."""


class FormErr(WireError):
    """The header is readable but the rest is malformed."""


class NotImp(WireError):
    """An opcode other than QUERY."""


class Query(NamedTuple):
    """What the pipeline needs from a query; offsets index the original packet."""

    qid: int
    flags: int
    name_end: int  # offset just past the question name's root label
    qtype: int
    qclass: int
    edns_size: int  # the client's UDP payload size; 0 when it sent no OPT
    do: bool
    edns_version: int


# Builds a Query without the Python-level NamedTuple.__new__ (a measurable cost per packet).
_new_query = tuple.__new__


def _skip_name(data: bytes, off: int) -> int:
    """Offset just past a (possibly compressed) name starting at off."""
    n = len(data)
    while True:
        if off >= n:
            raise FormErr("name runs past the end")
        length = data[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise FormErr("truncated pointer")
            return off + 2
        if length > 63:
            raise FormErr("bad label type")
        off += length + 1


def parse_query(data: bytes) -> Query:
    """Parse header, question and OPT of a query; raise Drop, FormErr or NotImp."""
    n = len(data)
    if n < 12:
        raise Drop("short header")
    qid, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise Drop("response, not a query")
    if flags & OPCODE_MASK:
        raise NotImp("opcode")
    if qdcount != 1:
        raise FormErr("qdcount != 1")
    off = 12
    while True:
        if off >= n:
            raise FormErr("question runs past the end")
        length = data[off]
        if length == 0:
            break
        if length > 63:  # compression pointers and extended labels have no place in a question
            raise FormErr("bad label in question")
        off += length + 1
    name_end = off + 1
    if name_end - 12 > MAX_NAME_WIRE:
        raise FormErr("name too long")
    if name_end + 4 > n:
        raise FormErr("question truncated")
    qtype, qclass = TYPE_CLASS.unpack_from(data, name_end)
    if not (ancount or nscount or arcount):
        return _new_query(Query, (qid, flags, name_end, qtype, qclass, 0, False, 0))
    pos = name_end + 4
    if arcount == 1 and not (ancount or nscount) and n >= pos + 11 and data[pos] == 0:
        # The usual EDNS query: one OPT record right after the question.
        rtype, size, _ext, version, eflags, rdlen = OPT_FIXED.unpack_from(data, pos + 1)
        if rtype == T_OPT:
            if pos + 11 + rdlen > n:
                raise FormErr("OPT truncated")
            return _new_query(
                Query, (qid, flags, name_end, qtype, qclass, size if size > 512 else 512, bool(eflags & EDNS_DO), version)
            )
    for _ in range(ancount + nscount):
        pos = _skip_name(data, pos)
        if pos + 10 > n:
            raise FormErr("record truncated")
        pos += 10 + U16.unpack_from(data, pos + 8)[0]
    edns_size, do, version, seen_opt = 0, False, 0, False
    for _ in range(arcount):
        start = pos
        pos = _skip_name(data, pos)
        if pos + 10 > n:
            raise FormErr("record truncated")
        rtype, rclass, ttl, rdlen = RR_FIXED.unpack_from(data, pos)
        pos += 10 + rdlen
        if rtype == T_OPT:
            if seen_opt or data[start] != 0:
                raise FormErr("bad OPT record")  # RFC 6891 6.1.1: one OPT, owner is root
            seen_opt = True
            edns_size = max(rclass, 512)
            version = (ttl >> 16) & 0xFF
            do = bool(ttl & EDNS_DO)
    if pos > n:
        raise FormErr("additional section truncated")
    return _new_query(Query, (qid, flags, name_end, qtype, qclass, edns_size, do, version))


def name_to_wire(name: str) -> bytes:
    """'www.Example.com.' -> b'\\x03www\\x07example\\x03com\\x00' (lower-cased)."""
    name = name.strip().rstrip(".").lower()
    if not name:
        return b"\x00"
    parts = name.encode("ascii").split(b".")
    for part in parts:
        if not 0 < len(part) <= 63:
            raise ValueError(f"bad label in {name!r}")
    wire = b"".join([_LEN[len(p)] + p for p in parts]) + b"\x00"
    if len(wire) > MAX_NAME_WIRE:
        raise ValueError(f"name too long: {name!r}")
    return wire


_LEN = [bytes((i,)) for i in range(256)]


def wire_to_name(wire: bytes) -> str:
    """Uncompressed wire name -> text (the one codec, ``config.names``: ``\\DDD`` escapes)."""
    return to_text(wire)


def read_name(data: bytes, off: int) -> tuple[bytes, int]:
    """Read a possibly compressed name; return (uncompressed lower-case wire, offset after it)."""
    out = bytearray()
    end = -1
    hops = 0
    n = len(data)
    while True:
        if off >= n:
            raise FormErr("name runs past the end")
        length = data[off]
        if length & 0xC0 == 0xC0:
            if off + 2 > n:
                raise FormErr("truncated pointer")
            if end < 0:
                end = off + 2
            hops += 1
            if hops > 64:
                raise FormErr("pointer loop")
            off = ((length & 0x3F) << 8) | data[off + 1]
            continue
        if length > 63:
            raise FormErr("bad label type")
        if length == 0:
            out.append(0)
            if len(out) > MAX_NAME_WIRE:
                raise FormErr("name too long")
            return bytes(out).lower(), (end if end >= 0 else off + 1)
        out += data[off : off + length + 1]
        off += length + 1


def opt_record(udp_size: int, do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record (owner root) advertising udp_size."""
    return b"\x00" + OPT_FIXED.pack(T_OPT, udp_size, ext_rcode, 0, EDNS_DO if do else 0, len(options)) + options


def ede_option(info_code: int, text: str = "") -> bytes:
    """One Extended DNS Error option (RFC 8914) for an OPT record's RDATA."""
    extra = text.encode("utf-8")
    return U16.pack(OPT_CODE_EDE) + U16.pack(2 + len(extra)) + U16.pack(info_code) + extra


def response_flags(query_flags: int, rcode: int) -> int:
    """QR and RA set, RD and CD echoed, opcode QUERY."""
    return QR | RA | (query_flags & (RD | CD)) | rcode


def error_response(
    data: bytes, q: Query | None, rcode: int, udp_size: int, ede: bytes = b""
) -> bytes:
    """An answer with no records; echoes the question when it could be read."""
    qid = U16.unpack_from(data)[0] if len(data) >= 2 else 0
    if q is None:
        flags = U16.unpack_from(data, 2)[0] if len(data) >= 4 else 0
        return HEADER.pack(qid, QR | RA | (flags & (OPCODE_MASK | RD)) | rcode, 0, 0, 0, 0)
    if q.edns_size:
        opt = opt_record(udp_size, q.do, ede, rcode >> 4)
        return HEADER.pack(q.qid, response_flags(q.flags, rcode & 0xF), 1, 0, 0, 1) + data[12 : q.name_end + 4] + opt
    return HEADER.pack(q.qid, response_flags(q.flags, rcode & 0xF), 1, 0, 0, 0) + data[12 : q.name_end + 4]


def truncated(data: bytes, q: Query, template_flags: int, udp_size: int) -> bytes:
    """The header and question only, TC set: the client retries over TCP."""
    flags = (template_flags & ~(RD | CD)) | (q.flags & (RD | CD)) | TC  # RD and CD are the client's
    if q.edns_size:
        return HEADER.pack(q.qid, flags, 1, 0, 0, 1) + data[12 : q.name_end + 4] + opt_record(udp_size, q.do)
    return HEADER.pack(q.qid, flags, 1, 0, 0, 0) + data[12 : q.name_end + 4]


# RFC 8482 4.2: the synthesized answer to ANY is one HINFO with CPU "RFC8482" and an empty OS.
# The TTL is the implementer's choice; 3789 s is the one Cloudflare's servers give it.
MINIMAL_ANY_TTL = 3789
_HINFO_RR = b"\xc0\x0c" + struct.pack(">HHIH", T_HINFO, C_IN, MINIMAL_ANY_TTL, 9) + b"\x07RFC8482\x00"


def minimal_any(data: bytes, q: Query, udp_size: int) -> bytes:
    """The RFC 8482 answer to QTYPE=ANY: the question and one synthesized HINFO owned by the
    question name (a compression pointer to it), never a forwarded ANY (a 30x amplifier)."""
    rr = _HINFO_RR if q.qclass == C_IN else _HINFO_RR[:4] + U16.pack(q.qclass) + _HINFO_RR[6:]
    if q.edns_size:
        return HEADER.pack(q.qid, response_flags(q.flags, NOERROR), 1, 1, 0, 1) + data[12 : q.name_end + 4] + rr + opt_record(udp_size, q.do)
    return HEADER.pack(q.qid, response_flags(q.flags, NOERROR), 1, 1, 0, 0) + data[12 : q.name_end + 4] + rr


class ParsedAnswer(NamedTuple):
    """An upstream reply reduced to what the cache needs."""

    body: bytes  # the reply without its OPT record (ARCOUNT adjusted)
    rcode: int
    flags: int
    ttl_offsets: tuple[int, ...]  # offsets of every TTL field in body
    ttls: tuple[int, ...]
    ancount: int
    neg_ttl: int | None  # min(SOA TTL, SOA MINIMUM) when the authority section has a SOA
    cname_targets: tuple[bytes, ...]  # lower-case wire names the answer's CNAMEs point to
    truncated: bool


# Builds a ParsedAnswer without the Python-level NamedTuple.__new__ (once per cache miss).
_new_parsed = tuple.__new__


def parse_answer(data: bytes) -> ParsedAnswer:
    """Walk an upstream reply: TTL offsets, negative TTL, CNAME targets; strip the OPT record."""
    n = len(data)
    if n < 12:
        raise FormErr("short reply")
    _, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    pos = 12
    for _ in range(qdcount):
        pos = _skip_name(data, pos) + 4
    offsets: list[int] = []
    ttls: list[int] = []
    cnames: list[bytes] = []
    neg_ttl: int | None = None
    opt_span: tuple[int, int] | None = None
    unpack = RR_FIXED.unpack_from
    for i in range(ancount + nscount + arcount):
        start = pos
        if pos < n and data[pos] >= 0xC0:
            pos += 2  # the usual owner, a compression pointer (the bounds check below covers it)
        else:
            pos = _skip_name(data, pos)
        if pos + 10 > n:
            raise FormErr("record truncated")
        rtype, _rclass, ttl, rdlen = unpack(data, pos)
        rdata = pos + 10
        end = rdata + rdlen
        if end > n:
            raise FormErr("rdata truncated")
        if rtype == T_OPT:
            opt_span = (start, end)
        else:
            offsets.append(pos + 4)
            ttls.append(ttl)
            if i < ancount:
                if rtype == T_CNAME:
                    cnames.append(read_name(data, rdata)[0])
            elif i < ancount + nscount and rtype == T_SOA and rdlen >= 22:
                minimum = U32.unpack_from(data, end - 4)[0]
                neg_ttl = min(ttl, minimum)
        pos = end
    # We are a recursive resolver, not the authority: our answers never carry AA and always
    # carry RA, whatever the upstream set (an authoritative upstream such as NSD sets no RA).
    head = data[:2] + U16.pack((flags & ~AA) | RA)
    if opt_span is None:
        body = head + data[4:pos]
    elif opt_span[1] == pos:
        # The usual place of the OPT record: last. One copy, and no TTL offset moves.
        body = head + data[4:10] + U16.pack(arcount - 1) + data[12 : opt_span[0]]
    else:
        body = head + data[4:pos]
        start, end = opt_span
        body = body[:start] + body[end:pos]
        body = body[:10] + U16.pack(arcount - 1) + body[12:]
        cut = end - start
        offsets = [o - cut if o > start else o for o in offsets]
    return _new_parsed(
        ParsedAnswer,
        (body, flags & 0xF, flags, tuple(offsets), tuple(ttls), ancount, neg_ttl, tuple(cnames), bool(flags & TC)),
    )


def build_query(
    qid: int, name_wire: bytes, qtype: int, qclass: int, do: bool, udp_size: int, cd: bool = False
) -> bytes:
    """A recursive query for an upstream, always with EDNS so that large answers fit."""
    return (
        HEADER.pack(qid, RD | (CD if cd else 0), 1, 0, 0, 1)  # CD forwarded: RFC 4035 3.2.2
        + name_wire
        + TYPE_CLASS.pack(qtype, qclass)
        + opt_record(udp_size, do)
    )
