"""Shared machinery of the format parsers: decoding into numbered lines, the collector that
normalises, de-duplicates and records rejects, and date parsing in an agency's time zone.

Owns the rules every format shares (what a duplicate is, how undecodable bytes are reported).
Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import codecs
import csv
import gc
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone, tzinfo
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from feeds.entry import Entry, FeedError, ParseResult, Reject, clip
from feeds.normalize import InvalidName, normalize_detail

# What decoding with errors="surrogateescape" leaves where bytes did not decode.
_UNDECODABLE = re.compile("[\udc80-\udcff]").search


def decode_lines(data: bytes, encoding: str = "utf-8") -> tuple[list[str], frozenset[int]]:
    """The text of ``data`` split into lines (``lines[0]`` is line 1, terminators removed) and
    the numbers of lines holding bytes that do not decode.

    Only ``\\n`` ends a line (CRLF loses its CR), so numbers match what an editor shows; a
    UTF-8 byte-order mark is dropped. Undecodable bytes never raise: the caller rejects those
    lines with ``undecodable_reason``.
    """
    if data.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name == "utf-8":
        data = data[3:]
    try:
        text = data.decode(encoding)
        bad: frozenset[int] = frozenset()
    except UnicodeDecodeError:
        text = data.decode(encoding, "surrogateescape")
        bad = frozenset(i for i, line in enumerate(text.split("\n"), 1) if _UNDECODABLE(line))
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines, bad


def undecodable_reason(encoding: str) -> str:
    return f"undecodable bytes (not {codecs.lookup(encoding).name})"


def has_undecodable(text: str) -> bool:
    return _UNDECODABLE(text) is not None


def printable(text: str) -> str:
    """``text`` with surrogate-escaped bytes shown as ``\\xNN``, for reject texts."""
    if not has_undecodable(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a big list is built.

    A million new Entry objects trigger repeated full collections that walk every one of them
    again (a third of the load time measured on a 1M-line list); none of them can be part of a
    cycle, so nothing is lost by collecting after the parse instead.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Collector:
    """Accumulates the entries and rejects of one parse.

    Duplicates: entries are the same listing when name, wildcard and allow agree. The first is
    kept and later ones are rejected ("duplicate" when identical apart from the line,
    "duplicate with different data (kept line N)" otherwise) — except when the dates show the
    later one is the newer state: listed again after the kept one's removal (CZ keeps removed
    rows in its file) or removed after the kept one's listing. Then it replaces the kept entry
    and the earlier line is rejected as superseded; keeping the first would unblock a name the
    agency lists again, or keep blocking one it removed.
    """

    __slots__ = ("entries", "rejects", "with_path", "_seen", "undecodable")

    def __init__(self, encoding: str = "utf-8") -> None:
        self.undecodable = undecodable_reason(encoding)
        self.entries: list[Entry] = []
        self.rejects: list[Reject] = []
        self.with_path: list[int] = []
        self._seen: dict[tuple[str, bool, bool], tuple[int, str]] = {}

    def reject(self, line: int, text: str, reason: str) -> None:
        self.rejects.append(Reject(line, clip(printable(text)), reason))

    def add(self, raw: str, line: int, text: str | None = None, **fields: Any) -> Entry | None:
        """Normalise ``raw`` and keep it as an entry, or record why not. ``text`` is what a
        reject shows (default ``raw``); ``fields`` are the other Entry fields."""
        shown = raw if text is None else text
        if has_undecodable(raw):
            self.reject(line, shown, self.undecodable)
            return None
        try:
            name, wildcard, had_path = normalize_detail(raw)
        except InvalidName as exc:
            self.reject(line, shown, exc.reason)
            return None
        if had_path:
            self.with_path.append(line)
        return self.keep(Entry(name, line, wildcard, **fields), shown)

    def keep(self, entry: Entry, text: str) -> Entry | None:
        key = (entry.name, entry.wildcard, entry.allow)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = (len(self.entries), text)
            self.entries.append(entry)
            return entry
        index, kept_text = seen
        kept = self.entries[index]
        why = _supersedes(kept, entry)
        if why:
            self.entries[index] = entry
            self._seen[key] = (index, text)
            self.reject(kept.line, kept_text, f"superseded by line {entry.line} ({why})")
            return entry
        if _same_listing(kept, entry):
            self.reject(entry.line, text, "duplicate")
        else:
            self.reject(entry.line, text, f"duplicate with different data (kept line {kept.line})")
        return None

    def result(self, meta: dict[str, Any] | None = None) -> ParseResult:
        meta = {} if meta is None else meta
        meta["with_path"] = self.with_path
        self.rejects.sort(key=lambda r: r.line)
        return ParseResult(self.entries, self.rejects, meta)


def _same_listing(a: Entry, b: Entry) -> bool:
    return (a.action, a.redirect, a.listed_at, a.removed_at, a.legal_ref, a.source_id) == (
        b.action,
        b.redirect,
        b.listed_at,
        b.removed_at,
        b.legal_ref,
        b.source_id,
    )


def _supersedes(kept: Entry, new: Entry) -> str | None:
    """Why ``new`` replaces ``kept`` for the same name, when its dates show it is the later
    state: a listing again after the kept one's removal, or a removal after the kept one's
    listing (a push body may carry both). None keeps the first."""
    if kept.removed_at is not None and new.listed_at is not None and new.listed_at >= kept.removed_at:
        return "listed again"
    if (
        kept.removed_at is None
        and new.removed_at is not None
        and kept.listed_at is not None
        and new.removed_at > kept.listed_at
    ):
        return "removed later"
    return None


@lru_cache(maxsize=32)
def zone(name: str) -> tzinfo:
    """The time zone ``name`` ("UTC", "Europe/Warsaw", ...); FeedError when the system has no
    tz database (slim containers need the ``tzdata`` package)."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise FeedError(f"time zone {name!r} is not available ({exc}); install tzdata") from None


_DMY = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})", re.ASCII).fullmatch


def parse_date(text: str, tz: tzinfo) -> datetime:
    """An aware datetime from ISO 8601 (``2024-05-06T08:00:00``, with or without offset or
    ``Z``) or ``dd.mm.yyyy``; naive values are read in ``tz`` (a bare date is its midnight).
    ValueError when it is neither."""
    text = text.strip()
    m = _DMY(text)
    if m:
        day, month, year = (int(g) for g in m.groups())
        value = datetime(year, month, day)
    else:
        if not text.isascii():
            raise ValueError(text)
        value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value


def csv_rows(
    lines: list[str], delimiter: str
) -> Iterator[tuple[int, int, list[str] | None, str | None]]:
    """``(first line, last line, fields, error)`` per CSV record of ``lines``.

    Fed line by line, so only ``\\n`` ends a record and line numbers match ``decode_lines``;
    stray CRs inside a line (seen in the CZ file) are dropped. A malformed record yields
    ``fields=None`` and the csv module's message instead of raising.
    """
    reader = csv.reader((line.replace("\r", "") for line in lines), delimiter=delimiter)
    previous = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if reader.line_num == previous:
                return  # nothing consumed: the error is at the end of the input
            yield previous + 1, reader.line_num, None, f"malformed CSV ({exc})"
            previous = reader.line_num
            continue
        yield previous + 1, reader.line_num, row, None
        previous = reader.line_num


def header_index(header: list[str], column: str) -> int:
    """Position of ``column`` in a CSV header (exact, then case-insensitive); FeedError
    naming the header when it is absent, so a misconfigured column fails loudly."""
    cells = [cell.strip() for cell in header]
    if column in cells:
        return cells.index(column)
    folded = [cell.casefold() for cell in cells]
    if column.casefold() in folded:
        return folded.index(column.casefold())
    raise FeedError(f"column {column!r} is not in the header {cells!r}")



def cell_date(raw: str | None, tz: tzinfo) -> datetime | None:
    """The date in one CSV cell or JSON value: None when blank, ValueError when not a date."""
    if raw is None or not raw.strip():
        return None
    return parse_date(raw, tz)


def csv_records(
    lines: list[str], delimiter: str, out: Collector, meta: dict[str, object], header: Callable[[list[str]], dict[str, int]]
) -> Iterator[tuple[int, str, dict[str, str]]]:
    """``(first line, text, cells by field)`` per data record of a CSV whose first non-blank
    record is its header; ``header(row)`` maps each field to its column (and raises FeedError
    for a header it cannot read) and the row goes to ``meta["header"]``. Blank records are
    skipped; malformed, undecodable and short ones are rejected into ``out``."""
    index: dict[str, int] | None = None
    for first, last, row, error in csv_rows(lines, delimiter):
        text = "\n".join(lines[first - 1 : last])
        if row is None:
            out.reject(first, text, error or "malformed CSV")
        elif not any(cell.strip() for cell in row):
            continue
        elif index is None:
            index = header(row)
            meta["header"] = row
        elif has_undecodable(text):
            out.reject(first, text, out.undecodable)
        elif len(row) <= max(index.values()):
            out.reject(first, text, f"row has {len(row)} fields, fewer than the header")
        else:
            yield first, text, {key: row[position] for key, position in index.items()}
