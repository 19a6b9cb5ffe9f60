"""The feed formats: one module per format, each a pure ``parse(data: bytes, **options) ->
ParseResult``, and ``FORMATS``, the registry the sources, the API and ``feeds validate`` use.

Owns the name → parser mapping and what a listed name covers in each format (``scope_of``). Formats must not import aiohttp, SQL or resolver code:
they take bytes and return entries, rejects and meta, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from feeds.entry import ParseResult
from feeds.snapshot import Scope
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

# What a bare name and a ``*.name`` cover, per format, as the format's own tools read it: an
# RPZ ``name`` record is that name only and ``*.name`` only the names below it; a hosts file
# maps one name; adblock's ``||name^`` is the name and its subdomains, ``||*.name^`` only the
# subdomains. None: the format does not say, the agency's ``scope`` applies. In every other
# format ``*.name`` means the name and everything below it (what consumers of such lists do).
FORMAT_SCOPES: dict[str, tuple[Scope | None, Scope]] = {
    "rpz": ("exact", "below"),
    "hosts": ("exact", "below"),
    "adblock": ("subtree", "below"),
}


def scope_of(fmt: str, wildcard: bool, agency_scope: Scope) -> Scope:
    """The scope of an entry of format ``fmt`` for an agency whose configured scope is
    ``agency_scope``."""
    bare, wild = FORMAT_SCOPES.get(fmt, (None, "subtree"))
    if wildcard:
        return wild
    return agency_scope if bare is None else bare


__all__ = ["FORMATS", "FORMAT_SCOPES", "scope_of"]
