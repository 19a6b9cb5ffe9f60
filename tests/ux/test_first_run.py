"""First run on the embedded defaults: the node generates an admin token (0600) in its data
directory, says where the admin page is and where the token is (never the token itself), the
token opens the admin API, a restart reuses it and `betblock admin-token` prints it."""

from __future__ import annotations

import stat
from pathlib import Path

import aiohttp

from tests.fakedns import FakeDns
from tests.procutil import Serve, betblock, node_toml


def _config(tmp_path: Path, upstream: FakeDns) -> str:
    return node_toml(tmp_path, 0, upstream, warning_page=False)


async def _status(port: int, token: str) -> int:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/v1/hits", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status


async def test_first_start_makes_a_private_token_that_opens_the_admin_api_and_is_reused(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, upstream))
    token_file = tmp_path / "var" / "admin-token"
    node = await Serve.start(cfg)
    try:
        assert token_file.is_file()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert len(token) >= 32
        log = node.log()
        assert "admin page at http://127.0.0.1:" in log and str(token_file) in log
        assert token not in log  # the log never carries the secret
        assert await _status(node.http_port, token) == 200
        assert await _status(node.http_port, "not-the-token-at-all") == 401
    finally:
        await node.stop()
    node = await Serve.start(cfg)
    try:
        assert token_file.read_text().strip() == token
        assert await _status(node.http_port, token) == 200
    finally:
        await node.stop()
        await upstream.stop()
    rc, out, _ = await betblock("admin-token", "--config", str(cfg))
    assert rc == 0 and out.strip() == token


async def test_a_configured_token_wins_and_no_file_is_made(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, upstream).replace('listen = "127.0.0.1:0"', 'listen = "127.0.0.1:0"\nadmin_token = "configured-token-0123456789"'))
    rc, out, _ = await betblock("admin-token", "--config", str(cfg))
    await upstream.stop()
    assert rc == 0 and out.strip() == "configured-token-0123456789"
    assert not (tmp_path / "var" / "admin-token").exists()


async def test_a_too_short_token_file_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = tmp_path / "betblock.toml"
    cfg.write_text(_config(tmp_path, upstream))
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "admin-token").write_text("short\n")
    rc, _, err = await betblock("serve", "--config", str(cfg))
    await upstream.stop()
    assert rc == 2 and "shorter than 16 characters" in err
