"""Serve-stale (RFC 8767): an expired answer is served with a short TTL when every upstream
fails, only within ``cache.stale_max_age``, and counted. The cache's clock is a settable one, so
"expired" needs no waiting; the upstream is the fake one, made to fail or go silent."""

from __future__ import annotations

import dns.message
import dns.rcode

from feeds.compile import AgencyList, compile_snapshot, to_wire
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import FakeClock, a_records, ede, query, tcp, udp
from tests.test_metrics import _scrape


async def _node(node: NodeFactory, lists: dict[str, list[str]] | None = None, **cache: object):  # type: ignore[no-untyped-def]
    app = await node(lists=lists, cache=cache)
    clock = FakeClock()
    app.cache.clock = clock
    return app, clock


async def test_an_expired_answer_is_served_when_the_upstream_fails(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node)
    port = port_of(app)
    r = await udp(port, query("short.test"))  # TTL 5
    assert a_records(r) == ["192.0.2.11"] and r.answer[0].ttl == 5
    upstream.behaviour.rcode = dns.rcode.SERVFAIL  # every attempt fails from now on
    clock.advance(3600)  # long expired
    asked = upstream.udp_queries
    r = await udp(port, query("short.test", edns=True))
    assert r.rcode() == dns.rcode.NOERROR and a_records(r) == ["192.0.2.11"]
    assert r.answer[0].ttl == 30  # RFC 8767's stale TTL, not 0 and not the old TTL
    assert ede(r) == [(3, "")]  # Stale Answer (RFC 8914)
    assert upstream.udp_queries > asked  # the upstream was asked first
    # Within the failure recheck (stale_ttl seconds) the stale answer comes at once, over UDP
    # and TCP, without asking the failing upstream again.
    asked = upstream.udp_queries
    clock.advance(29)
    for send in (udp, tcp):
        r = await send(port, query("short.test"))
        assert a_records(r) == ["192.0.2.11"] and r.answer[0].ttl == 30
    assert upstream.udp_queries == asked
    counts = app.pipeline.counters.snapshot()
    assert counts["stale"] == 3 and counts["servfail"] == 0
    r = await udp(port, query("nowhere.test", edns=True))  # never cached: no stale answer
    assert r.rcode() == dns.rcode.SERVFAIL
    asked = upstream.udp_queries
    m = await _scrape(app)
    assert m[("betblock_answers_total", (("kind", "stale"),))] == 3
    # The upstream recovers: after the recheck the name is refreshed and served live again.
    upstream.behaviour.rcode = None
    clock.advance(2)
    r = await udp(port, query("short.test"))
    assert a_records(r) == ["192.0.2.11"] and r.answer[0].ttl == 5
    assert upstream.udp_queries == asked + 1
    assert app.pipeline.counters.snapshot()["stale"] == 3


async def test_a_silent_upstream_gets_a_stale_answer_at_the_deadline(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node)
    port = port_of(app)
    app.pipeline.deadline = 0.3  # the wait below is the deadline: keep it short
    await udp(port, query("allowed.test"))
    upstream.behaviour.silent = True
    clock.advance(301)
    r = await udp(port, query("allowed.test"))
    assert a_records(r) == ["192.0.2.10"] and r.answer[0].ttl == 30
    assert app.pipeline.counters.snapshot()["stale"] == 1


async def test_no_stale_answer_beyond_stale_max_age(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node, stale_max_age=60)
    port = port_of(app)
    await udp(port, query("short.test"))  # expires 5 s after storing
    await udp(port, query("allowed.test"))  # TTL 300
    upstream.behaviour.rcode = dns.rcode.SERVFAIL
    clock.advance(5 + 61)  # short.test: 61 s past its expiry; allowed.test: still live
    r = await udp(port, query("short.test"))
    assert r.rcode() == dns.rcode.SERVFAIL and not r.answer
    assert app.pipeline.counters.snapshot()["stale"] == 0
    # An answer 60 s past its expiry is still served.
    clock.advance(300 - 66 + 60)  # allowed.test expired 60 s ago
    r = await udp(port, query("allowed.test"))
    assert a_records(r) == ["192.0.2.10"] and r.answer[0].ttl == 30


async def test_stale_max_age_zero_disables_serve_stale(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node, stale_max_age=0)
    port = port_of(app)
    await udp(port, query("short.test"))
    upstream.behaviour.rcode = dns.rcode.SERVFAIL
    clock.advance(6)
    r = await udp(port, query("short.test"))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert len(app.cache) == 0  # the expired entry was dropped, not kept


async def test_a_stale_answer_still_meets_cname_inspection(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node, lists={"pl-mf": ["other.test"]})
    port = port_of(app)
    r = await udp(port, query("alias.test"))  # CNAME to www.casino.test, not listed yet
    assert a_records(r) == ["192.0.2.66"]
    upstream.behaviour.rcode = dns.rcode.SERVFAIL
    clock.advance(301)
    agency = app.settings.agencies[0]
    app.pipeline.install(compile_snapshot([AgencyList(agency, [to_wire(b"casino.test")])], [], 300))
    r = await udp(port, dns.message.make_query("alias.test", "A"))
    assert r.rcode() == dns.rcode.NXDOMAIN  # the listed CNAME target decides, stale or not


async def test_a_stale_nxdomain_says_so(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    app, clock = await _node(node)
    port = port_of(app)
    r = await udp(port, query("nowhere.test", edns=True))
    assert r.rcode() == dns.rcode.NXDOMAIN
    upstream.behaviour.rcode = dns.rcode.SERVFAIL
    clock.advance(3600)
    r = await udp(port, query("nowhere.test", edns=True))
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].ttl == 30
    assert ede(r) == [(19, "")]  # Stale NXDOMAIN Answer
    r = await udp(port, query("nowhere.test"))  # without EDNS: no OPT to carry it
    assert r.rcode() == dns.rcode.NXDOMAIN and r.edns < 0
