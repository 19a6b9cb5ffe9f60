"""A damaged hit store never takes DNS down and is never written over (issue 8, item 9).

Through real ``betblock serve`` processes over one data directory: a first run records hits (and
its checkpoints); between runs ``hits.sqlite`` is cut to half its size, or to nothing; the second
run must answer DNS, say once in its log, in /readyz, in the status route and in /metrics that
the hit store failed, leave the damaged file byte for byte as it was, and count the hits it could
not store as lost. With ``hits.on_damaged = "move_aside"`` the file is renamed and a new store
records the hits.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.fakedns import FakeDns
from tests.procutil import Serve, betblock, write_node

ADMIN = "admin-token-for-hitstore-tests-0123456789abcdef"


def _config(tmp_path: Path, upstream: FakeDns, on_damaged: str = "keep") -> Path:
    return write_node(tmp_path, upstream, f"""[hits]
flush_interval = 0.2
node = "edge-1"
on_damaged = "{on_damaged}"
""", http=f'admin_token = "{ADMIN}"\n')


async def _blocked(node: Serve, n: int, tag: str) -> None:
    for i in range(n):
        r = await dns.asyncquery.udp(dns.message.make_query(f"{tag}{i}.bad.test", "A"), "127.0.0.1", port=node.dns_port, timeout=5)
        assert r.rcode() == dns.rcode.NXDOMAIN


def _events(node: Serve) -> list[dict[str, object]]:
    out = []
    for line in node.lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


async def _get(node: Serve, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(
        f"http://127.0.0.1:{node.http_port}{path}", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as r:
        return r.status, await r.text()


async def _cli(cfg: Path, *args: str) -> tuple[int, str]:
    rc, out, _ = await betblock("hits", "--config", str(cfg), *args, merge_stderr=True)
    return rc, out


async def _first_run(cfg: Path) -> None:
    node = await Serve.start(cfg)
    try:
        await _blocked(node, 20, "first")
    finally:
        assert await node.stop() == 0, node.log()
    rc, out = await _cli(cfg, "verify")
    assert rc == 0, out


def _damage(store: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{store}{suffix}").exists()  # a clean stop folds the WAL in
    size = store.stat().st_size
    with open(store, "r+b") as f:
        f.truncate(size // 2 if how == "half" else 0)


@pytest.mark.parametrize("how", ["half", "empty"])
async def test_dns_serves_over_a_damaged_hit_store_and_the_file_stays_untouched(tmp_path: Path, how: str) -> None:
    upstream = await FakeDns().start()
    try:
        cfg = _config(tmp_path, upstream)
        store = tmp_path / "var" / "hits.sqlite"
        await _first_run(cfg)
        _damage(store, how)
        before = hashlib.sha256(store.read_bytes()).hexdigest()

        node = await Serve.start(cfg)
        try:
            await _blocked(node, 30, "second")
            status, body = await _get(node, "/readyz")
            assert status == 200
            ready = json.loads(body)
            assert ready["status"] == "ready" and ready["degraded"]["hits"]["state"] == "failed", ready
            assert "damaged" in ready["degraded"]["hits"]["error"]
            status, body = await _get(node, "/v1/hits/status")
            assert status == 200 and json.loads(body)["recorder"]["store_state"] == "failed"
            status, _ = await _get(node, "/v1/hits")
            assert status == 503
            status, metrics = await _get(node, "/metrics")
            assert 'betblock_hits_store_state{state="failed"} 1.0' in metrics and "betblock_hits_store_up 0.0" in metrics
        finally:
            assert await node.stop() == 0, node.log()
        failed = [e for e in _events(node) if str(e.get("event", "")).startswith("hit store failed")]
        assert len(failed) == 1 and failed[0]["cause"] == "store file is damaged", node.log()
        stopped = [e for e in _events(node) if e.get("event") == "stopped"]
        assert stopped and stopped[-1]["lost"] == 30, node.log()  # every hit of this run, said at the end
        assert hashlib.sha256(store.read_bytes()).hexdigest() == before  # never written over
        assert sorted(p.name for p in store.parent.iterdir() if p.name.startswith("hits.sqlite")) == ["hits.sqlite"]
    finally:
        await upstream.stop()


async def test_move_aside_keeps_the_damaged_file_and_starts_a_new_store(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    try:
        cfg = _config(tmp_path, upstream, on_damaged="move_aside")
        store = tmp_path / "var" / "hits.sqlite"
        await _first_run(cfg)
        _damage(store, "half")
        damaged = store.read_bytes()

        node = await Serve.start(cfg)
        try:
            await _blocked(node, 25, "second")
            status, body = await _get(node, "/readyz")
            assert status == 200 and "degraded" not in json.loads(body)
        finally:
            assert await node.stop() == 0, node.log()
        moved = [e for e in _events(node) if str(e.get("event", "")).startswith("hit store damaged; moved aside")]
        assert len(moved) == 1, node.log()
        aside = [p for p in store.parent.iterdir() if p.name.startswith("hits.sqlite.damaged-") and not p.name.endswith(("-wal", "-shm"))]
        assert len(aside) == 1 and aside[0].read_bytes() == damaged
        assert any(p.name.startswith("hits.checkpoints.damaged-") for p in store.parent.iterdir())
        rc, out = await _cli(cfg, "status")
        assert rc == 0 and json.loads(out)["hits"] == 25, out
        rc, out = await _cli(cfg, "verify")
        assert rc == 0 and out.startswith("ok: "), out
    finally:
        await upstream.stop()
