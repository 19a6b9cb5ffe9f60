"""Brute-force control, token strength and private state files (issue 8, item 13: 3,000 wrong
logins and 2,000 wrong bearer tokens went through without delay or log line; check-config took
``admin_token = "a"``; hits.sqlite was world-readable)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message

from tests.dnsutil import HOST
from tests.fakedns import FakeDns
from tests.procutil import Serve, betblock, write_node

ADMIN = "brute-force-admin-token-0123456789"
FAILURES = 5


def _config(tmp_path: Path, upstream: FakeDns, http: str = "") -> Path:
    return write_node(tmp_path, upstream, "[hits]\nflush_interval = 0.1\n", action=None, http=http)


def _session(source: str) -> aiohttp.ClientSession:
    """A client on its own loopback address (Linux routes all of 127/8 to lo)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(source, 0)))


async def test_wrong_tokens_and_logins_lock_the_client_out(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = _config(tmp_path, upstream, f'admin_token = "{ADMIN}"\nauth_max_failures = {FAILURES}\n')
    node = await Serve.start(cfg)
    base = f"http://{HOST}:{node.http_port}"
    try:
        async with _session("127.0.0.1") as s:
            statuses = []
            for i in range(3 * FAILURES):
                async with s.get(f"{base}/v1/hits", headers={"Authorization": f"Bearer wrong-{i}"}) as r:
                    statuses.append(r.status)
                    if r.status == 429:
                        assert int(r.headers["Retry-After"]) >= 1
                        assert (await r.json())["retry_after"] >= 1
            assert statuses[:FAILURES] == [401] * FAILURES
            assert statuses[FAILURES:] == [429] * (2 * FAILURES)
            # Locked out on every route with a credential check, the right token included...
            async with s.get(f"{base}/v1/hits", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                assert r.status == 429
            # ...but health and metrics answer.
            async with s.get(f"{base}/metrics") as r:
                metrics = await r.text()
            assert f"betblock_http_auth_failures_total {float(FAILURES)}" in metrics
            assert "betblock_http_auth_locked_clients 1.0" in metrics

        async with _session("127.0.0.2") as s:
            statuses = []
            for i in range(2 * FAILURES):
                async with s.post(f"{base}/login", data={"token": f"guess-{i}"}, allow_redirects=False) as r:
                    statuses.append(r.status)
            assert statuses == [401] * FAILURES + [429] * FAILURES

        async with _session("127.0.0.3") as s:  # another client is not affected
            async with s.get(f"{base}/v1/hits", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                assert r.status == 200
            async with s.get(f"{base}/v1/hits") as r:  # no credential at all: not a guess
                assert r.status == 401
    finally:
        code = await node.stop()
        await upstream.stop()
    assert code == 0, node.log()
    lines = [json.loads(line) for line in node.lines if line.startswith("{")]
    locked = [rec for rec in lines if rec.get("event") == "authentication failures: client locked out"]
    assert sorted(rec["client"] for rec in locked) == ["127.0.0.1", "127.0.0.2"]  # one line per client


async def _cli(*args: str) -> tuple[int, str]:
    rc, out, _ = await betblock(*args, merge_stderr=True)
    return rc, out


async def test_check_config_refuses_a_short_admin_token(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    try:
        cfg = _config(tmp_path, upstream, 'admin_token = "a"\n')
        code, out = await _cli("check-config", "--config", str(cfg))
        assert code == 2 and "http.admin_token" in out and "at least 16 characters" in out, out
        code, out = await _cli("serve", "--config", str(cfg))
        assert code == 2 and "at least 16 characters" in out, out
        cfg = _config(tmp_path, upstream, f'admin_token = "{ADMIN}"\n')
        code, out = await _cli("check-config", "--config", str(cfg))
        assert code == 0, out
    finally:
        await upstream.stop()


async def test_state_files_are_private(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = _config(tmp_path, upstream)
    node = await Serve.start(cfg)
    try:
        r = await dns.asyncquery.udp(dns.message.make_query("bad.test", "A"), HOST, port=node.dns_port, timeout=3)
        assert r.rcode() == 3
    finally:
        code = await node.stop()
        await upstream.stop()
    assert code == 0, node.log()
    data = tmp_path / "var"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "hits.sqlite" for p in files), files
    loose = {str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077}
    assert not loose, loose
