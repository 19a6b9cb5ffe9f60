"""The warning page: what a subscriber sees when a blocked name is redirected to betblock.

Owns its own HTTP listener (the address agencies' ``redirect_ipv4``/``redirect_ipv6`` point to
when they have no page of their own) and the rendering: from the Host header, the blocked name,
the agency whose order applies, the legal reference and listing date when the feed carried them,
and the agency's own text and link in its language. Hosts that are not blocked get a generic
page. Blocked names are answered 451 (RFC 7725), with the agency in a ``Link: rel="blocked-by"``.

HTTPS cannot be served here without a certificate the browser trusts for the blocked name; see
the README ("Warning page").
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from config.settings import AgencySettings, WarningPageSettings, WarningPageText
from config.names import to_text
from feeds.snapshot import Match, PolicySnapshot
from resolver.wire import name_to_wire

log = structlog.get_logger("betblock.warning")

# name (A-label, no trailing dot) -> what the feed said about it: legal_ref, listed_at, ...
Provenance = Callable[[str, str], dict[str, Any] | None]

_GENERIC = WarningPageText(
    language="en",
    title="This site is blocked",
    text="Access to {name} is blocked by order of {agency}, which lists it as an illegal gambling site.",
)
_UNKNOWN = WarningPageText(
    language="en",
    title="No block applies to this address",
    text="{name} is not on any list enforced by this resolver. If you were sent here, your device may "
    "have cached an old answer; try again in a few minutes.",
)

_PAGE = """<!doctype html>
<html lang="{lang}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;color:#222}}
h1{{color:#a00}} dl{{display:grid;grid-template-columns:max-content auto;gap:.3rem 1rem}} dt{{font-weight:600}}</style>
</head>
<body>
<h1>{title}</h1>
<p>{text}</p>
<dl>{facts}</dl>
{link}
</body>
</html>
"""


def _host(request: web.Request) -> str:
    host = (request.headers.get("Host") or "").strip().lower()
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


class WarningPage:
    """Renders pages from the current snapshot; ``snapshot`` is read per request."""

    def __init__(
        self,
        settings: WarningPageSettings,
        agencies: list[AgencySettings],
        snapshot: Callable[[], PolicySnapshot],
        provenance: Provenance | None = None,
    ) -> None:
        self.settings = settings
        self.agencies = {a.id: a for a in agencies}
        self.snapshot = snapshot
        self.provenance = provenance

    def match(self, host: str) -> Match | None:
        try:
            wire = name_to_wire(host.encode("idna").decode() if not host.isascii() else host)
        except (ValueError, UnicodeError):
            return None
        return self.snapshot().match(wire)

    def render(self, host: str) -> tuple[int, str, dict[str, str]]:
        """(status, html, headers) for a request whose Host is ``host``."""
        match = self.match(host) if host else None
        if match is None:
            return 200, self._page(_UNKNOWN, host or "this address", "", {}), {}
        agency_id = match.rule.agency
        agency = self.agencies.get(agency_id)
        agency_name = agency.display_name if agency else match.rule.agency_name
        text = self.settings.pages.get(agency_id, _GENERIC)
        facts = {"Blocked name": host, "Agency": agency_name}
        if agency and agency.jurisdiction:
            facts["Jurisdiction"] = agency.jurisdiction
        if len(match.rule.agencies) > 1:
            facts["Also listed by"] = ", ".join(match.rule.agencies[1:])
        extra = self.provenance(agency_id, _dotted(match.listed)) if self.provenance else None
        if extra:
            if extra.get("legal_ref"):
                facts["Legal reference"] = str(extra["legal_ref"])
            if extra.get("listed_at"):
                facts["Listed on"] = str(extra["listed_at"])
        headers = {"Link": f'<{text.link}>; rel="blocked-by"' if text.link else f'<urn:agency:{agency_id}>; rel="blocked-by"'}
        return 451, self._page(text, host, agency_name, facts), headers

    def _page(self, text: WarningPageText, name: str, agency: str, facts: dict[str, str]) -> str:
        generic = _GENERIC if facts else _UNKNOWN
        title = text.title or generic.title
        body = (text.text or generic.text).replace("{name}", name).replace("{agency}", agency)
        link = ""
        if text.link:
            link = f'<p><a href="{html.escape(text.link, quote=True)}">{html.escape(text.link_text or text.link)}</a></p>'
        return _PAGE.format(
            lang=html.escape(text.language or "en", quote=True),
            title=html.escape(title),
            text=html.escape(body),
            facts="".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items()),
            link=link,
        )

    def app(self) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            status, body, headers = self.render(_host(request))
            headers["Cache-Control"] = "no-store"  # a lifted block must not linger in the browser
            return web.Response(status=status, text=body, content_type="text/html", charset="utf-8", headers=headers)

        application = web.Application()
        application.router.add_route("*", "/{tail:.*}", page)
        return application


def _dotted(wire: bytes) -> str:
    return to_text(wire)
