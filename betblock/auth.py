"""The one authentication layer of the HTTP API: every request resolved to a Principal, every
route's declared roles enforced, page sessions, and the cross-site check for cookie requests.

Owns:
- resolving a request: ``Authorization: Bearer <admin token>`` -> admin; a bearer agency push
  token (checked against every agency's ``token_sha256``, each in constant time) ->
  ``agency:<id>``; else the session cookie a login form set (admin or agency) -> that
  principal; else anonymous. A bearer header that matches nothing is a failed credential
  (401), never a fall-through to the cookie;
- enforcing the roles a handler declared with ``config.auth.accepts`` (undeclared: admin only):
  401 without a credential, 403 with a credential of another role, 403 for an agency on a route
  whose ``{agency}`` path segment names another agency; ``Unauthenticated``/``Forbidden``
  raised by a route map to 401/403 too. A 401 is what the brute-force limiter counts;
- sessions: in memory, 8 hours, cookie ``betblock_session`` (HttpOnly, SameSite=Strict);
- CSRF: a request that changes something and authenticates by cookie must come from our own
  origin (``Origin``, or ``Sec-Fetch-Site: same-origin``); a login form posted from another
  origin is refused as well. Bearer requests are not sent by browsers on their own, so they
  need no such check.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from aiohttp import web

from config.auth import (
    ADMIN,
    AGENCY,
    AdminSecret,
    ANONYMOUS,
    PRINCIPAL,
    PUBLIC,
    Forbidden,
    Principal,
    Unauthenticated,
    bearer,
    declared_roles,
    matches_hash,
    matches_secret,
    principal,
)

COOKIE = "betblock_session"  # hits/api.py names it too (pages bind their CSRF tokens to it)
SESSION_SECONDS = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Forms that take a token: a cross-site post there would log a browser into someone's account.
LOGIN_PATHS = frozenset({"/login", "/agency/login"})
ADMIN_ONLY = frozenset({ADMIN})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Authenticator:
    """Checks tokens and keeps page sessions. ``agencies``: (agency id, token SHA-256 hex)."""

    admin_token: AdminSecret
    agencies: Sequence[tuple[str, str]] = ()
    clock: Callable[[], float] = time.time
    cookie: str = COOKIE
    sessions: dict[str, tuple[Principal, float]] = field(default_factory=dict)  # id -> (who, expiry)

    def check(self, token: str | None) -> Principal | None:
        """The principal a bearer token proves, or None."""
        if token is None:
            return None
        if matches_secret(token, self.admin_token):
            return Principal(ADMIN, via="bearer")
        # Every hash is compared (no early exit), so timing does not say which agency came close.
        owners = [aid for aid, digest in self.agencies if matches_hash(token, digest)]
        return Principal(AGENCY, owners[0], via="bearer") if owners else None

    def login(self, token: str | None, role: str) -> str | None:
        """A new session id for ``token`` when it proves ``role``; None otherwise."""
        who = self.check(token)
        if who is None or who.role != role:
            return None
        now = self.clock()
        for sid, (_p, exp) in list(self.sessions.items()):
            if exp < now:
                del self.sessions[sid]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = (Principal(who.role, who.agency, via="session"), now + SESSION_SECONDS)
        return sid

    def logout(self, sid: str | None) -> None:
        if sid:
            self.sessions.pop(sid, None)

    @staticmethod
    def allowed(request: web.Request) -> bool:
        """Is ``request`` the admin's? (For pages that check themselves, after this layer ran.)"""
        return principal(request).is_admin

    def resolve(self, request: web.Request) -> Principal:
        """Who ``request`` speaks for; Unauthenticated for a bearer token that proves nothing."""
        header = request.headers.get("Authorization")
        if header is not None:
            who = self.check(bearer(header))
            if who is None:
                raise Unauthenticated("the bearer token is not valid")
            return who
        sid = request.cookies.get(self.cookie)
        if sid:
            held = self.sessions.get(sid)
            if held is not None and held[1] >= self.clock():
                return held[0]
        return ANONYMOUS

    def middleware(self) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            try:
                roles = _roles(request)
                try:
                    who = self.resolve(request)
                except Unauthenticated:
                    if roles is not None and PUBLIC in roles:
                        who = ANONYMOUS  # a public route (a login form) ignores a stale header
                    else:
                        raise
                with warnings.catch_warnings():
                    # A plain key, so that feeds and hits read it without importing aiohttp's
                    # RequestKey from here (config holds the key); aiohttp only recommends one.
                    warnings.simplefilter("ignore", web.NotAppKeyWarning)
                    request[PRINCIPAL] = who
                if request.method not in SAFE_METHODS and (who.via == "session" or request.path in LOGIN_PATHS):
                    _same_origin(request, strict=who.via == "session")
                if roles is not None:
                    _admit(who, roles, request)
                return await handler(request)
            except Unauthenticated as exc:
                raise web.HTTPUnauthorized(reason=str(exc), headers={"WWW-Authenticate": 'Bearer realm="betblock"'}) from None
            except Forbidden as exc:
                raise web.HTTPForbidden(reason=str(exc)) from None

        return authenticate

    def mount(self, app: web.Application) -> None:
        """Add the layer to the application (after the error and body-cap middleware)."""
        app.middlewares.append(self.middleware())


def _roles(request: web.Request) -> frozenset[str] | None:
    """The roles the matched route accepts; None when nothing matched (aiohttp answers 404/405)."""
    info = request.match_info
    if getattr(info, "http_exception", None) is not None:
        return None
    route = info.route
    if isinstance(route.resource, web.StaticResource):
        return frozenset({PUBLIC})
    declared = declared_roles(route.handler)
    return ADMIN_ONLY if declared is None else declared


def _admit(who: Principal, roles: frozenset[str], request: web.Request) -> None:
    if PUBLIC in roles:
        return
    if who.role not in roles:
        if who.role == ANONYMOUS.role:
            raise Unauthenticated("admin token required" if roles == ADMIN_ONLY else "a valid token is required")
        raise Forbidden(f"this route is for {' or '.join(sorted(roles))}, not {who.role}")
    path_agency = request.match_info.get("agency")
    if who.role == AGENCY and path_agency is not None and path_agency != who.agency:
        raise Forbidden("this token may only touch its own agency's data")


def _same_origin(request: web.Request, *, strict: bool) -> None:
    """Refuse a state-changing request a browser sent from another site. ``strict``: the request
    must show where it came from (a cookie request); otherwise only a foreign origin is refused."""
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    # Our pages send Referrer-Policy: no-referrer, under which a browser posts "Origin: null"
    # even from the same page; Sec-Fetch-Site then says where the form was.
    if origin is not None and origin != "null":
        if urlsplit(origin).netloc != request.host:
            raise Forbidden("cross-site request refused")
        return
    if site is not None:
        if site not in ("same-origin", "none"):
            raise Forbidden("cross-site request refused")
        return
    if strict or origin == "null":
        raise Forbidden("a cookie-authenticated change must come from this site (no Origin header)")
