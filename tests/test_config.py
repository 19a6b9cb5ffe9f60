"""The settings tree: defaults, TOML, environment overrides, and the error message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import (
    DEFAULT_CONFIG,
    ConfigError,
    Settings,
    field_table,
    load_settings,
    nameservers_from_resolv_conf,
)

BETBLOCK = [sys.executable, "-m", "betblock.cli"]


def test_embedded_defaults_load_and_name_sample_lists_that_exist() -> None:
    s = load_settings(DEFAULT_CONFIG)
    assert s.dns.listen_addresses() == [("127.0.0.1", 1053)]
    assert [a.id for a in s.agencies] == ["pl-mf", "it-adm", "cz-mf"]
    for agency in s.agencies:
        for path in agency.lists:
            assert s.resolve_path(path).is_file()
    # The ACL default is loopback only: never an open resolver.
    assert s.acl.allow == ["127.0.0.0/8", "::1/128"]


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("x.test\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[agencies]]\nid = "a"\nlists = ["l.txt"]\n')
    s = load_settings(cfg)
    assert s.resolve_path(s.agencies[0].lists[0]) == tmp_path / "l.txt"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[cache]\nmax_entries = 10\n")
    monkeypatch.setenv("BETBLOCK_CACHE__MAX_ENTRIES", "42")
    monkeypatch.setenv("BETBLOCK_DNS__TCP", "false")
    s = load_settings(cfg)
    assert s.cache.max_entries == 42
    assert s.dns.tcp is False


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[dns]\nlisten = ['127.0.0.1:99999']\n", "dns.listen"),
        ("[dns]\nlistne = ['127.0.0.1:53']\n", "dns.listne: unknown key"),
        ("bogus = 1\n", "bogus: unknown key"),
        ("[cache]\nmin_ttl = -1\n", "cache.min_ttl"),
        ("[cache]\nmin_ttl = 100\nmax_ttl = 10\n", "min_ttl (100) is above max_ttl (10)"),
        ("[acl]\nallow = ['10.0.0.0/33']\n", "acl.allow"),
        ("[upstream]\nservers = ['dns.example']\n", "upstream.servers"),
        ("[[agencies]]\nid = 'x'\naction = 'redirect'\n", "needs redirect_ipv4 or redirect_ipv6"),
        ("[[agencies]]\nid = 'x'\naction = 'explode'\n", "agencies.0.action"),
        ("[[agencies]]\nid = 'Bad Id'\n", "agencies.0.id"),
        ("[[agencies]]\nid = 'a'\n[[agencies]]\nid = 'a'\n", "appears twice"),
        ("[dns\n", "not valid TOML"),
    ],
)
def test_bad_config_names_key_and_value(tmp_path: Path, toml: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert expected in str(err.value)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dns]\nlisten = ['1.2.3.4:99999']\nbogus = 1\n[cache]\nmin_ttl = -1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert "'1.2.3.4:99999'" in text and "dns.bogus: unknown key (got 1)" in text and "cache.min_ttl" in text


def test_resolv_conf_gives_default_upstreams(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# comment\nsearch example\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\nnameserver bogus\n")
    assert nameservers_from_resolv_conf(rc) == [("192.0.2.1", 53), ("fe80::1", 53)]
    assert Settings().upstream.addresses(rc) == [("192.0.2.1", 53), ("fe80::1", 53)]
    assert Settings(upstream={"servers": ["[::1]:5353", "127.0.0.1"]}).upstream.addresses(rc) == [
        ("::1", 5353),
        ("127.0.0.1", 53),
    ]


def test_every_field_has_a_description() -> None:
    rows = field_table()
    assert len(rows) > 30
    missing = [key for key, _default, desc in rows if not desc]
    assert missing == []


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BETBLOCK, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_check_config_cli_accepts_defaults_and_rejects_bad_files(tmp_path: Path) -> None:
    ok = _cli("check-config", "--config", str(DEFAULT_CONFIG))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream]\ndeadline = 0\nwho = 'me'\n")
    res = _cli("check-config", "--config", str(bad))
    assert res.returncode == 2
    assert "upstream.deadline" in res.stderr and "upstream.who: unknown key" in res.stderr


def test_check_config_cli_reports_missing_list_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[upstream]\nservers=['127.0.0.1:5300']\n[[agencies]]\nid = 'a'\nlists = ['nope.txt']\n")
    res = _cli("check-config", "--config", str(cfg))
    assert res.returncode == 2
    assert "nope.txt not found" in res.stderr


def test_serve_refuses_to_start_with_the_same_message(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[dns]\nlisten = ['not-an-ip:53']\n")
    res = _cli("serve", "--config", str(cfg))
    assert res.returncode == 2
    assert "dns.listen" in res.stderr
