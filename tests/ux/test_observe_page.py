"""Observe mode in a real browser (Debian's Chromium through Playwright): an observed name's
hits read "would block" in the hit log; the admin reads them, switches the agency to enforce
from the keyboard on the quarantine review (a labelled, CSRF-safe form) and the very next query
gets the sinkhole. Screenshots go to tmp_path (and ``BETBLOCK_SCREENSHOT_DIR`` when set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import NodeFactory, port_of
from tests.dnsutil import a_records, query, udp
from tests.browser import ARGS, CHROMIUM, keep

TOKEN = "observe-page-t0ken-0123456789"

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)


async def test_would_block_hits_then_switch_to_enforce(node: NodeFactory, upstream, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    upstream.add("watch.test", "A", "192.0.2.77")
    upstream.add("www.watch.test", "A", "192.0.2.78")
    app = await node(
        lists={"pl-mf": ["casino.test"], "it-adm": ["watch.test"]},
        agencies=[{"id": "it-adm", "action": "redirect", "redirect_ipv4": ["198.51.100.7"], "mode": "observe"}],
        http={"admin_token": TOKEN},
        hits={"flush_interval": 3600},
    )
    port = port_of(app)
    for name in ("watch.test", "www.watch.test", "casino.test"):
        await udp(port, query(name))
    await app.recorder.flush()
    assert app.http is not None and app.http.bound is not None
    url = "http://%s:%d/" % app.http.bound

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(10_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(url)
            await page.fill("#token", TOKEN)
            await page.click("#login")
            await page.wait_for_selector("#hits-table")
            rows = await page.locator("#hits-table tbody tr").all_inner_texts()
            assert any("www.watch.test" in r and "would block (redirect)" in r for r in rows), rows
            assert any("casino.test" in r and "nxdomain" in r and "would block" not in r for r in rows), rows
            assert await page.locator("#hits-table td.observed").count() == 2
            shot = tmp_path / "observe-hits.png"
            await page.screenshot(path=str(shot), full_page=True)
            keep(shot)

            await page.click("text=Quarantine")
            await page.wait_for_selector("#modes")
            assert (await page.text_content("#mode-state-it-adm") or "").strip() == "observe"
            # The would-block hits of the agency, one click away.
            await page.click("#modes a[href*='agency=it-adm']")
            await page.wait_for_selector("#hits-table")
            names = await page.locator("#hits-table tbody tr td.name[data-name]").all_inner_texts()
            assert sorted(names) == ["watch.test", "www.watch.test"], names
            await page.go_back()
            await page.wait_for_selector("#modes")
            unlabelled = await page.evaluate(
                "[...document.querySelectorAll('main input:not([type=hidden]), main select')]"
                ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id || e.name)"
            )
            assert unlabelled == []
            # A form posted without the session's token is refused.
            forged = await page.request.post(f"{url}modes/it-adm", form={"mode": "enforce", "reason": "x"},
                                             headers={"Origin": url.rstrip("/")})
            assert forged.status == 403
            assert a_records(await udp(port, query("watch.test"))) == ["192.0.2.77"]

            # From the keyboard: the reason, Tab to the switch, Enter.
            await page.focus("#mode-reason-it-adm")
            await page.keyboard.type("would-block hits checked with ADM")
            await page.keyboard.press("Tab")
            assert await page.evaluate("document.activeElement.id") == "mode-it-adm"
            await page.keyboard.press("Enter")
            await page.wait_for_selector("#decided")
            assert "it-adm now enforce (was observe)" in (await page.text_content("#decided") or "")
            assert (await page.text_content("#mode-state-it-adm") or "").strip() == "enforce"
            audit = (await page.locator("#audit-table tbody tr").all_inner_texts())[:1]
            assert "admin (page)" in audit[0] and "mode enforce" in audit[0] and "would-block hits checked with ADM" in audit[0], audit
            shot = tmp_path / "observe-switched.png"
            await page.screenshot(path=str(shot), full_page=True)
            keep(shot)
            assert errors == []
        finally:
            await browser.close()
    assert a_records(await udp(port, query("watch.test"))) == ["198.51.100.7"]  # enforced now
