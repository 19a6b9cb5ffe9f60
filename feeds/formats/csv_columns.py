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
    cell_date,
    has_undecodable,
    header_index,
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
        cells = {key: row[position] for key, position in index.items()}
        try:
            listed = cell_date(cells.get("listed"), tz)
        except ValueError:
            out.reject(first, text, f"invalid date in column {listed_column!r}")
            continue
        try:
            removed = cell_date(cells.get("removed"), tz)
        except ValueError:
            out.reject(first, text, f"invalid date in column {removed_column!r}")
            continue
        out.add(
            cells["name"],
            first,
            text=text,
            listed_at=listed,
            removed_at=removed,
            legal_ref=cells.get("legal", "").strip() or None,
            source_id=cells.get("id", "").strip() or None,
        )
    return out.result(meta)
