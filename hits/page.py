"""The admin page: server-rendered HTML at / for the hit log, feed status and name lookup.

Owns the page's routes (/, /login, /logout, /static/hits/*) and its HTML. Works without
JavaScript; ``static/admin.js`` only makes names clickable. Every time is shown in UTC, as the
server writes it and as the filters take it. A hit in observe mode reads "would block".
Login: the admin token typed into a form sets a session cookie (sessions: ``betblock/auth.py``).
Every value shown is escaped. Must not import the resolver.
"""

from __future__ import annotations

import html
import string
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from aiohttp import web

from config.auth import ADMIN, PUBLIC, accepts, principal
from config.errors import BetblockError
from hits.query import FILTER_ACTIONS, QTYPES, FilterError, Filters, action_label, parse_cursor, parse_limit
from hits.store import HitStore

if TYPE_CHECKING:
    from config.auth import SessionLogin

HERE = Path(__file__).parent
TEMPLATE = string.Template((HERE / "templates" / "page.html").read_text())
PAGE_SIZE = 50


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def render(body: str, logged_in: bool) -> web.Response:
    logout = (
        '<nav><a href="/dashboard">Dashboard</a> <a href="/">Hit log</a> <a href="/quarantine">Quarantine</a></nav>'
        '<form method="post" action="/logout"><button type="submit">Log out</button></form>'
    ) if logged_in else ""
    return web.Response(
        text=TEMPLATE.substitute(body=body, logout=logout),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def login_page(error: str = "") -> str:
    err = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
    return f"""<section class="login">
<h2>Admin login</h2>
<p class="muted">Enter the admin token (<code>http.admin_token</code>).</p>
{err}
<form method="post" action="/login">
  <input type="password" name="token" id="token" autocomplete="current-password" size="40" required autofocus>
  <button type="submit" id="login">Log in</button>
</form>
</section>"""


def _input(name: str, label: str, value: str, placeholder: str = "", size: int = 18) -> str:
    return (
        f'<label>{esc(label)}<input name="{name}" value="{esc(value)}" placeholder="{esc(placeholder)}" size="{size}"></label>'
    )


def _action_cell(action: str) -> str:
    # A hit in observe mode is no block: marked apart (class observed) so it never reads as one.
    if action.startswith("observe:"):
        return f'<td class="observed" title="observe mode: answered normally">{esc(action_label(action))}</td>'
    return f"<td>{esc(action)}</td>"


def _select(name: str, label: str, value: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(
        f'<option value="{esc(v)}"{" selected" if v == value else ""}>{esc(t)}</option>' for v, t in [("", "any")] + options
    )
    return f'<label>{esc(label)}<select name="{name}">{opts}</select></label>'


def hits_section(
    q: Mapping[str, str], hits: list[dict[str, Any]], nxt: int | None, error: str, agencies: list[str],
    labels: Mapping[int, str] | None = None,
) -> str:
    labels = labels or {}
    form = "".join(
        [
            _input("since", "since (UTC)", q.get("since", ""), "2026-01-31T00:00"),
            _input("until", "until (UTC)", q.get("until", ""), "2026-02-01"),
            _input("name", "name or suffix", q.get("name", ""), "casino.test", 22),
            _select("agency", "agency", q.get("agency", ""), [(a, a) for a in agencies]),
            _input("client", "client or network", q.get("client", ""), "192.0.2.0/24", 16),
            _select("qtype", "type", q.get("qtype", "").upper(), [(t, t) for t in QTYPES]),
            _select("action", "action", q.get("action", ""), [(a, action_label(a) if a != "observe" else "would block (observe mode)") for a in FILTER_ACTIONS]),
            '<button type="submit" id="apply">Filter</button> <a href="/">clear</a>',
        ]
    )
    keep = {k: v for k, v in q.items() if k in ("since", "until", "name", "exact", "agency", "client", "qtype", "action") and v}
    rows = "".join(
        "<tr>"
        f'<td><time datetime="{esc(h["time"])}">{esc(h["time"].replace("T", " ").removesuffix("Z"))}</time></td>'
        f'<td>{esc(h["node"])}</td><td>{esc(h["client"])}</td>'
        f'<td class="name" data-name="{esc(h["name"])}">{esc(h["name"])}</td>'
        f'<td>{esc(h["qtype"])}</td><td class="name">{esc(h["listed"])}</td>'
        f'<td>{esc(", ".join(h["agencies"]))}</td>{_action_cell(h["action"])}'
        f'<td title="snapshot {esc(h["policy_version"])}">{esc(labels.get(h["policy_version"], h["policy_version"]))}</td><td>{esc(h["count"])}</td>'
        "</tr>"
        for h in hits
    )
    if not rows:
        rows = '<tr><td colspan="10" class="muted">no hits match</td></tr>'
    paging = []
    if q.get("cursor"):
        paging.append(f'<a href="/?{esc(urlencode(keep))}" id="newest">« newest</a>')
    if nxt is not None:
        paging.append(f'<a href="/?{esc(urlencode({**keep, "cursor": str(nxt)}))}" id="older">older »</a>')
    exports = " ".join(
        f'<a href="/v1/hits/export?{esc(urlencode({**keep, "format": fmt}))}" id="export-{fmt}">export {fmt.upper()}</a>'
        for fmt in ("csv", "ndjson")
    )
    err = f'<p class="error" id="filter-error">{esc(error)}</p>' if error else ""
    return f"""<section id="hits">
<h2>Hits</h2>
<form class="filters" method="get" action="/">{form}</form>
{err}
<table id="hits-table">
<thead><tr><th>time (UTC)</th><th>node</th><th>client</th><th>name</th><th>type</th><th>listed entry</th><th>agencies</th><th>action</th><th>policy</th><th>count</th></tr></thead>
<tbody>{rows}</tbody>
</table>
<div class="paging">{"".join(paging)} <span class="muted">{len(hits)} shown</span> {exports}</div>
</section>"""


def _rule(result: dict[str, Any]) -> str:
    decided = (result.get("resolver") or {}).get("decided_by")
    return f", rule {esc(decided['rule'])}" if decided else ""


def _policy(result: dict[str, Any]) -> str:
    version = (result.get("resolver") or {}).get("policy_version")
    return f", policy version {esc(version)}" if version is not None else ""


def _entry(result: dict[str, Any], rule: str) -> str:
    """The winning entry and every agency that lists it: ``<code>name</code> (scope, rule), listed by A, B``."""
    w = result["winner"]
    listers = ", ".join([w["agency"], *(result.get("also_listed_by") or [])])
    return f'<code>{esc(w["listed"])}</code> ({esc(w.get("scope", "subtree"))}{rule}), listed by {esc(listers)}'


def lookup_section(name: str, result: dict[str, Any] | None, error: str) -> str:
    """The lookup service's answer (``GET /v1/lookup/{name}``), in a sentence and a table."""
    out = ""
    if error:
        out = f'<p class="error">{esc(error)}</p>'
    elif result is not None and not result.get("valid", True):
        out = f'<p id="lookup-result" class="error">{esc(result["name"])}: not a name that can be listed ({esc(result.get("reason"))})</p>'
    elif result is not None:
        if result.get("blocked"):
            w = result["winner"]
            out = (
                f'<p id="lookup-result"><span class="blocked">{esc(result["name"])} is blocked</span> by the entry '
                f'{_entry(result, _rule(result))}; '
                f'answer: {esc(w["action"])} (decided by {esc(w["agency"])}{_policy(result)}).</p>'
            )
        elif result.get("observed"):
            w = result["winner"]
            out = (
                f'<p id="lookup-result"><span class="observed">{esc(result["name"])} would be blocked</span> (observe mode: '
                f'it resolves normally and each query is recorded as a would-block hit) by the entry '
                f'{_entry(result, "")}; enforcing would answer {esc(w["action"])}{_policy(result)}.</p>'
            )
        elif result.get("overridden_by"):
            o = result["overridden_by"]
            out = (
                f'<p id="lookup-result"><span class="ok">{esc(result["name"])} is not blocked</span>: '
                f'allowlisted by <code>{esc(o["name"])}</code> ({esc(o["by"])}).</p>'
            )
        elif result.get("pending"):
            who = ", ".join(sorted({p["agency"] for p in result["pending"]}))
            out = (
                f'<p id="lookup-result"><span class="ok">{esc(result["name"])} is not blocked yet</span>: listed in an update '
                f'waiting in quarantine ({esc(who)}); it applies once an admin approves it (<a href="/quarantine">review</a>).</p>'
            )
        else:
            out = f'<p id="lookup-result"><span class="ok">{esc(result["name"])} is not blocked</span>: no list has it.</p>'
        rows = "".join(
            f"<tr><td>{esc(m['agency'])}</td><td>{esc(m['listed'])}</td><td>{esc(m['state'])}"
            f"{' (observe mode)' if m.get('mode') == 'observe' else ''}</td>"
            f"<td>{esc(m['since'])}</td><td>{esc(m['legal_ref'] or '')}</td><td>v{esc(m['version'])}</td></tr>"
            for m in result.get("matches", [])
        )
        rows += "".join(
            f"<tr class=\"pending\"><td>{esc(p['agency'])}</td><td>{esc(p['listed'])}</td>"
            f"<td>pending: quarantined ({esc(p.get('reason') or '')})</td><td>{esc(p.get('received') or '')}</td><td></td>"
            f"<td>v{esc(p['version'])}</td></tr>"
            for p in result.get("pending", [])
        )
        if rows:
            out += (
                '<table id="lookup-matches"><thead><tr><th>agency</th><th>entry</th><th>state</th><th>since</th>'
                f"<th>legal ref</th><th>version</th></tr></thead><tbody>{rows}</tbody></table>"
            )
    return f"""<section id="lookup">
<h2>Why is this name blocked?</h2>
<form method="get" action="/"><label for="lookup-name">name</label> <input id="lookup-name" name="lookup" value="{esc(name)}" placeholder="www.casino.test" size="30">
<button type="submit" id="lookup-go">Look up</button></form>
{out}
</section>"""


def feeds_section(feeds: list[dict[str, Any]]) -> str:
    if not feeds:
        return '<section id="feeds"><h2>Feeds</h2><p class="muted">no agencies configured</p></section>'
    cols: list[str] = []
    for f in feeds:
        for k in f:
            if k not in cols:
                cols.append(k)
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(f.get(c, ''))}</td>" for c in cols) + "</tr>" for f in feeds)
    return f'<section id="feeds"><h2>Feeds</h2><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>'


def status_section(status: dict[str, Any] | None, recorder: dict[str, Any], retention_days: int) -> str:
    shown = dict(status or {"store": "none"})
    purge = shown.pop("last_purge", None)
    if purge:
        shown["last retention run"] = f"{_utc(purge['at'])}: {purge['rows_removed']} rows deleted"
    items = {"retention (days)": retention_days, **shown, **{f"recorder {k}": v for k, v in recorder.items()}}
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items.items())
    return f'<section id="store"><h2>Store</h2><table>{rows}</table></section>'


def _utc(ts: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def add_routes(
    app: web.Application,
    *,
    auth: SessionLogin,
    store: HitStore | None,
    lookup: Callable[[str], Awaitable[dict[str, Any]]],
    feed_status: Callable[[], list[dict[str, Any]]],
    recorder_stats: Callable[[], dict[str, Any]],
    retention_days: int,
    usable: Callable[[], str | None] = lambda: None,
    policy_labels: Callable[[set[int]], Awaitable[dict[int, str]]] | None = None,
) -> None:
    """``usable`` says why the store cannot be read (None when it can); ``policy_labels`` names
    policy versions for people (``v<n>``)."""

    @accepts(PUBLIC)  # the login form to anyone, the page to the admin
    async def index(request: web.Request) -> web.Response:
        if not principal(request).is_admin:
            return render(login_page(), logged_in=False)
        q = request.query
        error = ""
        hits: list[dict[str, Any]] = []
        nxt = None
        try:
            f = Filters.parse(q)
            cursor = parse_cursor(q.get("cursor"))
            limit = parse_limit(q.get("limit"), PAGE_SIZE)
        except FilterError as exc:
            error = str(exc)
        else:
            failed = usable()
            if store is not None and failed is None:
                hits, nxt = await store.page(f, limit, cursor)
            else:
                error = failed or "no hit store configured (hits.store = none)"
        feeds = feed_status()
        agencies = [str(x.get("id")) for x in feeds if x.get("id")]
        name = q.get("lookup", "").strip()
        result = None
        lerr = ""
        if name:
            try:
                result = await lookup(name)
            except BetblockError as exc:  # the feed store is unusable: say so, show the rest
                lerr = f"{name!r}: {exc}"
        status = await store.status() if store is not None and usable() is None else None
        body = (
            hits_section(q, hits, nxt, error, agencies, await policy_labels({h["policy_version"] for h in hits}) if policy_labels else None)
            + '<div class="grid">'
            + lookup_section(name, result, lerr)
            + feeds_section(feeds)
            + "</div>"
            + status_section(status, recorder_stats(), retention_days)
        )
        return render(body, logged_in=True)

    @accepts(PUBLIC)
    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        token = form.get("token")
        sid = auth.login(token if isinstance(token, str) else None, ADMIN)
        if sid is None:
            resp = render(login_page("wrong token"), False)
            resp.set_status(401)
            return resp
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(auth.cookie, sid, httponly=True, samesite="Strict", path="/", max_age=8 * 3600)
        raise resp

    @accepts(PUBLIC)
    async def logout(request: web.Request) -> web.Response:
        auth.logout(request.cookies.get(auth.cookie))
        resp = web.HTTPSeeOther("/")
        resp.del_cookie(auth.cookie, path="/")
        raise resp

    app.router.add_get("/", index)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_static("/static/hits/", HERE / "static", follow_symlinks=False)
