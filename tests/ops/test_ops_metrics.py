"""/metrics for operating a node: the forwarded-latency histogram after a known sequence of
queries, and the per-agency feed status (entries, version, age, last error, quarantine)."""

from __future__ import annotations

import aiohttp
import dns.asyncquery
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from betblock.app import App
from tests.conftest import NodeFactory, port_of
from tests.fakedns import FakeDns


async def _scrape(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert app.http is not None and app.http.bound is not None
    host, port = app.http.bound
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for fam in text_string_to_metric_families(text)
        for sample in fam.samples
    }


async def test_forward_latency_histogram_times_cache_misses_only(node: NodeFactory, upstream: FakeDns) -> None:
    app = await node(lists={"pl-mf": ["casino.test"]})
    port = port_of(app)

    async def ask(name: str) -> None:
        await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)

    await ask("casino.test")  # blocked: not timed
    await ask("allowed.test")  # forwarded
    await ask("allowed.test")  # cached: not timed
    upstream.behaviour.delay = 0.3
    await ask("short.test")  # forwarded, 0.3 s upstream
    m = await _scrape(app)
    bucket = lambda le: m[("betblock_forward_latency_seconds_bucket", (("le", le),))]  # noqa: E731
    assert m[("betblock_forward_latency_seconds_count", ())] == 2
    assert bucket("+Inf") == 2
    # Only lower bounds, which load cannot break: the 0.3 s miss never falls under 0.25 s
    # (the fast one may, on an idle machine), and the sum holds at least that 0.3 s.
    assert bucket("0.25") <= 1
    assert m[("betblock_forward_latency_seconds_sum", ())] >= 0.3
    bounds = sorted((float(k[1][0][1]), v) for k, v in m.items() if k[0] == "betblock_forward_latency_seconds_bucket")
    assert [v for _b, v in bounds] == sorted(v for _b, v in bounds)  # cumulative


async def test_feed_status_per_agency_source(node: NodeFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = await node(lists={"pl-mf": ["casino.test", "poker.test"], "cz-mf": ["sazky.test"]})
    await app.feeds.flush()
    m = await _scrape(app)
    pl = (("agency", "pl-mf"), ("source", f"file:{tmp_path / 'pl-mf.txt'}"))
    cz = (("agency", "cz-mf"), ("source", f"file:{tmp_path / 'cz-mf.txt'}"))
    assert (m[("betblock_feed_entries", pl)], m[("betblock_feed_entries", cz)]) == (2, 1)
    assert m[("betblock_feed_version", pl)] == 1 and m[("betblock_feed_quarantined", pl)] == 0
    assert 0 <= m[("betblock_feed_age_seconds", pl)] < 60
    assert not [k for k in m if k[0] == "betblock_feed_last_error_info"]

    # The file goes away: the source fails, keeps its list, and says why.
    (tmp_path / "cz-mf.txt").unlink()
    rt = app.feeds.runtime("cz-mf", f"file:{tmp_path / 'cz-mf.txt'}")
    await app.feeds.refresh(rt)
    m = await _scrape(app)
    errors = {k[1]: v for k, v in m.items() if k[0] == "betblock_feed_last_error_info"}
    assert len(errors) == 1
    (labels, value), = errors.items()
    assert value == 1 and dict(labels)["agency"] == "cz-mf" and "No such file" in dict(labels)["error"]
    assert m[("betblock_feed_entries", cz)] == 1 and m[("betblock_feed_failures", cz)] == 1
