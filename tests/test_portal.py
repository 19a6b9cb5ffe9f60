"""The agency portal and agency scoping over real HTTP: agency A, with its token or its portal
session, never sees agency B's data on any route of the node (every route the router holds is
asked, with B's data present: versions, rejects, a quarantined update, hits), and the admin sees
all. The portal itself in Chromium through Playwright, with a screenshot (tmp_path, and
``BETBLOCK_SCREENSHOT_DIR`` when set)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from betblock.app import App
from tests import browser
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import query, udp
from tests.feeds_plane.helpers import ADMIN, TOKENS, push_agency

A, B = "pl-mf", "it-adm"
A_TOKEN, B_TOKEN = TOKENS[A], TOKENS[B]
A_NAMES = [f"a{i}.test" for i in range(10)]
B_NAMES = [f"b{i}.test" for i in range(40)]
# What only B's data holds: its names (listed, quarantined away, hit), its rejected line, its id.
B_MARKERS = ("b1.test", "b30.test", "b reject line", B)


def url(app: App) -> str:
    assert app.http is not None and app.http.bound is not None
    return "http://%s:%d" % app.http.bound


async def two_agencies_with_data(node: NodeFactory) -> tuple[App, int]:
    """A and B each with pushed versions, a rejected line and hits; B with a quarantined update.
    Returns the node and B's quarantined version."""
    app = await node(
        lists={A: [], B: []},
        agencies=[push_agency(A, deadline_hours=24), push_agency(B, deadline_hours=24)],
        # many wrong-role requests on purpose: the brute-force limiter is tested in tests/test_auth.py
        http={"admin_token": ADMIN, "max_body_bytes": 1 << 20, "auth_max_failures": 1000},
        hits={"flush_interval": 3600},
    )
    b = url(app)
    async with aiohttp.ClientSession() as s:
        for agency, token, body in (
            (A, A_TOKEN, "\n".join([*A_NAMES, "a reject line"]) + "\n"),
            (B, B_TOKEN, "\n".join([*B_NAMES, "b reject line"]) + "\n"),
        ):
            async with s.put(f"{b}/v1/feeds/{agency}", data=body.encode(), headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200, await r.text()
        async with s.put(f"{b}/v1/feeds/{B}", data=("\n".join(B_NAMES[:20]) + "\n").encode(),
                         headers={"Authorization": f"Bearer {B_TOKEN}"}) as r:
            held = await r.json()
            assert r.status == 202 and held["status"] == "quarantined"
    for name in ("www.a1.test", "a2.test", "b1.test", "www.b30.test"):
        await udp(port_of(app), query(name))
    await app.recorder.flush()
    return app, held["version"]


def concrete(path: str, quarantined: int) -> str:
    """A route's path with B's values in its variables."""
    values = {"agency": B, "version": str(quarantined), "name": "b1.test"}
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: values.get(m.group(1), "x"), path)


def routes(app: App) -> list[tuple[str, str]]:
    """(method, path template) of every route on the node's API listener, static files aside."""
    assert app.http is not None
    out = []
    for route in app.http.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        if "directory" in info:  # static files: the same for everyone
            continue
        path = info.get("path") or info.get("formatter")
        out.append((route.method, path))
    return out


async def ask(s: aiohttp.ClientSession, method: str, target: str, **kw: Any) -> tuple[int, str]:
    data = b"b1.test\n" if method in ("PUT", "PATCH", "POST") else None
    async with s.request(method, target, data=data, allow_redirects=False, **kw) as r:
        return r.status, await r.text(errors="replace")


async def login(s: aiohttp.ClientSession, base: str, token: str) -> None:
    async with s.post(base + "/agency/login", data={"token": token}, allow_redirects=False) as r:
        assert r.status == 303


async def test_agency_a_never_sees_agency_b_on_any_route(node: NodeFactory) -> None:
    app, quarantined = await two_agencies_with_data(node)
    base = url(app)
    table = sorted(routes(app), key=lambda r: "logout" in r[1])  # the session ends last
    assert len(table) > 20  # the router was read
    # /metrics is the operator's scrape endpoint, public by design (per-agency counters by id).
    skip = {"/metrics"}
    bearer = {"Authorization": f"Bearer {A_TOKEN}"}
    async with aiohttp.ClientSession() as plain, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as portal:
        await login(portal, base, A_TOKEN)
        for method, path in table:
            if path in skip or method == "HEAD":
                continue
            target = base + concrete(path, quarantined)
            for label, s, headers in (("token", plain, bearer), ("session", portal, {"Origin": base})):
                status, body = await ask(s, method, target, headers=headers)
                where = f"{method} {path} with A's {label}"
                assert status < 500, where
                if "{agency}" in path:
                    assert status == 403, where
                leaked = [m for m in B_MARKERS if m in body]
                assert not leaked, f"{where}: {status} shows {leaked}"
        # and A does see its own (signed in again: the loop ended with the logout routes)
        await login(portal, base, A_TOKEN)
        for s, headers in ((plain, bearer), (portal, {})):
            _status, body = await ask(s, "GET", base + "/v1/hits", headers=headers)
            assert "www.a1.test" in body and "a2.test" in body
            status, body = await ask(s, "GET", base + f"/v1/compliance/{A}?format=csv", headers=headers)
            assert status == 200 and "a1.test" in body
        status, page = await ask(portal, "GET", base + "/agency")
        assert status == 200 and "www.a1.test" in page and "a reject line" in page and "a9.test" not in page.split('id="hits"')[-1]
        assert (await ask(portal, "GET", base + f"/agency?agency={B}"))[0] == 403


async def test_admin_sees_every_agency(node: NodeFactory) -> None:
    app, quarantined = await two_agencies_with_data(node)
    base = url(app)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(headers=admin) as s:
        _status, body = await ask(s, "GET", base + "/v1/hits")
        assert all(n in body for n in ("www.a1.test", "a2.test", "b1.test", "www.b30.test"))
        status, body = await ask(s, "GET", base + f"/v1/feeds/{B}/versions/{quarantined}")
        assert status == 200 and "b30.test" in body
        status, body = await ask(s, "GET", base + f"/v1/compliance/{B}")
        assert status == 200 and "b1.test" in body
        status, page = await ask(s, "GET", base + f"/agency?agency={B}")
        assert status == 200
        for marker in ("b1.test", "b30.test", "b reject line", "churn"):
            assert marker in page, marker


async def test_portal_sign_in_is_an_agency_token_and_csrf_safe(node: NodeFactory) -> None:
    app, _q = await two_agencies_with_data(node)
    base = url(app)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        status, page = await ask(s, "GET", base + "/agency")
        assert status == 200 and 'action="/agency/login"' in page and 'for="token"' in page
        async with s.post(base + "/agency/login", data={"token": ADMIN}) as r:  # the admin token is not an agency's
            assert r.status == 401 and "not an agency" in await r.text()
        async with s.post(base + "/agency/login", data={"token": A_TOKEN}, headers={"Origin": "http://evil.test"}) as r:
            assert r.status == 403
        await login(s, base, A_TOKEN)
        async with s.post(base + "/agency/logout") as r:  # a cookie change without an origin: refused
            assert r.status == 403
        async with s.post(base + "/agency/logout", headers={"Origin": base}, allow_redirects=False) as r:
            assert r.status == 303
        status, page = await ask(s, "GET", base + "/agency")
        assert 'action="/agency/login"' in page


@browser.needs_chromium
async def test_portal_in_chromium(node: NodeFactory, tmp_path: Path) -> None:
    app, _q = await two_agencies_with_data(node)
    async with browser.page() as (page, errors):
        await page.goto(url(app) + "/agency")
        await page.get_by_label("Push token").fill("wrong-token-0123456789")
        await page.keyboard.press("Enter")  # the form works from the keyboard
        assert "not an agency" in (await page.text_content("#login-error") or "")
        await page.get_by_label("Push token").fill(A_TOKEN)
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#agency-name")
        text = await page.text_content("main") or ""
        assert "www.a1.test" in text and "a reject line" in text
        assert not [m for m in B_MARKERS if m in text]
        shot = tmp_path / "agency-portal.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 0
        browser.keep(shot)
        async with page.expect_download() as dl:
            await page.click("#hits-csv")
        csv_text = Path(await (await dl.value).path()).read_text()
        assert "www.a1.test" in csv_text and "b1.test" not in csv_text
        await page.click("#logout")
        await page.wait_for_selector("#token")
        assert errors == []
