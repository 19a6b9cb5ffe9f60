"""Generic CSV with configured columns: a header row names the columns, one of which holds
the name (CERT Polska ``domains.csv`` is tab-separated with ``AdresDomeny``, for example).

Owns mapping configured column names to Entry fields. Must not import aiohttp, SQL or
resolver code.
"""

from __future__ import annotations

from feeds.entry import ParseResult
from feeds.formats._common import (
    Collector,
    csv_rows,
    decode_lines,
    has_undecodable,
    header_index,
    parse_date,
    undecodable_reason,
    zone,
)


def parse(
    data: bytes,
    *,
    column: str = "domain",
    delimiter: str = ",",
    encoding: str = "utf-8",
    listed_column: str | None = None,
    removed_column: str | None = None,
    legal_column: str | None = None,
    id_column: str | None = None,
    timezone: str = "UTC",
) -> ParseResult:
    """Entries from the ``column`` of every row after the header. Optional columns fill
    ``listed_at``/``removed_at`` (ISO 8601 or dd.mm.yyyy; naive values read in ``timezone``),
    ``legal_ref`` and ``source_id``. A configured column missing from the header is a
    FeedError: the whole file would otherwise be silently misread."""
    tz = zone(timezone)
    lines, _ = decode_lines(data, encoding)
    out = Collector(encoding)
    bad_bytes = undecodable_reason(encoding)
    meta: dict[str, object] = {"lines": len(lines)}
    rows = csv_rows(lines, delimiter)
    index: dict[str, int] | None = None
    for first, last, row, error in rows:
        text = "\n".join(lines[first - 1 : last])
        if row is None:
            out.reject(first, text, error or "malformed CSV")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if index is None:
            meta["header"] = row
            index = {"name": header_index(row, column)}
            for key, name in (
                ("listed", listed_column),
                ("removed", removed_column),
                ("legal", legal_column),
                ("id", id_column),
            ):
                if name is not None:
                    index[key] = header_index(row, name)
            continue
        if has_undecodable(text):
            out.reject(first, text, bad_bytes)
            continue
        if len(row) <= max(index.values()):
            out.reject(first, text, f"row has {len(row)} fields, fewer than the header")
            continue
        fields: dict[str, object] = {}
        for key, attr, label in (
            ("listed", "listed_at", listed_column),
            ("removed", "removed_at", removed_column),
        ):
            if key in index and row[index[key]].strip():
                try:
                    fields[attr] = parse_date(row[index[key]], tz)
                except ValueError:
                    out.reject(first, text, f"invalid date in column {label!r}")
                    break
        else:
            if "legal" in index and row[index["legal"]].strip():
                fields["legal_ref"] = row[index["legal"]].strip()
            if "id" in index and row[index["id"]].strip():
                fields["source_id"] = row[index["id"]].strip()
            out.add(row[index["name"]], first, text=text, **fields)
    return out.result(meta)
