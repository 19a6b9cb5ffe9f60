"""``betblock feeds diff|approve|reject`` against a running node: the diff read from the store
beside it, the decisions through its admin API, the audit saying who, when and why."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from betblock.app import App
from config.auth import sha256_hex
from feeds import cli
from tests.conftest import NodeFactory
from tests.feeds_plane.helpers import ADMIN, TOKENS, push_agency

NAMES = [f"n{i}.test" for i in range(40)]


async def quarantined_node(node: NodeFactory, tmp_path: Path) -> tuple[App, Path, int]:
    app = await node(lists={"pl-mf": []}, agencies=[push_agency("pl-mf")], http={"admin_token": ADMIN})
    assert app.http is not None and app.http.bound is not None
    base = "http://%s:%d" % app.http.bound
    auth = {"Authorization": f"Bearer {TOKENS['pl-mf']}"}
    async with aiohttp.ClientSession(headers=auth) as s:
        async with s.put(base + "/v1/feeds/pl-mf", data="\n".join(NAMES).encode()) as r:
            assert r.status == 200
        async with s.put(base + "/v1/feeds/pl-mf", data="\n".join(NAMES[:20]).encode()) as r:
            assert r.status == 202
            held = (await r.json())["version"]
    cfg = tmp_path / "cli.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "var"}"\n[http]\nlisten = "{base.removeprefix("http://")}"\n'
        f'[[agencies]]\nid = "pl-mf"\ntoken_sha256 = "{sha256_hex(TOKENS["pl-mf"])}"\n[[agencies.sources]]\nkind = "push"\n'
    )
    return app, cfg, held


async def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(cli.feeds, list(argv), out)  # the CLI blocks; the node runs on
    return code, out.getvalue()


async def test_diff_then_approve_with_a_reason(node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, cfg, held = await quarantined_node(node, tmp_path)
    code, text = await run("diff", "pl-mf", str(held), "--config", str(cfg), "--limit", "5")
    assert code == 0
    assert f"pl-mf v{held} (quarantined)" in text and "+0 -20" in text
    assert "guardrail: update changes 50.0% of the list" in text
    assert "removed 20: n20.test, n21.test, n22.test, n23.test, n24.test (and 15 more)" in text
    code, raw = await run("diff", "pl-mf", str(held), "--config", str(cfg), "--json")
    d = json.loads(raw)
    assert d["counts"]["removed"] == 20 and len(d["sample"]["removed"]) == 20 and d["findings"]
    assert (await run("diff", "pl-mf", "999", "--config", str(cfg)))[0] == 1

    # No token at hand: refused before anything is sent.
    monkeypatch.delenv("BETBLOCK_ADMIN_TOKEN", raising=False)
    assert (await run("approve", "pl-mf", str(held), "--reason", "x", "--config", str(cfg)))[0] == 2
    monkeypatch.setenv("BETBLOCK_ADMIN_TOKEN", ADMIN)
    code, text = await run("approve", "pl-mf", str(held), "--reason", "the ministry confirmed the removals", "--config", str(cfg))
    assert code == 0 and "applied" in text
    assert (await run("reject", "pl-mf", str(held), "--reason", "again", "--config", str(cfg)))[0] == 1  # not quarantined now
    code, raw = await run("audit", "--config", str(cfg), "--json")
    top = json.loads(raw)[0]
    assert top["action"] == "quarantine approved" and top["actor"] == "admin" and top["time"]
    assert top["detail"]["reason"] == "the ministry confirmed the removals" and top["detail"]["operator"]
    code, raw = await run("history", "pl-mf", "--config", str(cfg), "--json")
    assert json.loads(raw)[0]["decided_by"] == "admin"


async def test_reject_and_an_unreachable_node(node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, cfg, held = await quarantined_node(node, tmp_path)
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    monkeypatch.delenv("BETBLOCK_ADMIN_TOKEN", raising=False)
    code, text = await run("reject", "pl-mf", str(held), "--reason", "a broken export", "--config", str(cfg),
                           "--token-file", str(token_file))
    assert code == 0 and "rejected" in text
    code, raw = await run("audit", "--config", str(cfg), "--json")
    top = json.loads(raw)[0]
    assert (top["action"], top["detail"]["reason"]) == ("quarantine rejected", "a broken export")
    with pytest.raises(SystemExit):  # --reason is required
        await run("approve", "pl-mf", str(held), "--config", str(cfg))
    # A wrong token is the node's 401; nothing listening is a clear message, exit 2.
    code, _ = await run("approve", "pl-mf", str(held), "--reason", "x", "--config", str(cfg), "--token-file", str(cfg))
    assert code == 2  # not a token file at all
    monkeypatch.setenv("BETBLOCK_ADMIN_TOKEN", "wrong-token-0123456789")
    code, _ = await run("approve", "pl-mf", str(held), "--reason", "x", "--config", str(cfg))
    assert code == 2
    with socket.socket() as closed:  # bound, not listening: a connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        code, _ = await run("approve", "pl-mf", str(held), "--reason", "x", "--config", str(cfg),
                            "--token-file", str(token_file), "--server", f"http://127.0.0.1:{port}")
    assert code == 2
