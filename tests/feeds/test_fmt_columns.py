"""Generic CSV and JSON with configured columns/fields (CERT Polska shapes)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feeds.entry import FeedError, Reject
from feeds.formats import csv_columns, json_fields

SAMPLES = Path(__file__).parent / "samples"
WARSAW = ZoneInfo("Europe/Warsaw")


def test_json_certpl_sample() -> None:
    result = json_fields.parse(
        (SAMPLES / "certpl-hole.json").read_bytes(),
        field="DomainAddress",
        listed_field="InsertDate",
        removed_field="DeleteDate",
        id_field="RegisterPositionId",
        timezone="Europe/Warsaw",
    )
    assert [(e.line, e.name, e.source_id) for e in result.entries] == [
        (2, "fake-bank-login.example", "1"),
        (3, "parcel-pay.test", "2"),
        (4, "olx.pl-oferta.example", "3"),
    ]
    parcel = result.entries[1]
    assert parcel.listed_at == datetime(2020, 3, 2, 8, 15, tzinfo=WARSAW)
    assert parcel.removed_at == datetime(2020, 4, 2, 2, 22, 39, tzinfo=WARSAW)
    assert result.entries[0].removed_at is None  # DeleteDate null: still listed


def test_json_items_key_strings_and_bad_elements() -> None:
    data = b'{"version": 3, "list": [\n"casino.example",\n{"domain": "bet.example", "since": "yesterday"},\n42,\n{"name": "x"},\n"CASINO.example"\n]}'
    result = json_fields.parse(data, items="list", listed_field="since")
    assert [(e.line, e.name) for e in result.entries] == [(2, "casino.example")]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (3, "invalid date in field 'since'"),
        (4, "not a string or an object"),
        (5, "no string field 'domain'"),
        (6, "duplicate"),
    ]


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        (b'[{"domain": "a.example"', {}, "invalid JSON at line 1"),
        (b'{"list": []}', {}, "configure the key"),
        (b'{"list": 3}', {"items": "list"}, "does not hold a list"),
        (b'"a.example"', {}, "neither a list nor an object"),
        (b"[" * 100_000, {}, "JSON"),
    ],
)
def test_json_feed_errors(data: bytes, options: dict[str, str], message: str) -> None:
    with pytest.raises(FeedError, match=message):
        json_fields.parse(data, **options)


def test_csv_configured_columns_tab_separated() -> None:
    data = (
        "AdresDomeny\tDataWpisu\tDataWykreslenia\n"
        "casino.example\t2020-03-01T12:00:00\t\n"
        "bet.example\t2020-03-02\t2021-01-01T00:00:00Z\n"
        "203.0.113.5\t2020-03-02\t\n"
        "slots.example\tsoon\t\n"
        "short\n"
    ).encode()
    result = csv_columns.parse(
        data, column="AdresDomeny", delimiter="\t", listed_column="DataWpisu", removed_column="DataWykreslenia"
    )
    assert [(e.line, e.name) for e in result.entries] == [(2, "casino.example"), (3, "bet.example")]
    assert result.entries[0].listed_at == datetime(2020, 3, 1, 12, tzinfo=timezone.utc)
    assert result.entries[1].removed_at == datetime(2021, 1, 1, tzinfo=timezone.utc)
    assert [(r.line, r.reason) for r in result.rejects] == [
        (4, "IP literal"),
        (5, "invalid date in column 'DataWpisu'"),
        (6, "row has 1 fields, fewer than the header"),
    ]


def test_csv_quoted_field_spanning_lines_keeps_line_numbers() -> None:
    data = b'domain,note\n"casino.example","two\nlines"\nbet.example,x\n'
    result = csv_columns.parse(data)
    assert [(e.line, e.name) for e in result.entries] == [(2, "casino.example"), (4, "bet.example")]


def test_csv_unknown_column_is_a_feed_error() -> None:
    with pytest.raises(FeedError, match="column 'domain' is not in the header"):
        csv_columns.parse(b"host,date\ncasino.example,2020-01-01\n")


def test_csv_undecodable_row() -> None:
    result = csv_columns.parse(b"Domain\ncasino.example\nb\xffd.example\n")
    assert [e.name for e in result.entries] == ["casino.example"]
    assert result.rejects == [Reject(3, "b\\xffd.example", "undecodable bytes (not utf-8)")]
