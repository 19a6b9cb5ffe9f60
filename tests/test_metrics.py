"""/metrics after a known sequence of queries: names and values."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import dns.asyncquery
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NodeFactory, port_of


async def _scrape(app) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    host, port = app.http.bound
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_each_kind_of_answer(node: NodeFactory) -> None:
    app = await node(lists={"pl-mf": ["casino.test"]})
    port = port_of(app)
    ask = lambda name: dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)  # noqa: E731
    await ask("www.casino.test")  # blocked
    await ask("casino.test")  # blocked
    await ask("allowed.test")  # forwarded
    await ask("allowed.test")  # cached

    def formerr() -> bytes:  # QDCOUNT 0: FORMERR (a blocking socket, so in a thread)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(b"\x12\x34\x01\x00" + b"\x00" * 8, ("127.0.0.1", port))
            return s.recv(512)

    assert (await asyncio.to_thread(formerr))[3] & 0xF == 1
    await app.recorder.flush()
    m = await _scrape(app)
    kinds = {k[1][0][1]: v for k, v in m.items() if k[0] == "betblock_answers_total"}
    assert kinds["blocked"] == 2 and kinds["forwarded"] == 1 and kinds["cached"] == 1 and kinds["formerr"] == 1
    assert kinds["servfail"] == 0 and kinds["refused"] == 0
    assert m[("betblock_cache_entries", ())] == 1
    assert m[("betblock_cache_hit_ratio", ())] == 0.5
    assert m[("betblock_hits_recorded_total", ())] == 2
    assert m[("betblock_hits_dropped_total", ())] == 0
    assert m[("betblock_policy_entries", ())] == 1
    assert m[("betblock_ready", ())] == 1
    assert m[("betblock_policy_version", ())] == app.pipeline.policy.version


async def test_upstream_failures_are_counted_per_server(node: NodeFactory, upstream) -> None:  # type: ignore[no-untyped-def]
    upstream.behaviour.rcode = 2  # SERVFAIL from the only upstream
    app = await node()
    r = await dns.asyncquery.udp(dns.message.make_query("allowed.test", "A"), "127.0.0.1", port=port_of(app), timeout=5)
    assert r.rcode() == 2
    m = await _scrape(app)
    assert m[("betblock_upstream_failures_total", (("server", upstream.address),))] >= 1
    assert m[("betblock_answers_total", (("kind", "servfail"),))] == 1
