"""Poland MF register XML: pull, push, ModificationDate, and hostile XML."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from feeds.entry import FeedError
from feeds.formats import pl_mf

SAMPLES = Path(__file__).parent / "samples"
WARSAW = ZoneInfo("Europe/Warsaw")


def test_register_sample() -> None:
    result = pl_mf.parse((SAMPLES / "poland-register.xml").read_bytes())
    assert [(e.line, e.name, e.wildcard, e.source_id) for e in result.entries] == [
        (10, "casino-royal-bet.example", False, "1"),
        (14, "spin-win-777.test", False, "2"),
        (18, "bet-mirror-41.example", False, "5"),
        (22, "bet-mirror-42.example", False, "6"),
        (26, "lucky-slots.example.pl", False, "9"),
        (30, "promo.kasyno-affiliate.test", False, "10"),
        (34, "www.casino-royal-bet.example", False, "11"),  # www. and case: kept as a name
        (38, "xn--zakady-online-yhc.example", False, "12"),  # Unicode IDN -> A-label
        (42, "xn--zakady-online-yhc.test", False, "13"),
        (50, "kasyno-bonus.example", False, "15"),  # trailing dot
        (54, "wildcard-bets.example", True, "16"),
    ]
    # Lp 14 repeats Lp 2 with padding and a later date: reported, not silently dropped.
    assert [(r.line, r.text, r.reason) for r in result.rejects] == [
        (46, " spin-win-777.test ", "duplicate with different data (kept line 14)")
    ]
    # Leap-day entry in winter time, read as Warsaw local time.
    assert result.entries[4].listed_at == datetime(2024, 2, 29, 23, 59, 59, tzinfo=WARSAW)
    assert result.entries[4].listed_at.utcoffset().total_seconds() == 3600
    assert result.meta["namespace"] == pl_mf.NAMESPACE
    assert result.meta["removals"] == 0


def test_push_sample_marks_removals() -> None:
    result = pl_mf.parse((SAMPLES / "poland-push.xml").read_bytes())
    added, removed = result.entries
    assert (added.name, added.removed_at) == ("new-bookie-2025.example", None)
    assert removed.name == "legalised-operator.example"
    assert removed.removed_at == datetime(2025, 3, 10, 14, 2, 11, tzinfo=WARSAW)
    assert removed.source_id == "3"
    assert result.meta["removals"] == 1


def test_modification_date() -> None:
    data = (SAMPLES / "poland-modificationdate.xml").read_bytes()
    assert pl_mf.parse_modification_date(data) == datetime(2025, 3, 10, 14, 2, 11, tzinfo=WARSAW)
    with pytest.raises(FeedError, match="not an MF register"):
        pl_mf.parse(data)


def test_items_without_a_name_or_with_bad_dates_are_rejected() -> None:
    data = b"""<Rejestr><Wrapper>
<PozycjaRejestru Lp="1"><DataWpisu>2020-01-01T00:00:00</DataWpisu></PozycjaRejestru>
<PozycjaRejestru Lp="2"><AdresDomeny>a.example</AdresDomeny><DataWpisu>yesterday</DataWpisu></PozycjaRejestru>
<PozycjaRejestru Lp="3"><AdresDomeny>b.example</AdresDomeny><DataZmiany>x</DataZmiany></PozycjaRejestru>
<PozycjaRejestru Lp="4"><AdresDomeny>c.example</AdresDomeny><AdresDomeny>d.example</AdresDomeny></PozycjaRejestru>
</Wrapper></Rejestr>"""
    result = pl_mf.parse(data)
    assert [(e.name, e.listed_at) for e in result.entries] == [("b.example", None)]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (2, "missing AdresDomeny"),
        (3, "invalid DataWpisu"),
        (5, "more than one AdresDomeny"),
    ]
    assert result.meta["ignored_elements"] == ["DataZmiany"]
    assert result.meta["namespace"] is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"<Rejestr><PozycjaRejestru>", "invalid XML at line 1"),
        (b"", "invalid XML"),
        (b"\xff\xfe<Rejestr/>", "invalid XML"),
        (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><Rejestr>&b;</Rejestr>',
            "DTD",
        ),
        (b'<!DOCTYPE r SYSTEM "file:///etc/passwd"><Rejestr/>', "DTD"),
        (b"<Other/>", "root element is <Other>"),
    ],
)
def test_feed_errors(data: bytes, message: str) -> None:
    with pytest.raises(FeedError, match=message):
        pl_mf.parse(data)


def test_empty_register_is_not_an_error() -> None:
    # An empty pull is for the guard to judge (it quarantines sharp shrinks), not the parser.
    result = pl_mf.parse(b'<Rejestr xmlns="http://www.hazard.mf.gov.pl/2017/03/21/"/>')
    assert result.entries == [] and result.rejects == []


def test_push_adding_then_removing_a_name_keeps_the_removal() -> None:
    data = b"""<Rejestr>
<PozycjaRejestru Lp="7"><AdresDomeny>casino.example</AdresDomeny><DataWpisu>2025-01-01T10:00:00</DataWpisu></PozycjaRejestru>
<PozycjaRejestru Lp="7"><AdresDomeny>casino.example</AdresDomeny><DataWpisu>2025-01-01T10:00:00</DataWpisu><DataWykreslenia>2025-02-01T10:00:00</DataWykreslenia></PozycjaRejestru>
</Rejestr>"""
    result = pl_mf.parse(data)
    assert [(e.line, e.removed_at) for e in result.entries] == [(3, datetime(2025, 2, 1, 10, tzinfo=WARSAW))]
    assert [(r.line, r.reason) for r in result.rejects] == [(2, "superseded by line 3 (removed later)")]
    assert result.meta["removals"] == 1
