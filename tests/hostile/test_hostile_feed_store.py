"""A feed store that existed is never made anew, and a damaged one never crashes the start
(issue 8, items 2 and 9).

Through a real ``betblock serve`` process and real files: the store cut to 0 bytes, cut in half,
or with its header overwritten, with and without an intact saved snapshot beside it.

- With an intact snapshot the node keeps enforcing it, says the store is unusable (feeds
  status, ``betblock_feed_store_ok``, one log line) and refuses every update with 503.
- Without one it does not start: exit 1 and one clear line, never a traceback, and the damaged
  file is left as it was for the operator.
- ``betblock feeds recover`` sets the file aside and starts an empty store, audited.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.fakedns import FakeDns
from tests.hostile.feednode import DEADLINE, FeedNode, enforced_data
from tests.procutil import betblock

NAMES = [f"casino{i}.test" for i in range(3000)] + ["kasyno.test"]


@pytest.fixture(scope="module")
def enforced_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of a node that enforced ``NAMES`` (pushed), made once per module."""
    return enforced_data(tmp_path_factory.mktemp("enforced"), NAMES, "kasyno.test")


@pytest.fixture
async def enforced(tmp_path: Path, enforced_once: Path) -> FeedNode:
    """A stopped node that enforced ``NAMES`` (pushed): store, marker and snapshot on disk (a
    copy of ``enforced_once``, each test damages its own)."""
    upstream = await FakeDns().start()
    node = FeedNode.over(enforced_once, tmp_path, upstream)
    assert node.store.stat().st_size > 100_000 and node.snapshot.exists()
    return node


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _damage(path: Path, how: str) -> str | None:
    """Damage the file ``how``; the digest of what is left (None: no file)."""
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header":
        path.write_bytes(b"\0" * 100 + data[100:])
    else:  # missing
        path.unlink()
    return _digest(path)


def _no_traceback(node: FeedNode) -> None:
    assert "Traceback" not in node.text(), node.text()


async def _recover(node: FeedNode) -> str:
    rc, out, err = await betblock("feeds", "recover", "--config", str(node.cfg), seconds=DEADLINE)
    assert rc == 0, err
    return out


async def _store_status(node: FeedNode, ok: bool) -> dict[str, object]:
    def holds(status: int, body: Any) -> bool:
        assert status == 200, body
        return body["policy"]["store"]["ok"] is ok

    return (await node.feeds_when(holds, f"the feed store's ok to be {ok}"))["policy"]["store"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["empty", "half", "header", "missing"])
async def test_without_a_snapshot_an_unusable_store_stops_the_start_and_stays_as_it_was(
    enforced: FeedNode, how: str
) -> None:
    node = enforced
    left = _damage(node.store, how)
    node.snapshot.unlink()
    await node.start()
    try:
        code = await node.settle()
    finally:
        node.kill()
    assert code == 1, f"the node started on a {how} store:\n{node.text()}"
    _no_traceback(node)
    lines = [e for e in node.events() if e.get("event") == "cannot start"]
    assert len(lines) == 1, node.text()
    message = str(lines[0]["error"])
    assert "feeds recover" in message and "backup" in message, message
    assert {"empty": "empty", "half": "damaged", "header": "damaged", "missing": "missing"}[how] in message
    assert _digest(node.store) == left  # nothing made in its place


@pytest.mark.parametrize("how", ["empty", "half", "header"])
async def test_beside_an_intact_snapshot_an_unusable_store_keeps_enforcing_and_refuses_updates(
    enforced: FeedNode, how: str
) -> None:
    node = enforced
    left = _damage(node.store, how)
    await node.start()
    try:
        await node.ready()
        store = await _store_status(node, ok=False)
        assert "feeds recover" in str(store["problem"]), store
        for name in ("kasyno.test", "casino0.test", "www.casino2999.test"):
            assert await node.sinkholed(name), name
        status, body = await node.push(["kasyno.test", "new.test"])
        assert status == 503 and body["error"] == "feed store unavailable", body
        status, body = await node.http("PUT", "/v1/allowlist/kasyno.test")
        assert status == 503, body
        status, text = await node.http("GET", "/metrics")
        assert status == 200 and "betblock_feed_store_ok 0.0" in text, text
        assert await node.sinkholed("kasyno.test") and not await node.sinkholed("new.test")
        assert len([e for e in node.events() if e.get("event", "").startswith("feed store unusable")]) == 1, node.text()
        _no_traceback(node)
    finally:
        await node.stop()
    assert _digest(node.store) == left


async def test_recover_sets_the_store_aside_and_starts_an_empty_audited_one(enforced: FeedNode) -> None:
    node = enforced
    _damage(node.store, "half")
    node.snapshot.unlink()
    out = await _recover(node)
    assert "set aside" in out and "push agencies must push their lists again" in out, out
    aside = [p for p in node.data.iterdir() if p.name.startswith("feeds.sqlite.damaged-")]
    assert len(aside) == 1 and aside[0].stat().st_size > 0
    assert "nothing to recover" in await _recover(node)  # the new store is intact: left alone
    await node.start()
    try:
        await node.ready()
        await _store_status(node, ok=True)
        assert not await node.sinkholed("kasyno.test")  # the loss is the operator's decision, on record
        status, body = await node.http("GET", "/v1/audit")
        assert status == 200 and [a["action"] for a in body["audit"]] == ["store recovered"], body
        assert body["audit"][0]["detail"]["set_aside"] == str(aside[0])
        status, body = await node.push(["kasyno.test"])
        assert status == 200, body
        await node.until_sinkholed("kasyno.test")
    finally:
        await node.stop()


async def test_a_store_of_an_old_build_without_identity_is_adopted(enforced: FeedNode) -> None:
    """Upgrading: a store and snapshot written before the marker existed start as before."""
    node = enforced
    marker = node.store.with_name("feeds.sqlite.id")
    assert marker.exists()
    marker.unlink()
    db = sqlite3.connect(node.store)
    db.execute("DELETE FROM meta")
    db.commit()
    db.close()
    await node.start()
    try:
        await node.ready()
        store_id = (await _store_status(node, ok=True))["id"]
        assert store_id and await node.sinkholed("kasyno.test")
    finally:
        await node.stop()
    assert json.loads(marker.read_text())["store_id"] == store_id


async def test_a_damaged_store_and_a_damaged_snapshot_stop_the_start_with_one_line_each(enforced: FeedNode) -> None:
    node = enforced
    _damage(node.store, "half")
    data = bytearray(node.snapshot.read_bytes())
    data[len(data) // 2] ^= 0x01
    node.snapshot.write_bytes(bytes(data))
    await node.start()
    try:
        code = await node.settle()
    finally:
        node.kill()
    assert code == 1, node.text()
    _no_traceback(node)
    events = [str(e.get("event")) for e in node.events() if e.get("level") == "error"]
    assert events == ["saved snapshot rejected as damaged; compiling from the feed store instead", "cannot start"], node.text()
