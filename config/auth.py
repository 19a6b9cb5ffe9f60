"""Bearer-token checks shared by the HTTP owners (feeds for agencies, hits for admins).

Owns how a configured secret is compared with what a request presents: tokens are configured
as SHA-256 hex digests (or a SecretStr for the admin) and compared in constant time, so that
neither the config file nor timing gives a token away. Must not import aiohttp.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


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
