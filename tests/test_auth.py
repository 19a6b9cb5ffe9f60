"""The one auth layer over real HTTP: bearer admin and agency tokens, the page session, declared
roles (401 without a credential, 403 with the wrong one), and the cross-site check for cookies."""

from __future__ import annotations

from typing import Any

import aiohttp

from betblock.app import App
from config.auth import sha256_hex
from tests.conftest import NodeFactory

ADMIN = "admin-t0ken-for-auth-tests"
PL = "pl-token-0123456789abcdef"
IT = "it-token-0123456789abcdef"


async def two_agencies(node: NodeFactory, max_failures: int = 1000) -> App:
    # The brute-force limiter would lock this client out after a few wrong tokens: these tests
    # send many on purpose (one test below checks the limiter itself).
    return await node(
        lists={"pl-mf": ["casino.test"], "it-adm": ["slots.test"]},
        agencies=[{"id": "pl-mf", "token_sha256": sha256_hex(PL)}, {"id": "it-adm", "token_sha256": sha256_hex(IT)}],
        http={"admin_token": ADMIN, "auth_max_failures": max_failures},
    )


def base(app: App) -> str:
    assert app.http is not None and app.http.bound is not None
    return "http://%s:%d" % app.http.bound


async def status(s: aiohttp.ClientSession, method: str, url: str, token: str | None = None, **kw: Any) -> int:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with s.request(method, url, headers=headers, allow_redirects=False, **kw) as r:
        await r.read()
        return r.status


async def test_roles_per_route(node: NodeFactory) -> None:
    app = await two_agencies(node)
    b = base(app)
    # (method, path, admin, pl-mf's token): anonymous always 401 on these
    table = [
        ("GET", "/v1/feeds", 200, 403),
        ("GET", "/v1/feeds/pl-mf", 200, 200),
        ("GET", "/v1/feeds/it-adm", 200, 403),
        ("GET", "/v1/hits", 200, 200),
        ("GET", "/v1/hits/export", 200, 200),
        ("GET", "/v1/hits/stats", 200, 403),
        ("GET", "/v1/hits/status", 200, 403),
        ("GET", "/v1/audit", 200, 403),
        ("GET", "/v1/allowlist", 200, 403),
        ("GET", "/v1/lookup/casino.test", 200, 403),
        ("GET", "/v1/compliance/pl-mf", 200, 200),
        ("GET", "/v1/compliance/it-adm", 200, 403),
        ("POST", "/v1/compliance/pl-mf/self-test?sample=1", 200, 403),
        ("POST", "/v1/feeds/pl-mf/refresh", 202, 403),
    ]
    async with aiohttp.ClientSession() as s:
        for method, path, as_admin, as_pl in table:
            assert await status(s, method, b + path) == 401, path
            assert await status(s, method, b + path, "not-a-token") == 401, path
            assert await status(s, method, b + path, ADMIN) == as_admin, path
            assert await status(s, method, b + path, PL) == as_pl, path
        # an agency asking for another agency's hits is told no, not given an empty page
        assert await status(s, "GET", b + "/v1/hits?agency=it-adm", PL) == 403
        for public in ("/healthz", "/readyz", "/metrics", "/"):
            assert await status(s, "GET", b + public) == 200, public


async def test_admin_page_session_works_on_every_admin_route(node: NodeFactory) -> None:
    app = await two_agencies(node)
    b = base(app)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # unsafe: cookies of an IP address
        assert await status(s, "POST", b + "/login", data={"token": PL}) == 401  # the admin form takes the admin token only
        assert await status(s, "POST", b + "/login", data={"token": ADMIN}) == 303
        for path in ("/v1/feeds", "/v1/hits", "/v1/audit", "/v1/lookup/casino.test", "/v1/compliance/it-adm"):
            assert await status(s, "GET", b + path) == 200, path
        # a change by cookie must come from our own origin
        same = {"Origin": b}
        assert await status(s, "POST", b + "/v1/feeds/pl-mf/refresh") == 403
        assert await status(s, "POST", b + "/v1/feeds/pl-mf/refresh", headers={"Origin": "http://evil.test"}) == 403
        assert await status(s, "POST", b + "/v1/feeds/pl-mf/refresh", headers={"Sec-Fetch-Site": "cross-site"}) == 403
        assert await status(s, "POST", b + "/v1/feeds/pl-mf/refresh", headers=same) == 202
        assert await status(s, "POST", b + "/v1/feeds/pl-mf/refresh", headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}) == 202
        # a bearer header that proves nothing is a failure, never a fall-back to the cookie
        assert await status(s, "GET", b + "/v1/feeds", "wrong") == 401
        assert await status(s, "POST", b + "/logout", headers=same) == 303
        assert await status(s, "GET", b + "/v1/feeds") == 401
        # a login form posted from another site is refused
        assert await status(s, "POST", b + "/login", data={"token": ADMIN}, headers={"Origin": "http://evil.test"}) == 403


async def test_agency_token_sees_only_its_own_hits(node: NodeFactory) -> None:
    from tests.dnsutil import query, udp
    from tests.conftest import port_of

    app = await two_agencies(node)
    await udp(port_of(app), query("www.casino.test"))
    await udp(port_of(app), query("slots.test"))
    await app.recorder.flush()
    b = base(app)
    async with aiohttp.ClientSession() as s:
        async with s.get(b + "/v1/hits", headers={"Authorization": f"Bearer {PL}"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["www.casino.test"]
        async with s.get(b + "/v1/hits", headers={"Authorization": f"Bearer {IT}"}) as r:
            assert [h["name"] for h in (await r.json())["hits"]] == ["slots.test"]
        async with s.get(b + "/v1/hits", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert {h["name"] for h in (await r.json())["hits"]} == {"www.casino.test", "slots.test"}
        async with s.get(b + "/v1/hits/export?format=ndjson", headers={"Authorization": f"Bearer {IT}"}) as r:
            text = await r.text()
        assert "slots.test" in text and "casino.test" not in text


async def test_the_failure_limiter_counts_every_kind_of_credential(node: NodeFactory) -> None:
    app = await two_agencies(node, max_failures=3)
    b = base(app)
    async with aiohttp.ClientSession() as s:
        # A wrong agency token on an agency route, a wrong admin-page login, a wrong agency
        # sign-in: three failures of one client, whichever door it tried.
        assert await status(s, "GET", b + "/v1/hits", "wrong-agency-token") == 401
        assert await status(s, "POST", b + "/login", data={"token": "wrong"}) == 401
        assert await status(s, "POST", b + "/agency/login", data={"token": "wrong"}) == 401
        assert await status(s, "GET", b + "/v1/compliance/pl-mf", PL) == 429  # locked out, even with a good token
        async with s.get(b + "/v1/hits", headers={"Authorization": f"Bearer {PL}"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # No credential at all is not a guess: a fresh node counts nothing for it.
    fresh = await two_agencies(node, max_failures=1)
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            assert await status(s, "GET", base(fresh) + "/v1/hits") == 401
        assert await status(s, "GET", base(fresh) + "/v1/hits", PL) == 200
