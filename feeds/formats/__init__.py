"""The feed formats: one module per format, each a pure ``parse(data: bytes, **options) ->
ParseResult``, and ``FORMATS``, the registry the sources, the API and ``feeds validate`` use.

Owns only the name → parser mapping. Formats must not import aiohttp, SQL or resolver code:
they take bytes and return entries, rejects and meta, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from feeds.entry import ParseResult
from feeds.formats import (
    adblock,
    ch_esbk,
    ch_gespa,
    csv_columns,
    cz_mf,
    hosts,
    it_adm,
    json_fields,
    pl_mf,
    plain,
    rpz,
)

FORMATS: dict[str, Callable[..., ParseResult]] = {
    "plain": plain.parse,
    "hosts": hosts.parse,
    "adblock": adblock.parse,
    "rpz": rpz.parse,
    "csv": csv_columns.parse,
    "json": json_fields.parse,
    "pl-mf": pl_mf.parse,
    "it-adm": it_adm.parse,
    "ch-gespa": ch_gespa.parse,
    "ch-esbk": ch_esbk.parse,
    "cz-mf": cz_mf.parse,
}

__all__ = ["FORMATS"]
