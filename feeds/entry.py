"""The records every feed format produces: Entry, Reject, ParseResult, and FeedError.

Owns the contract between the format parsers (``feeds.formats``) and everything downstream
(guard, store, compiler). Plain data only: must not import aiohttp, SQL, resolver code or any
parser; the formats import this module, never the other way round.

Meaning of the fields, decided once here:

- ``name``: the listed name as an A-label, lower case, no trailing dot, no ``*.`` prefix.
  ``www.`` is kept as listed: the resolver blocks a listed name and all its subdomains, so
  stripping it would only widen or narrow what the agency asked for.
- ``wildcard``: the feed listed ``*.name``. The parser only records what was written; what a
  bare name and a wildcard cover (the match scope: exact, subtree or below) is the format's
  reading, decided once in ``feeds.formats.scope_of`` (RPZ ``*.name``: only the names below).
- ``action`` / ``redirect``: a per-entry override, set only by formats that carry one (RPZ).
  ``None`` means "the agency's configured action". ``redirect`` holds IP addresses in
  canonical text form for ``redirect`` by address (stored lists from before may hold a
  warning host instead: the agency's action applies to those).
- ``listed_at`` / ``removed_at``: timezone-aware. Feeds that publish local times without an
  offset are read in the agency's zone: PL MF in Europe/Warsaw, CZ MF dates as midnight
  Europe/Prague, CH ESBK dates as midnight Europe/Zurich; generic CSV/JSON use a configured zone
  (UTC by default). A set ``removed_at`` is still an entry: the compiler honours the dates.
- ``allow``: an exception (adblock ``@@``, RPZ ``rpz-passthru.``): never block this name.
- ``source_id``: the feed's own id for the entry where it has one (PL ``Lp``), for provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from config.errors import BetblockError

# Actions a feed may set per entry. Anything else in a feed is a reject, not a new action.
ACTIONS = frozenset({"nxdomain", "nodata", "passthru", "redirect", "drop", "tcp-only"})


class FeedError(BetblockError):
    """The whole feed is unusable (bad checksum or signature, unparseable XML/JSON, wrong
    header); the caller keeps its last good version. Line-level problems are Rejects instead."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted listing; see the module docstring for the meaning of each field."""

    name: str
    line: int
    wildcard: bool = False
    action: str | None = None
    redirect: tuple[str, ...] = ()
    listed_at: datetime | None = None
    removed_at: datetime | None = None
    legal_ref: str | None = None
    allow: bool = False
    source_id: str | None = None


# Bulk construction for the loaders of million-line lists. A frozen dataclass sets each of
# its ten fields through object.__setattr__, which is most of the cost of loading a plain
# list; writing the slots directly halves it. The result equals Entry(name, line, wildcard)
# (a test holds it to that, so a new field must be added here too).
_new = object.__new__
(_set_name, _set_line, _set_wildcard, _set_action, _set_redirect, _set_listed_at,
 _set_removed_at, _set_legal_ref, _set_allow, _set_source_id) = (
    getattr(Entry, f.name).__set__ for f in fields(Entry)
)  # fmt: skip


def plain_entry(name: str, line: int, wildcard: bool = False) -> Entry:
    """``Entry(name, line, wildcard)`` with every other field at its default, built faster."""
    entry = _new(Entry)
    _set_name(entry, name)
    _set_line(entry, line)
    _set_wildcard(entry, wildcard)
    _set_action(entry, None)
    _set_redirect(entry, ())
    _set_listed_at(entry, None)
    _set_removed_at(entry, None)
    _set_legal_ref(entry, None)
    _set_allow(entry, False)
    _set_source_id(entry, None)
    return entry


@dataclass(frozen=True, slots=True)
class Reject:
    """One line (or record) of a feed that produced no entry, and why.

    ``text`` is the offending input as read (truncated to ``MAX_REJECT_TEXT`` characters so a
    hostile feed cannot make the reject list huge); ``reason`` is a short human phrase.
    """

    line: int
    text: str
    reason: str


@dataclass(slots=True)
class ParseResult:
    """What one parse of one feed file produced.

    ``meta`` carries file-level facts for the store and the guard, e.g. ``version``,
    ``serial``, ``header``, ``checksum`` ("ok"/"absent"), ``signature`` ("valid"/"absent"),
    ``sha256`` of the input, and ``with_path``: line numbers whose URL had a path or query that
    was dropped to block the host (kept for audit, FEEDS.md §7 guardrails).
    """

    entries: list[Entry]
    rejects: list[Reject]
    meta: dict[str, Any] = field(default_factory=dict)


MAX_REJECT_TEXT = 256


def clip(text: str) -> str:
    """``text`` cut to ``MAX_REJECT_TEXT`` characters, marked when cut."""
    if len(text) <= MAX_REJECT_TEXT:
        return text
    return text[: MAX_REJECT_TEXT - 1] + "…"
