"""Czech MF CSV (cp1250): row types, dates, legal grounds, duplicates, re-listing."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feeds.entry import FeedError
from feeds.formats import cz_mf

SAMPLES = Path(__file__).parent / "samples"
PRAGUE = ZoneInfo("Europe/Prague")
HEADER = (
    "Objekt blokace;Adresa internetové stránky;Název aplikace;"
    '"Identifikátor aplikace; umístění aplikace";Jedinečný identifikátor platebního účtu;'
    "Důvody zápisu na Seznam;Datum zápisu a zveřejnění na Seznamu ;Datum výmazu a zveřejnění na Seznamu\r\n"
)


def _csv(*rows: str) -> bytes:
    return (HEADER + "".join(row + "\r\n" for row in rows)).encode("cp1250")


def test_sample() -> None:
    result = cz_mf.parse((SAMPLES / "czech-mfcr.csv").read_bytes())
    assert [(e.line, e.name) for e in result.entries] == [
        (2, "casino-royal-bet.example"),
        (4, "spin-win-777.test"),
        (6, "1xmirror.example"),  # upper case
        (7, "viper-spins.example"),  # trailing space
        (8, "lobby.uptown-bets.example"),  # URL path dropped, noted
        (9, "wish-spins1.test"),
        (11, "bdm-bet17.example"),
        (13, "xn--mezinrodnonlinecasino-e0b4z.example"),  # Unicode IDN
    ]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (3, "not a domain (payment account)"),
        (5, "not a domain (payment account)"),
        (10, "not a domain (app)"),
        (12, "duplicate"),  # exact duplicate row
    ]
    first = result.entries[0]
    assert first.listed_at == datetime(2017, 7, 26, tzinfo=PRAGUE)
    assert first.removed_at == datetime(2023, 1, 4, tzinfo=PRAGUE)  # removed rows stay entries
    assert first.legal_ref == "§ 84a odst. 2 písm. a) ZHH"  # cp1250 decoded
    assert result.entries[1].removed_at is None
    assert result.entries[5].legal_ref == "§ 84a odst. 2 písm. a); § 84a odst. 2 písm. b)"
    assert result.meta["with_path"] == [8]
    assert result.meta["encoding"] == "cp1250"


def test_relisting_after_removal_supersedes_the_removed_row() -> None:
    data = _csv(
        "Internetová stránka;casino.example;;;;§ 84a;01.01.2018;01.01.2020",
        "Internetová stránka;casino.example;;;;§ 84a;01.06.2021;",
    )
    result = cz_mf.parse(data)
    assert [(e.line, e.listed_at, e.removed_at) for e in result.entries] == [
        (3, datetime(2021, 6, 1, tzinfo=PRAGUE), None)
    ]
    assert [(r.line, r.reason) for r in result.rejects] == [(2, "superseded by line 3 (listed again)")]


def test_bad_rows() -> None:
    data = _csv(
        "Internetová stránka;;;;;§ 84a;01.01.2018;",
        "Internetová stránka;a.example;;;;§ 84a;31.02.2018;",
        "Neznámý typ;b.example;;;;§ 84a;01.01.2018;",
        "Internetová stránka;c.example",
    ) + b"Internetov\xe1 str\xe1nka;d\x81.example;;;;x;01.01.2018;\r\n"  # 0x81: undefined in cp1250
    result = cz_mf.parse(data)
    assert result.entries == []
    assert [(r.line, r.reason) for r in result.rejects] == [
        (2, "empty"),
        (3, "invalid listing date '31.02.2018'"),
        (4, "unknown row type 'Neznámý typ'"),
        (5, "row has 2 fields, fewer than the header"),
        (6, "undecodable bytes (not cp1250)"),
    ]


def test_wrong_file_is_a_feed_error() -> None:
    with pytest.raises(FeedError, match="lacks the kind, address, listed, removed"):
        cz_mf.parse(b"domain;date\r\ncasino.example;01.01.2020\r\n")
    with pytest.raises(FeedError, match="no header row"):
        cz_mf.parse(b"")


def test_utf8_with_bom_is_read_as_utf8() -> None:
    data = b"\xef\xbb\xbf" + (HEADER + "Internetová stránka;casino.example;;;;§ 84a;01.01.2018;\r\n").encode()
    result = cz_mf.parse(data)
    assert [e.name for e in result.entries] == ["casino.example"]
    assert result.meta["encoding"] == "utf-8"
