"""Integration: observe mode over real sockets. A name only an observing agency lists resolves
through the real upstream exactly as an unlisted one, and every query for it is a hit marked
"would block" (``observe:<action>``), repeats answered from the cache's memo included; the same
name listed by an enforcing agency gets the sinkhole."""

from __future__ import annotations

import dns.rcode

from tests.conftest import NodeFactory, port_of
from tests.dnsutil import FakeClock, a_records, query, tcp, udp, wait_until
from tests.test_dns_blocking import read_hits
from tests.test_metrics import _scrape

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
    metrics = await _scrape(app)
    assert metrics[("betblock_observed_total", ())] == 5
    assert metrics[("betblock_answers_total", (("kind", "blocked"),))] == 1  # the enforced name only
    assert metrics[("betblock_agency_mode", (("agency", "obs"), ("mode", "observe")))] == 1
    assert metrics[("betblock_agency_mode", (("agency", "obs"), ("mode", "enforce")))] == 0
    assert metrics[("betblock_agency_mode", (("agency", "enf"), ("mode", "enforce")))] == 1


async def test_same_list_enforced_gets_the_sinkhole(node: NodeFactory, upstream) -> None:
    upstream.add("watch.test", "A", "192.0.2.77")
    app = await node(lists=LISTS, agencies=[AGENCIES[0], {**AGENCIES[1], "mode": "enforce"}])
    r = await udp(port_of(app), query("watch.test"))
    assert a_records(r) == ["198.51.100.7"]


TOKEN = "observe-t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def base(app) -> str:  # type: ignore[no-untyped-def]
    host, port = app.http.bound
    return f"http://{host}:{port}"


async def test_would_block_in_the_hit_api_page_and_chain(node: NodeFactory, upstream) -> None:
    import aiohttp

    upstream.add("watch.test", "A", "192.0.2.77")
    app = await node(lists=LISTS, agencies=AGENCIES, http={"admin_token": TOKEN}, hits={"flush_interval": 3600})
    port = port_of(app)
    await udp(port, query("watch.test"))
    await udp(port, query("casino.test"))
    await app.recorder.flush()
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(base(app) + "/v1/hits") as r:
            hits = (await r.json())["hits"]
        assert [(h["name"], h["agencies"], h["action"]) for h in hits] == [
            ("casino.test", ["enf", "obs"], "nxdomain"),
            ("watch.test", ["obs"], "observe:redirect"),
        ]
        async with s.get(base(app) + "/v1/hits", params={"action": "observe"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["watch.test"]
        async with s.get(base(app) + "/v1/hits", params={"action": "nxdomain"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["casino.test"]
        async with s.get(base(app) + "/v1/hits/export", params={"format": "csv"}) as r:
            assert "observe:redirect" in await r.text()
        async with s.get(base(app) + "/v1/hits/stats") as r:
            per = {d["agency"]: d["hits"] for d in (await r.json())["per_agency_day"]}
        assert per == {"enf": 1, "obs": 1, "obs (would block)": 1}  # observed never counted as blocked
        async with s.get(base(app) + "/dashboard") as r:
            assert "obs (would block)" in await r.text()
        async with s.get(base(app) + "/") as r:
            page = await r.text()
        assert '<td class="observed" title="observe mode: answered normally">would block (redirect)</td>' in page
    assert await app.hitlog.store.verify() == (1, None)  # the chain covers the action text
