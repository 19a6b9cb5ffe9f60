"""Italy ADM TXT and its SHA-256 control file."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import pytest

from feeds.entry import FeedError, Reject
from feeds.formats import it_adm

SAMPLES = Path(__file__).parent / "samples"
DATA = (SAMPLES / "italy-adm.txt").read_bytes()
CONTROL = (SAMPLES / "italy-adm.sha-256").read_bytes()


def test_sample_with_control_file() -> None:
    result = it_adm.parse(DATA, control=CONTROL)
    assert [(e.line, e.name) for e in result.entries] == [
        (2, "casino-royal-bet.example"),
        (3, "spin-win-777.test"),
        (5, "www.scommesse-facili.example"),  # www. kept beside the apex
        (6, "scommesse-facili.example"),
        (7, "01.mycoolcasino.example"),
        (8, "slot-paradise.test"),  # https://host/ -> host
        (9, "poker-night.example"),  # http://host -> host
        (10, "mirror-bet.example"),  # URL with a path -> host, path noted
        (12, "giochi-bonus.example"),  # padding stripped
        (13, "xn--giochi-citt-i7a.test"),
    ]
    assert result.rejects == [
        Reject(4, "SPIN-WIN-777.TEST", "duplicate"),
        Reject(11, "203.0.113.77", "IP literal"),
        Reject(15, "spin-win-777.test", "duplicate"),
    ]
    assert result.meta["checksum"] == "ok"
    assert result.meta["sha256"] == CONTROL.strip().decode()
    assert result.meta["header"] == "0000351_2025.15.09"
    assert result.meta["order"] == "0000351"
    assert result.meta["date"] == date(2025, 9, 15)  # YYYY.DD.MM
    assert result.meta["with_path"] == [10]


def test_control_mismatch_is_a_feed_error() -> None:
    with pytest.raises(FeedError, match="SHA-256 mismatch"):
        it_adm.parse(DATA + b"extra.example\r\n", control=CONTROL)


def test_control_formats() -> None:
    digest = hashlib.sha256(DATA).hexdigest()
    assert it_adm.parse(DATA).meta["checksum"] == "absent"
    sha256sum_line = f"{digest.upper()}  elenco_siti_inibiti_giochi.txt\n".encode()
    assert it_adm.parse(DATA, control=sha256sum_line).meta["checksum"] == "ok"
    with pytest.raises(FeedError, match="exactly one SHA-256 digest"):
        it_adm.parse(DATA, control=b"not a digest")
    with pytest.raises(FeedError, match="exactly one SHA-256 digest"):
        it_adm.parse(DATA, control=b"")


def test_header_only_at_the_top() -> None:
    result = it_adm.parse(b"\r\ncasino.example\r\n0000352_2025.01.10\r\n")
    assert "header" not in result.meta
    assert result.rejects == [Reject(3, "0000352_2025.01.10", "header line not at the top")]


def test_impossible_header_date_keeps_the_header() -> None:
    result = it_adm.parse(b"0000350_2025.08.29\r\ncasino.example\r\n")
    assert result.meta["header"] == "0000350_2025.08.29" and result.meta["date"] is None
