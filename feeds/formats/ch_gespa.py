"""Switzerland, Gespa (formerly Comlot) ``gespa_blocklist_YYYYMMDD.txt`` with its detached
``.sign`` file: a base64 RSA PKCS#1 v1.5 SHA-256 signature over the exact bytes of the list.

Owns verifying that signature against the agency's configured public key (before anything is
parsed) and reading the ``#Version:`` / ``#Serial:`` header. Only ``#Version: 1`` is known;
another version is a FeedError, as in swiss-dnsblock, because its meaning is unknown. Must not
import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509 import load_pem_x509_certificate

from feeds.entry import FeedError, ParseResult
from feeds.formats._common import Collector, decode_lines

VERSIONS = frozenset({"1"})
_HEADER = re.compile(r"#\s*([A-Za-z]+)\s*:\s*(.*)").fullmatch


def parse(
    data: bytes, *, signature: bytes | None = None, public_key_pem: bytes | None = None
) -> ParseResult:
    """Entries of a Gespa list. ``meta``: ``signature`` ("valid" or "absent"), ``version``,
    ``serial``. An invalid signature, a signature without a key, a missing or unknown
    ``#Version`` are FeedErrors."""
    status = verify_signature(data, signature, public_key_pem)
    result = read_list(data, VERSIONS, require_version=True)
    result.meta["signature"] = status
    return result


# (collector, line number, stripped text, line as read): records one line of a list.
LineReader = Callable[[Collector, int, str, str], None]


def _name(out: Collector, number: int, text: str, line: str) -> None:
    out.add(text, number, text=line)


def read_list(data: bytes, versions: frozenset[str], *, require_version: bool, entry: LineReader = _name) -> ParseResult:
    """The Swiss list layout shared with ESBK: ``#Key: value`` header lines, other ``#``
    lines as comments, one entry per line (a name, unless ``entry`` reads more of it)."""
    lines, _ = decode_lines(data)
    out = Collector()
    meta: dict[str, object] = {"version": None, "serial": None}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text[0] == "#":
            read_header(text, meta)
            continue
        entry(out, number, text, line)
    check_version(meta, versions, require_version=require_version)
    return out.result(meta)


def read_header(text: str, meta: dict[str, object]) -> None:
    """Record a ``#Version:`` or ``#Serial:`` line in ``meta``; other comments are ignored."""
    header = _HEADER(text)
    if header and header.group(1).lower() in ("version", "serial"):
        meta[header.group(1).lower()] = header.group(2).strip()


def check_version(meta: dict[str, object], versions: frozenset[str], *, require_version: bool) -> None:
    version = meta.get("version")
    if version is None and require_version:
        raise FeedError("no #Version header")
    if version is not None and version not in versions:
        raise FeedError(f"unsupported #Version {version!r} (known: {', '.join(sorted(versions))})")


def verify_signature(data: bytes, signature: bytes | None, public_key_pem: bytes | None) -> str:
    """"valid", or "absent" when no signature was given; FeedError when it does not verify
    or cannot be checked. Whether an unsigned list is acceptable is the caller's policy."""
    if signature is None:
        return "absent"
    if public_key_pem is None:
        raise FeedError("a signature was given but no public key is configured")
    key = _load_key(public_key_pem)
    raw = _signature_bytes(signature, key.key_size // 8)
    try:
        key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise FeedError("RSA-SHA256 signature does not verify against the configured key") from None
    return "valid"


def _load_key(pem: bytes) -> rsa.RSAPublicKey:
    try:
        if b"BEGIN CERTIFICATE" in pem:
            key = load_pem_x509_certificate(pem).public_key()
        else:
            key = load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise FeedError(f"the configured public key cannot be read: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise FeedError("the configured public key is not an RSA key")
    return key


def _signature_bytes(signature: bytes, size: int) -> bytes:
    """The raw signature from the ``.sign`` file: base64 in 64-column lines as Gespa
    publishes it, or already raw."""
    compact = b"".join(signature.split())
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == size:
        return decoded
    if len(signature) == size:
        return signature
    raise FeedError("RSA-SHA256 signature does not verify against the configured key (bad length)")
