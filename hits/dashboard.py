"""The admin dashboard (/dashboard) and the quarantine review (/quarantine) of the admin page.

Owns their routes and HTML: hits per hour (24 h) and per day (30 days) by agency as SVG charts,
top names, top client networks (as stored, so the privacy mode is already applied), names new in
the last day, feed health (state ok / stale / failing / quarantined, entries, last success, next
poll) and the policy version in force; the quarantined versions with their diff (counts and a
sample of names added, removed and changed, the guardrail's finding and the rejected lines), and
the approve / reject form, and each agency's mode (enforce / observe) with the form that
switches it. The forms are CSRF-safe: its token is an HMAC of the session id under a
key made at start, so a page of another origin cannot forge it. All times UTC.

The feeds side comes in through ``FeedsView`` (the composition root adapts the feed manager), so
this module needs nothing from feeds or the resolver. Must not import the resolver.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from hits.page import esc, render
from hits.store import DAY_MS, HitStore
from hits.svg import stacked_bars

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAMPLE = 20  # names shown per kind of change in a diff
TOP = 10


class FeedsView(Protocol):
    """What the dashboard and the review read from and ask of the feed side."""

    async def health(self) -> list[dict[str, Any]]:
        """Per agency: id, name, state, entries, last_success, next_poll, quarantined, error."""

    async def policy(self) -> dict[str, Any] | None:
        """The policy in force: label (``v<n>``), version, installed (ISO UTC)."""

    async def quarantined(self) -> list[dict[str, Any]]:
        """Versions waiting: agency, version, source, reason, received, actor, counts, sample, rejects."""

    async def decide(self, agency: str, version: int, approve: bool, actor: str, reason: str) -> str:
        """Approve or reject; the outcome in a sentence. ValueError with a message when refused."""

    async def audit(self, limit: int = 30) -> list[dict[str, Any]]:
        """The newest decisions and updates: ts, actor, action, agency, version, detail."""

    async def labels(self, versions: set[int]) -> dict[int, str]:
        """``v<n>`` for each policy version (snapshot) known."""

    async def modes(self) -> list[dict[str, Any]]:
        """Per agency: id, name, mode (enforce/observe), set_by, set_at, reason."""

    async def set_mode(self, agency: str, mode: str, actor: str, reason: str) -> str:
        """Switch an agency's mode; the outcome in a sentence. ValueError when refused."""


def utc(text: str | None) -> str:
    """``2026-12-02T00:45:55.123Z`` -> ``2026-12-02 00:45:55 UTC``; empty for none."""
    if not text:
        return ""
    t = str(text).replace("T", " ").removesuffix("Z").replace("+00:00", "")
    return t.split(".")[0] + " UTC"


def _table(tid: str, head: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return f'<p class="muted" id="{tid}">{esc(empty)}</p>'
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{tid}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _series(points: list[dict[str, Any]], key: str, labels: list[str]) -> dict[str, list[int]]:
    index = {label: i for i, label in enumerate(labels)}
    out: dict[str, list[int]] = {}
    for p in points:
        i = index.get(p[key])
        if i is None:
            continue
        out.setdefault(p["agency"], [0] * len(labels))[i] += int(p["hits"])
    return dict(sorted(out.items(), key=lambda kv: (-sum(kv[1]), kv[0])))


def charts(hourly: dict[str, Any], daily: dict[str, Any], now: float) -> str:
    first_hour = int(now) // 3600 - 23
    hours = [time.strftime("%Y-%m-%dT%H:00Z", time.gmtime((first_hour + i) * 3600)) for i in range(24)]
    first_day = int(now * 1000) // DAY_MS - 29
    days = [time.strftime("%Y-%m-%d", time.gmtime((first_day + i) * 86400)) for i in range(30)]
    per_hour = stacked_bars(
        "chart-hours", "Hits per hour by agency, last 24 hours (UTC)", hours, _series(hourly["per_agency_hour"], "hour", hours),
        tick_every=3, short=[h[11:13] + "h" for h in hours],
    )
    per_day = stacked_bars(
        "chart-days", "Hits per day by agency, last 30 days (UTC)", days, _series(daily["per_agency_day"], "day", days),
        tick_every=5, short=[d[5:] for d in days],
    )
    partial = (
        f'<p class="muted">more hits than read at once: the hourly counts are complete from {esc(utc(hourly["since"]))}</p>'
        if hourly.get("since") else ""
    )
    return (
        f'<section id="hits-hours"><h2>Hits per hour <span class="muted">(last 24 h, UTC)</span></h2>{per_hour}{partial}</section>'
        f'<section id="hits-days"><h2>Hits per day <span class="muted">(last 30 days, UTC)</span></h2>{per_day}</section>'
    )


def _name_link(name: str) -> str:
    return f'<a href="/?{esc(urlencode({"name": name, "exact": "1"}))}">{esc(name)}</a>'


def tops(daily: dict[str, Any], privacy: str) -> str:
    names = _table("top-names", ["name", "hits"], [[_name_link(r["name"]), esc(r["hits"])] for r in daily["top_names"]], "no hits")
    nets = _table(
        "top-networks", ["client network", "hits"],
        [[esc(r["network"]), esc(r["hits"])] for r in daily["top_networks"]], "no hits",
    )
    new = _table(
        "new-names", ["name", "first seen"],
        [[_name_link(r["name"]), esc(utc(r["first_seen"]))] for r in daily["new_names"][:TOP]], "no new names",
    )
    return (
        f'<section><h2>Top names <span class="muted">(30 days)</span></h2>{names}</section>'
        f'<section><h2>Top client networks <span class="muted">(30 days; privacy mode {esc(privacy)})</span></h2>{nets}</section>'
        f'<section><h2>New names <span class="muted">(first hit in the last 24 h)</span></h2>{new}</section>'
    )


def policy_line(policy: dict[str, Any] | None) -> str:
    if not policy or policy.get("version") is None:
        return '<p id="policy" class="muted">no policy loaded yet</p>'
    when = f", installed {esc(utc(policy.get('installed')))}" if policy.get("installed") else ""
    return (
        f'<p id="policy">Policy in force: <strong title="snapshot {esc(policy["version"])}">{esc(policy["label"])}</strong>'
        f"{when}</p>"
    )


def health_section(rows: list[dict[str, Any]], policy: dict[str, Any] | None) -> str:
    body = [
        [
            f'{esc(r["id"])}<div class="muted">{esc(r.get("name") or "")}</div>',
            f'<span class="state state-{esc(r["state"])}">{esc(r["state"])}</span>'
            + (f'<div class="muted wrap">{esc(r["detail"])}</div>' if r.get("detail") else ""),
            esc(r["entries"]),
            esc(utc(r.get("last_success")) or "never"),
            esc(utc(r.get("next_poll")) or r.get("next_poll_note") or ""),
            esc(r.get("mode") or "enforce"),
        ]
        for r in rows
    ]
    table = _table("feed-health", ["agency", "state", "entries", "last success", "next poll", "mode"], body, "no agencies configured")
    return f'<section id="health"><h2>Feed health</h2>{policy_line(policy)}{table}</section>'


# -- quarantine review ----------------------------------------------------------------------


def _sample(title: str, names: list[str], count: int, cls: str) -> str:
    if not count:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in names[:SAMPLE])
    more = f'<li class="muted">and {count - min(len(names), SAMPLE)} more</li>' if count > min(len(names), SAMPLE) else ""
    return f'<div class="sample {cls}"><h4>{esc(title)} ({esc(count)})</h4><ul>{items}{more}</ul></div>'


def review_item(q: dict[str, Any], csrf: str) -> str:
    key = f'{q["agency"]}-{q["version"]}'
    s = q.get("sample") or {}
    rejects = q.get("rejects_sample") or []
    rej = ""
    if rejects:
        rows = "".join(f"<li>line {esc(r['line'])}: <code>{esc(r['text'])}</code>: {esc(r['reason'])}</li>" for r in rejects[:SAMPLE])
        rej = f'<div class="sample rejects"><h4>Rejected lines ({esc(q.get("rejects", len(rejects)))})</h4><ul>{rows}</ul></div>'
    return f"""<article class="review" id="review-{esc(key)}">
<h3>{esc(q["agency"])} v{esc(q["version"])} <span class="muted">source {esc(q["source"])}, received {esc(utc(q.get("received")))} from {esc(q.get("actor") or "")}</span></h3>
<p class="finding"><strong>Guardrail:</strong> {esc(q.get("reason") or "")}</p>
<p class="counts">{esc(q.get("entries"))} entries: <span class="added">+{esc(q.get("added", 0))} added</span>,
<span class="removed">-{esc(q.get("removed", 0))} removed</span>, ~{esc(q.get("changed", 0))} changed</p>
<div class="samples">{_sample("Added", s.get("added", []), int(q.get("added", 0)), "added")}{_sample("Removed", s.get("removed", []), int(q.get("removed", 0)), "removed")}{_sample("Changed", s.get("changed", []), int(q.get("changed", 0)), "changed")}{rej}</div>
<form method="post" action="/quarantine/{esc(q["agency"])}/{esc(q["version"])}" class="decide">
<input type="hidden" name="csrf" value="{esc(csrf)}">
<label for="reason-{esc(key)}">Reason (recorded in the audit)</label>
<input type="text" id="reason-{esc(key)}" name="reason" required maxlength="500" size="50" placeholder="checked with the agency by phone">
<button type="submit" name="decision" value="approve" id="approve-{esc(key)}">Approve and apply</button>
<button type="submit" name="decision" value="reject" id="reject-{esc(key)}">Reject</button>
</form>
</article>"""


def modes_section(rows: list[dict[str, Any]], csrf: str) -> str:
    """Each agency's mode, a link to the hits it would have blocked while observed, and the
    CSRF-safe form that switches it (observe mode: README, Behaviour)."""
    body = []
    for r in rows:
        aid, mode = r["id"], r.get("mode", "enforce")
        other = "observe" if mode == "enforce" else "enforce"
        since = f'<div class="muted">{esc(r.get("set_by"))}, {esc(utc(r.get("set_at")))}: {esc(r.get("reason") or "")}</div>' if r.get("set_at") else '<div class="muted">configuration</div>'
        form = (
            f'<form method="post" action="/modes/{esc(aid)}" class="mode-switch">'
            f'<input type="hidden" name="csrf" value="{esc(csrf)}"><input type="hidden" name="mode" value="{esc(other)}">'
            f'<label for="mode-reason-{esc(aid)}">Reason</label> '
            f'<input type="text" id="mode-reason-{esc(aid)}" name="reason" required maxlength="500" size="30">'
            f' <button type="submit" id="mode-{esc(aid)}">Switch to {esc(other)}</button></form>'
        )
        hits = f'<a href="/?{esc(urlencode({"agency": aid, "action": "observe"}))}">would-block hits</a>'
        body.append([f'{esc(aid)}<div class="muted">{esc(r.get("name") or "")}</div>',
                     f'<span class="mode mode-{esc(mode)}" id="mode-state-{esc(aid)}">{esc(mode)}</span>{since}', hits, form])
    table = _table("modes-table", ["agency", "mode", "", "switch"], body, "no agencies configured")
    return ('<section id="modes"><h2>Agency modes</h2><p class="muted">An agency in observe mode blocks nothing: its '
            'names resolve and each hit is recorded as "would block". Read those hits, then switch it to enforce; '
            f"the switch applies at once and is recorded in the audit.</p>{table}</section>")


def audit_section(rows: list[dict[str, Any]]) -> str:
    body = [
        [
            esc(utc(r.get("ts"))), esc(r.get("actor")), esc(r.get("action")), esc(r.get("agency") or ""),
            esc("" if r.get("version") is None else f'v{r["version"]}'), f'<span class="wrap">{esc(r.get("reason") or "")}</span>',
        ]
        for r in rows
    ]
    return f'<section id="audit"><h2>Audit <span class="muted">(newest first)</span></h2>{_table("audit-table", ["when", "who", "what", "agency", "version", "why"], body, "nothing recorded yet")}</section>'


def auth_hooks(auth: Any) -> dict[str, Any]:
    """``allowed``, ``session_id`` and ``public`` for ``add_routes`` from the admin login object.
    Works with both shapes of the auth layer: the one that resolves every request to a
    principal (config.auth.principal; routes declare their roles) and the older AdminAuth."""
    import config.auth as ca

    if hasattr(ca, "principal"):
        return {
            "allowed": lambda r: ca.principal(r).is_admin,
            "session_id": lambda r: r.cookies.get(auth.cookie),
            "public": ca.accepts(ca.PUBLIC),
        }
    return {"allowed": auth.allowed, "session_id": lambda r: r.cookies.get("betblock_admin")}


def add_routes(
    app: web.Application,
    *,
    allowed: Callable[[web.Request], bool],
    session_id: Callable[[web.Request], str | None],
    store: HitStore | None,
    feeds: FeedsView | None,
    usable: Callable[[], str | None],
    privacy: str = "full",
    clock: Callable[[], float] = time.time,
    public: Callable[[Handler], Handler] = lambda h: h,
) -> None:
    """The dashboard and the review; ``allowed`` says whether a request is the admin's,
    ``session_id`` the session a CSRF token is bound to; ``public`` marks the pages that send
    a visitor without a session to the login form rather than answer 401."""
    key = secrets.token_bytes(32)

    def csrf_for(request: web.Request) -> str:
        return hmac.new(key, (session_id(request) or "").encode(), hashlib.sha256).hexdigest()

    def gate(handler: Handler) -> Handler:
        async def run(request: web.Request) -> web.StreamResponse:
            if not allowed(request):
                raise web.HTTPSeeOther("/")  # the login form
            return await handler(request)

        return run

    async def dashboard(request: web.Request) -> web.StreamResponse:
        now = clock()
        failed = usable()
        if store is None or failed is not None:
            hits_html = f'<section><h2>Hits</h2><p class="error">{esc(failed or "no hit store configured (hits.store = none)")}</p></section>'
        else:
            hourly = await store.hourly(24, now)
            daily = await store.stats(30, TOP, now)
            hits_html = '<div class="charts">' + charts(hourly, daily, now) + '</div><div class="grid3">' + tops(daily, privacy) + "</div>"
        health = health_section(await feeds.health(), await feeds.policy()) if feeds is not None else ""
        body = f'<div id="dashboard"><p class="muted">All times UTC; now {esc(utc(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))))}.</p>{hits_html}{health}</div>'
        return render(body, logged_in=True)

    async def review(request: web.Request) -> web.StreamResponse:
        if feeds is None:
            return render('<section><h2>Quarantine</h2><p class="muted">no feed manager</p></section>', logged_in=True)
        notice = ""
        if request.query.get("done"):
            notice = f'<p class="notice" id="decided" role="status">{esc(request.query["done"])}</p>'
        if request.query.get("error"):
            notice = f'<p class="error" id="decide-error" role="alert">{esc(request.query["error"])}</p>'
        waiting = await feeds.quarantined()
        csrf = csrf_for(request)
        items = "".join(review_item(q, csrf) for q in waiting) or '<p class="muted" id="none-waiting">no update waits for a decision</p>'
        body = (
            f'<section id="quarantine"><h2>Quarantined updates</h2>{notice}'
            '<p class="muted">An update the guardrails held back blocks nothing until approved. '
            "Approving applies it at once; rejecting keeps the list in force and refuses this list if it is sent again.</p>"
            f"{items}</section>{modes_section(await feeds.modes(), csrf) if hasattr(feeds, 'modes') else ''}"
            f"{audit_section(await feeds.audit())}"
        )
        return render(body, logged_in=True)

    async def checked_form(request: web.Request) -> tuple[FeedsView, Any, str]:
        """For a posted quarantine decision: the feed manager, the form once its CSRF token is
        ours, and the form's reason stripped (empty when missing)."""
        if feeds is None:
            raise web.HTTPNotFound()
        form = await request.post()
        token = form.get("csrf")
        if not isinstance(token, str) or not hmac.compare_digest(token, csrf_for(request)):
            raise web.HTTPForbidden(reason="the form is stale or not ours: reload the page")
        reason = form.get("reason")
        return feeds, form, reason.strip() if isinstance(reason, str) else ""

    async def switch_mode(request: web.Request) -> web.StreamResponse:
        view, form, reason = await checked_form(request)
        mode = form.get("mode")
        agency = request.match_info["agency"]
        if not reason:
            raise web.HTTPSeeOther("/quarantine?" + urlencode({"error": f"{agency}: give a reason for the audit"}) + "#modes")
        try:
            said = await view.set_mode(agency, str(mode), "admin (page)", reason)
        except ValueError as exc:
            raise web.HTTPSeeOther("/quarantine?" + urlencode({"error": str(exc)}) + "#modes") from None
        raise web.HTTPSeeOther("/quarantine?" + urlencode({"done": said}) + "#modes")

    async def decide(request: web.Request) -> web.StreamResponse:
        view, form, reason = await checked_form(request)
        decision = form.get("decision")
        if decision not in ("approve", "reject"):
            raise web.HTTPBadRequest(reason="decision: approve or reject")
        try:
            version = int(request.match_info["version"])
        except ValueError:
            raise web.HTTPBadRequest(reason="version: not a number") from None
        agency = request.match_info["agency"]
        if not reason:
            raise web.HTTPSeeOther("/quarantine?" + urlencode({"error": f"{agency} v{version}: give a reason for the audit"}))
        try:
            said = await view.decide(agency, version, decision == "approve", "admin (page)", reason)
        except ValueError as exc:
            raise web.HTTPSeeOther("/quarantine?" + urlencode({"error": str(exc)})) from None
        raise web.HTTPSeeOther("/quarantine?" + urlencode({"done": said}))

    app.router.add_get("/dashboard", public(gate(dashboard)))
    app.router.add_get("/quarantine", public(gate(review)))
    app.router.add_post("/quarantine/{agency}/{version}", gate(decide))
    app.router.add_post("/modes/{agency}", gate(switch_mode))
