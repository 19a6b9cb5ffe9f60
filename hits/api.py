"""The admin HTTP interface of the hit log: JSON API, streaming export, the admin page's routes.

Owns the routes under /v1/hits (list with keyset pagination, export as CSV or NDJSON, stats,
status) and the admin page at / with its login (its "why is this name blocked" asks the
lookup service the composition root hands over, the same one as ``/v1/lookup/{name}``). Who may
call what is declared per route and enforced by the auth layer (``betblock/auth.py``): hits and
their export take the admin or an agency, and an agency's are narrowed to hits on its own
names; the rest take the admin.

The composition root calls ``mount`` with the store and two callables (feed status and lookup)
so that this module needs nothing from the resolver. Must not import the resolver.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from config.auth import ADMIN, AGENCY, SessionLogin, accepts, principal
from hits.query import FilterError, Filters, csv_header, csv_rows, ndjson_lines, parse_cursor, parse_limit
from hits.store import HitStore

COOKIE = "betblock_session"  # the auth layer's session cookie (betblock/auth.py), for CSRF tokens bound to it
Lookup = Callable[[str], Awaitable[dict[str, Any]]]  # feeds' lookup service, for the page
FeedStatus = Callable[[], list[dict[str, Any]]]


def _filters(request: web.Request) -> Filters:
    """The request's filters, narrowed to the caller's agency when an agency asks (403 when it
    asks for another agency's hits)."""
    try:
        f = Filters.parse(request.query)
    except FilterError as exc:
        raise web.HTTPBadRequest(reason=str(exc)) from None
    scope = principal(request).scope(f.agency)
    return f if scope == f.agency else replace(f, agency=scope)


def narrow(hits: list[dict[str, Any]], agency: str | None) -> list[dict[str, Any]]:
    """Hits as ``agency`` may see them: a name other agencies list too names only this one (who
    else lists a name is their business). ``None`` (the admin): unchanged."""
    if agency is None:
        return hits
    return [{**h, "agency": agency, "agencies": [agency]} for h in hits]


def _own(request: web.Request) -> str | None:
    who = principal(request)
    return who.agency if who.role == AGENCY else None


def _int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{key}: not a number: {raw!r}") from None
    if not lo <= v <= hi:
        raise web.HTTPBadRequest(reason=f"{key}: between {lo} and {hi}, got {v}")
    return v


def mount(
    store: HitStore | None,
    *,
    auth: SessionLogin,
    lookup: Lookup,
    feed_status: FeedStatus,
    recorder_stats: Callable[[], dict[str, Any]] = dict,
    retention_days: int = 90,
    clock: Callable[[], float] = time.time,
    health: Callable[[], dict[str, Any] | None] = lambda: None,
    feeds_view: Any = None,
    privacy: str = "full",
) -> Callable[[web.Application], None]:
    """A function that adds the hit log's routes to the application. ``health`` says why the
    store takes no hits (None while it does); reads answer 503 while it could not be opened."""
    def unusable() -> str | None:
        failed = health()
        return f"hit store failed: {failed['error']}" if failed is not None and failed["state"] == "failed" else None

    def need_store() -> HitStore:
        if store is None:
            raise web.HTTPServiceUnavailable(reason="no hit store configured (hits.store = none)")
        failed = health()
        if failed is not None and failed["state"] == "failed":
            raise web.HTTPServiceUnavailable(reason=f"hit store failed: {failed['error']}")
        return store

    @accepts(ADMIN, AGENCY)
    async def list_hits(request: web.Request) -> web.Response:
        st = need_store()
        f = _filters(request)
        try:
            limit = parse_limit(request.query.get("limit"))
            cursor = parse_cursor(request.query.get("cursor"))
        except FilterError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        hits, nxt = await st.page(f, limit, cursor)
        return web.json_response({"hits": narrow(hits, _own(request)), "next": str(nxt) if nxt is not None else None})

    @accepts(ADMIN, AGENCY)
    async def export(request: web.Request) -> web.StreamResponse:
        st = need_store()
        f = _filters(request)
        fmt = request.query.get("format", "csv")
        if fmt not in ("csv", "ndjson"):
            raise web.HTTPBadRequest(reason=f"format: csv or ndjson, got {fmt!r}")
        ctype = "text/csv" if fmt == "csv" else "application/x-ndjson"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
        resp = web.StreamResponse(
            headers={
                "Content-Type": f"{ctype}; charset=utf-8",
                "Content-Disposition": f'attachment; filename="hits-{stamp}.{fmt}"',
                "Cache-Control": "no-store",
            }
        )
        await resp.prepare(request)
        if fmt == "csv":
            await resp.write(csv_header())
        own = _own(request)
        async for chunk in st.iterate(f):
            hits = narrow(chunk, own)
            await resp.write(csv_rows(hits) if fmt == "csv" else ndjson_lines(hits))
        await resp.write_eof()
        return resp

    async def stats(request: web.Request) -> web.Response:
        st = need_store()
        days = _int(request, "days", 30, 1, 3660)
        top = _int(request, "top", 20, 1, 1000)
        return web.json_response(await st.stats(days, top))

    async def status(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"retention_days": retention_days, "recorder": recorder_stats(), "health": health()}
        failed = health()
        if store is not None and (failed is None or failed["state"] != "failed"):
            body["store"] = await store.status()
        else:
            body["store"] = None
        return web.json_response(body)

    def add(app: web.Application) -> None:
        from hits import dashboard, page

        app.router.add_get("/v1/hits", list_hits)
        app.router.add_get("/v1/hits/export", export)
        app.router.add_get("/v1/hits/stats", stats)
        app.router.add_get("/v1/hits/status", status)
        page.add_routes(
            app, auth=auth, store=store, lookup=lookup, feed_status=feed_status,
            recorder_stats=recorder_stats, retention_days=retention_days, usable=unusable,
            policy_labels=feeds_view.labels if feeds_view is not None else None,
        )
        # The dashboard and the quarantine review (``feeds_view``: a hits.dashboard.FeedsView).
        dashboard.add_routes(
            app, **dashboard.auth_hooks(auth), store=store,
            feeds=feeds_view, usable=unusable, privacy=privacy, clock=clock,
        )

    return add
