"""Chromium for the tests of server-rendered pages: Debian's chromium driven by Playwright.

Owns where the browser is and its flags (headless, no sandbox, nothing fetched in the
background), the skip where it is not installed (never in CI: there it must be), ``page``: one
browser page with the page's script errors collected, and ``keep``: a screenshot copied to
``BETBLOCK_SCREENSHOT_DIR`` when that is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="Debian's chromium is not installed"
)


@asynccontextmanager
async def page(**options: Any) -> AsyncIterator[tuple[Page, list[str]]]:
    """A 1400x1000 page (``options`` go to ``new_page``) that waits at most 10 s per step, and
    the list its uncaught script errors go to; the browser is closed on the way out."""
    from playwright.async_api import async_playwright  # only where a browser test runs

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            p = await browser.new_page(viewport={"width": 1400, "height": 1000}, **options)
            p.set_default_timeout(10_000)
            errors: list[str] = []
            p.on("pageerror", lambda e: errors.append(str(e)))
            yield p, errors
        finally:
            await browser.close()


def keep(shot: Path) -> None:
    """Copy a screenshot to ``BETBLOCK_SCREENSHOT_DIR`` (to look at after the run), if set."""
    if os.environ.get("BETBLOCK_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(os.environ["BETBLOCK_SCREENSHOT_DIR"]) / shot.name)
