"""Name normalisation for feed entries, and the public-suffix test the guard also uses.

Owns the single definition of "a name we may block": how a feed's raw text (a name, a URL, a
``*.`` wildcard, a Unicode IDN) becomes a lower-case A-label, and every reason it may not.
Must not import aiohttp, SQL, resolver code or the format parsers; depends only on ``idna``
and ``publicsuffixlist``.

Decisions, in one place:

- URL → host: scheme, userinfo, port, path, query and fragment are removed. A path or query
  is reported (``had_path``) so callers can keep it for audit: blocking a host because a page
  on it was listed is wider than the listing (FEEDS.md §7).
- ``www.`` is kept as listed; a listed name blocks its subdomains anyway.
- IDN: UTS 46 non-transitional mapping (what current browsers send), then IDNA 2008 A-labels.
  Existing ``xn--`` labels must decode and re-encode to themselves.
- Underscores are allowed in ASCII labels: DNS permits them, real names carry them, and
  blocking a name that is never queried costs nothing, while refusing a listed name would
  leave a legally ordered block undone. Leading/trailing hyphens are refused (RFC 952/1123).
- Refused with a reason: IP literals (blocks are by name only: the ASIC 2013 lesson),
  numeric top-level labels (a browser reads ``1.2.3`` as an address), empty labels, labels
  over 63 octets, names over 253, single-label names, ``localhost`` and ``arpa`` names, and
  public suffixes per the Public Suffix List including its private section (``github.io``:
  the mooo.com lesson). A ``*.`` wildcard over a public suffix is refused the same way.
"""

from __future__ import annotations

import ipaddress
import re

import idna
from publicsuffixlist import PublicSuffixList

from config.errors import BetblockError


class InvalidName(BetblockError, ValueError):
    """The text cannot be a blockable name; ``reason`` says why in a short phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MAX_NAME = 253
MAX_LABEL = 63
# Longer hosts than this cannot map to 253 octets in any useful way; refusing them early keeps
# a hostile megabyte-long line from spending seconds in the IDNA tables.
_MAX_RAW_HOST = 1024

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
# The common case: an already clean ASCII name whose top-level label starts with a letter
# (so it can be neither an IP address nor numeric). re.ASCII keeps IGNORECASE from matching
# look-alikes such as U+212A KELVIN SIGN as "k".
_FAST = re.compile(rf"(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?", re.ASCII).fullmatch
_ASCII_LABEL = re.compile(r"[a-z0-9_-]+", re.ASCII).fullmatch
_BAD_CHAR = re.compile(r"[^a-z0-9_-]", re.ASCII).search
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://").match
_PATH_START = re.compile(r"[/?#\\]").search
_NUMERIC_TLD = re.compile(r"[0-9]+|0x[0-9a-f]*", re.ASCII).fullmatch
_SPECIAL_TLDS = frozenset({"localhost", "arpa"})
_SPECIAL_ENDINGS = tuple("." + tld for tld in _SPECIAL_TLDS)

_PSL = PublicSuffixList()  # bundled list, no network; private section included
_rules = getattr(_PSL, "_publicsuffix", None)
if isinstance(_rules, frozenset):
    # A prefilter only: it answers "cannot be public" for names no rule touches and leaves
    # every other name to the library. If the library's internals change, the prefilter is
    # skipped and the answers stay the same, just slower.
    _PSL_EXACT: frozenset[str] | None = frozenset(r for r in _rules if r[0] not in "!*")
    _PSL_WILD: frozenset[str] = frozenset(r[2:] for r in _rules if r.startswith("*."))
else:  # pragma: no cover - depends on the installed publicsuffixlist
    _PSL_EXACT, _PSL_WILD = None, frozenset()
_PSL_TOUCHED = (_PSL_EXACT or frozenset()) | _PSL_WILD
del _rules


def is_public_suffix(name: str) -> bool:
    """True when ``name`` (a normalised A-label name) is a public suffix: a TLD, ``co.uk``,
    ``github.io`` ... Blocking one would block every registrant under it."""
    if "." not in name:
        return True  # the PSL default rule: every TLD, known or not
    if _PSL_EXACT is not None and name not in _PSL_EXACT and name not in _PSL_WILD:
        if name.partition(".")[2] not in _PSL_WILD:
            return False
    return bool(_PSL.is_public(name))


def _is_ip(text: str) -> bool:
    # ipaddress raises (slowly) for every name; an address ends in a digit or has a colon.
    if not (text[-1:].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def normalize(raw: str) -> tuple[str, bool]:
    """``(name, wildcard)`` for a raw feed entry, or ``InvalidName`` with the reason.

    ``name`` is a lower-case A-label without trailing dot or ``*.``; ``wildcard`` is True when
    the entry was written ``*.name``. Idempotent: ``normalize(name)`` returns ``name``.
    """
    name, wildcard, _ = normalize_detail(raw)
    return name, wildcard


def normalize_detail(raw: str) -> tuple[str, bool, bool]:
    """Like ``normalize`` plus a third value: True when a URL path or query was dropped."""
    low = raw.strip().lower()
    if _clean(low):
        return low, False, False
    # RPZ zones list every name twice, once as "*.name"; keep those on the fast path too.
    if low.startswith("*.") and _clean(low[2:]):
        return low[2:], True, False
    return _normalize_full(raw)


def _clean(low: str) -> bool:
    """True when the stripped, lower-cased ``low`` is already a final, acceptable name: the
    fast path. The plain format inlines this test (``fast_match``/``needs_full_check``), and a
    property test holds the fast path to the full one's answers."""
    return bool(_FAST(low)) and len(low) <= MAX_NAME and "xn--" not in low and not _maybe_public(low)


def _maybe_public(name: str) -> bool:
    # Cheaper than is_public_suffix for the common no-rule case; True means "take the full
    # path", which also owns the special-use refusals.
    return (
        name in _PSL_TOUCHED
        or name[name.find(".") + 1 :] in _PSL_WILD
        or name.endswith(_SPECIAL_ENDINGS)
        or _PSL_EXACT is None
    )


# The pieces of _clean(), for loops that inline it (plain format): a call per line is a
# measurable share of loading a million-line list.
fast_match = _FAST
needs_full_check = _maybe_public


def _normalize_full(raw: str) -> tuple[str, bool, bool]:
    host = raw.strip()
    if not host:
        raise InvalidName("empty")
    had_path = False
    has_scheme = False
    m = _SCHEME(host)
    if m:
        host, has_scheme = host[m.end() :], True
    elif host.startswith("//"):
        host, has_scheme = host[2:], True
    cut = _PATH_START(host)
    if cut:
        rest = host[cut.start() :]
        host = host[: cut.start()]
        # A lone "/" is how URLs of a whole site are written; anything more names a page.
        had_path = rest not in ("/", "\\")
    if has_scheme and "@" in host:
        host = host.rpartition("@")[2]
    host = _strip_port(host)
    if len(host) > _MAX_RAW_HOST:
        raise InvalidName("name longer than 253 octets")
    if not host.isascii():
        try:
            host = idna.uts46_remap(host, std3_rules=False, transitional=False)
        except (UnicodeError, ValueError) as exc:
            raise InvalidName(f"invalid IDN: {exc}") from None
    host = host.lower()
    wildcard = False
    if host.startswith("*."):
        host, wildcard = host[2:], True
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidName("empty")
    if _is_ip(host):
        raise InvalidName("IP literal")
    labels = [_label(label) for label in host.split(".")]
    name = ".".join(labels)
    if len(name) > MAX_NAME:
        raise InvalidName("name longer than 253 octets")
    if len(labels) < 2:
        raise InvalidName("single-label name")
    tld = labels[-1]
    if _NUMERIC_TLD(tld):
        raise InvalidName("numeric top-level label")
    if tld in _SPECIAL_TLDS:
        raise InvalidName(f"special-use name ({tld})")
    if is_public_suffix(name):
        raise InvalidName("public suffix")
    return name, wildcard, had_path


def _strip_port(host: str) -> str:
    if host.startswith("["):
        inner, sep, after = host[1:].partition("]")
        if sep and _is_ip(inner):
            raise InvalidName("IP literal")
        raise InvalidName("invalid character '['")
    colons = host.count(":")
    if colons == 1:
        name, _, port = host.partition(":")
        if port.isascii() and (port == "" or port.isdigit()):
            return name
    elif colons > 1 and _is_ip(host):
        raise InvalidName("IP literal")
    return host


def _label(label: str) -> str:
    if not label:
        raise InvalidName("empty label")
    if label.isascii():
        if not _ASCII_LABEL(label):
            bad = _BAD_CHAR(label)
            assert bad is not None
            raise InvalidName(f"invalid character {bad.group()!r}")
        if len(label) > MAX_LABEL:
            raise InvalidName("label longer than 63 octets")
        if label[0] == "-" or label[-1] == "-":
            raise InvalidName("label starts or ends with a hyphen")
        if label.startswith("xn--"):
            try:
                if idna.alabel(idna.ulabel(label)).decode("ascii") != label:
                    raise InvalidName("invalid A-label")
            except (UnicodeError, ValueError):
                raise InvalidName("invalid A-label") from None
        return label
    try:
        encoded = idna.alabel(label).decode("ascii")
    except (UnicodeError, ValueError) as exc:
        if "too long" in str(exc):
            raise InvalidName("label longer than 63 octets") from None
        raise InvalidName(f"invalid IDN label: {exc}") from None
    if len(encoded) > MAX_LABEL:
        raise InvalidName("label longer than 63 octets")
    return encoded
