"""The admin dashboard and the quarantine review in a real browser (Debian's Chromium, Playwright).

Hits per hour and per day by agency as SVG, top names and networks, feed health with the policy
as ``v<n>``, nothing wider than a 1,400 px window; a quarantined update's diff, approved from the
keyboard with a reason that the audit shows; a form without its CSRF token is refused. Saves
screenshots (tmp_path, and ``BETBLOCK_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import re
from pathlib import Path


from config.auth import sha256_hex
from tests import browser
from tests.browser import ARGS, CHROMIUM  # noqa: F401 - the observe-mode page test imports them from here
from tests.conftest import NodeFactory, port_of
from tests.dnsutil import query, udp

TOKEN = "dash-admin-t0ken-1234"
PUSH = "pl-push-t0ken"

pytestmark = browser.needs_chromium


def keep(shot: Path) -> None:
    assert shot.stat().st_size > 10_000
    browser.keep(shot)


async def test_dashboard_and_quarantine_review_in_chromium(node: NodeFactory, tmp_path: Path) -> None:
    app = await node(
        lists={"pl-mf": ["casino.test"], "cz-mf": ["sazka-x.test"]},
        agencies=[{
            "id": "pl-mf", "churn_floor": 0, "token_sha256": sha256_hex(PUSH),
            "sources": [{"kind": "push", "format": "plain"}],
        }],
        http={"admin_token": TOKEN},
        hits={"flush_interval": 3600},
    )
    port = port_of(app)
    for i in range(20):
        await udp(port, query(f"p{i}.casino.test"))
    for _ in range(3):
        await udp(port, query("www.sazka-x.test", "AAAA"))
    await app.recorder.flush()
    store = app.hitlog.store
    assert store is not None
    hourly = await store.hourly(24)
    per = {}
    for p in hourly["per_agency_hour"]:
        per[p["agency"]] = per.get(p["agency"], 0) + p["hits"]
    assert per == {"pl-mf": 20, "cz-mf": 3} and hourly["since"] is None

    assert (await app.feeds.push("pl-mf", b"a.test\nb.test\n", actor="agency:pl-mf")).status == "applied"
    new = b"".join(b"new%d.test\n" % i for i in range(30))
    held = await app.feeds.push("pl-mf", b"a.test\n" + new + b"10.0.0.1\n", actor="agency:pl-mf")
    assert held.status == "quarantined"
    key = f"pl-mf-{held.version}"
    assert app.http is not None and app.http.bound is not None
    url = "http://%s:%d/" % app.http.bound

    async with browser.page() as (page, errors):
        await page.goto(url)
        await page.fill("#token", TOKEN)
        await page.click("#login")
        await page.wait_for_selector("#hits-table")
        # The hit log with its Feeds panel fits the window; its policy column reads v<n>.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1400
        assert re.fullmatch(r"v\d+", (await page.text_content("#hits-table tbody tr td:nth-child(9)") or "").strip())

        await page.click("text=Dashboard")
        await page.wait_for_selector("#chart-hours")
        bars = " ".join(await page.locator("#chart-hours rect title").all_text_contents())
        assert "pl-mf 20" in bars and "cz-mf 3" in bars
        days = " ".join(await page.locator("#chart-days rect title").all_text_contents())
        assert "pl-mf 20" in days
        top = await page.locator("#top-names tbody tr").all_inner_texts()
        assert top[0].split("\t") == ["www.sazka-x.test", "3"] and len(top) == 10  # the ten most hit names
        assert "127.0.0.0/24" in (await page.text_content("#top-networks") or "")
        fresh = await page.locator("#new-names tbody tr td:first-child").all_inner_texts()
        assert len(fresh) == 10 and all(re.fullmatch(r"p\d+\.casino\.test|www\.sazka-x\.test", n) for n in fresh), fresh
        health = await page.locator("#feed-health tbody tr").all_inner_texts()
        assert any(r.startswith("pl-mf") and "quarantined" in r for r in health), health
        assert any(r.startswith("cz-mf") and "\tok" in r and "UTC" in r and "file watched" in r for r in health), health
        policy = await page.text_content("#policy") or ""
        assert re.search(r"Policy in force: v\d+, installed \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", policy), policy
        assert not re.search(r"\d{13}", policy)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 1400
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        keep(shot)

        await page.click("text=Quarantine")
        item = page.locator(f"#review-{key}")
        await item.wait_for()
        text = await item.inner_text()
        assert "Added (30)" in text and "new0.test" in text and "and 10 more" in text
        assert "Removed (1)" in text and "b.test" in text
        assert "churn" in text and "Rejected lines (1)" in text and "10.0.0.1" in text
        # Every visible field has a label.
        unlabelled = await page.evaluate(
            "[...document.querySelectorAll('main input:not([type=hidden]), main select')]"
            ".filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"
        )
        assert unlabelled == []
        shot = tmp_path / "quarantine-review.png"
        await page.screenshot(path=str(shot), full_page=True)
        keep(shot)

        # A form posted without the session's token is refused.
        forged = await page.request.post(f"{url}quarantine/pl-mf/{held.version}", form={"decision": "approve", "reason": "x"},
                                       headers={"Origin": url.rstrip("/")})
        assert forged.status == 403
        assert app.feeds.status("pl-mf")["agencies"][0]["quarantined"] != []

        # From the keyboard: type the reason, Tab to "Approve and apply", Enter.
        await page.focus(f"#reason-{key}")
        await page.keyboard.type("checked with MF by phone")
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == f"approve-{key}"
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#decided")
        assert f"pl-mf v{held.version} approved and applied" in (await page.text_content("#decided") or "")
        assert await page.locator("#none-waiting").count() == 1
        audit = (await page.locator("#audit-table tbody tr").all_inner_texts())[:2]
        assert any("admin (page)" in r and "quarantine approved" in r for r in audit), audit
        assert any("admin (page)" in r and "checked with MF by phone" in r for r in audit), audit
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", r) for r in audit), audit
        assert errors == []
    assert app.feeds.status("pl-mf")["agencies"][0]["quarantined"] == []
