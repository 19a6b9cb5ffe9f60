"""Italy, ADM ``elenco_siti_inibiti_giochi.txt`` and its SHA-256 control file.

Owns reading the ADM list: CRLF lines, padding, a ``NNNNNNN_YYYY.DD.MM`` header line (order
number and date, from 2025), bare names, ``http(s)://`` URLs with or without a path, and IP
literals, which are rejected (blocks are by name only). The control file is checked before
anything is parsed: a mismatch is a FeedError, as consumers abort the update (kit-censura).
Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date

from feeds.entry import FeedError, ParseResult
from feeds.formats._common import Collector, decode_lines

_HEADER = re.compile(r"(\d+)_(\d{4})\.(\d{2})\.(\d{2})", re.ASCII).fullmatch
_DIGEST = re.compile(rb"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")


def parse(data: bytes, *, control: bytes | None = None) -> ParseResult:
    """Entries of an ADM list. ``control`` is the content of the ``.sha-256`` file (a bare
    hex digest, or ``sha256sum`` output). ``meta``: ``sha256`` of ``data``, ``checksum``
    ("ok" or "absent"), and from the header line ``header``, ``order`` and ``date``."""
    digest = hashlib.sha256(data).hexdigest()
    meta: dict[str, object] = {"sha256": digest, "checksum": check_control(digest, control)}
    lines, _ = decode_lines(data)
    out = Collector()
    seen_content = False
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        header = _HEADER(text)
        if header:
            if seen_content or "header" in meta:
                out.reject(number, line, "header line not at the top")
            else:
                meta.update(_header(text, header.groups()))
            continue
        seen_content = True
        out.add(text, number, text=line)
    return out.result(meta)


def check_control(digest: str, control: bytes | None) -> str:
    """"ok" when ``control`` names ``digest``, "absent" when there is no control file;
    FeedError when it names another digest or none."""
    if control is None:
        return "absent"
    found = _DIGEST.findall(control)
    if len(found) != 1:
        raise FeedError("control file does not hold exactly one SHA-256 digest")
    expected = found[0].decode("ascii").lower()
    if expected != digest:
        raise FeedError(f"SHA-256 mismatch: control file says {expected}, the list hashes to {digest}")
    return "ok"


def _header(text: str, groups: tuple[str, ...]) -> dict[str, object]:
    order, year, day, month = groups
    try:
        # The real headers put the day before the month: 0000350_2025.29.08 (FEEDS.md §2).
        when: date | None = date(int(year), int(month), int(day))
    except ValueError:
        when = None
    return {"header": text, "order": order, "date": when}
