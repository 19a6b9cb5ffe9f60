"""Czech Republic, Ministry of Finance "Zveřejňované údaje ze Seznamu nepovolených
internetových her" CSV: Windows-1250, ``;``-separated, CRLF, one header row, eight columns.

Owns reading the MF columns by their header names (not positions, so a reordered file still
reads right and a renamed one fails loudly). Rows of type "Platební účet" (payment account) and
"Aplikace" (app) are not names and are rejected with that reason. Listing and removal dates
(``dd.mm.yyyy``) become midnight Europe/Prague; removed rows stay in the MF file and become
entries with ``removed_at`` set. The legal ground ("§ 84a odst. 2 písm. a) ZHH", possibly
several) becomes ``legal_ref``. Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import codecs
import unicodedata

from feeds.entry import FeedError, ParseResult
from feeds.formats._common import Collector, cell_date, csv_records, decode_lines, zone

ENCODING = "cp1250"
TIMEZONE = "Europe/Prague"

# Header cells folded by _fold() -> our field. The real 7th header ends in a space.
COLUMNS = {
    "objekt blokace": "kind",
    "adresa internetove stranky": "address",
    "duvody zapisu na seznam": "legal",
    "datum zapisu a zverejneni na seznamu": "listed",
    "datum vymazu a zverejneni na seznamu": "removed",
}
REQUIRED = ("kind", "address", "listed", "removed")
KINDS = {
    "internetova stranka": None,
    "platebni ucet": "not a domain (payment account)",
    "aplikace": "not a domain (app)",
}


def _fold(text: str) -> str:
    """Lower case, no diacritics, single spaces: header and row-type cells compare on this."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def parse(data: bytes) -> ParseResult:
    """Entries of the MF CSV; ``meta["header"]`` is the header row as read. A file with a
    UTF-8 byte-order mark is read as UTF-8, in case MF ever changes encoding."""
    encoding = "utf-8" if data.startswith(codecs.BOM_UTF8) else ENCODING
    tz = zone(TIMEZONE)
    lines, _ = decode_lines(data, encoding)
    out = Collector(encoding)
    meta: dict[str, object] = {"lines": len(lines), "encoding": encoding}
    for first, text, cells in csv_records(lines, ";", out, meta, _header):
        kind = cells["kind"].strip()
        folded = _fold(kind)
        if folded not in KINDS:
            out.reject(first, text, f"unknown row type {kind!r}")
            continue
        if KINDS[folded] is not None:
            out.reject(first, text, KINDS[folded])
            continue
        try:
            listed = cell_date(cells["listed"], tz)
        except ValueError:
            out.reject(first, text, f"invalid listing date {cells['listed'].strip()!r}")
            continue
        try:
            removed = cell_date(cells["removed"], tz)
        except ValueError:
            out.reject(first, text, f"invalid removal date {cells['removed'].strip()!r}")
            continue
        # Several grounds come quoted in one cell; only the spacing is tidied.
        legal = " ".join(cells.get("legal", "").split())
        out.add(
            cells["address"],
            first,
            text=text,
            listed_at=listed,
            removed_at=removed,
            legal_ref=legal or None,
        )
    if "header" not in meta:
        raise FeedError("no header row: not the MF CSV")
    return out.result(meta)


def _header(row: list[str]) -> dict[str, int]:
    index = {}
    for position, cell in enumerate(row):
        field = COLUMNS.get(_fold(cell))
        if field is not None and field not in index:
            index[field] = position
    missing = [field for field in REQUIRED if field not in index]
    if missing:
        raise FeedError(f"not the MF CSV: header {row!r} lacks the {', '.join(missing)} column(s)")
    return index
