"""The feeds HTTP API: agencies push their lists; admins watch, decide and allowlist.

Owns the routes, their authentication and their error answers:

- agency routes (``/v1/feeds/{agency}``...) accept the agency itself and the admin (who may
  push on an agency's behalf, audited as admin); every other route the admin only. Who is who
  is the auth layer's business (``betblock/auth.py``): 401 without a valid credential, 403 for
  another agency or role.
- 413 when a body is over the push source's ``max_bytes``; 422 with the per-line rejects when
  nothing valid remains, or with the reason when the feed as a whole is refused (a bad
  signature); 202 when an update is quarantined for an admin; 503 with the reason while the
  feed store is unusable (damaged, missing) or refuses a write: nothing was changed.

Every read and write goes through the feeds parts (``UpdateService`` for updates,
``AdminDecisions`` for decisions and what an admin reads, ``FeedReadModel`` for status,
``LookupService``); the API holds no store. ``mount(manager, max_body_bytes=...)`` returns the
function the composition root hands to the HTTP app. Must not import resolver, hits or betblock code.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from aiohttp import web

from config.auth import ADMIN, AGENCY, accepts, principal
from feeds.entry import FeedError
from feeds.manager import Conflict, FeedManager, NotFound, Refused, StoreUnavailable, UpdateResult, reject_json
from feeds.normalize import InvalidName

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def mount(manager: FeedManager, *, max_body_bytes: int) -> Callable[[web.Application], None]:
    """The routes, bound to ``manager``'s parts; call the result with the aiohttp application.
    ``max_body_bytes`` (``http.max_body_bytes``) caps every body below a source's own cap."""
    api = FeedsApi(manager, max_body_bytes)

    def add(app: web.Application) -> None:
        app.middlewares.append(_store_unavailable)
        r = app.router
        r.add_get("/v1/feeds", api.list_feeds)
        r.add_put("/v1/feeds/{agency}", api.put)
        r.add_patch("/v1/feeds/{agency}", api.patch)
        r.add_get("/v1/feeds/{agency}", api.get)
        r.add_get("/v1/feeds/{agency}/versions/{version:\\d+}", api.version)
        r.add_post("/v1/feeds/{agency}/versions/{version:\\d+}/approve", api.approve)
        r.add_post("/v1/feeds/{agency}/versions/{version:\\d+}/reject", api.reject)
        r.add_post("/v1/feeds/{agency}/refresh", api.refresh)
        r.add_post("/v1/feeds/{agency}/mode", api.mode)
        r.add_get("/v1/allowlist", api.allowlist)
        r.add_put("/v1/allowlist/{name}", api.allow_add)
        r.add_delete("/v1/allowlist/{name}", api.allow_remove)
        r.add_get("/v1/lookup/{name}", api.lookup)
        r.add_get("/v1/lookup", api.lookup_query)
        r.add_get("/v1/audit", api.audit)

    return add


@web.middleware
async def _store_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        return web.json_response({"error": "feed store unavailable", "detail": str(exc)}, status=503)


class FeedsApi:
    def __init__(self, manager: FeedManager, max_body_bytes: int) -> None:
        self.sources = manager.sources
        self.updates = manager.updates
        self.decisions = manager.decisions
        self.read = manager.read
        self.scheduler = manager.scheduler
        self.lookup_service = manager.lookup
        self.modes = manager.modes  # enforce/observe per agency, and the switch
        self.max_body_bytes = max_body_bytes

    def _agency(self, request: web.Request) -> tuple[str, str]:
        """(agency id, actor) of a route on ``{agency}``. The auth layer has admitted only the
        admin and that agency; the admin learns that an agency does not exist (404)."""
        agency = request.match_info["agency"]
        who = principal(request)
        if who.is_admin and agency not in self.sources.agencies:
            raise web.HTTPNotFound(reason=f"no agency {agency!r}")
        return agency, who.name

    # -- agency routes --------------------------------------------------------------------

    @accepts(ADMIN, AGENCY)
    async def put(self, request: web.Request) -> web.Response:
        agency, actor = self._agency(request)
        rt = self._push_runtime(agency)
        fmt = request.query.get("format")
        if fmt is not None:
            from feeds.formats import FORMATS

            if fmt not in FORMATS:
                raise web.HTTPBadRequest(reason=f"unknown format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
        body = await self._body(request, rt.settings.max_bytes)
        try:
            result = await self.updates.push(agency, body, fmt=fmt, actor=actor)
        except Refused as exc:
            return _refused(str(exc), exc.rejects)
        except FeedError as exc:
            return web.json_response({"error": "feed refused", "detail": str(exc)}, status=422)
        return _result(result)

    @accepts(ADMIN, AGENCY)
    async def patch(self, request: web.Request) -> web.Response:
        agency, actor = self._agency(request)
        rt = self._push_runtime(agency)
        body = await self._body(request, rt.settings.max_bytes)
        doc = _json(body)
        if not isinstance(doc, dict) or set(doc) - {"add", "remove"}:
            raise web.HTTPBadRequest(reason='body must be {"add": [...], "remove": [...]}')
        add, remove = doc.get("add", []), doc.get("remove", [])
        if not isinstance(add, list) or not isinstance(remove, list):
            raise web.HTTPBadRequest(reason="add and remove must be lists")
        if not add and not remove:
            raise web.HTTPBadRequest(reason="nothing to add or remove")
        try:
            result = await self.updates.patch(agency, add, [str(x) for x in remove], actor=actor)
        except Refused as exc:
            return _refused(str(exc), exc.rejects)
        return _result(result)

    @accepts(ADMIN, AGENCY)
    async def get(self, request: web.Request) -> web.Response:
        agency, _actor = self._agency(request)
        status = self.read.status(agency)["agencies"][0]
        status["versions"] = await self.decisions.versions(agency, _int(request, "limit", 50))
        return web.json_response(status)

    @accepts(ADMIN, AGENCY)
    async def version(self, request: web.Request) -> web.Response:
        agency, _actor = self._agency(request)
        v = _version(request)
        row = await self.decisions.version(agency, v, _int(request, "limit", 1000), _int(request, "offset", 0))
        if row is None:
            raise web.HTTPNotFound(reason=f"agency {agency!r} has no version {v}")
        return web.json_response(row)

    def _push_runtime(self, agency: str) -> Any:
        try:
            return self.sources.runtime(agency)
        except NotFound as exc:
            raise web.HTTPConflict(reason=str(exc)) from None

    async def _body(self, request: web.Request, cap: int) -> bytes:
        cap = min(cap, self.max_body_bytes)
        if request.content_length is not None and request.content_length > cap:
            raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=request.content_length)
        buf = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > cap:
                raise web.HTTPRequestEntityTooLarge(max_size=cap, actual_size=len(buf))
        return bytes(buf)

    # -- admin routes ---------------------------------------------------------------------

    async def list_feeds(self, request: web.Request) -> web.Response:
        out = self.read.status()
        # Readable without a store: the status then says why there is none.
        out["quarantined"] = await self.decisions.quarantined()
        return web.json_response(out)

    async def approve(self, request: web.Request) -> web.Response:
        result = await self._decide(self.decisions.approve, request)
        return web.json_response(result.json())

    async def reject(self, request: web.Request) -> web.Response:
        return web.json_response(await self._decide(self.decisions.reject, request))

    async def _decide(self, decision: Callable[..., Awaitable[Any]], request: web.Request) -> Any:
        """An admin's decision on a quarantined version, with an optional reason (JSON
        ``{"reason": "...", "operator": "..."}`` or a form) for the audit trail: 404 when there
        is none, 409 when it is not quarantined."""
        actor = principal(request).name
        version = _version(request)
        why = await _why(request)
        try:
            return await decision(request.match_info["agency"], version, actor=actor, **why)
        except NotFound as exc:
            raise web.HTTPNotFound(reason=str(exc)) from None
        except Conflict as exc:
            raise web.HTTPConflict(reason=str(exc)) from None

    async def mode(self, request: web.Request) -> web.Response:
        """Switch an agency between enforce and observe (admin): ``{"mode": "enforce",
        "reason": "...", "operator": "..."}`` or the same as a form; stored with its audit row,
        applied at once. 400 for another mode, 404 for an unknown agency."""
        body = await _body_doc(request)
        why = {k: str(body[k]).strip()[:1000] for k in ("reason", "operator") if body.get(k)}
        try:
            out = await self.modes.switch(request.match_info["agency"], str(body.get("mode", "")), actor=principal(request).name, **why)
        except NotFound as exc:
            raise web.HTTPNotFound(reason=str(exc)) from None
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        if request.content_type != "application/json" and request.query.get("back"):
            # the admin page's form: back to the page it came from (a local path only)
            back = request.query["back"]
            raise web.HTTPSeeOther(back if back.startswith("/") and not back.startswith("//") else "/")
        return web.json_response(out)

    async def refresh(self, request: web.Request) -> web.Response:
        agency = request.match_info["agency"]
        if agency not in self.sources.agencies:
            raise web.HTTPNotFound(reason=f"no agency {agency!r}")
        n = self.scheduler.poke(agency, request.query.get("source"))
        return web.json_response({"agency": agency, "sources": n}, status=202)

    async def allowlist(self, request: web.Request) -> web.Response:
        return web.json_response(await self.decisions.allowlists())

    async def allow_add(self, request: web.Request) -> web.Response:
        actor = principal(request).name
        note = ""
        if request.can_read_body:
            raw = await self._body(request, 1 << 16)
            if raw:
                doc = _json(raw)
                if not isinstance(doc, dict):
                    raise web.HTTPBadRequest(reason='body must be {"note": "..."}')
                note = str(doc.get("note", ""))
        try:
            out = await self.decisions.allow_add(request.match_info["name"], actor=actor, note=note)
        except InvalidName as exc:
            return web.json_response({"error": "invalid name", "detail": exc.reason}, status=422)
        return web.json_response(out, status=201 if out["added"] else 200)

    async def allow_remove(self, request: web.Request) -> web.Response:
        actor = principal(request).name
        try:
            out = await self.decisions.allow_remove(request.match_info["name"], actor=actor)
        except InvalidName as exc:
            return web.json_response({"error": "invalid name", "detail": exc.reason}, status=422)
        if not out["removed"]:
            raise web.HTTPNotFound(reason=f"{out['name']} is not on the admin allowlist")
        return web.json_response(out)

    async def lookup(self, request: web.Request) -> web.Response:
        return web.json_response(await self.lookup_service(request.match_info["name"]))

    async def lookup_query(self, request: web.Request) -> web.Response:
        """The old ``/v1/lookup?name=`` form: a permanent redirect to the one lookup route."""
        name = request.query.get("name", "").strip()
        if not name:
            raise web.HTTPBadRequest(reason="name: required")
        raise web.HTTPPermanentRedirect(f"/v1/lookup/{quote(name, safe='')}")

    async def audit(self, request: web.Request) -> web.Response:
        rows = await self.decisions.audit_log(request.query.get("agency"), _int(request, "limit", 100))
        return web.json_response({"audit": rows})


async def _body_doc(request: web.Request) -> dict[str, Any]:
    """A small JSON object or form body (at most 64 KiB); 400 for anything else."""
    if not request.can_read_body:
        return {}
    if request.content_length is not None and request.content_length > 1 << 16:
        raise web.HTTPRequestEntityTooLarge(max_size=1 << 16, actual_size=request.content_length)
    doc = _json(await request.read()) if request.content_type == "application/json" else dict(await request.post())
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object or a form")
    return doc


async def _why(request: web.Request) -> dict[str, str]:
    """The reason (and the operator's name) that came with a decision; at most 1,000 characters each."""
    if not request.can_read_body:
        return {}
    if request.content_type == "application/json":
        doc = _json(await request.read())
    else:
        doc = dict(await request.post())
    if not isinstance(doc, dict):
        raise web.HTTPBadRequest(reason='body must be {"reason": "...", "operator": "..."}')
    why = {k: str(doc[k]).strip()[:1000] for k in ("reason", "operator") if doc.get(k)}
    return why


def _result(result: UpdateResult) -> web.Response:
    return web.json_response(result.json(), status=202 if result.status == "quarantined" else 200)


def _refused(message: str, rejects: list[Any]) -> web.Response:
    return web.json_response(
        {"error": "nothing valid remains", "detail": message, "rejects": [reject_json(r) for r in rejects[:1000]], "rejected": len(rejects)},
        status=422,
    )


INT64_MAX = (1 << 63) - 1  # version numbers are the store's integer keys


def _version(request: web.Request) -> int:
    """The ``{version}`` of the path: 400 for a number no version can have."""
    raw = request.match_info["version"]
    try:
        v = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"version: not a number: {raw[:40]!r}") from None
    if not 0 <= v <= INT64_MAX:
        raise web.HTTPBadRequest(reason=f"version: between 0 and {INT64_MAX}, got {raw[:40]}")
    return v


def _json(body: bytes) -> Any:
    """A JSON request body; 400 when it is not JSON or nests deeper than the decoder goes."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(reason=f"body is not JSON: {exc}") from None
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (about 1,000 levels) with
        # this error, before any memory grows: no body we take nests anywhere near that deep.
        raise web.HTTPBadRequest(reason="body is not JSON we take: nested too deeply") from None


def _int(request: web.Request, key: str, default: int) -> int:
    try:
        value = int(request.query.get(key, default))
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{key} must be an integer") from None
    if value < 0:
        raise web.HTTPBadRequest(reason=f"{key} must not be negative")
    return min(value, 100_000)

