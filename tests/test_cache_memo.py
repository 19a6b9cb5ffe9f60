"""Integration: the memo of rendered cached answers (AnswerCache.hot) over real sockets.

The same UDP question within the same second gets the bytes rendered a moment ago (with its
own ID); the next second renders again with lower TTLs; a policy swap or a cache clear empties
the memo, so a newly listed name is blocked at the very next packet.
"""

from __future__ import annotations

import struct

import dns.message
import dns.rcode

from resolver.outcome import Kind
from tests.conftest import port_of
from tests.dnsutil import FakeClock, RawUdp, a_records
from tests.test_udp_batch import wire

RCODE = dns.rcode


async def ask(sock: RawUdp, msg: bytes) -> dns.message.Message:
    sock.send(msg)
    reply, _ = await sock.recv_id(struct.unpack_from(">H", msg)[0])
    return dns.message.from_wire(reply)


def ttl(msg: dns.message.Message) -> int:
    return msg.answer[0].ttl


async def test_same_question_same_second_from_memo(node, upstream, tmp_path):
    app = await node()
    clock = FakeClock()
    app.cache.clock = clock
    sock = await RawUdp.open(port_of(app))
    try:
        counts = app.pipeline.counters.counts
        assert a_records(await ask(sock, wire("allowed.test", qid=1))) == ["192.0.2.10"]  # forwarded
        second = await ask(sock, wire("allowed.test", qid=2))  # rendered from the cache, remembered
        assert len(app.cache.hot) == 1
        cached, hits = counts[Kind.CACHED], app.cache.hits
        third = await ask(sock, wire("allowed.test", qid=3))
        assert third.id == 3 and third.answer == second.answer and ttl(third) == ttl(second) == 300
        assert (counts[Kind.CACHED], app.cache.hits) == (cached + 1, hits + 1)

        clock.advance(7)  # a new second: rendered again, TTL lower
        assert ttl(await ask(sock, wire("allowed.test", qid=4))) == 293

        # A swap that lists the name: blocked at the next packet, in the same second.
        (tmp_path / "pl-mf.txt").write_text("casino.test\nallowed.test\n")
        await app.reload()
        assert not app.cache.hot
        blocked = await ask(sock, wire("allowed.test", qid=5))
        assert blocked.rcode() == RCODE.NXDOMAIN

        # A cleared cache forgets the memo too: the next question goes upstream.
        before = upstream.udp_queries
        assert a_records(await ask(sock, wire("short.test", qid=6))) == ["192.0.2.11"]  # forwarded
        await ask(sock, wire("short.test", qid=7))  # cached, remembered
        app.cache.clear()
        assert a_records(await ask(sock, wire("short.test", qid=8))) == ["192.0.2.11"]
        assert upstream.udp_queries == before + 2
    finally:
        sock.close()


async def test_memo_keeps_lru_order(node, upstream):
    """A memo hit counts as a use: the entry is not the one evicted next."""
    for name in ("a.test", "b.test", "c.test"):
        upstream.add(name, "A", "192.0.2.1")
    app = await node(cache={"max_entries": 2})
    app.cache.clock = FakeClock()
    sock = await RawUdp.open(port_of(app))
    try:
        for i, name in enumerate(["a.test", "b.test", "a.test", "a.test", "c.test"]):
            await ask(sock, wire(name, qid=i))  # the second a.test is a memo hit
        before = upstream.udp_queries
        await ask(sock, wire("a.test", qid=10))
        assert upstream.udp_queries == before, "a.test was evicted although just used"
    finally:
        sock.close()
