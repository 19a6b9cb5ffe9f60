"""Plain list format: one name per line, ``#`` comments, blank lines ignored.

Owns the one reading of a plain list (``scan``), used both by ``parse`` (entries, for the API,
``feeds validate`` and the store) and by ``feeds.compile.read_plain`` (wire names only, what
the resolver loads at start-up), so that both accept and refuse the same lines for the same
reasons (a UTF-8 byte-order mark, CRLF, undecodable bytes, URLs, ``*.name``, IDN). The common
line (an already clean ASCII name) costs one regex match and a few set lookups; the others
take the full normaliser. Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from feeds.entry import ParseResult, plain_entry
from feeds.formats._common import Collector, decode_lines, gc_paused, has_undecodable
from feeds.normalize import MAX_NAME, InvalidName, fast_match, needs_full_check, normalize_detail


def parse(data: bytes) -> ParseResult:
    """Entries and rejects of a plain list; ``meta["lines"]`` is the number of lines read."""
    with gc_paused():
        return _parse(data)


def scan(
    data: bytes, reject: Callable[[int, str, str], None], with_path: list[int] | None = None, meta: dict | None = None
) -> Iterator[tuple[int, str, bool, str]]:
    """``(line number, name, wildcard, line text)`` per usable line of a plain list;
    ``reject(line, text, reason)`` for the others, the numbers of lines whose URL path was
    dropped appended to ``with_path``, ``meta["lines"]`` set to the number of lines.
    Duplicates are the caller's business."""
    lines, bad = decode_lines(data)
    if meta is not None:
        meta["lines"] = len(lines)
    match, full_check = fast_match, needs_full_check
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text[0] == "#":
            continue
        if "#" in text:
            # '#' never occurs in a name; a URL fragment after it is dropped with it.
            text = text[: text.index("#")].rstrip()
        if bad and has_undecodable(text):
            reject(number, line, UNDECODABLE)
            continue
        name = text.lower()
        # normalize._clean() inlined: this loop runs once per line of the biggest lists.
        if match(name) and len(name) <= MAX_NAME and "xn--" not in name and not full_check(name):
            yield number, name, False, line
            continue
        try:
            name, wildcard, had_path = normalize_detail(text)
        except InvalidName as exc:
            reject(number, line, exc.reason)
            continue
        if had_path and with_path is not None:
            with_path.append(number)
        yield number, name, wildcard, line


UNDECODABLE = "undecodable bytes (not utf-8)"


def _parse(data: bytes) -> ParseResult:
    out = Collector()
    append = out.entries.append
    reject = out.reject
    # Keyed by name, or "*." + name for wildcards: a plain list carries nothing else, so
    # every repeat is an exact duplicate.
    seen: set[str] = set()
    add_seen = seen.add
    meta: dict[str, object] = {}
    for number, name, wildcard, line in scan(data, reject, out.with_path, meta):
        key = "*." + name if wildcard else name
        if key in seen:
            reject(number, line, "duplicate")
            continue
        add_seen(key)
        append(plain_entry(name, number, wildcard))
    return out.result(meta)
