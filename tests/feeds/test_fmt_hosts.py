"""Hosts format against the shared sample and its traps."""

from __future__ import annotations

from pathlib import Path

from feeds.entry import Reject
from feeds.formats import hosts

SAMPLES = Path(__file__).parent / "samples"


def test_sample() -> None:
    result = hosts.parse((SAMPLES / "hosts.txt").read_bytes())
    assert [(e.line, e.name) for e in result.entries] == [
        (3, "casino-royal-bet.example"),
        (4, "www.casino-royal-bet.example"),
        (5, "spin-win-777.test"),
        (6, "lucky-slots.example"),  # tab-separated, trailing comment
        (9, "bet-mirror-41.example"),  # IPv6 address column
        (10, "xn--zakady-online-yhc.test"),
    ]
    assert result.rejects == [
        Reject(7, "0.0.0.0 SPIN-WIN-777.TEST", "duplicate"),
        Reject(8, "0.0.0.0 spin-win-777.test", "duplicate"),
        Reject(11, "0.0.0.0 localhost", "hosts boilerplate (localhost)"),
    ]
    # The sinkhole column is the mirror's, never carried into the entry.
    assert all(e.redirect == () and e.action is None for e in result.entries)


def test_several_names_and_bad_lines() -> None:
    data = (
        b"0.0.0.0 a.example b.example\n"
        b"casino.example\n"
        b"127.0.0.1\n"
        b"127.0.0.1 localhost.localdomain\n"
        b"0.0.0.0 0.0.0.0\n"
        b"0.0.0.0 203.0.113.9\n"
    )
    result = hosts.parse(data)
    assert [(e.line, e.name) for e in result.entries] == [(1, "a.example"), (1, "b.example")]
    assert [(r.line, r.reason) for r in result.rejects] == [
        (2, "not a hosts line (first field is not an address)"),
        (3, "address without a name"),
        (4, "hosts boilerplate (localhost.localdomain)"),
        (5, "hosts boilerplate (0.0.0.0)"),
        (6, "IP literal"),
    ]
