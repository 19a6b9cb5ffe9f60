"""Integration: the DNS protocol over real sockets: bad input, EDNS (OPT, UDP size, DO), TCP
framing, pipelining, idle timeout and connection cap, and the client ACL."""

from __future__ import annotations

import struct
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import port_of
from tests.dnsutil import RawTcp, RawUdp, a_records, ede, query, tcp, udp, wait_until

RCODE = dns.rcode
HEADER = struct.Struct(">HHHHHH")
QNAME = b"\x06casino\x04test\x00"  # listed: a synchronous, deterministic answer
A_IN = b"\x00\x01\x00\x01"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return HEADER.pack(qid, flags, qd, an, ns, ar)


def probe(qid: int) -> bytes:
    """A valid query for a listed name: answered at once, from inside the receive callback."""
    return header(qid) + QNAME + A_IN


def rcode_of(reply: bytes) -> int:
    return HEADER.unpack_from(reply)[1] & 0xF


VALID = header(0x1111) + QNAME + A_IN

# Packets that get no answer at all: the next valid query's answer is the first thing back.
DROPPED = {
    "empty": b"",
    "one byte": b"\x12",
    "eleven bytes": VALID[:11],
    "QR set (a response)": header(0x2222, 0x8100) + QNAME + A_IN,
    "QR set, garbage after": header(0x2223, 0x8000) + b"\xff" * 40,
}

# (packet, rcode, whether the question is echoed)
ANSWERED = {
    "QDCOUNT 0": (header(0x3001, qd=0), RCODE.FORMERR, False),
    "QDCOUNT 2": (header(0x3002, qd=2) + QNAME + A_IN + QNAME + A_IN, RCODE.FORMERR, False),
    "label past the end": (header(0x3003) + b"\x07casino", RCODE.FORMERR, False),
    "label past the end, long": (header(0x3004) + b"\x3fabc", RCODE.FORMERR, False),
    "pointer in the question": (header(0x3005) + b"\xc0\x0c" + A_IN, RCODE.FORMERR, False),
    "pointer after a label": (header(0x3006) + b"\x03www\xc0\x0c" + A_IN, RCODE.FORMERR, False),
    "extended label type": (header(0x3007) + b"\x41" + b"a" * 65 + b"\x00" + A_IN, RCODE.FORMERR, False),
    "no type and class": (header(0x3008) + QNAME, RCODE.FORMERR, False),
    "half a type": (header(0x3009) + QNAME + b"\x00", RCODE.FORMERR, False),
    "name over 255 bytes": (header(0x300A) + (b"\x3f" + b"a" * 63) * 4 + b"\x00" + A_IN, RCODE.FORMERR, False),
    "additional record truncated": (header(0x300B, ar=1) + QNAME + A_IN + b"\x00\x00\x29", RCODE.FORMERR, False),
    "two OPT records": (
        header(0x300C, ar=2) + QNAME + A_IN + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
        RCODE.FORMERR,
        False,
    ),
    "opcode IQUERY (1)": (header(0x3010, 0x0900) + QNAME + A_IN, RCODE.NOTIMP, False),
    "opcode STATUS (2)": (header(0x3011, 0x1100) + QNAME + A_IN, RCODE.NOTIMP, False),
    "opcode NOTIFY (4)": (header(0x3012, 0x2000) + QNAME + b"\x00\x06\x00\x01", RCODE.NOTIMP, False),
    "opcode UPDATE (5)": (header(0x3013, 0x2800) + QNAME + b"\x00\x06\x00\x01", RCODE.NOTIMP, False),
}


@pytest.mark.parametrize("label", list(DROPPED))
async def test_dropped_over_udp(node, upstream, label):
    app = await node()
    sock = await RawUdp.open(port_of(app))
    try:
        sock.send(DROPPED[label])
        sock.send(probe(0x7777))
        reply, before = await sock.recv_id(0x7777)
        assert before == [], f"{label}: something was answered"
        assert rcode_of(reply) == RCODE.NXDOMAIN
    finally:
        sock.close()
    assert upstream.udp_queries == 0


@pytest.mark.parametrize("label", [k for k in DROPPED if k != "empty"])
async def test_dropped_over_tcp(node, label):
    app = await node()
    conn = await RawTcp.open(port_of(app))
    try:
        conn.send(DROPPED[label])
        conn.send(probe(0x7778))
        reply = await conn.recv()
        assert HEADER.unpack_from(reply)[0] == 0x7778, f"{label}: something was answered"
    finally:
        await conn.close()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_bad_input_answers(node, upstream, transport):
    app = await node()
    port = port_of(app)
    sock = await RawUdp.open(port) if transport == "udp" else await RawTcp.open(port)
    try:
        for label, (packet, rcode, _) in ANSWERED.items():
            qid = HEADER.unpack_from(packet)[0]
            sock.send(packet)
            reply = await sock.recv()
            rid, flags, qd, an, ns, _ar = HEADER.unpack_from(reply)
            assert rid == qid, label
            assert flags & 0x8000, f"{label}: QR"
            assert flags & 0xF == rcode, f"{label}: rcode {flags & 0xF}"
            assert (an, ns) == (0, 0), label
            if rcode == RCODE.NOTIMP:
                assert (flags >> 11) & 0xF == (HEADER.unpack_from(packet)[1] >> 11) & 0xF, f"{label}: opcode echoed"
            # The server still answers a valid query afterwards.
            sock.send(probe(qid ^ 0xFFFF))
            assert HEADER.unpack_from(await sock.recv())[0] == qid ^ 0xFFFF, label
    finally:
        if transport == "udp":
            sock.close()
        else:
            await sock.close()
    assert upstream.udp_queries == 0, "no malformed question reached the upstream"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_edns_version_1_gets_badvers(node, upstream, transport):
    app = await node()
    send = udp if transport == "udp" else tcp
    for name in ("allowed.test", "casino.test"):
        r = await send(port_of(app), query(name, edns=1))
        assert r.rcode() == RCODE.BADVERS, name
        assert r.edns == 0, "we answer with the version we speak"
        assert r.answer == [] and r.authority == []
    assert upstream.udp_queries == 0


# -- EDNS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("edns_reply", [False, True], ids=["upstream-no-opt", "upstream-opt"])
async def test_opt_iff_query_had_one(node, upstream, edns_reply):
    upstream.behaviour.edns_reply = edns_reply  # an upstream's OPT is never passed through
    app = await node()
    port = port_of(app)
    names = ["allowed.test", "allowed.test", "missing.test", "casino.test", "alias.test"]  # fwd, cached, neg, blocked, cname
    for name in names:
        for edns in (False, True, False, True):
            for send in (udp, tcp):
                r = await send(port, query(name, edns=edns))
                assert (r.opt is not None) == edns, f"{name} edns={edns}"
                assert sum(1 for rr in r.additional if rr.rdtype == dns.rdatatype.OPT) == 0
                if edns:
                    assert r.payload == 1232, "we advertise our own UDP size"


# (question, EDNS payload or None, transport, truncated, A records in the answer)
SIZE_TABLE = [
    ("mid.test", None, "udp", False, 20),  # ~350 bytes: fits 512
    ("mid.test", 100, "udp", False, 20),  # a payload below 512 counts as 512
    ("big.test", None, "udp", True, 0),  # ~830 bytes > 512 without EDNS
    ("big.test", 512, "udp", True, 0),
    ("big.test", 900, "udp", False, 50),
    ("big.test", 800, "udp", True, 0),  # the client's size, not ours
    ("big.test", None, "tcp", False, 50),
    ("huge.test", 1232, "udp", True, 0),  # ~1630 bytes
    ("huge.test", 4096, "udp", True, 0),  # the client may take more, but we send at most 1232
    ("huge.test", None, "tcp", False, 100),
    ("huge.test", 4096, "tcp", False, 100),
]


@pytest.fixture
async def big_upstream(upstream):
    for i in range(20):
        upstream.add("mid.test", "A", f"192.0.2.{i + 1}")
    for i in range(50):
        upstream.add("big.test", "A", f"192.0.2.{i + 1}")
    for i in range(100):
        upstream.add("huge.test", "A", f"198.51.100.{i + 1}")
    for i in range(10):
        upstream.add("txt.test", "TXT", f"{i:02d}" + "x" * 180)
    return upstream


async def test_udp_size_honoured(node, big_upstream):
    app = await node()
    port = port_of(app)
    for name, payload, transport, tc, count in SIZE_TABLE:
        q = query(name, edns=payload is not None, payload=payload or 512)
        r = await (udp if transport == "udp" else tcp)(port, q)
        where = f"{name} payload={payload} {transport}"
        assert bool(r.flags & dns.flags.TC) == tc, where
        assert r.rcode() == RCODE.NOERROR, where
        assert len(a_records(r)) == count, where
        assert r.question[0].name == q.question[0].name, where
        assert (r.opt is not None) == (payload is not None), where
    # One upstream exchange per name: a truncated answer to a client is never what was cached.
    assert big_upstream.udp_queries == 3


async def test_big_txt_truncated_then_whole_over_tcp(node, big_upstream):
    app = await node()
    port = port_of(app)
    r = await udp(port, query("txt.test", "TXT", edns=True))
    assert r.flags & dns.flags.TC and r.answer == []
    r = await tcp(port, query("txt.test", "TXT", edns=True))
    assert not r.flags & dns.flags.TC
    texts = sorted(b"".join(rr.strings).decode() for rrset in r.answer for rr in rrset)
    assert len(texts) == 10 and texts[0].startswith("00") and len(texts[0]) == 182
    assert len(r.to_wire()) > 1232
    assert big_upstream.udp_queries == 1


async def test_do_bit_forwarded_and_part_of_cache_key(node, upstream):
    app = await node()
    port = port_of(app)
    r = await udp(port, query("allowed.test", edns=True))
    assert upstream.seen == [("allowed.test", "A", False)]
    assert not r.ednsflags & dns.flags.DO
    r = await udp(port, query("allowed.test", do=True))
    assert upstream.seen[-1] == ("allowed.test", "A", True), "DO query after non-DO reaches upstream again"
    assert r.ednsflags & dns.flags.DO, "DO echoed"
    assert a_records(r) == ["192.0.2.10"]
    # Each is now cached under its own key.
    for do in (True, False):
        r = await udp(port, query("allowed.test", edns=True, do=do))
        assert bool(r.ednsflags & dns.flags.DO) == do
    assert len(upstream.seen) == 2
    # Blocked answers echo DO too.
    r = await udp(port, query("casino.test", do=True))
    assert r.ednsflags & dns.flags.DO and ede(r)[0][0] == 16


# -- TCP -----------------------------------------------------------------------------------


async def test_tcp_framing_split_writes(node):
    app = await node()
    conn = await RawTcp.open(port_of(app))
    try:
        msg = probe(0x4242)
        framed = struct.pack(">H", len(msg)) + msg
        for i in range(len(framed)):  # one byte per write: the server reassembles the frame
            conn.send_raw(framed[i : i + 1])
            await conn.writer.drain()
        # Two frames in one write.
        conn.send_raw(struct.pack(">H", len(msg)) + probe(0x4343) + struct.pack(">H", len(msg)) + probe(0x4444))
        ids = [HEADER.unpack_from(await conn.recv())[0] for _ in range(3)]
        assert ids == [0x4242, 0x4343, 0x4444]
    finally:
        await conn.close()


async def test_tcp_pipelined_queries(node, upstream):
    upstream.behaviour.delay = 0.2  # forwarded answers complete after the blocked ones
    for i in range(5):
        upstream.add(f"n{i}.test", "A", f"192.0.2.{100 + i}")
    app = await node()
    conn = await RawTcp.open(port_of(app))
    expected: dict[int, tuple[str, int, list[str]]] = {}
    try:
        for i in range(12):
            name = f"n{i % 5}.test" if i % 2 else f"w{i}.casino.test"
            q = query(name)
            expected[q.id] = (name, RCODE.NOERROR if i % 2 else RCODE.NXDOMAIN, [f"192.0.2.{100 + i % 5}"] if i % 2 else [])
            conn.send(q.to_wire())
        answers: dict[int, dns.message.Message] = {}
        order = []
        while len(answers) < len(expected):
            r = dns.message.from_wire(await conn.recv())
            assert r.id in expected and r.id not in answers
            answers[r.id] = r
            order.append(r.id)
    finally:
        await conn.close()
    for qid, (name, rcode, addrs) in expected.items():
        r = answers[qid]
        assert r.question[0].name.to_text(omit_final_dot=True) == name
        assert r.rcode() == rcode and a_records(r) == addrs
    assert order != list(expected), "answered as they complete, not in arrival order"
    assert upstream.udp_queries == 5, "the duplicate questions shared upstream exchanges"


async def test_tcp_pending_cap_pauses_and_resumes(node, upstream):
    upstream.behaviour.delay = 0.05
    for i in range(8):
        upstream.add(f"p{i}.test", "A", f"192.0.2.{i + 1}")
    app = await node(dns={"tcp_max_pending_per_connection": 2})
    conn = await RawTcp.open(port_of(app))
    try:
        qs = {}
        for i in range(8):
            q = query(f"p{i}.test")
            qs[q.id] = f"192.0.2.{i + 1}"
            conn.send(q.to_wire())
        got = {}
        for _ in range(8):
            r = dns.message.from_wire(await conn.recv())
            got[r.id] = a_records(r)
        assert got == {qid: [addr] for qid, addr in qs.items()}
    finally:
        await conn.close()


async def test_tcp_idle_timeout(node):
    app = await node(dns={"tcp_idle_timeout": 0.3})
    port = port_of(app)
    conn = await RawTcp.open(port)
    conn.send(probe(1))
    assert HEADER.unpack_from(await conn.recv())[0] == 1
    started = time.monotonic()
    assert await conn.eof(timeout=3)
    assert time.monotonic() - started >= 0.25
    await conn.close()
    # A connection that never sends anything is closed too.
    silent = await RawTcp.open(port)
    assert await silent.eof(timeout=3)
    await silent.close()
    await wait_until(lambda: not app.server.tcp.connections, what="connections forgotten")


async def test_tcp_idle_timeout_not_while_busy(node, upstream):
    upstream.behaviour.delay = 0.6  # longer than the idle timeout
    app = await node(dns={"tcp_idle_timeout": 0.2}, upstream={"deadline": 2.0, "attempt_timeout": 1.5})
    conn = await RawTcp.open(port_of(app))
    try:
        q = query("allowed.test")
        conn.send(q.to_wire())
        r = dns.message.from_wire(await conn.recv(timeout=3))
        assert r.id == q.id and a_records(r) == ["192.0.2.10"]
    finally:
        await conn.close()


async def test_tcp_connection_cap_closes_the_least_recently_active_idle_one(node):
    app = await node(dns={"tcp_max_connections": 2})
    port = port_of(app)
    first, second = await RawTcp.open(port), await RawTcp.open(port)
    for i, conn in enumerate((second, first)):  # first is the most recently active
        conn.send(probe(10 + i))
        assert HEADER.unpack_from(await conn.recv())[0] == 10 + i
    third = await RawTcp.open(port)
    third.send(probe(12))
    assert HEADER.unpack_from(await third.recv())[0] == 12, "at the cap a new client is still served"
    assert await second.eof(timeout=2), "the least recently active idle connection made room"
    assert app.server.tcp.evicted == 1 and app.server.tcp.rejected == 0
    first.send(probe(13))
    assert HEADER.unpack_from(await first.recv())[0] == 13
    for conn in (first, second, third):
        await conn.close()


async def test_tcp_connection_cap_refuses_when_none_is_idle(node, upstream):
    upstream.behaviour.delay = 1.0
    for i in range(2):
        upstream.add(f"busy{i}.test", "A", f"192.0.2.{i + 1}")
    app = await node(dns={"tcp_max_connections": 2}, upstream={"deadline": 3.0, "attempt_timeout": 2.0})
    port = port_of(app)
    busy = [await RawTcp.open(port) for _ in range(2)]
    for i, conn in enumerate(busy):
        conn.send(query(f"busy{i}.test").to_wire())
    await wait_until(lambda: upstream.udp_queries == 2, what="both queries upstream")
    third = await RawTcp.open(port)
    third.send(probe(12))
    assert await third.eof(timeout=2), "over the cap with every connection busy: closed at once"
    assert app.server.tcp.rejected == 1 and app.server.tcp.evicted == 0
    await third.close()
    for i, conn in enumerate(busy):
        assert a_records(dns.message.from_wire(await conn.recv(timeout=5))) == [f"192.0.2.{i + 1}"]
        await conn.close()


# -- ACL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_acl_refuses_other_networks(node, upstream, tmp_path, transport):
    app = await node(acl={"allow": ["10.0.0.0/8", "::1/128"]})
    send = udp if transport == "udp" else tcp
    for name in ("allowed.test", "casino.test", "alias.test"):
        for edns in (False, True):
            r = await send(port_of(app), query(name, edns=edns))
            assert r.rcode() == RCODE.REFUSED, name
            assert r.answer == [] and r.authority == [], f"{name}: nothing about the policy leaks"
            assert (r.opt is not None) == edns
            if edns:
                assert [c for c, _ in ede(r)] == [18]  # Prohibited
    assert upstream.udp_queries == 0 and upstream.tcp_queries == 0
    assert app.recorder.buffer.hits() == 0 and not (tmp_path / "hits.jsonl").exists(), "a refused query is not a hit"


@pytest.mark.parametrize("allow", [None, ["127.0.0.1/32"], ["10.0.0.0/8", "127.0.0.0/8"]])
async def test_acl_allows_loopback(node, upstream, allow):
    app = await node(**({} if allow is None else {"acl": {"allow": allow}}))
    for send in (udp, tcp):
        r = await send(port_of(app), query("allowed.test"))
        assert r.rcode() == RCODE.NOERROR and a_records(r) == ["192.0.2.10"]
    assert upstream.udp_queries == 1


# -- header flags --------------------------------------------------------------------------


@pytest.mark.parametrize("rd, cd", [(True, False), (False, False), (True, True), (False, True)])
async def test_header_flags_echoed(node, big_upstream, rd, cd):
    """RD and CD are copied from the query (RFC 1035 4.1.1, RFC 4035 3.2.2), RA is set, and
    AA never is: we are not the authority, even when the upstream was (FakeDns sets AA)."""
    app = await node()
    port = port_of(app)
    flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    # (question, expected rcode, expected TC): forwarded, then cached, negative, blocked, truncated
    for name, rcode, tc in [
        ("allowed.test", RCODE.NOERROR, False),
        ("allowed.test", RCODE.NOERROR, False),
        ("missing.test", RCODE.NXDOMAIN, False),
        ("casino.test", RCODE.NXDOMAIN, False),
        ("alias.test", RCODE.NXDOMAIN, False),
        ("big.test", RCODE.NOERROR, True),
        ("big.test", RCODE.NOERROR, True),
    ]:
        q = query(name)
        q.flags = flags
        r = await udp(port, q)
        where = f"{name} rd={rd} cd={cd}"
        assert r.rcode() == rcode, where
        assert bool(r.flags & dns.flags.TC) == tc, where
        assert bool(r.flags & dns.flags.RD) == rd, where
        assert bool(r.flags & dns.flags.CD) == cd, where
        assert r.flags & dns.flags.RA, where
        assert not r.flags & dns.flags.AA, where
