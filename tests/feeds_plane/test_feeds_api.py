"""The feeds API on an in-process node: agency tokens (401/403), size cap (413), rejects (422),
quarantine (202) and the admin's decisions, PATCH, history and diffs, allowlist, lookup, audit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from betblock.app import App
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import ede, query, udp
from tests.feeds_plane.helpers import ADMIN, TOKENS, Api, push_agency

PL, IT = TOKENS["pl-mf"], TOKENS["it-adm"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def start(node: NodeFactory, session: aiohttp.ClientSession, **kw: Any) -> tuple[App, Api]:
    app = await node(
        lists={"pl-mf": ["file-listed.test"], "it-adm": []},
        agencies=[push_agency("pl-mf", **kw), push_agency("it-adm")],
        http={"admin_token": ADMIN, "max_body_bytes": 1 << 20},
    )
    assert app.http is not None and app.http.bound is not None
    return app, Api(session, app.http.bound)


async def is_blocked(app: App, name: str) -> bool:
    """Answered by a sinkhole: the Extended DNS Error "Censored" (16) says so."""
    answer = await udp(port_of(app), query(name, edns=True))
    return any(code == 16 for code, _text in ede(answer))


async def test_auth_paths(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    assert (await api.put("pl-mf", ["a.test"], token=""))[0] == 401  # no token
    status, body = await api.put("pl-mf", ["a.test"], token="wrong")
    assert status == 401 and body["error"]
    assert (await api.call("PUT", "/v1/feeds/pl-mf", "x", headers={"Authorization": "Basic abc"}))[0] == 401
    assert (await api.put("pl-mf", ["a.test"], token=IT))[0] == 403  # another agency's token
    assert (await api.call("GET", "/v1/feeds/pl-mf", IT))[0] == 403
    assert (await api.put("nobody", ["a.test"], token=PL))[0] == 403  # does not learn what exists
    assert (await api.call("GET", "/v1/feeds", PL))[0] == 403  # admin routes
    assert (await api.call("GET", "/v1/feeds"))[0] == 401
    assert (await api.call("GET", "/v1/feeds/nobody", ADMIN))[0] == 404
    assert (await api.call("GET", "/v1/feeds/pl-mf", ADMIN))[0] == 200  # the admin may read
    assert not await is_blocked(app, "a.test")  # nothing was applied
    assert (await api.put("pl-mf", ["a.test"]))[0] == 200
    assert await is_blocked(app, "a.test")


async def test_put_errors_and_idempotence(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    status, body = await api.put("pl-mf", ["kasyno.test", "192.0.2.1", "com"])
    assert status == 200 and body["status"] == "applied" and body["version"] == 2  # v1: the file source
    assert [(r["line"], r["reason"]) for r in body["rejects"]] == [(2, "IP literal"), (3, "single-label name")]
    again = await api.put("pl-mf", ["kasyno.test", "192.0.2.1", "com"])
    assert again == (200, {**body, "status": "unchanged", "added": 0, "rejected": 0, "rejects": []})

    status, body = await api.put("pl-mf", ["192.0.2.1", "bad name"])
    assert status == 422 and body["rejected"] == 2 and body["rejects"][0] == {"line": 1, "text": "192.0.2.1", "reason": "IP literal"}
    assert (await api.put("pl-mf", b"x" * ((1 << 20) + 10)))[0] == 413  # http.max_body_bytes
    assert (await api.put("pl-mf", ["a.test"], params={"format": "nope"}))[0] == 400
    status, body = await api.put("pl-mf", b"0.0.0.0 hosts-listed.test\n", params={"format": "hosts"})
    assert status == 200 and body["added"] == 1 and body["removed"] == 1  # the whole list, now in hosts format
    assert await is_blocked(app, "hosts-listed.test") and not await is_blocked(app, "kasyno.test")
    status, body = await api.put("pl-mf", b"no-header.test\n", params={"format": "ch-gespa"})
    assert status == 422 and body["error"] == "feed refused" and "Version" in body["detail"]
    await api.put("pl-mf", ["kasyno.test"])
    assert await is_blocked(app, "www.kasyno.test")
    audit = (await api.call("GET", "/v1/audit", ADMIN, params={"agency": "pl-mf"}))[1]["audit"]
    assert {a["action"] for a in audit} >= {"update applied", "update refused"}
    assert all(a["time"] and a["actor"] for a in audit)


async def test_per_source_size_cap(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app = await node(
        lists={"pl-mf": []},
        agencies=[{**push_agency("pl-mf"), "sources": [{"kind": "push", "max_bytes": 2048}]}],
        http={"admin_token": ADMIN},
    )
    api = Api(session, app.http.bound)  # type: ignore[union-attr, arg-type]
    assert (await api.put("pl-mf", b"a.test\n" * 100))[0] == 200
    assert (await api.put("pl-mf", b"a.test\n" * 400))[0] == 413


async def test_quarantine_then_admin_approves(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    names = [f"n{i}.test" for i in range(40)]
    assert (await api.put("pl-mf", names))[0] == 200
    status, held = await api.put("pl-mf", names[:20])  # half the list gone
    assert status == 202 and held["status"] == "quarantined" and "churn" in held["reason"]
    assert await is_blocked(app, "n30.test")  # still the old list
    feeds = (await api.call("GET", "/v1/feeds", ADMIN))[1]
    assert [(q["agency"], q["version"]) for q in feeds["quarantined"]] == [("pl-mf", held["version"])]
    diff = (await api.call("GET", f"/v1/feeds/pl-mf/versions/{held['version']}", PL))[1]
    assert diff["status"] == "quarantined" and len(diff["diff"]["removed"]) == 20
    # Only an admin decides, and only on a quarantined version.
    assert (await api.call("POST", f"/v1/feeds/pl-mf/versions/{held['version']}/approve", PL))[0] == 403
    assert (await api.call("POST", "/v1/feeds/pl-mf/versions/1/approve", ADMIN))[0] == 409
    assert (await api.call("POST", "/v1/feeds/pl-mf/versions/99/approve", ADMIN))[0] == 404
    status, body = await api.call("POST", f"/v1/feeds/pl-mf/versions/{held['version']}/approve", ADMIN)
    assert status == 200 and body["status"] == "applied" and body["removed"] == 20
    assert not await is_blocked(app, "n30.test")
    history = (await api.call("GET", "/v1/feeds/pl-mf", PL))[1]["versions"]
    assert history[0]["status"] == "active" and history[0]["decided_by"] == "admin"


async def test_quarantine_rejected_by_admin(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    assert (await api.put("pl-mf", ["a.test", "b.test"]))[0] == 200
    status, held = await api.put("pl-mf", b"")
    assert status == 202
    status, body = await api.call("POST", f"/v1/feeds/pl-mf/versions/{held['version']}/reject", ADMIN)
    assert status == 200 and body["status"] == "rejected"
    assert await is_blocked(app, "a.test")
    audit = (await api.call("GET", "/v1/audit", ADMIN))[1]["audit"]
    assert audit[0]["action"] == "quarantine rejected" and audit[0]["actor"] == "admin"


async def test_patch(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    await api.put("pl-mf", ["a.test", "b.test"])
    body = {"add": ["c.test", {"name": "d.test", "legal_ref": "MF/1", "listed_at": "2024-05-06T08:00:00+02:00"}, "1.2.3.4"], "remove": ["a.test", "zzz.test"]}
    status, out = await api.call("PATCH", "/v1/feeds/pl-mf", PL, json=body)
    assert status == 200 and (out["added"], out["removed"]) == (2, 1)
    assert [(r["line"], r["reason"]) for r in out["rejects"]] == [(3, "IP literal"), (5, "not listed")]
    assert not await is_blocked(app, "a.test") and await is_blocked(app, "d.test")
    assert (await api.call("PATCH", "/v1/feeds/pl-mf", PL, data=b"not json"))[0] == 400
    assert (await api.call("PATCH", "/v1/feeds/pl-mf", PL, json={"add": [], "remove": []}))[0] == 400
    assert (await api.call("PATCH", "/v1/feeds/pl-mf", PL, json={"add": ["co.uk"]}))[0] == 422
    assert (await api.call("PATCH", "/v1/feeds/pl-mf", IT, json={"add": ["x.test"]}))[0] == 403
    status, again = await api.call("PATCH", "/v1/feeds/pl-mf", PL, json={"add": ["c.test"]})
    assert status == 200 and again["status"] == "unchanged"


async def test_allowlist_lookup_and_metrics(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    await api.put("pl-mf", ["casino.test"])
    assert await is_blocked(app, "help.casino.test")
    assert (await api.call("PUT", "/v1/allowlist/help.casino.test", PL))[0] == 403
    status, out = await api.call("PUT", "/v1/allowlist/help.casino.test", ADMIN, json={"note": "ticket 42"})
    assert status == 201 and out == {"name": "help.casino.test", "added": True}
    assert not await is_blocked(app, "help.casino.test")
    assert await is_blocked(app, "www.casino.test")
    listing = (await api.call("GET", "/v1/allowlist", ADMIN))[1]
    assert [(a["name"], a["added_by"], a["note"]) for a in listing["admin"]] == [("help.casino.test", "admin", "ticket 42")]

    info = (await api.call("GET", "/v1/lookup/x.help.casino.test", ADMIN))[1]
    assert info["blocked"] is False and info["overridden_by"] == {"name": "help.casino.test", "by": "admin", "scope": "subtree"}
    assert info["winner"]["agency"] == "pl-mf" and info["resolver"]["blocked"] is False
    info = (await api.call("GET", "/v1/lookup/www.casino.test", ADMIN))[1]
    assert info["blocked"] is True and info["matches"][0]["listed"] == "casino.test" and info["matches"][0]["since"]

    assert (await api.call("DELETE", "/v1/allowlist/help.casino.test", ADMIN))[0] == 200
    assert (await api.call("DELETE", "/v1/allowlist/help.casino.test", ADMIN))[0] == 404
    assert await is_blocked(app, "help.casino.test")
    actions = [a["action"] for a in (await api.call("GET", "/v1/audit", ADMIN))[1]["audit"]]
    assert actions[:2] == ["allowlist remove", "allowlist add"]

    async with session.get(api.base + "/metrics") as r:
        text = await r.text()
    assert 'betblock_feed_entries{agency="pl-mf",source="push"} 1.0' in text
    assert "betblock_policy_compile_seconds" in text


async def test_warning_page_shows_what_the_feed_said(node: NodeFactory, session: aiohttp.ClientSession) -> None:
    app, api = await start(node, session)
    body = {"add": [{"name": "kasyno.test", "legal_ref": "MF/2025/123", "listed_at": "2025-05-06T08:00:00+02:00"}]}
    assert (await api.call("PATCH", "/v1/feeds/pl-mf", PL, json=body))[0] == 200
    assert app.warning is not None and app.warning.bound is not None
    host, port = app.warning.bound
    async with session.get(f"http://{host}:{port}/", headers={"Host": "www.kasyno.test"}) as r:
        page = await r.text()
    assert r.status == 451 and "MF/2025/123" in page and "2025-05-06T08:00:00+02:00" in page
