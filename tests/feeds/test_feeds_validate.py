"""``betblock feeds validate``: output lines and exit status."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from feeds.validate import main

SAMPLES = Path(__file__).parent / "samples"


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_italy_with_control_file() -> None:
    code, out, _ = _run(
        "--format", "it-adm", str(SAMPLES / "italy-adm.txt"), "--control", str(SAMPLES / "italy-adm.sha-256")
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "accepted: 10"
    assert lines[1] == "rejected: 3"
    assert "checksum: ok" in lines
    assert lines[-3:] == [
        "line 4: duplicate: SPIN-WIN-777.TEST",
        "line 11: IP literal: 203.0.113.77",
        "line 15: duplicate: spin-win-777.test",
    ]


def test_feed_error_exits_1(tmp_path: Path) -> None:
    control = tmp_path / "bad.sha-256"
    control.write_text("0" * 64)
    code, out, err = _run("--format", "it-adm", str(SAMPLES / "italy-adm.txt"), "--control", str(control))
    assert code == 1
    assert out == ""
    assert "SHA-256 mismatch" in err


def test_signed_gespa() -> None:
    code, out, _ = _run(
        "--format",
        "ch-gespa",
        str(SAMPLES / "swiss-gespa.txt"),
        "--signature",
        str(SAMPLES / "swiss-gespa.txt.sign"),
        "--key",
        str(SAMPLES / "swiss-gespa-TESTKEY.pub"),
    )
    assert code == 0
    assert "signature: valid" in out.splitlines()
    assert "serial: 20250826" in out.splitlines()


def test_csv_column(tmp_path: Path) -> None:
    feed = tmp_path / "list.csv"
    feed.write_text("Host,Note\ncasino.example,x\n")
    code, out, _ = _run("--format", "csv", str(feed), "--column", "Host")
    assert (code, out.splitlines()[0]) == (0, "accepted: 1")


def test_nothing_accepted_exits_1_and_escapes_control_characters(tmp_path: Path) -> None:
    feed = tmp_path / "list.txt"
    feed.write_bytes(b"\x1b[31mred.example\n203.0.113.1\n")
    code, out, _ = _run("--format", "plain", str(feed))
    assert code == 1
    assert out.splitlines() == [
        "accepted: 0",
        "rejected: 2",
        "line 1: invalid character '\\x1b': \\x1b[31mred.example",
        "line 2: IP literal: 203.0.113.1",
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["--format", "nope", "x"],
        ["x"],
        ["--format", "plain"],
        ["--format", "plain", "x", "--control", "y"],
        ["--format", "it-adm", "x", "--key", "y"],
        ["--format", "plain", "x", "--column", "y"],
        ["--format", "plain", "/nonexistent/feed.txt"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert _run(*argv)[0] == 2


def test_czech_sample_shows_dropped_paths_and_non_domain_rows() -> None:
    code, out, _ = _run("--format", "cz-mf", str(SAMPLES / "czech-mfcr.csv"))
    lines = out.splitlines()
    assert code == 0
    assert lines[:4] == ["accepted: 8", "rejected: 4", "encoding: cp1250", "url paths dropped on lines: 8"]
    assert lines[4].startswith("line 3: not a domain (payment account): Platební účet;")
    assert lines[6].startswith("line 10: not a domain (app): Aplikace;")


def test_size_cap_summary_json_and_origin(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 5000)
    code, out, err = _run("--format", "plain", str(big), "--max-bytes", "4096")
    assert code == 1 and out == "" and "over 4096 bytes" in err

    junk = tmp_path / "junk.txt"
    junk.write_text("ok.test\n" + "".join(f"10.0.0.{i}\n" for i in range(50)) + "a..test\n")
    code, out, _ = _run("--format", "plain", str(junk), "--summary", "3")
    assert code == 0
    lines = out.splitlines()
    assert lines[:2] == ["accepted: 1", "rejected: 51"]
    assert "reason: 50: IP literal" in lines and "reason: 1: empty label" in lines
    assert [x for x in lines if x.startswith("line ")] == [f"line {i}: IP literal: 10.0.0.{i - 2}" for i in (2, 3, 4)]
    assert lines[-1] == "... 48 more rejects"

    code, out, _ = _run("--format", "plain", str(junk), "--json", "--summary", "1")
    doc = __import__("json").loads(out)
    assert doc["accepted"] == 1 and doc["rejected"] == 51 and doc["reasons"] == {"IP literal": 50, "empty label": 1}
    assert doc["rejects"] == [{"line": 2, "reason": "IP literal", "text": "10.0.0.0"}]

    zone = tmp_path / "z.rpz"
    zone.write_text("a.example CNAME .\n$ORIGIN sub.rpz.test.\nb CNAME .\n")
    code, out, _ = _run("--format", "rpz", str(zone), "--origin", "rpz.test.", "--json")
    doc = __import__("json").loads(out)
    assert code == 0 and doc["accepted"] == 2 and doc["meta"]["origin"] == "rpz.test"
    code, _, err = _run("--format", "plain", str(zone), "--origin", "rpz.test.")
    assert code == 2 and "--origin applies" in err
