"""Who a request speaks for, and how its token is checked: shared by every HTTP owner.

Owns how a configured secret is compared with what a request presents (tokens are configured
as SHA-256 hex digests, or a SecretStr for the admin, and compared in constant time, so that
neither the config file nor timing gives a token away), the ``Principal`` a request resolves
to (admin, agency:<id>, anonymous), the roles a route declares with ``accepts``, and the
errors for a missing credential (401) or the wrong role (403). The resolving itself (bearer
header, session cookie) is ``betblock/auth.py``. Must not import aiohttp.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pydantic import SecretStr

from config.errors import BetblockError


AdminSecret = SecretStr | None  # the configured admin token, as the auth layer receives it


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def matches_hash(token: str | None, digest: str | None) -> bool:
    """Does ``token`` hash to the configured SHA-256 hex ``digest``? Constant time."""
    if token is None or not digest:
        return False
    return hmac.compare_digest(sha256_hex(token), digest.lower())


def matches_secret(token: str | None, secret: SecretStr | None) -> bool:
    """Does ``token`` equal the configured secret? Constant time."""
    if token is None or secret is None:
        return False
    return hmac.compare_digest(token.encode(), secret.get_secret_value().encode())


# -- who is asking ------------------------------------------------------------------------
#
# The HTTP composition root resolves every request to a Principal once (betblock/auth.py) and
# stores it in the request under PRINCIPAL; owners' routes declare the roles they accept with
# ``accepts`` and read the principal back to scope what they return. Kept here, free of aiohttp,
# so that feeds and hits (peers) can both declare and read without importing each other or the
# composition root.

ADMIN = "admin"
AGENCY = "agency"  # any agency; a route with {agency} in its path admits only that agency
PUBLIC = "public"  # no credential needed (health, the login forms, static files)
ANONYMOUS_ROLE = "anonymous"
PRINCIPAL = "betblock.principal"  # the request key the auth layer stores the principal under
ROLES_ATTR = "__betblock_roles__"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request speaks for: ``role`` admin, agency (with ``agency`` its id) or anonymous;
    ``via`` says how it proved it (bearer, session, or none)."""

    role: str
    agency: str | None = None
    via: str = "none"

    @property
    def name(self) -> str:
        """``admin``, ``agency:<id>`` or ``anonymous``: the actor written into the audit trail."""
        return f"agency:{self.agency}" if self.role == AGENCY else self.role

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def scope(self, requested: str | None) -> str | None:
        """The agency whose data this principal may see for a request that asked for
        ``requested`` (None: every agency). An admin sees what it asked for; an agency only its
        own, and asking for another's is Forbidden."""
        if self.role == ADMIN:
            return requested
        if self.role == AGENCY:
            if requested not in (None, self.agency):
                raise Forbidden("an agency token may only read its own agency's data")
            return self.agency
        raise Unauthenticated("credentials required")


ANONYMOUS = Principal(ANONYMOUS_ROLE)


class Unauthenticated(BetblockError):
    """No valid credential came with a request that needs one (HTTP 401)."""


class Forbidden(BetblockError):
    """A valid credential of a role the route does not accept, or a request for data outside
    the principal's scope (HTTP 403)."""


H = TypeVar("H", bound=Callable[..., Any])


def accepts(*roles: str) -> Callable[[H], H]:
    """Declare the roles a route handler accepts (``ADMIN``, ``AGENCY``, ``PUBLIC``). A handler
    without a declaration accepts the admin only."""

    def mark(fn: H) -> H:
        setattr(fn, ROLES_ATTR, frozenset(roles))
        return fn

    return mark


def declared_roles(handler: Any) -> frozenset[str] | None:
    return getattr(handler, ROLES_ATTR, None)


def principal(request: MutableMapping[str, Any]) -> Principal:
    """The principal the auth layer resolved for ``request`` (anonymous when none did)."""
    p = request.get(PRINCIPAL)
    return p if isinstance(p, Principal) else ANONYMOUS


class SessionLogin(Protocol):
    """What a login page needs from the auth layer: trade a token for a session id (None when
    the token is wrong or of another role), and end a session."""

    cookie: str

    def login(self, token: str | None, role: str) -> str | None: ...

    def logout(self, sid: str | None) -> None: ...
