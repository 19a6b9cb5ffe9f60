"""Shared pieces of the feeds control-plane tests: tokens, an HTTP client for the feeds API,
a fake clock, and settings builders for a FeedManager without a resolver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from config.auth import sha256_hex
from config.settings import Settings

ADMIN = "admin-token-for-tests-0123456789"
TOKENS = {"pl-mf": "pl-token-0123456789abcdef", "it-adm": "it-token-0123456789abcdef"}


def push_agency(agency_id: str, **extra: Any) -> dict[str, Any]:
    """Agency config with a push source and its token hash."""
    cfg: dict[str, Any] = {
        "id": agency_id,
        "sources": [{"kind": "push", "format": "plain"}],
        "token_sha256": sha256_hex(TOKENS[agency_id]),
    }
    cfg.update(extra)
    return cfg


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(tmp_path: Path, agencies: list[dict[str, Any]], **overrides: Any) -> Settings:
    data: dict[str, Any] = {"agencies": agencies, "base_dir": tmp_path, "data_dir": tmp_path / "var"}
    data.update(overrides)
    return Settings(**data)


class Api:
    """The feeds API of one node, as an agency or an admin sees it."""

    def __init__(self, session: aiohttp.ClientSession, address: tuple[str, int]) -> None:
        self.s = session
        self.base = f"http://{address[0]}:{address[1]}"

    async def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> tuple[int, Any]:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.s.request(method, self.base + path, headers=headers, **kw) as r:
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = await r.text()
            return r.status, body

    async def put(self, agency: str, names: list[str] | bytes, token: str | None = None, **kw: Any) -> tuple[int, Any]:
        data = names if isinstance(names, bytes) else ("\n".join(names) + "\n").encode()
        return await self.call("PUT", f"/v1/feeds/{agency}", TOKENS.get(agency) if token is None else token, data=data, **kw)
