"""Integration: observe mode over real sockets. A name only an observing agency lists resolves
through the real upstream exactly as an unlisted one, and every query for it is a hit marked
"would block" (``observe:<action>``), repeats answered from the cache's memo included; the same
name listed by an enforcing agency gets the sinkhole."""

from __future__ import annotations

import dns.rcode

from tests.conftest import NodeFactory, port_of
from tests.dnsutil import FakeClock, a_records, query, tcp, udp, wait_until
from tests.test_dns_blocking import read_hits

LISTS = {"enf": ["casino.test"], "obs": ["watch.test", "casino.test"]}
AGENCIES = [
    {"id": "enf", "action": "nxdomain"},
    # observe, and a higher precedence than the enforcer: the enforcer still wins casino.test
    {"id": "obs", "action": "redirect", "redirect_ipv4": ["198.51.100.7"], "mode": "observe", "precedence": 99},
]


async def test_observed_name_resolves_and_is_recorded(node: NodeFactory, upstream, tmp_path) -> None:
    upstream.add("watch.test", "A", "192.0.2.77")
    upstream.add("www.watch.test", "A", "192.0.2.78")
    upstream.add("unlisted.test", "A", "192.0.2.77")
    upstream.add("to-watch.test", "CNAME", "www.watch.test")
    app = await node(lists=LISTS, agencies=AGENCIES)
    app.cache.clock = FakeClock()  # one second of the cache's clock: repeats come from its memo
    port = port_of(app)

    unlisted = await udp(port, query("unlisted.test"))
    q = query("watch.test")
    answers = [await udp(port, q) for _ in range(3)]  # miss, cache, then the cache's memo
    for r in answers:
        assert r.rcode() == dns.rcode.NOERROR
        assert a_records(r) == a_records(unlisted) == ["192.0.2.77"]
        assert [rrset.ttl for rrset in r.answer] == [rrset.ttl for rrset in unlisted.answer]
    sub = await tcp(port, query("www.watch.test"))
    assert a_records(sub) == ["192.0.2.78"]
    alias = await udp(port, query("to-watch.test"))  # CNAME into an observed name: answered, recorded
    assert a_records(alias) == ["192.0.2.78"]
    enforced = await udp(port, query("www.casino.test"))
    assert enforced.rcode() == dns.rcode.NXDOMAIN

    path = tmp_path / "hits.jsonl"
    await wait_until(lambda: len(read_hits(path)) >= 6, what="6 hit lines flushed")
    got = [(h["name"], h["listed"], h["agencies"], h["action"]) for h in read_hits(path)]
    assert got == [
        *[("watch.test", "watch.test", ["obs"], "observe:redirect")] * 3,
        ("www.watch.test", "watch.test", ["obs"], "observe:redirect"),
        ("to-watch.test", "watch.test", ["obs"], "observe:redirect"),
        ("www.casino.test", "casino.test", ["enf", "obs"], "nxdomain"),
    ]
    assert app.pipeline.counters.observed == 5
    assert app.pipeline.counters.counts[0] == 1  # Kind.BLOCKED: the enforced name only


async def test_same_list_enforced_gets_the_sinkhole(node: NodeFactory, upstream) -> None:
    upstream.add("watch.test", "A", "192.0.2.77")
    app = await node(lists=LISTS, agencies=[AGENCIES[0], {**AGENCIES[1], "mode": "enforce"}])
    r = await udp(port_of(app), query("watch.test"))
    assert a_records(r) == ["198.51.100.7"]
