"""The agency portal: an agency signs in with its push token and sees what betblock made of its
own feed, and nothing of any other agency's.

Owns ``GET /agency`` (the sign-in form, or the portal), ``POST /agency/login`` and
``POST /agency/logout``, and the portal's HTML: the agency's sources, versions, rejected lines,
quarantined updates (with a sample of the diff), the compliance report (listed -> enforced
against its deadline) and the latest hits on its names (the client as the privacy mode stored
it), with links to the CSV and NDJSON exports (the API routes, which an agency's session
reaches narrowed to its own data). The admin may open any agency's portal (``?agency=``).

Reads the feed manager and its store (feeds) and the hit store (hits): it lives here, in the
composition root, because feeds and hits are peers that do not import each other.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from config.auth import ADMIN, AGENCY, PUBLIC, Forbidden, SessionLogin, accepts, principal
from config.errors import BetblockError
from config.settings import AgencySettings
from feeds.manager import FeedManager
from hits.api import narrow
from hits.page import esc
from hits.query import Filters, action_label
from hits.store import HitStore

SAMPLE = 20  # names of a diff shown per side
HITS_SHOWN = 50
LATE_SHOWN = 50

PAGE = string.Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>betblock agency portal</title>
<link rel="stylesheet" href="/static/hits/admin.css">
</head>
<body>
<header>
  <h1>betblock <span class="sub">agency portal</span></h1>
  $logout
</header>
<main>
$body
</main>
</body>
</html>
""")

HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _page(body: str, *, signed_in: bool, status: int = 200) -> web.Response:
    logout = (
        '<form method="post" action="/agency/logout"><button type="submit" id="logout">Sign out</button></form>'
        if signed_in else ""
    )
    return web.Response(
        text=PAGE.substitute(body=body, logout=logout), content_type="text/html", charset="utf-8",
        status=status, headers=HEADERS,
    )


def login_form(error: str = "") -> str:
    err = f'<p class="error" id="login-error" role="alert">{esc(error)}</p>' if error else ""
    return f"""<section class="login">
<h2>Agency sign-in</h2>
<p class="muted">Sign in with your agency's push token (the one your feed is pushed with).</p>
{err}
<form method="post" action="/agency/login">
  <label for="token">Push token</label>
  <input type="password" name="token" id="token" autocomplete="current-password" size="40" required autofocus>
  <button type="submit" id="login">Sign in</button>
</form>
</section>"""


def _table(table_id: str, head: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="muted" id="{table_id}-empty">{esc(empty)}</p>'
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _names(names: list[str], total: int) -> str:
    shown = ", ".join(names[:SAMPLE])
    more = f" and {total - SAMPLE} more" if total > SAMPLE else ""
    return f"{shown}{more}" if names else "none"


def render_portal(agency: AgencySettings, data: dict[str, Any], admin: bool) -> str:
    """The portal's body from what ``Portal.gather`` read."""
    a = agency
    q = f"?{urlencode({'agency': a.id})}" if admin else ""
    exports = (
        f'<a id="hits-csv" href="/v1/hits/export?{esc(urlencode({"format": "csv", **({"agency": a.id} if admin else {})}))}">hits CSV</a> '
        f'<a id="hits-ndjson" href="/v1/hits/export?{esc(urlencode({"format": "ndjson", **({"agency": a.id} if admin else {})}))}">hits NDJSON</a> '
        f'<a id="compliance-csv" href="/v1/compliance/{esc(a.id)}?format=csv">compliance CSV</a> '
        f'<a id="compliance-json" href="/v1/compliance/{esc(a.id)}">compliance JSON</a>'
    )
    sources = _table(
        "sources", ["source", "kind", "format", "version", "entries", "last success", "last error", "quarantined"],
        [[s["id"], s["kind"], s["format"], s["version"], s["entries"], s["last_success"] or "never",
          s["last_error"] or "", f"v{s['quarantined']['version']}" if "quarantined" in s else ""] for s in data["sources"]],
        "no sources",
    )
    versions = _table(
        "versions", ["version", "status", "received (UTC)", "source", "entries", "added", "removed", "rejected lines", "by", "reason"],
        [[f"v{v['version']}", v["status"], v["received"], v["source"], v["entries"], v["added"], v["removed"],
          v["rejects"], v["decided_by"] or v["actor"], v["reason"] or ""] for v in data["versions"]],
        "no versions received yet",
    )
    quarantine = "".join(
        f'<div class="quarantined" id="quarantine-v{q_["version"]}"><h3>v{q_["version"]}: {esc(q_["reason"])}</h3>'
        f'<p>added {q_["added"]}: {esc(_names(q_["diff"].get("added", []), q_["added"]))}</p>'
        f'<p>removed {q_["removed"]}: {esc(_names(q_["diff"].get("removed", []), q_["removed"]))}</p>'
        "<p class=\"muted\">An administrator approves or rejects it; until then the previous version stays in force.</p></div>"
        for q_ in data["quarantined"]
    ) or '<p class="muted" id="quarantine-empty">nothing waits for a decision</p>'
    rej = data["rejects"]
    rejects = (
        f"<p>v{rej['version']}: {rej['total']} line{'s' if rej['total'] != 1 else ''} rejected{' (first shown)' if rej['total'] > len(rej['rows']) else ''}</p>"
        + _table("rejects", ["line", "text", "reason"], [[r["line"], r["text"], r["reason"]] for r in rej["rows"]], "")
        if rej else '<p class="muted" id="rejects-empty">no rejected lines</p>'
    )
    comp = data["compliance"]
    summary = ", ".join(f"{k}: {v}" for k, v in comp["summary"].items())
    late = _table(
        "compliance-late", ["name", "status", "listed", "received", "enforced", "hours", "legal ref"],
        [[e["name"], e["status"], e["listed_at"] or "", e["received_at"] or "", e["enforced_at"] or "not yet",
          e["enforce_hours"] if e["enforce_hours"] is not None else "", e["legal_ref"] or ""] for e in comp["late"]],
        "nothing late",
    )
    hits = _table(
        "hits", ["time (UTC)", "client", "name", "type", "listed entry", "action", "count"],
        [[h["time"], h["client"], h["name"], h["qtype"], h["listed"], action_label(h["action"]), h["count"]] for h in data["hits"]],
        "no hits on your names yet" if data["hits_error"] is None else data["hits_error"],
    )
    deadline = f"{a.deadline_hours} h" if a.deadline_hours else "none set"
    return f"""<section id="agency">
<h2 id="agency-name">{esc(a.display_name)} <span class="muted">({esc(a.id)}{', ' + esc(a.jurisdiction) if a.jurisdiction else ''})</span></h2>
<p>Answer for listed names: {esc(a.action)}; {data['entries']} entries in force; enforcement deadline: {esc(deadline)}.</p>
{_mode_line(comp)}
<p class="exports">Exports: {exports}</p>
</section>
<section id="feed"><h2>Feed</h2>{sources}</section>
<section id="history"><h2>Versions</h2>{versions}</section>
<section id="quarantine"><h2>Quarantined updates</h2>{quarantine}</section>
<section id="rejected"><h2>Rejected lines</h2>{rejects}</section>
<section id="compliance"><h2>Compliance</h2>
<p id="compliance-summary">{esc(summary)} (tracking since {esc(comp['tracking_since'] or 'the first install')})</p>
<h3>Late or not yet enforced</h3>{late}</section>
<section id="hits-section"><h2>Latest hits on your names</h2>{hits}
<p class="muted">Clients as the resolver's privacy mode stored them. <a href="/agency{q}">refresh</a></p></section>"""


def _mode_line(comp: dict[str, Any]) -> str:
    """The agency's mode (from the compliance report): observe mode enforces nothing."""
    if comp.get("mode") != "observe":
        return '<p id="agency-mode">Mode: enforce (listed names get the answer above).</p>'
    return ('<p id="agency-mode" class="observed">Mode: observe. Listed names are not blocked yet: they resolve normally and '
            'each query is recorded as a hit that "would block"; entries count as enforced only once an administrator '
            "switches the feed to enforce.</p>")


class Portal:
    """The portal's routes, bound to the feed manager, the hit store and the auth layer."""

    def __init__(self, feeds: FeedManager, hits: HitStore | None, auth: SessionLogin, clock: Callable[[], float]) -> None:
        self.feeds = feeds
        self.hits = hits
        self.auth = auth
        self.clock = clock

    async def gather(self, agency: AgencySettings) -> dict[str, Any]:
        """Everything the portal shows of ``agency``, read from the stores (in threads)."""
        decisions = self.feeds.decisions
        self.feeds.require_store()  # 503 before any read when there is none
        status = self.feeds.status(agency.id)["agencies"][0]
        versions = await decisions.versions(agency.id, 20)
        quarantined = []
        for v in versions:
            if v["status"] == "quarantined":
                v = dict(v)
                v["diff"] = await decisions.diff(agency.id, v["version"], SAMPLE)
                quarantined.append(v)
        rejects = None
        with_rejects = next((v for v in versions if v["rejects"]), None)
        if with_rejects is not None:
            d = await decisions.diff(agency.id, with_rejects["version"], 100)
            rejects = {"version": with_rejects["version"], "total": with_rejects["rejects"], "rows": d.get("rejects", [])}
        rep = await self.feeds.read.compliance(agency, self.clock())
        late = [e for e in rep["entries"] if e["late"] or e["enforced_at"] is None][:LATE_SHOWN]
        hits: list[dict[str, Any]] = []
        hits_error = "no hit store configured" if self.hits is None else None
        if self.hits is not None:
            try:
                page, _next = await self.hits.page(Filters(agency=agency.id), HITS_SHOWN)
                hits = narrow(page, agency.id)
            except BetblockError as exc:
                hits_error = f"the hit store cannot be read: {exc}"
        return {
            "sources": status["sources"], "entries": status["entries"], "versions": versions,
            "quarantined": quarantined, "rejects": rejects, "hits": hits, "hits_error": hits_error,
            "compliance": {"summary": rep["summary"], "tracking_since": rep["tracking_since"], "late": late, "mode": rep["mode"]},
        }

    @accepts(PUBLIC)  # the sign-in form to anyone; the portal to an agency or the admin
    async def index(self, request: web.Request) -> web.Response:
        who = principal(request)
        if who.role not in (AGENCY, ADMIN):
            return _page(login_form(), signed_in=False)
        asked = request.query.get("agency") or None
        if who.role == AGENCY:
            if asked not in (None, who.agency):
                raise Forbidden("an agency may only see its own portal")
            agency_id: str | None = who.agency
        else:
            agency_id = asked or next(iter(self.feeds.agencies), None)
        agency = self.feeds.agencies.get(agency_id or "")
        if agency is None:
            raise web.HTTPNotFound(reason=f"no agency {agency_id!r}")
        body = render_portal(agency, await self.gather(agency), admin=who.role == ADMIN)
        return _page(body, signed_in=who.via == "session")

    @accepts(PUBLIC)
    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = form.get("token")
        sid = self.auth.login(token if isinstance(token, str) else None, AGENCY)
        if sid is None:
            return _page(login_form("That token is not an agency's push token."), signed_in=False, status=401)
        resp = web.HTTPSeeOther("/agency")
        resp.set_cookie(self.auth.cookie, sid, httponly=True, samesite="Strict", path="/", max_age=8 * 3600)
        raise resp

    @accepts(PUBLIC)
    async def logout(self, request: web.Request) -> web.Response:
        self.auth.logout(request.cookies.get(self.auth.cookie))
        resp = web.HTTPSeeOther("/agency")
        resp.del_cookie(self.auth.cookie, path="/")
        raise resp

    def mount(self, app: web.Application) -> None:
        app.router.add_get("/agency", self.index)
        app.router.add_post("/agency/login", self.login)
        app.router.add_post("/agency/logout", self.logout)
