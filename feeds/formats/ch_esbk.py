"""Switzerland, ESBK (casino games): the legacy ``esbk_blacklist.txt`` payload (``#Version:``
1.0/1.1, ``#Serial:``) and the lines of the current PDF's text layer, ``<name> <dd.mm.yyyy>``.

Owns reading both shapes into entries, the date being the listing date (midnight
Europe/Zurich). The S/MIME envelope of the legacy file and the PDF text extraction belong to
the source, before this parser. Stray 0xFF bytes, which the real payload carries (FEEDS.md
§3), are removed before decoding and counted in ``meta["stripped_bytes"]``. Must not import
aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import re

from feeds.entry import ParseResult
from feeds.formats._common import Collector, parse_date, zone
from feeds.formats.ch_gespa import read_list

VERSIONS = frozenset({"1", "1.0", "1.1"})
TIMEZONE = "Europe/Zurich"
_DATED = re.compile(r"(\S+)\s+(\d{1,2}\.\d{1,2}\.\d{4})", re.ASCII).fullmatch


def parse(data: bytes) -> ParseResult:
    """Entries, with ``listed_at`` where a date follows the name. ``meta``: ``version`` and
    ``serial`` (None for PDF lines), ``stripped_bytes``. An unknown ``#Version`` is a
    FeedError."""
    tz = zone(TIMEZONE)

    def entry(out: Collector, number: int, text: str, line: str) -> None:
        dated = _DATED(text)
        if dated is None:
            out.add(text, number, text=line)
            return
        try:
            listed = parse_date(dated.group(2), tz)
        except ValueError:
            out.reject(number, line, "invalid date")
            return
        out.add(dated.group(1), number, text=line, listed_at=listed)

    result = read_list(data.replace(b"\xff", b""), VERSIONS, require_version=False, entry=entry)
    result.meta["stripped_bytes"] = data.count(b"\xff")
    return result
