"""The admin API over real sockets: blocked DNS queries in, hits out through /v1/hits."""

from __future__ import annotations

import csv
import io
import json

import aiohttp

from betblock.app import App
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import query, tcp, udp

TOKEN = "t0ken-for-tests-only"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LISTS = {"pl-mf": ["casino.test", "bet.test"], "it-adm": ["bet.test", "slots.test"]}


async def blocked_node(node: NodeFactory) -> App:
    app = await node(lists=LISTS, http={"admin_token": TOKEN}, hits={"flush_interval": 3600}, policy={"allowlist": ["ok.casino.test"]})
    port = port_of(app)
    await udp(port, query("casino.test"))
    await udp(port, query("www.casino.test", "AAAA"))
    await tcp(port, query("bet.test", "TXT"))
    await udp(port, query("a.slots.test"))
    await udp(port, query("allowed.test"))  # forwarded: no hit
    await app.recorder.flush()  # what the periodic flush does, now
    return app


def base(app: App) -> str:
    assert app.http is not None and app.http.bound is not None
    host, port = app.http.bound
    return f"http://{host}:{port}"


async def test_admin_routes_need_the_token(node: NodeFactory) -> None:
    app = await node(http={"admin_token": TOKEN})
    off = await node()  # no admin token configured: admin routes are off
    async with aiohttp.ClientSession() as s:
        for path in ("/v1/hits", "/v1/hits/export", "/v1/hits/stats", "/v1/hits/status", "/v1/lookup?name=a.test"):
            async with s.get(base(app) + path) as r:
                assert r.status == 401, path
                # /v1/hits* take an agency's token too (its own hits), so they do not say "admin"
                assert (await r.json())["error"] in ("admin token required", "a valid token is required"), path
            async with s.get(base(app) + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
            async with s.get(base(off) + path, headers={"Authorization": "Bearer "}) as r:
                assert r.status == 401, path
        async with s.get(base(app) + "/v1/hits", headers=AUTH) as r:
            assert r.status == 200


async def test_hits_from_real_queries_with_filters_and_paging(node: NodeFactory) -> None:
    app = await blocked_node(node)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(base(app) + "/v1/hits") as r:
            body = await r.json()
        assert [(h["name"], h["qtype"], h["listed"], h["agencies"], h["client"]) for h in body["hits"]] == [
            ("a.slots.test", "A", "slots.test", ["it-adm"], "127.0.0.1"),
            ("bet.test", "TXT", "bet.test", ["pl-mf", "it-adm"], "127.0.0.1"),
            ("www.casino.test", "AAAA", "casino.test", ["pl-mf"], "127.0.0.1"),
            ("casino.test", "A", "casino.test", ["pl-mf"], "127.0.0.1"),
        ]
        assert body["next"] is None
        assert all(h["policy_version"] == app.pipeline.policy.version and h["node"] for h in body["hits"])
        async with s.get(base(app) + "/v1/hits", params={"agency": "it-adm"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["a.slots.test", "bet.test"]
        async with s.get(base(app) + "/v1/hits", params={"name": "casino.test", "qtype": "AAAA"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["www.casino.test"]
        pages = []
        cursor = None
        while True:
            params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
            async with s.get(base(app) + "/v1/hits", params=params) as r:
                page = await r.json()
            pages.append([h["name"] for h in page["hits"]])
            cursor = page["next"]
            if cursor is None:
                break
        assert pages == [["a.slots.test", "bet.test", "www.casino.test"], ["casino.test"]]
        for params, key in (({"qtype": "BOGUS"}, "qtype"), ({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit"), ({"action": "x"}, "action")):
            async with s.get(base(app) + "/v1/hits", params=params) as r:
                assert r.status == 400
                assert (await r.json())["error"].startswith(key + ":")


async def test_export_csv_and_ndjson_for_a_filter(node: NodeFactory) -> None:
    app = await blocked_node(node)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(base(app) + "/v1/hits/export", params={"format": "csv", "agency": "pl-mf"}) as r:
            assert r.status == 200 and r.content_type == "text/csv"
            assert "attachment" in r.headers["Content-Disposition"]
            rows = list(csv.DictReader(io.StringIO(await r.text())))
        assert [(x["name"], x["agencies"], x["count"]) for x in rows] == [
            ("bet.test", "pl-mf it-adm", "1"), ("www.casino.test", "pl-mf", "1"), ("casino.test", "pl-mf", "1"),
        ]
        async with s.get(base(app) + "/v1/hits/export", params={"format": "ndjson", "name": "bet.test"}) as r:
            assert r.content_type == "application/x-ndjson"
            lines = [json.loads(x) for x in (await r.text()).splitlines()]
        assert [(x["name"], x["agency"], x["action"]) for x in lines] == [("bet.test", "pl-mf", "nxdomain")]
        async with s.get(base(app) + "/v1/hits/export", params={"format": "xml"}) as r:
            assert r.status == 400


async def test_stats_status_lookup_and_metrics(node: NodeFactory) -> None:
    app = await blocked_node(node)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async with s.get(base(app) + "/v1/hits/stats", params={"days": "1"}) as r:
            stats = await r.json()
        assert {d["agency"]: d["hits"] for d in stats["per_agency_day"]} == {"pl-mf": 3, "it-adm": 2}
        assert {n["name"] for n in stats["new_names"]} == {"casino.test", "www.casino.test", "bet.test", "a.slots.test"}
        assert stats["top_networks"] == [{"network": "127.0.0.0/24", "hits": 4}]
        async with s.get(base(app) + "/v1/hits/status") as r:
            status = await r.json()
        assert status["retention_days"] == 90 and status["store"]["store"] == "sqlite" and status["store"]["hits"] == 4
        assert status["recorder"]["stored_rows"] == 4 and status["recorder"]["dropped"] == 0
        # One lookup route: the query form answers 308 to /v1/lookup/{name}, which has the provenance.
        async with s.get(base(app) + "/v1/lookup", params={"name": "WWW.Bet.Test."}, allow_redirects=False) as r:
            assert r.status == 308 and r.headers["Location"] == "/v1/lookup/WWW.Bet.Test."
        async with s.get(base(app) + "/v1/lookup", params={"name": "WWW.Bet.Test."}) as r:
            why = await r.json()
        assert why["blocked"] and why["winner"]["listed"] == "bet.test" and why["winner"]["agency"] == "pl-mf"
        assert why["also_listed_by"] == ["it-adm"] and why["winner"]["action"] == "nxdomain"
        assert why["resolver"]["policy_version"] == app.pipeline.policy.version
        assert {m["agency"] for m in why["matches"]} == {"pl-mf", "it-adm"}
        async with s.get(base(app) + "/v1/lookup/x.ok.casino.test") as r:
            why = await r.json()
        assert not why["blocked"] and why["overridden_by"] == {"name": "ok.casino.test", "by": "config", "scope": "subtree"}
        async with s.get(base(app) + "/v1/lookup/not a name!") as r:
            assert (await r.json())["valid"] is False
        async with s.get(base(app) + "/v1/lookup") as r:
            assert r.status == 400
        async with s.get(base(app) + "/metrics") as r:
            text = await r.text()
        assert "betblock_hits_stored_rows_total 4.0" in text
