"""Generic JSON with configured fields: an array of names or of objects, at the top level or
under one key of a top-level object (CERT Polska ``domains.json``: ``DomainAddress``,
``InsertDate``, ``DeleteDate``).

Owns mapping configured field names to Entry fields and giving each array element the line it
starts on (the json module keeps no positions, so the array is walked with ``raw_decode``).
Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import Any

from feeds.entry import FeedError, ParseResult
from feeds.formats._common import Collector, cell_date, has_undecodable, zone

_WS = re.compile(r"[ \t\n\r]*")
_decoder = json.JSONDecoder()


def parse(
    data: bytes,
    *,
    field: str = "domain",
    items: str | None = None,
    listed_field: str | None = None,
    removed_field: str | None = None,
    legal_field: str | None = None,
    id_field: str | None = None,
    timezone: str = "UTC",
) -> ParseResult:
    """Entries from each element of the list: a string is the name; an object holds it under
    ``field``. ``items`` names the key of a top-level object that holds the list. Dates are
    ISO 8601 or dd.mm.yyyy, naive ones read in ``timezone``; ``null`` means unset.
    Unparseable JSON, or a document of the wrong shape, is a FeedError."""
    tz = zone(timezone)
    if data.startswith(codecs.BOM_UTF8):
        data = data[3:]
    # Bytes that are not UTF-8 survive as surrogates and reject only the element holding them.
    text = data.decode("utf-8", "surrogateescape")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeedError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise FeedError("invalid JSON: nested too deeply") from None
    out = Collector()
    meta: dict[str, object] = {}
    for line, element in _elements(text, document, items):
        shown = json.dumps(element, ensure_ascii=False) if not isinstance(element, str) else element
        if isinstance(element, str):
            out.add(element, line, text=shown)
            continue
        if not isinstance(element, dict):
            out.reject(line, shown, "not a string or an object")
            continue
        raw = element.get(field)
        if not isinstance(raw, str):
            out.reject(line, shown, f"no string field {field!r}")
            continue
        fields: dict[str, Any] = {}
        try:
            for name, attr in ((listed_field, "listed_at"), (removed_field, "removed_at")):
                value = element.get(name) if name else None
                if value is not None and (not isinstance(value, str) or has_undecodable(value)):
                    raise ValueError(value)
                fields[attr] = cell_date(value, tz)
        except ValueError:
            out.reject(line, shown, f"invalid date in field {name!r}")
            continue
        for name, attr in ((legal_field, "legal_ref"), (id_field, "source_id")):
            value = element.get(name) if name else None
            # Ids are often numbers (RegisterPositionId); nested values are not ids.
            if value is not None and not isinstance(value, (dict, list)):
                fields[attr] = str(value)
        out.add(raw, line, text=shown, **fields)
    return out.result(meta)


def _elements(text: str, document: Any, items: str | None) -> Iterator[tuple[int, Any]]:
    """(line, element) for each element of the list in ``document``."""
    start = _WS.match(text).end()
    if isinstance(document, dict):
        if items is None:
            raise FeedError("JSON object at the top level: configure the key holding the list")
        if not isinstance(document.get(items), list):
            raise FeedError(f"JSON key {items!r} does not hold a list")
        start = _member_position(text, start, items)
    elif not isinstance(document, list):
        raise FeedError("JSON document is neither a list nor an object")
    elif items is not None:
        raise FeedError(f"JSON list at the top level, but items={items!r} was configured")
    # The document already parsed, so this walk cannot fail.
    line, counted = 1, 0
    for position, element in _array(text, start):
        line += text.count("\n", counted, position)
        counted = position
        yield line, element


def _array(text: str, pos: int) -> Iterator[tuple[int, Any]]:
    pos = _WS.match(text, pos + 1).end()  # past '['
    if text[pos] == "]":
        return
    while True:
        element, end = _decoder.raw_decode(text, pos)
        yield pos, element
        pos = _WS.match(text, end).end()
        if text[pos] == "]":
            return
        pos = _WS.match(text, pos + 1).end()  # past ','


def _member_position(text: str, pos: int, key: str) -> int:
    """Where the value of the last ``key`` member of the object at ``pos`` starts (json.loads
    keeps the last of repeated keys, and so does this)."""
    found = -1
    pos = _WS.match(text, pos + 1).end()  # past '{'
    while text[pos] != "}":
        name, end = _decoder.raw_decode(text, pos)
        pos = _WS.match(text, _WS.match(text, end).end() + 1).end()  # past ':'
        if name == key:
            found = pos
        _, end = _decoder.raw_decode(text, pos)
        pos = _WS.match(text, end).end()
        if text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
    return found
