"""Adblock subset against the shared sample, and the rules with no DNS meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from feeds.entry import Reject
from feeds.formats import adblock

SAMPLES = Path(__file__).parent / "samples"


def test_sample() -> None:
    result = adblock.parse((SAMPLES / "adblock.txt").read_bytes())
    assert [(e.line, e.name, e.wildcard, e.allow) for e in result.entries] == [
        (3, "casino-royal-bet.example", False, False),
        (4, "spin-win-777.test", False, False),
        (6, "wildcard-bets.example", True, False),
        (7, "slot-paradise.test", False, False),  # |https://...| anchor
        (8, "legit-lottery.example", False, True),  # @@ exception
        (9, "xn--zakady-online-yhc.test", False, False),
        (10, "bet-mirror-41.example", False, False),  # $important accepted
    ]
    assert result.rejects == [
        Reject(5, "||SPIN-WIN-777.TEST^", "duplicate"),
        Reject(11, "spin-win-777.test", "duplicate"),  # bare name = same listing
    ]


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ("||casino.example^$client=192.0.2.1", "unsupported modifier $client=192.0.2.1"),
        ("||casino.example^$dnsrewrite=1.2.3.4", "unsupported modifier $dnsrewrite=1.2.3.4"),
        ("/casino[0-9]+/", "regular-expression rule not supported"),
        ("||bet*.example^", "unsupported pattern"),
        ("||casino.example^foo", "unsupported pattern"),
        ("||casino.example/path^", "path rule (not applicable to DNS)"),
        ("casino.example##.banner", "cosmetic rule (not a DNS rule)"),
        ("||", "unsupported pattern"),
        ("||co.uk^", "public suffix"),
        ("||192.0.2.1^", "IP literal"),
    ],
)
def test_rules_without_a_dns_meaning_are_rejected(rule: str, reason: str) -> None:
    result = adblock.parse(rule.encode() + b"\n")
    assert result.entries == []
    assert result.rejects == [Reject(1, rule, reason)]


def test_header_comments_and_allow_beside_block() -> None:
    data = b"[Adblock Plus 2.0]\n! comment\n# hash comment\n||casino.example^\n@@||casino.example^\n"
    result = adblock.parse(data)
    assert result.meta["header"] == "[Adblock Plus 2.0]"
    assert [(e.name, e.allow) for e in result.entries] == [("casino.example", False), ("casino.example", True)]
    assert result.rejects == []
