"""The warning page for a known (blocked) and an unknown host."""

from __future__ import annotations

import aiohttp

from tests.conftest import NodeFactory


async def _get(app, host: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:  # type: ignore[no-untyped-def]
    addr, port = app.warning.bound
    async with aiohttp.ClientSession() as s, s.get(f"http://{addr}:{port}/some/path?q=1", headers={"Host": host}) as r:
        return r.status, await r.text(), r.headers


async def test_blocked_host_gets_the_agency_page_in_its_language(node: NodeFactory) -> None:
    app = await node(
        lists={"pl-mf": ["kasyno.test"], "it-adm": ["casino.test", "kasyno.test"]},
        agencies=[{"id": "pl-mf", "name": "Ministerstwo Finansów", "jurisdiction": "PL"}],
        warning_page={
            "pages": {
                "pl-mf": {
                    "language": "pl",
                    "title": "Uwaga! Nielegalna strona",
                    "text": "Strona {name} jest w rejestrze prowadzonym przez {agency}.",
                    "link": "https://www.podatki.gov.pl/gry-hazardowe/",
                    "link_text": "Rejestr domen",
                }
            }
        },
    )
    status, body, headers = await _get(app, "WWW.Kasyno.test:80")
    assert status == 451
    assert '<html lang="pl">' in body
    assert "Uwaga! Nielegalna strona" in body
    assert "Strona www.kasyno.test jest w rejestrze prowadzonym przez Ministerstwo Finansów." in body
    assert "<dd>PL</dd>" in body and "<dd>it-adm</dd>" in body  # also listed by the other agency
    assert 'href="https://www.podatki.gov.pl/gry-hazardowe/"' in body
    assert headers["Link"] == '<https://www.podatki.gov.pl/gry-hazardowe/>; rel="blocked-by"'
    assert headers["Cache-Control"] == "no-store"

    status, body, _ = await _get(app, "casino.test")
    assert status == 451 and '<html lang="en">' in body and "by order of IT-ADM" in body


async def test_unknown_host_gets_the_generic_page_and_markup_is_escaped(node: NodeFactory) -> None:
    app = await node(lists={"pl-mf": ["kasyno.test"]})
    status, body, _ = await _get(app, "example.test")
    assert status == 200
    assert "example.test is not on any list enforced by this resolver" in body
    status, body, _ = await _get(app, "<script>x</script>")
    assert status == 200 and "<script>x" not in body


async def test_provenance_shows_legal_reference_and_listing_date(node: NodeFactory) -> None:
    app = await node(lists={"pl-mf": ["kasyno.test"]})
    # The page reads provenance through the callable the feeds store provides.
    seen = []

    def provenance(agency: str, name: str) -> dict[str, str]:
        seen.append((agency, name))
        return {"legal_ref": "art. 15f ustawy o grach hazardowych", "listed_at": "2026-11-01T10:00:00+01:00"}

    from betblock.warning import WarningPage

    page = WarningPage(app.settings.warning_page, app.settings.agencies, lambda: app.pipeline.policy.snapshot, provenance)
    status, body, _ = page.render("a.b.kasyno.test")
    assert status == 451
    assert seen == [("pl-mf", "kasyno.test")]
    assert "<dd>art. 15f ustawy o grach hazardowych</dd>" in body and "<dd>2026-11-01T10:00:00+01:00</dd>" in body
