"""Generic CSV with configured columns: a header row names the columns, one of which holds
the name (CERT Polska ``domains.csv`` is tab-separated with ``AdresDomeny``, for example).

Owns mapping configured column names to Entry fields. Must not import aiohttp, SQL or
resolver code.
"""

from __future__ import annotations

from feeds.entry import ParseResult
from feeds.formats._common import Collector, cell_date, csv_records, decode_lines, header_index, zone


def parse(
    data: bytes,
    *,
    column: str = "domain",
    delimiter: str = ",",
    encoding: str = "utf-8",
    listed_column: str | None = None, removed_column: str | None = None,  # dates
    legal_column: str | None = None, id_column: str | None = None,
    timezone: str = "UTC",
) -> ParseResult:
    """Entries from the ``column`` of every row after the header. Optional columns fill
    ``listed_at``/``removed_at`` (ISO 8601 or dd.mm.yyyy; naive values read in ``timezone``),
    ``legal_ref`` and ``source_id``. A configured column missing from the header is a
    FeedError: the whole file would otherwise be silently misread."""
    tz = zone(timezone)
    lines, _ = decode_lines(data, encoding)
    out = Collector(encoding)
    meta: dict[str, object] = {"lines": len(lines)}
    columns = {"name": column, "listed": listed_column, "removed": removed_column, "legal": legal_column, "id": id_column}

    def header(row: list[str]) -> dict[str, int]:
        return {key: header_index(row, name) for key, name in columns.items() if name is not None}

    for first, text, cells in csv_records(lines, delimiter, out, meta, header):
        dates = []
        for key in ("listed", "removed"):
            try:
                dates.append(cell_date(cells.get(key), tz))
            except ValueError:
                out.reject(first, text, f"invalid date in column {columns[key]!r}")
                break
        if len(dates) < 2:
            continue
        listed, removed = dates
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
