"""Plain list format: one name per line, ``#`` comments, blank lines ignored.

Owns the fastest parser of the set: it is what the resolver loads at start-up, so the common
line (an already clean ASCII name) costs one regex match, one set lookup and one Entry. Lines
may also hold URLs, ``*.name`` wildcards and Unicode names; those take the full normaliser.
Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

from feeds.entry import Entry, ParseResult
from feeds.formats._common import Collector, decode_lines
from feeds.normalize import InvalidName, fast_name, normalize_detail


def parse(data: bytes) -> ParseResult:
    """Entries and rejects of a plain list; ``meta["lines"]`` is the number of lines read."""
    lines, bad = decode_lines(data)
    out = Collector()
    entries = out.entries
    seen = out._seen  # the fast path shares the collector's duplicate index
    reject = out.reject
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] == "#":
            continue
        if "#" in text:
            # '#' never occurs in a name; a URL fragment after it is dropped with it.
            text = text[: text.index("#")].rstrip()
        if bad and number in bad:
            reject(number, line, out._undecodable)
            continue
        low = text.lower()
        if fast_name(low):
            key = (low, False, False)
            if key in seen:
                out.keep(Entry(low, number), line)
            else:
                seen[key] = (len(entries), line)
                entries.append(Entry(low, number))
            continue
        try:
            name, wildcard, had_path = normalize_detail(text)
        except InvalidName as exc:
            reject(number, line, exc.reason)
            continue
        if had_path:
            out.with_path.append(number)
        out.keep(Entry(name, number, wildcard), line)
    return out.result({"lines": len(lines)})
