"""Swiss lists: Gespa TXT with its RSA-SHA256 signature, and ESBK payload and PDF lines."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from feeds.entry import FeedError
from feeds.formats import ch_esbk, ch_gespa

SAMPLES = Path(__file__).parent / "samples"
DATA = (SAMPLES / "swiss-gespa.txt").read_bytes()
SIGN = (SAMPLES / "swiss-gespa.txt.sign").read_bytes()
KEY = (SAMPLES / "swiss-gespa-TESTKEY.pub").read_bytes()


def test_signed_sample() -> None:
    result = ch_gespa.parse(DATA, signature=SIGN, public_key_pem=KEY)
    assert [(e.line, e.name) for e in result.entries] == [
        (3, "1bet-mirror.example"),
        (4, "bet-at-sea.test"),
        (5, "casino-royal-bet.example"),
        (6, "lotto-overseas.example"),
        (7, "lotto-overseas.example.ch"),
        (8, "sportwetten-24.test"),
        (9, "spin-win-777.test"),
    ]
    assert result.rejects == []
    assert result.meta["signature"] == "valid"
    assert result.meta["version"] == "1"
    assert result.meta["serial"] == "20250826"


def test_raw_signature_is_accepted_too() -> None:
    raw = base64.b64decode(SIGN)
    assert ch_gespa.parse(DATA, signature=raw, public_key_pem=KEY).meta["signature"] == "valid"


@pytest.mark.parametrize(
    ("data", "signature"),
    [
        (DATA.replace(b"bet-at-sea", b"bet-at-see"), SIGN),  # one byte of the list changed
        (DATA + b"\n", SIGN),  # even a trailing newline
        (DATA, SIGN.replace(b"j/W", b"k/W")),  # signature changed
        (DATA, b"short"),
        (DATA, b""),
    ],
)
def test_invalid_signature_is_a_feed_error(data: bytes, signature: bytes) -> None:
    with pytest.raises(FeedError, match="signature does not verify"):
        ch_gespa.parse(data, signature=signature, public_key_pem=KEY)


def test_signature_by_another_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = base64.encodebytes(other.sign(DATA, padding.PKCS1v15(), hashes.SHA256()))
    other_pem = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ch_gespa.parse(DATA, signature=signature, public_key_pem=other_pem).meta["signature"] == "valid"
    with pytest.raises(FeedError, match="signature does not verify"):
        ch_gespa.parse(DATA, signature=signature, public_key_pem=KEY)
    # SHA-1 over the same key is not what Gespa publishes: refused.
    sha1 = other.sign(DATA, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(FeedError, match="signature does not verify"):
        ch_gespa.parse(DATA, signature=sha1, public_key_pem=other_pem)


def test_key_problems() -> None:
    assert ch_gespa.parse(DATA, public_key_pem=KEY).meta["signature"] == "absent"
    with pytest.raises(FeedError, match="no public key is configured"):
        ch_gespa.parse(DATA, signature=SIGN)
    with pytest.raises(FeedError, match="public key cannot be read"):
        ch_gespa.parse(DATA, signature=SIGN, public_key_pem=b"garbage")
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(FeedError, match="not an RSA key"):
        ch_gespa.parse(DATA, signature=SIGN, public_key_pem=ec_pem)


def test_version_header_is_required_and_checked() -> None:
    with pytest.raises(FeedError, match="no #Version"):
        ch_gespa.parse(b"casino.example\n")
    with pytest.raises(FeedError, match="unsupported #Version '2'"):
        ch_gespa.parse(b"#Version: 2\n#Serial: 1\ncasino.example\n")


def test_esbk_payload_crlf_and_version_1_1() -> None:
    result = ch_esbk.parse((SAMPLES / "swiss-esbk.txt").read_bytes())
    assert [(e.line, e.name) for e in result.entries] == [
        (3, "casino-royal-bet.example"),
        (4, "online-roulette.test"),
        (5, "slots-alpine.example"),
        (6, "spin-win-777.test"),
    ]
    assert (result.meta["version"], result.meta["serial"]) == ("1.1", "20250826")


def test_esbk_pdf_lines_carry_listing_dates() -> None:
    result = ch_esbk.parse((SAMPLES / "swiss-esbk-pdf-lines.txt").read_bytes())
    zurich = ZoneInfo("Europe/Zurich")
    assert [(e.name, e.listed_at) for e in result.entries] == [
        ("casino-royal-bet.example", datetime(2019, 9, 3, tzinfo=zurich)),
        ("online-roulette.test", datetime(2019, 9, 3, tzinfo=zurich)),
        ("slots-alpine.example", datetime(2024, 11, 26, tzinfo=zurich)),
        ("spin-win-777.test", datetime(2025, 8, 26, tzinfo=zurich)),
    ]


def test_esbk_stray_bytes_and_bad_dates() -> None:
    result = ch_esbk.parse(b"#Version: 1.0\r\ncasino\xff.example\r\nbet.example 31.02.2024\r\n")
    assert [e.name for e in result.entries] == ["casino.example"]
    assert [(r.line, r.reason) for r in result.rejects] == [(3, "invalid date")]
    assert result.meta["stripped_bytes"] == 1
    with pytest.raises(FeedError, match="unsupported #Version"):
        ch_esbk.parse(b"#Version: 3\ncasino.example\n")
