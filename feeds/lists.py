"""What one source lists now, held compactly, and the difference between two versions of it.

Owns ``SourceList``: the plain names (entries that carry nothing but a name, as wire-format
bytes, the form the compiler and the snapshot use) plus the few "rich" entries that carry a date,
a legal reference, a per-entry action, a wildcard or an exception, kept whole as ``Entry``.
A million-name plain list is a frozenset of bytes, not a million objects. Also owns
``ListDiff`` (added, removed and changed entries between two versions) and the compact
serialisation of a list for quarantined versions.

Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from feeds.entry import Entry
from config.names import to_text as from_wire
from config.names import to_wire

Key = tuple[str, bool, bool]  # (name, wildcard, allow): one listing of one source

__all__ = ["ListDiff", "SourceList", "diff", "from_wire", "to_wire"]


def is_plain(entry: Entry) -> bool:
    """True when the entry carries nothing but its name."""
    return not (
        entry.wildcard
        or entry.allow
        or entry.action
        or entry.redirect
        or entry.listed_at
        or entry.removed_at
        or entry.legal_ref
        or entry.source_id
    )


def _data(entry: Entry) -> Entry:
    """The entry without its line number: what a version compares."""
    return entry if entry.line == 0 else dataclasses.replace(entry, line=0)


_EMPTY_RICH: Mapping[Key, Entry] = MappingProxyType({})


@dataclass(frozen=True)
class SourceList:
    """The entries of one version of one source. Immutable: an update builds a new one."""

    plain: frozenset[bytes] = frozenset()
    rich: Mapping[Key, Entry] = field(default_factory=lambda: _EMPTY_RICH)

    def __len__(self) -> int:
        return len(self.plain) + len(self.rich)

    @classmethod
    def build(cls, plain: Iterable[bytes], entries: Iterable[Entry]) -> SourceList:
        """From wire names and parsed entries; entries with no data join the plain names."""
        entries = list(entries)
        if not entries:
            return cls(frozenset(plain), _EMPTY_RICH)
        plain_set = set(plain)
        rich: dict[Key, Entry] = {}
        for e in entries:
            if is_plain(e):
                plain_set.add(to_wire(e.name.encode("ascii")))
            else:
                rich.setdefault((e.name, e.wildcard, e.allow), _data(e))
        return cls(frozenset(plain_set), MappingProxyType(rich))

    def entries(self) -> Iterator[Entry]:
        """Every entry, plain ones rebuilt (line 0)."""
        for wire in self.plain:
            yield Entry(from_wire(wire), 0)
        yield from self.rich.values()

    def get(self, name: str) -> list[Entry]:
        """This source's entries for exactly ``name`` (A-label)."""
        found = [e for (n, _w, _a), e in self.rich.items() if n == name]
        if to_wire(name.encode("ascii")) in self.plain:
            found.insert(0, Entry(name, 0))
        return found

    def patched(self, add: Iterable[Entry], remove: Iterable[Key]) -> SourceList:
        """A new list with ``remove`` dropped and ``add`` added (replacing the same key)."""
        plain = set(self.plain)
        rich = dict(self.rich)
        for key in remove:
            name, wildcard, allow = key
            if not wildcard and not allow:
                plain.discard(to_wire(name.encode("ascii")))
            rich.pop(key, None)
        for e in add:
            key = (e.name, e.wildcard, e.allow)
            wire_key = not e.wildcard and not e.allow
            if wire_key:
                plain.discard(to_wire(e.name.encode("ascii")))
            rich.pop(key, None)
            if is_plain(e):
                plain.add(to_wire(e.name.encode("ascii")))
            else:
                rich[key] = _data(e)
        return SourceList(frozenset(plain), MappingProxyType(rich))

    def has(self, key: Key) -> bool:
        name, wildcard, allow = key
        if key in self.rich:
            return True
        return not wildcard and not allow and to_wire(name.encode("ascii")) in self.plain

    # -- serialisation (quarantined versions wait in the store in this form) --------------

    def dumps(self) -> bytes:
        rich = [_entry_json(e) for e in self.rich.values()]
        body = json.dumps({"plain": [from_wire(w) for w in self.plain], "rich": rich}, separators=(",", ":"))
        return zlib.compress(body.encode(), 6)

    @classmethod
    def loads(cls, blob: bytes) -> SourceList:
        body = json.loads(zlib.decompress(blob))
        plain = frozenset(to_wire(n.encode("ascii")) for n in body["plain"])
        rich = {}
        for item in body["rich"]:
            e = _entry_from_json(item)
            rich[(e.name, e.wildcard, e.allow)] = e
        return cls(plain, MappingProxyType(rich))


def _entry_json(e: Entry) -> dict[str, object]:
    out: dict[str, object] = {"name": e.name}
    if e.wildcard:
        out["wildcard"] = True
    if e.allow:
        out["allow"] = True
    if e.action:
        out["action"] = e.action
    if e.redirect:
        out["redirect"] = list(e.redirect)
    if e.listed_at:
        out["listed_at"] = e.listed_at.isoformat()
    if e.removed_at:
        out["removed_at"] = e.removed_at.isoformat()
    if e.legal_ref:
        out["legal_ref"] = e.legal_ref
    if e.source_id:
        out["source_id"] = e.source_id
    return out


def _entry_from_json(item: Mapping[str, object]) -> Entry:
    def when(key: str) -> datetime | None:
        value = item.get(key)
        return datetime.fromisoformat(str(value)) if value else None

    redirect = item.get("redirect") or ()
    return Entry(
        name=str(item["name"]),
        line=0,
        wildcard=bool(item.get("wildcard")),
        action=str(item["action"]) if item.get("action") else None,
        redirect=tuple(str(r) for r in redirect),  # type: ignore[union-attr]
        listed_at=when("listed_at"),
        removed_at=when("removed_at"),
        legal_ref=str(item["legal_ref"]) if item.get("legal_ref") else None,
        allow=bool(item.get("allow")),
        source_id=str(item["source_id"]) if item.get("source_id") else None,
    )


@dataclass(frozen=True)
class ListDiff:
    """From one version of a source to the next. Plain names are wire bytes, rich entries whole;
    a listing whose data changed (a removal date appeared, a new legal reference) is both
    removed and added, and counted once in ``changed``."""

    added_plain: frozenset[bytes]
    removed_plain: frozenset[bytes]
    added_rich: list[Entry]
    removed_rich: list[Entry]
    changed: int
    before: int
    after: int

    @property
    def n_added(self) -> int:
        return len(self.added_plain) + len(self.added_rich) - self.changed

    @property
    def n_removed(self) -> int:
        return len(self.removed_plain) + len(self.removed_rich) - self.changed

    @property
    def empty(self) -> bool:
        return not (self.added_plain or self.removed_plain or self.added_rich or self.removed_rich)

    def added(self) -> Iterator[Entry]:
        for w in self.added_plain:
            yield Entry(from_wire(w), 0)
        yield from self.added_rich

    def removed(self) -> Iterator[Entry]:
        for w in self.removed_plain:
            yield Entry(from_wire(w), 0)
        yield from self.removed_rich

    def summary(self, limit: int = 1000) -> dict[str, list[str]]:
        """Names added, removed and changed, each sorted and cut to ``limit``."""
        added = {e.name for e in self.added_rich} | {from_wire(w) for w in _first(self.added_plain, 4 * limit)}
        removed = {e.name for e in self.removed_rich} | {from_wire(w) for w in _first(self.removed_plain, 4 * limit)}
        changed = added & removed
        return {
            "added": sorted(added - changed)[:limit],
            "removed": sorted(removed - changed)[:limit],
            "changed": sorted(changed)[:limit],
        }


def _first(items: Iterable[bytes], n: int) -> list[bytes]:
    out = []
    for item in items:
        if len(out) >= n:
            break
        out.append(item)
    return out


def diff(old: SourceList, new: SourceList) -> ListDiff:
    """What ``new`` adds to and removes from ``old``."""
    # A first version adds everything: share the set rather than copy a million entries.
    added_plain = new.plain - old.plain if old.plain else new.plain
    removed_plain = old.plain - new.plain if new.plain else old.plain
    added_rich = [e for key, e in new.rich.items() if old.rich.get(key) != e]
    removed_rich = [e for key, e in old.rich.items() if new.rich.get(key) != e]
    # A listing that moved between plain and rich, or whose data changed, is one change.
    changed = len({_key(e) for e in added_rich} & {_key(e) for e in removed_rich})
    changed += sum(1 for e in added_rich if _plain_key(e) and to_wire(e.name.encode("ascii")) in removed_plain)
    changed += sum(1 for e in removed_rich if _plain_key(e) and to_wire(e.name.encode("ascii")) in added_plain)
    return ListDiff(added_plain, removed_plain, added_rich, removed_rich, changed, len(old), len(new))


def _key(e: Entry) -> Key:
    return (e.name, e.wildcard, e.allow)


def _plain_key(e: Entry) -> bool:
    return not e.wildcard and not e.allow
