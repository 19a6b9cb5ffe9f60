"""Integration: forwarding (failover, deadline, TCP on truncation, reply validation, random IDs
and ports, shared in-flight questions) and the answer cache (client ID and case, decreasing
TTLs on an injected clock, expiry, clamps, negative answers, what is never cached, LRU)."""

from __future__ import annotations

import asyncio
import gc
import struct
import time
from collections.abc import AsyncIterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import port_of
from tests.dnsutil import FakeClock, RawUdp, a_records, ede, query, tcp, udp, wait_until
from tests.fakedns import FakeDns

RCODE = dns.rcode


@pytest.fixture
async def spare() -> AsyncIterator[FakeDns]:
    """A second upstream, silent unless a test changes it."""
    fake = FakeDns()
    fake.behaviour.silent = True
    await fake.start()
    yield fake
    await fake.stop()


def ttls(msg: dns.message.Message) -> list[int]:
    return [rrset.ttl for section in (msg.answer, msg.authority) for rrset in section]


# -- forwarding ----------------------------------------------------------------------------


async def test_failover_to_second_server(node, upstream, spare):
    app = await node(upstreams=[spare.address, upstream.address], upstream={"deadline": 1.5, "attempt_timeout": 0.3})
    r = await udp(port_of(app), query("allowed.test"))
    assert r.rcode() == RCODE.NOERROR and a_records(r) == ["192.0.2.10"]
    # One attempt timed out (the failure counted), then the second server answered.
    assert spare.udp_queries == 1 and upstream.udp_queries == 1
    assert app.upstream.failures == {spare.address: 1, upstream.address: 0}


DEADLINE = 1.0


@pytest.mark.parametrize(
    "first, second",
    [("silent", "silent"), ("servfail", "servfail"), ("silent", "servfail"), ("refused", "servfail")],
)
@pytest.mark.parametrize("edns", [False, True])
async def test_all_upstreams_fail(node, upstream, spare, first, second, edns):
    for fake, how in ((upstream, first), (spare, second)):
        fake.behaviour.silent = how == "silent"
        fake.behaviour.rcode = {"servfail": RCODE.SERVFAIL, "refused": RCODE.REFUSED}.get(how)
    app = await node(upstreams=[upstream.address, spare.address], upstream={"deadline": DEADLINE, "attempt_timeout": 0.3})
    started = time.monotonic()
    r = await udp(port_of(app), query("allowed.test", edns=edns), timeout=DEADLINE + 2)
    elapsed = time.monotonic() - started
    assert r.rcode() == RCODE.SERVFAIL
    assert r.answer == []
    # Answered within the client's timeout (DEADLINE + 2); only lower bounds are asserted,
    # which a loaded machine cannot break.
    if "silent" in (first, second):
        assert elapsed >= 0.3, "waited for at least one attempt"
    if first == second == "silent":
        assert elapsed >= DEADLINE - 0.05, "the deadline, not the attempts, ended it"
    assert upstream.udp_queries >= 1 and spare.udp_queries >= 1, "both servers tried"
    if edns:
        assert [c for c, _ in ede(r)] == [22]  # No Reachable Authority
    else:
        assert r.opt is None


async def test_upstream_timeout_logs_no_unretrieved_task_exception(node, upstream):
    """The shared upstream fetch outlives the client's deadline by a moment; its failure must
    still be consumed, or asyncio logs "Task exception was never retrieved" with a traceback
    for every query that timed out (a log line per query, at ERROR level)."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        upstream.behaviour.silent = True
        app = await node(upstream={"deadline": 0.4, "attempt_timeout": 0.3})
        for name in ("allowed.test", "short.test"):
            r = await udp(port_of(app), query(name))
            assert r.rcode() == RCODE.SERVFAIL
        await wait_until(lambda: not app.pipeline.inflight, what="the shared fetches to end")
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert [c.get("message") for c in errors] == []


@pytest.mark.parametrize("big", [False, True])
async def test_truncated_upstream_retried_over_tcp(node, upstream, big):
    upstream.behaviour.truncate_udp = True
    want = ["192.0.2.10"]
    if big:
        for i in range(60):
            upstream.add("many.test", "A", f"198.51.100.{i + 1}")
        want = sorted(f"198.51.100.{i + 1}" for i in range(60))
    app = await node()
    r = await tcp(port_of(app), query("many.test" if big else "allowed.test"))
    assert r.rcode() == RCODE.NOERROR and not r.flags & dns.flags.TC
    assert a_records(r) == want
    assert upstream.udp_queries == 1 and upstream.tcp_queries == 1
    assert [t for _, _, t in upstream.sources] == ["udp", "tcp"]


async def test_wrong_id_reply_ignored(node, upstream):
    upstream.behaviour.wrong_id_first = True
    app = await node()
    for i in range(3):
        r = await udp(port_of(app), query("allowed.test", "A", edns=True, do=i % 2 == 1))
        assert a_records(r) == ["192.0.2.10"], "the spoofed 6.6.6.6 was accepted"
        app.cache.clear()
    assert app.upstream.ignored_replies == 3
    assert all(rrset.ttl == 300 for rrset in r.answer)


async def test_random_query_ids_and_source_ports(node, upstream):
    app = await node()
    port = port_of(app)
    client_ids = []
    for i in range(24):
        q = query(f"r{i}.test")
        client_ids.append(q.id)
        r = await udp(port, q)
        assert r.rcode() == RCODE.NXDOMAIN
    ids = [qid for qid, _, _ in upstream.sources]
    ports = [p for _, p, _ in upstream.sources]
    assert len(ids) == 24
    assert len(set(ids)) >= 22, "query IDs repeat"
    assert len(set(ports)) >= 22, "source ports repeat: one socket reused?"
    steps = {b - a for a, b in zip(ports, ports[1:], strict=False)}
    assert len(steps) > 3, f"source ports are sequential: {ports}"
    assert sum(u == c for u, c in zip(ids, client_ids, strict=True)) <= 1, "the client's ID was forwarded"
    assert port not in ports


async def test_identical_queries_in_flight_share_one_exchange(node, upstream):
    # The 20 must all arrive while the first is in flight, even on a busy machine (and the
    # delay must stay below one attempt's timeout, or the retries show up as extra queries).
    upstream.behaviour.delay = 0.5
    app = await node(upstream={"deadline": 3.0, "attempt_timeout": 2.0})
    port = port_of(app)
    names = ["allowed.test", "ALLOWED.test", "Allowed.Test", "allowed.TEST"]
    msgs = [query(names[i % 4]) for i in range(20)]
    replies = await asyncio.gather(*(udp(port, q) for q in msgs[:10]), *(tcp(port, q) for q in msgs[10:]))
    assert upstream.udp_queries == 1
    for q, r in zip(msgs, replies, strict=True):
        assert r.id == q.id
        assert r.question[0].name.to_text() == q.question[0].name.to_text(), "the client's letter case"
        assert a_records(r) == ["192.0.2.10"]
    assert not app.pipeline.inflight


async def test_in_flight_not_shared_across_types_or_do(node, upstream):
    upstream.behaviour.delay = 0.3
    app = await node(upstream={"deadline": 3.0, "attempt_timeout": 2.0})
    port = port_of(app)
    qs = [query("allowed.test"), query("allowed.test", "AAAA"), query("allowed.test", do=True), query("allowed.test")]
    replies = await asyncio.gather(*(udp(port, q) for q in qs))
    assert upstream.udp_queries == 3
    assert sorted(upstream.seen) == [("allowed.test", "A", False), ("allowed.test", "A", True), ("allowed.test", "AAAA", False)]
    assert [rr.address for rrset in replies[1].answer for rr in rrset] == ["2001:db8::10"]


async def test_max_inflight(node, upstream):
    upstream.behaviour.delay = 0.3
    app = await node(upstream={"max_inflight": 1})
    r1, r2 = await asyncio.gather(udp(port_of(app), query("allowed.test")), udp(port_of(app), query("short.test")))
    assert r1.rcode() == RCODE.NOERROR
    assert r2.rcode() == RCODE.SERVFAIL
    assert upstream.udp_queries == 1


# Types whose code has a byte in 0x41-0x5A ('A'-'Z'): the type and class must not be
# compared case-insensitively with the name when a reply is validated.
@pytest.mark.parametrize("rdtype", ["MX", "TXT", "SVCB", "HTTPS", "TYPE66", "TYPE90", "CAA", "TYPE16705"])
async def test_any_type_forwarded(node, upstream, rdtype):
    app = await node(upstream={"deadline": 1.0, "attempt_timeout": 0.3})
    r = await udp(port_of(app), query("allowed.test", rdtype, edns=True))
    assert r.rcode() == RCODE.NOERROR, f"{rdtype}: {RCODE.to_text(r.rcode())}"
    assert r.answer == [] and r.authority[0].rdtype == dns.rdatatype.SOA  # NODATA from upstream
    assert upstream.udp_queries == 1 and app.upstream.ignored_replies == 0


# -- cache ---------------------------------------------------------------------------------


async def test_cache_hit_uses_client_id_and_case(node, upstream):
    app = await node()
    sock = await RawUdp.open(port_of(app))
    try:
        for i, (qid, name) in enumerate([(0x0101, "allowed.test"), (0xBEEF, "AlLoWeD.TeSt"), (0x0002, "ALLOWED.TEST")]):
            q = query(name)
            q.id = qid
            wire = q.to_wire()
            sock.send(wire)
            reply = await sock.recv()
            assert struct.unpack_from(">H", reply)[0] == qid
            assert reply[12 : len(wire)] == wire[12:], "the question exactly as the client wrote it"
            r = dns.message.from_wire(reply)
            assert a_records(r) == ["192.0.2.10"] and not r.flags & dns.flags.AA
            assert upstream.udp_queries == 1, f"query {i} went upstream"
    finally:
        sock.close()
    assert app.cache.hits == 2


async def test_cache_ttl_decreases_and_expires(node, upstream):
    app = await node()
    clock = FakeClock()
    app.cache.clock = clock
    port = port_of(app)
    steps = [  # (advance, TTL served, upstream queries so far)
        (0, 300, 1),
        (10, 290, 1),
        (0.5, 290, 1),
        (189.5, 100, 1),
        (99, 1, 1),
        (1, 300, 2),  # expired: asked again, full TTL
        (1, 299, 2),
    ]
    for advance, ttl, count in steps:
        clock.advance(advance)
        for send in (udp, tcp):
            r = await send(port, query("allowed.test", edns=True))
            assert ttls(r) == [ttl], f"after {clock.now - 1000}s"
            assert upstream.udp_queries == count, f"after {clock.now - 1000}s"


async def test_cname_chain_ttls_decrease_together(node, upstream):
    app = await node()
    clock = FakeClock()
    app.cache.clock = clock
    upstream.records["clean-alias.test"] = [("CNAME", "allowed.test", 50)]
    await udp(port_of(app), query("clean-alias.test"))
    clock.advance(20)
    r = await udp(port_of(app), query("clean-alias.test"))
    assert ttls(r) == [30, 280]  # CNAME 50-20, A 300-20
    clock.advance(30)  # the shortest TTL decides the lifetime
    await udp(port_of(app), query("clean-alias.test"))
    assert upstream.udp_queries == 2


@pytest.mark.parametrize(
    "cache, name, served, lifetime",
    [
        ({"min_ttl": 30}, "short.test", 30, 30),  # 5 raised to 30
        ({"max_ttl": 100}, "allowed.test", 100, 100),  # 300 lowered to 100
        ({"min_ttl": 2, "max_ttl": 10}, "short.test", 5, 5),  # inside the clamps: unchanged
    ],
)
async def test_cache_ttl_clamps(node, upstream, cache, name, served, lifetime):
    app = await node(cache=cache)
    clock = FakeClock()
    app.cache.clock = clock
    port = port_of(app)
    r = await udp(port, query(name))
    assert ttls(r) == [served]
    clock.advance(lifetime - 1)
    r = await udp(port, query(name))
    assert ttls(r) == [1] and upstream.udp_queries == 1
    clock.advance(1)
    await udp(port, query(name))
    assert upstream.udp_queries == 2


@pytest.mark.parametrize(
    "name, rdtype, rcode",
    [("missing.test", "A", RCODE.NXDOMAIN), ("allowed.test", "MX", RCODE.NOERROR)],  # NXDOMAIN, NODATA
)
async def test_negative_answers_cached_for_soa_minimum(node, upstream, name, rdtype, rcode):
    upstream.soa_minimum = 42
    app = await node()
    clock = FakeClock()
    app.cache.clock = clock
    port = port_of(app)
    for advance, ttl, count in [(0, 42, 1), (0, 42, 1), (12, 30, 1), (29, 1, 1), (1, 42, 2)]:
        clock.advance(advance)
        r = await udp(port, query(name, rdtype))
        assert r.rcode() == rcode and r.answer == []
        soa = r.authority[0]
        assert soa.rdtype == dns.rdatatype.SOA and soa[0].minimum == 42
        assert soa.ttl == ttl, f"at {clock.now - 1000}s"  # served with the negative TTL, not the SOA's 300
        assert upstream.udp_queries == count, f"at {clock.now - 1000}s"


async def test_negative_ttl_clamped(node, upstream):
    app = await node(cache={"max_negative_ttl": 20})
    clock = FakeClock()
    app.cache.clock = clock
    r = await udp(port_of(app), query("missing.test"))
    assert r.authority[0].ttl == 20
    clock.advance(20)
    await udp(port_of(app), query("missing.test"))
    assert upstream.udp_queries == 2


@pytest.mark.parametrize("rcode", [RCODE.SERVFAIL, RCODE.REFUSED])
async def test_failures_never_cached(node, upstream, rcode):
    app = await node(upstream={"deadline": 1.0, "attempt_timeout": 0.3})
    upstream.behaviour.rcode = rcode
    r = await udp(port_of(app), query("allowed.test"))
    assert r.rcode() == RCODE.SERVFAIL
    asked = upstream.udp_queries
    assert asked >= 1 and len(app.cache) == 0
    upstream.behaviour.rcode = None
    r = await udp(port_of(app), query("allowed.test"))
    assert r.rcode() == RCODE.NOERROR and a_records(r) == ["192.0.2.10"]
    assert upstream.udp_queries == asked + 1


async def test_truncated_never_cached(node, upstream):
    upstream.behaviour.truncate_udp = True
    upstream.behaviour.truncate_tcp = True  # even over TCP the upstream sends TC
    app = await node()
    for i in range(2):
        r = await udp(port_of(app), query("allowed.test"))
        assert r.flags & dns.flags.TC and r.answer == []
        assert upstream.tcp_queries == i + 1
    assert len(app.cache) == 0


async def test_truncated_to_client_but_cached_whole(node, upstream):
    for i in range(60):
        upstream.add("many.test", "A", f"198.51.100.{i + 1}")
    app = await node()
    r = await udp(port_of(app), query("many.test"))
    assert r.flags & dns.flags.TC
    r = await tcp(port_of(app), query("many.test"))
    assert len(a_records(r)) == 60 and upstream.udp_queries == 1


async def test_cache_is_bounded_lru(node, upstream):
    for name in ("a.test", "b.test", "c.test"):
        upstream.add(name, "A", "192.0.2.1")
    app = await node(cache={"max_entries": 2})
    port = port_of(app)
    # (name, whether it reaches the upstream)
    for name, fetched in [
        ("a.test", True),
        ("b.test", True),
        ("a.test", False),  # a is now the most recently used
        ("c.test", True),  # evicts b, the least recently used
        ("a.test", False),
        ("b.test", True),  # evicts c
        ("c.test", True),
    ]:
        before = upstream.udp_queries
        await udp(port, query(name))
        assert (upstream.udp_queries > before) == fetched, name
        assert len(app.cache) <= 2


async def test_cache_disabled(node, upstream):
    app = await node(cache={"max_entries": 0})
    for _ in range(3):
        await udp(port_of(app), query("allowed.test"))
    assert upstream.udp_queries == 3
