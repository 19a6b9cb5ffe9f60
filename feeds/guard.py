"""Guardrails against overblocking: protected names, and the size and churn gate on updates.

Owns two decisions. Per entry: a name equal to, below or above a protected name is refused
(blocking ``google.com`` blocks ``drive.google.com``; blocking ``drive.usercontent.google.com``
is what Piracy Shield did), and so is a public suffix (the normaliser refuses those; the check
here is the last line for entries that reach us by other paths). Per update: a source whose new
list is empty, shorter than its agency's ``min_entries`` or changed by more than both its
``churn_floor`` (entries, so short lists can change) and its ``churn_limit`` (share) is
quarantined for an admin instead of applied (the Danish 2012 whitelist upload, a TLD-wide
seizure).

Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from config.settings import AgencySettings
from feeds.normalize import InvalidName, is_public_suffix, normalize


def _tail(name: str) -> str:
    """The last two labels of ``name`` (every protected name has at least two)."""
    last = name.rfind(".")
    return name[name.rfind(".", 0, last) + 1 :]


class Protected:
    """The operator's never-block names. ``refuses(name)`` answers in a dict lookup for the
    common name that shares no last-two-labels with any protected name."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: frozenset[str] = frozenset(names)
        by_tail: dict[str, list[str]] = {}
        for name in self.names:
            by_tail.setdefault(_tail(name), []).append(name)
        self._by_tail = {k: tuple(v) for k, v in by_tail.items()}
        self._by_tail_b = {k.encode(): tuple(n.encode() for n in v) for k, v in by_tail.items()}

    @classmethod
    def parse(cls, lines: Iterable[str]) -> tuple[Protected, list[tuple[int, str, str]]]:
        """Protected names from config lines (comments and blanks skipped); bad lines are
        returned as (line, text, reason)."""
        names: list[str] = []
        bad: list[tuple[int, str, str]] = []
        for number, raw in enumerate(lines, 1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                name, _wild = normalize(text)
            except InvalidName as exc:
                if exc.reason != "public suffix":
                    bad.append((number, raw, exc.reason))
                    continue
                # Protecting a public suffix (cloudfront.net) protects every name under it.
                name = text.lower().rstrip(".").removeprefix("*.")
            names.append(name)
        return cls(names), bad

    def __bool__(self) -> bool:
        return bool(self.names)

    def refuses(self, name: str) -> str | None:
        """The protected name that forbids listing ``name`` (A-label), or None."""
        candidates = self._by_tail.get(_tail(name))
        if candidates is None:
            return None
        for p in candidates:
            if name == p or name.endswith("." + p) or p.endswith("." + name):
                return p
        return None

    def refuses_bytes(self, name: bytes) -> bytes | None:
        """``refuses`` for an ASCII name as bytes (the plain reader's fast path)."""
        last = name.rfind(b".")
        candidates = self._by_tail_b.get(name[name.rfind(b".", 0, last) + 1 :])
        if candidates is None:
            return None
        for p in candidates:
            if name == p or name.endswith(b"." + p) or p.endswith(b"." + name):
                return p
        return None


def entry_refusal(name: str, protected: Protected) -> str | None:
    """Why an entry for ``name`` may not block, or None."""
    if is_public_suffix(name):
        return "public suffix"
    hit = protected.refuses(name) if protected else None
    if hit is not None:
        return f"protected name ({hit})"
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """How much an update changes a source's list."""

    before: int
    after: int
    added: int
    removed: int
    changed: int

    @property
    def touched(self) -> int:
        return self.added + self.removed + self.changed

    @property
    def churn(self) -> float:
        return self.touched / self.before if self.before else (1.0 if self.after else 0.0)


def quarantine_reason(agency: AgencySettings, change: Change) -> str | None:
    """Why the update must wait for an admin, or None when it may apply at once."""
    if change.before == 0:
        # Nothing to protect yet: an empty first list blocks nothing either way, but a first
        # list far shorter than the agency's lists ever are is a broken source.
        if 0 < change.after < agency.min_entries:
            return f"first list has {change.after} entries, below min_entries {agency.min_entries}"
        return None
    if change.after == 0:
        return f"update empties the list ({change.before} entries before)"
    if change.after < agency.min_entries:
        return f"update leaves {change.after} entries, below min_entries {agency.min_entries}"
    if change.touched <= agency.churn_floor:
        return None
    if change.churn > agency.churn_limit:
        # Counts first: on a short list the share alone reads as nonsense ("3433 %").
        share = f"{change.churn:.1%} of the list" if change.churn <= 1 else f"{change.churn:.0f}x the list's size"
        return (
            f"update changes {share} (touches {change.touched} entries: +{change.added} -{change.removed} "
            f"~{change.changed} of {change.before}), over the churn floor of {agency.churn_floor} entries "
            f"and over the churn limit {agency.churn_limit:.1%}"
        )
    return None
