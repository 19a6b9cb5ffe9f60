"""Plain list format: one name per line, ``#`` comments, blank lines ignored.

Owns the fastest parser of the set: it is what the resolver loads at start-up, so the common
line (an already clean ASCII name) costs one regex match, a few set lookups and one Entry.
Lines may also hold URLs, ``*.name`` wildcards and Unicode names; those take the full
normaliser. Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

from feeds.entry import ParseResult, plain_entry
from feeds.formats._common import Collector, decode_lines, gc_paused, has_undecodable
from feeds.normalize import MAX_NAME, InvalidName, fast_match, needs_full_check, normalize_detail


def parse(data: bytes) -> ParseResult:
    """Entries and rejects of a plain list; ``meta["lines"]`` is the number of lines read."""
    with gc_paused():
        return _parse(data)


def _parse(data: bytes) -> ParseResult:
    lines, bad = decode_lines(data)
    out = Collector()
    entries = out.entries
    append = entries.append
    reject = out.reject
    # Keyed by name, or "*." + name for wildcards: a plain list carries nothing else, so
    # every repeat is an exact duplicate.
    seen: set[str] = set()
    add_seen = seen.add
    match, full_check = fast_match, needs_full_check
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] == "#":
            continue
        if "#" in text:
            # '#' never occurs in a name; a URL fragment after it is dropped with it.
            text = text[: text.index("#")].rstrip()
        if bad and has_undecodable(text):
            reject(number, line, out.undecodable)
            continue
        name = text.lower()
        # normalize._clean() inlined: this loop runs once per line of the biggest lists.
        if (
            match(name)
            and len(name) <= MAX_NAME
            and "xn--" not in name
            and not full_check(name)
        ):
            key = name
            wildcard = False
        else:
            try:
                name, wildcard, had_path = normalize_detail(text)
            except InvalidName as exc:
                reject(number, line, exc.reason)
                continue
            if had_path:
                out.with_path.append(number)
            key = "*." + name if wildcard else name
        if key in seen:
            reject(number, line, "duplicate")
            continue
        add_seen(key)
        append(plain_entry(name, number, wildcard))
    return out.result({"lines": len(lines)})
