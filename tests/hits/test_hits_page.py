"""The admin page in a real browser: Debian's headless Chromium driven by Playwright.

Logs in with the token, reads hits, filters, pages, follows an export link, asks why a name is
blocked, and saves a screenshot (tmp_path, and ``BETBLOCK_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import re
from pathlib import Path


from tests import browser
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import query, udp

TOKEN = "page-t0ken-0123456789"

pytestmark = browser.needs_chromium


async def test_admin_page_in_chromium(node: NodeFactory, tmp_path: Path) -> None:
    app = await node(
        lists={"pl-mf": ["casino.test"], "cz-mf": ["sazka-x.test"]},
        http={"admin_token": TOKEN},
        hits={"flush_interval": 3600},
    )
    port = port_of(app)
    for i in range(60):
        await udp(port, query(f"p{i}.casino.test"))
    await udp(port, query("www.sazka-x.test", "AAAA"))
    await app.recorder.flush()
    assert app.http is not None and app.http.bound is not None
    url = "http://%s:%d/" % app.http.bound

    async with browser.page(accept_downloads=True) as (page, errors):
        await page.goto(url)
        await page.fill("#token", "wrong")
        await page.click("#login")
        assert await page.text_content("#login-error") == "wrong token"
        await page.fill("#token", TOKEN)
        await page.click("#login")
        await page.wait_for_selector("#hits-table")
        rows = page.locator("#hits-table tbody tr")
        assert await rows.count() == 50  # one page
        assert "www.sazka-x.test" in (await rows.nth(0).inner_text())
        # Times are shown in UTC, as the filters take them (not in the browser's locale).
        assert "time (UTC)" in (await page.text_content("#hits-table thead") or "")
        shown = await page.text_content("#hits-table tbody time") or ""
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", shown), shown

        await page.click("#older")
        await page.wait_for_selector("#newest")
        assert await rows.count() == 11
        assert "p0.casino.test" in await rows.nth(10).inner_text()

        await page.goto(url)
        await page.select_option("select[name=agency]", "cz-mf")
        await page.click("#apply")
        await page.wait_for_url("**agency=cz-mf**")
        assert await rows.count() == 1

        await page.goto(url)
        await page.click("td.name[data-name='p30.casino.test']")  # a click on a name filters by it
        await page.wait_for_url("**name=p30.casino.test**")
        assert await rows.count() == 1
        async with page.expect_download() as dl:
            await page.click("#export-csv")
        download = await dl.value
        saved = tmp_path / "export.csv"
        await download.save_as(saved)
        assert saved.read_text().splitlines()[1].split(",")[4] == "p30.casino.test"

        await page.fill("input[name=lookup]", "deep.www.sazka-x.test")
        await page.click("#lookup-go")
        result = await page.text_content("#lookup-result")
        assert result is not None and "is blocked" in result and "sazka-x.test" in result and "cz-mf" in result
        assert "pl-mf" in (await page.text_content("#feeds") or "")
        shot = tmp_path / "hits-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        browser.keep(shot)

        await page.click("text=Log out")
        await page.wait_for_selector("#token")
        assert errors == []
