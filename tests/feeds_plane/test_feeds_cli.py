"""The feeds commands: token-hash, lookup (from the store and the saved snapshot, server
stopped), feeds status/history/audit, and check-config on missing feed files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from config.auth import sha256_hex
from config.settings import load_settings
from feeds import cli
from feeds.manager import FeedManager
from tests.feeds_plane.helpers import TOKENS

BETBLOCK = [sys.executable, "-m", "betblock.cli"]


def test_token_hash() -> None:
    out = io.StringIO()
    assert cli.token_hash(["s3cret"], out) == 0
    assert out.getvalue().strip() == sha256_hex("s3cret")
    out = io.StringIO()
    assert cli.token_hash([], out) == 0
    lines = dict(line.split(":", 1) for line in out.getvalue().splitlines() if line.startswith("token"))
    token, digest = lines["token"].strip(), lines["token_sha256"].strip()
    assert len(token) >= 40 and digest == sha256_hex(token)


async def test_lookup_status_history_from_the_store(tmp_path: Path) -> None:
    (tmp_path / "pl.txt").write_text("kasyno.test\n")
    (tmp_path / "it.txt").write_text("kasyno.test\nslot.test\n")
    (tmp_path / "allow.txt").write_text("help.kasyno.test\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp_path / 'var'}"
[policy]
allowlist_files = ["allow.txt"]
[[agencies]]
id = "pl-mf"
name = "MF"
precedence = 30
action = "redirect"
redirect_ipv4 = ["145.237.235.240"]
lists = ["pl.txt"]
token_sha256 = "{sha256_hex(TOKENS['pl-mf'])}"
[[agencies.sources]]
kind = "push"
[[agencies]]
id = "it-adm"
precedence = 20
lists = ["it.txt"]
"""
    )
    settings = load_settings(cfg)
    m = FeedManager(settings, lambda _s: None)
    await m.start()
    await m.patch("pl-mf", [{"name": "ref.test", "legal_ref": "MF/7/2025"}], [], actor="agency:pl-mf")
    await m.flush()
    m.close()

    out = io.StringIO()
    assert cli.lookup(["www.kasyno.test", "--config", str(cfg)], out) == 0
    text = out.getvalue()
    assert "BLOCKED by MF (pl-mf, precedence 30): redirect to 145.237.235.240" in text
    assert "also listed by it-adm" in text and "resolver (policy" in text
    out = io.StringIO()
    assert cli.lookup(["help.kasyno.test", "--config", str(cfg), "--json"], out) == 1
    info = json.loads(out.getvalue())
    assert info["blocked"] is False and info["overridden_by"] == {"name": "help.kasyno.test", "by": "config", "scope": "subtree"}
    out = io.StringIO()
    assert cli.lookup(["ref.test", "--config", str(cfg), "--json"], out) == 0
    assert json.loads(out.getvalue())["matches"][0]["legal_ref"] == "MF/7/2025"
    assert cli.lookup(["nothing.test", "--config", str(cfg)], io.StringIO()) == 1

    out = io.StringIO()
    assert cli.feeds(["status", "--config", str(cfg)], out) == 0
    assert "pl-mf" in out.getvalue() and "it-adm" in out.getvalue()
    out = io.StringIO()
    assert cli.feeds(["history", "pl-mf", "--config", str(cfg), "--json"], out) == 0
    assert [v["source"] for v in json.loads(out.getvalue())] == ["push", "file:pl.txt"]
    out = io.StringIO()
    assert cli.feeds(["audit", "--config", str(cfg)], out) == 0
    assert "agency:pl-mf" in out.getvalue()

    # The real command line routes the same way.
    proc = subprocess.run([*BETBLOCK, "lookup", "slot.test", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "BLOCKED by it-adm" in proc.stdout, proc.stderr


def test_check_config_names_missing_feed_files(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[policy]\nprotected_files = ["nope.txt"]\n'
        '[[agencies]]\nid = "cz-mf"\n[[agencies.sources]]\nkind = "file"\npath = "missing.csv"\nformat = "cz-mf"\n'
    )
    proc = subprocess.run([*BETBLOCK, "check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "agencies.cz-mf.sources.file:missing.csv.path: file missing.csv not found" in proc.stderr
    assert "policy.protected_files: file nope.txt not found" in proc.stderr


async def test_lookup_shows_scope_the_deciding_rule_and_what_shields(tmp_path: Path) -> None:
    (tmp_path / "zone.rpz").write_text(
        "$ORIGIN rpz.test.\n@ SOA ns hm 1 2 3 4 5\n*.casino.test CNAME .\nhelp.casino.test CNAME rpz-passthru.\n"
        "red.test A 192.0.2.9\n"
    )
    (tmp_path / "hosts.txt").write_text("exact.test\n")
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(
        f"""
data_dir = "{tmp_path / 'var'}"
[[agencies]]
id = "zone"
action = "nodata"
[[agencies.sources]]
kind = "file"
path = "zone.rpz"
format = "rpz"
[[agencies]]
id = "plain"
scope = "exact"
lists = ["hosts.txt"]
"""
    )
    m = FeedManager(load_settings(cfg), lambda _s: None)
    await m.start()
    await m.flush()
    m.close()

    def info(name: str) -> dict:
        out = io.StringIO()
        cli.lookup([name, "--config", str(cfg), "--json"], out)
        return json.loads(out.getvalue())

    www = info("www.casino.test")
    assert www["blocked"] and www["winner"]["scope"] == "below" and www["winner"]["action"] == "nxdomain"
    assert www["winner"]["rule"] == "the entry's own (RPZ)"
    assert www["resolver"]["decided_by"] == {"listed": "casino.test", "position": "below", "scope": "below", "rule": www["resolver"]["rule"]["id"]}
    assert not info("casino.test")["blocked"]  # only the names below it
    api = info("api.help.casino.test")  # closest encloser: the passthru for help.casino.test
    assert not api["blocked"] and api["shielded"] == [{"agency": "zone", "by": "help.casino.test", "scope": "exact"}]
    assert api["resolver"]["blocked"] is False and api["resolver"]["decided_by"]["listed"] == "help.casino.test"
    red = info("red.test")
    assert red["winner"]["action"] == "redirect" and red["winner"]["redirect"] == ["192.0.2.9"]
    assert info("exact.test")["blocked"] and not info("www.exact.test")["blocked"]
    out = io.StringIO()
    cli.lookup(["www.casino.test", "--config", str(cfg)], out)
    assert "because casino.test is listed (below)" in out.getvalue() and "decided by casino.test (below" in out.getvalue()
