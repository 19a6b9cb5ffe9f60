"""The login form is read before anyone is authenticated: its body is capped at a few KiB and
refused before it is read (issue 8, item 6: it read up to 64 MiB). Authenticated pushes keep
their large cap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from config.auth import sha256_hex
from tests.dnsutil import HOST
from tests.fakedns import FakeDns
from tests.procutil import Serve, node_toml

ADMIN = "login-body-admin-token-0123456789"
AGENCY_TOKEN = "login-body-agency-token-0123456789"


async def _status(reader: asyncio.StreamReader) -> int:
    async with asyncio.timeout(10):
        line = await reader.readline()
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


async def test_login_body_is_capped_before_it_is_read(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    cfg = tmp_path / "betblock.toml"
    rest = f"""[[agencies]]
id = "pl-mf"
token_sha256 = "{sha256_hex(AGENCY_TOKEN)}"
churn_limit = 1.0
[[agencies.sources]]
kind = "push"
"""
    cfg.write_text(node_toml(tmp_path, 0, upstream, rest, http=f'admin_token = "{ADMIN}"\n'))
    node = await Serve.start(cfg)
    try:
        # Announces 64 MiB, sends 64 KiB: answered 413 at once, without waiting for the rest.
        reader, writer = await asyncio.open_connection(HOST, node.http_port)
        writer.write(
            b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + b"Content-Length: %d\r\n\r\n" % (64 << 20)
            + b"token=" + b"a" * (64 << 10)
        )
        assert await _status(reader) == 413
        writer.close()

        # No length given: cut off at the cap while it is read.
        async with aiohttp.ClientSession() as s:
            async def chunks():  # type: ignore[no-untyped-def]
                yield b"token="
                for _ in range(16):
                    yield b"a" * (64 << 10)

            async with s.post(f"http://{HOST}:{node.http_port}/login", data=chunks(),
                              headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 413

            # A small wrong login is still an ordinary 401.
            async with s.post(f"http://{HOST}:{node.http_port}/login", data={"token": "wrong"}) as r:
                assert r.status == 401

            # An agency's push, authenticated, may be megabytes.
            names = "".join(f"casino-{i}.example.test\n" for i in range(60_000)).encode()
            assert len(names) > 1 << 20
            async with s.put(f"http://{HOST}:{node.http_port}/v1/feeds/pl-mf", data=names,
                             headers={"Authorization": f"Bearer {AGENCY_TOKEN}"}) as r:
                assert r.status in (200, 202), await r.text()
    finally:
        code = await node.stop()
        await upstream.stop()
    assert code == 0, node.log()
