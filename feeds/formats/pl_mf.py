"""Poland, Ministry of Finance register (``Rejestr`` / ``PozycjaRejestru``), both the full pull
(``GET /api/Register``) and the push body MF POSTs to ISPs, plus the ``ModificationDate`` probe.

Owns reading the MF XML: elements are matched by local name in whatever namespace the document
uses (consumers do the same; the namespace is recorded in ``meta``). ``AdresDomeny`` is the
name, ``DataWpisu`` the listing time, ``DataWykreslenia`` (push only) the removal, ``Lp`` the
source id. MF times carry no offset and are Warsaw local time (FEEDS.md §1), so naive values
are read in Europe/Warsaw. A DTD is refused outright: the register never has one, and refusing
it rules out entity-expansion and external-entity attacks. Must not import aiohttp, SQL or
resolver code.
"""

from __future__ import annotations

from datetime import datetime
from xml.parsers import expat

from feeds.entry import FeedError, ParseResult
from feeds.formats._common import Collector, parse_date, zone

NAMESPACE = "http://www.hazard.mf.gov.pl/2017/03/21/"
TIMEZONE = "Europe/Warsaw"
_FIELDS = ("AdresDomeny", "DataWpisu", "DataWykreslenia")


class _Reader:
    """expat callbacks collecting one dict per PozycjaRejestru."""

    def __init__(self, parser: expat.XMLParserType) -> None:
        self.parser = parser
        self.root: str | None = None
        self.namespace: str | None = None
        self.items: list[dict[str, object]] = []
        self.ignored: set[str] = set()
        self.item: dict[str, object] | None = None
        self.field: str | None = None
        self.text: list[str] = []
        self.root_text: list[str] = []
        self.depth = 0

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        namespace, _, local = tag.rpartition("}")
        self.depth += 1
        if self.root is None:
            self.root, self.namespace = local, namespace or None
        if local == "PozycjaRejestru":
            if self.item is not None:
                raise FeedError(f"nested PozycjaRejestru at line {self.parser.CurrentLineNumber}")
            self.item = {"line": self.parser.CurrentLineNumber, "Lp": attrs.get("Lp")}
        elif self.item is not None:
            if local in _FIELDS and self.field is None:
                self.field, self.text = local, []
                if local in self.item:
                    self.item["repeated"] = local
                self.item[local + "@line"] = self.parser.CurrentLineNumber
            elif self.field is None:
                self.ignored.add(local)

    def end(self, tag: str) -> None:
        local = tag.rpartition("}")[2]
        self.depth -= 1
        if self.field is not None and local == self.field and self.item is not None:
            self.item[self.field] = "".join(self.text)
            self.field = None
        elif local == "PozycjaRejestru" and self.item is not None:
            self.items.append(self.item)
            self.item = None

    def data(self, text: str) -> None:
        if self.field is not None:
            self.text.append(text)
        elif self.depth == 1:
            self.root_text.append(text)


def _read(data: bytes) -> _Reader:
    parser = expat.ParserCreate(namespace_separator="}")
    reader = _Reader(parser)
    parser.StartElementHandler = reader.start
    parser.EndElementHandler = reader.end
    parser.CharacterDataHandler = reader.data
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise FeedError(
            f"invalid XML at line {exc.lineno}, column {exc.offset}: {expat.ErrorString(exc.code)}"
        ) from None
    except RecursionError:
        raise FeedError("invalid XML: nested too deeply") from None
    return reader


def _refuse_dtd(*_: object) -> None:
    raise FeedError("XML with a DTD or entity declarations is refused")


def parse(data: bytes, *, timezone: str = TIMEZONE) -> ParseResult:
    """Entries of a register pull or a push body. An item with ``DataWykreslenia`` is a
    removal: its entry has ``removed_at`` set. ``meta``: ``namespace``, ``removals`` (count),
    ``ignored_elements`` (unknown children of PozycjaRejestru, e.g. a future DataZmiany)."""
    tz = zone(timezone)
    reader = _read(data)
    if reader.root != "Rejestr" and not reader.items:
        raise FeedError(f"not an MF register: root element is <{reader.root}>")
    out = Collector()
    removals = 0
    for item in reader.items:
        line = int(item["line"])  # type: ignore[arg-type]
        raw = item.get("AdresDomeny")
        lp = item.get("Lp")
        if not isinstance(raw, str):
            out.reject(line, f"Lp={lp}", "missing AdresDomeny")
            continue
        name_line = int(item["AdresDomeny@line"])  # type: ignore[arg-type]
        if "repeated" in item:
            out.reject(name_line, raw, f"more than one {item['repeated']}")
            continue
        fields: dict[str, object] = {"source_id": lp}
        try:
            for tag, attr in (("DataWpisu", "listed_at"), ("DataWykreslenia", "removed_at")):
                value = item.get(tag)
                if isinstance(value, str) and value.strip():
                    fields[attr] = parse_date(value, tz)
        except ValueError:
            out.reject(name_line, raw, f"invalid {tag}")
            continue
        if out.add(raw, name_line, **fields) is not None and "removed_at" in fields:
            removals += 1
    meta = {
        "namespace": reader.namespace,
        "removals": removals,
        "ignored_elements": sorted(reader.ignored),
    }
    return out.result(meta)


def parse_modification_date(data: bytes, *, timezone: str = TIMEZONE) -> datetime:
    """The time in a ``/api/Register/ModificationDate`` answer (``<DataModyfikacji>``), which
    pollers compare before fetching the 8 MB register."""
    reader = _read(data)
    if reader.root != "DataModyfikacji":
        raise FeedError(f"not a ModificationDate answer: root element is <{reader.root}>")
    text = "".join(reader.root_text).strip()
    try:
        return parse_date(text, zone(timezone))
    except ValueError:
        raise FeedError(f"invalid DataModyfikacji {text[:40]!r}") from None
