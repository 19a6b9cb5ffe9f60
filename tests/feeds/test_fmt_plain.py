"""Plain list format: names, comments, URLs, wildcards, duplicates, undecodable bytes."""

from __future__ import annotations

from feeds.entry import Reject
from feeds.formats import plain


def _names(result):  # type: ignore[no-untyped-def]
    return [(e.line, e.name, e.wildcard) for e in result.entries]


def test_names_comments_and_rejects() -> None:
    data = (
        b"# a comment\n"
        b"\n"
        b"casino.example\n"
        b"  Bet.Example.  # trailing comment\n"
        b"*.wild.example\r\n"
        b"https://slots.example/lobby\n"
        b"203.0.113.7\n"
        b"CASINO.example\n"
        b"co.uk\n"
        b"bad name.example\n"
    )
    result = plain.parse(data)
    assert _names(result) == [
        (3, "casino.example", False),
        (4, "bet.example", False),
        (5, "wild.example", True),
        (6, "slots.example", False),
    ]
    assert result.rejects == [
        Reject(7, "203.0.113.7", "IP literal"),
        Reject(8, "CASINO.example", "duplicate"),
        Reject(9, "co.uk", "public suffix"),
        Reject(10, "bad name.example", "invalid character ' '"),
    ]
    assert result.meta["with_path"] == [6]
    assert result.meta["lines"] == 10


def test_wildcard_and_apex_are_distinct_listings() -> None:
    result = plain.parse(b"casino.example\n*.casino.example\n*.casino.example\n")
    assert _names(result) == [(1, "casino.example", False), (2, "casino.example", True)]
    assert result.rejects == [Reject(3, "*.casino.example", "duplicate")]


def test_undecodable_line_is_rejected_and_the_rest_parse() -> None:
    result = plain.parse(b"casino.example\nbad\xff\xfe.example\nbet.example\n")
    assert _names(result) == [(1, "casino.example", False), (3, "bet.example", False)]
    assert result.rejects == [Reject(2, "bad\\xff\\xfe.example", "undecodable bytes (not utf-8)")]


def test_bom_and_missing_final_newline() -> None:
    result = plain.parse(b"\xef\xbb\xbfcasino.example\nbet.example")
    assert _names(result) == [(1, "casino.example", False), (2, "bet.example", False)]


def test_long_reject_text_is_clipped() -> None:
    result = plain.parse(b"x" * 10_000 + b"\n")
    assert len(result.rejects[0].text) == 256 and result.rejects[0].text.endswith("…")


def test_config_sample_style_list() -> None:
    data = b"# Sample list\n# One domain per line\nkasyno-online.test\nzaklady-bukmacherskie.example\n"
    assert [e.name for e in plain.parse(data).entries] == ["kasyno-online.test", "zaklady-bukmacherskie.example"]
