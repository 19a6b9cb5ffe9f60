"""Schema 4 (SQLite): clients are found through ``client_blocks`` (which clients occur in each
4096 hit ids) instead of one ``client_hits`` entry per hit; a schema-3 store is migrated, keeps
its chain and its client filters, and audits clean."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hits.audit import audit
from hits.privacy import ClientPrivacy
from hits.query import Filters
from hits.sqlite import SqliteStore
from hits.store import CLIENT_BLOCK_SHIFT
from hits.writer import HitWriter
from tests.hits.conftest import T0, Clock, hit, write


async def test_a_schema_3_store_is_migrated_with_its_client_filters(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "hits.sqlite"
    store = SqliteStore(path, clock=clock)
    await store.open()
    w = HitWriter(store, ClientPrivacy("full"), "node-a")
    for b in range(3):
        await write(w, [hit(T0 + b, f"10.{b}.{i // 250}.{i % 250}", f"n{i}.casino.test") for i in range(2000)])
    await store.close()
    # Back to schema 3 as its writer left it: one client_hits entry per hit, no client_blocks.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "CREATE TABLE client_hits (c INTEGER, hid INTEGER, PRIMARY KEY (c, hid)) WITHOUT ROWID;"
        "INSERT INTO client_hits (c, hid) SELECT client, id FROM hits ORDER BY client, id;"
        "DROP TABLE client_blocks; DELETE FROM meta WHERE key = 'rolled_upto';"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    conn.close()
    store = SqliteStore(path, clock=clock)
    await store.open()
    try:
        assert (await store.fetch("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
        assert not await store.fetch("SELECT name FROM sqlite_master WHERE name = 'client_hits'")
        blocks = await store.fetch("SELECT COUNT(*), MAX(block) FROM client_blocks")
        assert blocks == [(6000, 6000 >> CLIENT_BLOCK_SHIFT)]  # each client once; batch 3 straddles blocks 0 and 1
        report = await audit(store)
        assert report.ok, report.problems
        got, _ = await store.page(Filters(client="10.2.7.0/24"), limit=5000)  # in batch 3, block 1
        assert len(got) == 250 and {h["client"].rsplit(".", 1)[0] for h in got} == {"10.2.7"}
        assert [h["id"] for h in got] == sorted((h["id"] for h in got), reverse=True)
    finally:
        await store.close()


async def test_a_client_filter_pages_through_the_blocks_that_hold_it(tmp_path: Path, clock: Clock) -> None:
    store = SqliteStore(tmp_path / "hits.sqlite", clock=clock)
    await store.open()
    try:
        w = HitWriter(store, ClientPrivacy("full"), "node-a")
        # A rare client among a flood from another: one hit every 1500, across several blocks.
        rows = [hit(T0 + i / 1000, "192.0.2.9" if i % 1500 == 0 else "198.51.100.1", f"n{i % 50}.casino.test") for i in range(12_000)]
        await write(w, rows)
        assert len(await store.fetch("SELECT block FROM client_blocks WHERE client = (SELECT id FROM clients WHERE client = '192.0.2.9')")) == 3
        seen: list[int] = []
        cursor = None
        while True:
            page, cursor = await store.page(Filters(client="192.0.2.9"), limit=3, before=cursor)
            seen += [h["id"] for h in page]
            if cursor is None:
                break
        assert seen == sorted(seen, reverse=True) and len(seen) == 8
        assert all(h["client"] == "192.0.2.9" for h in (await store.page(Filters(client="192.0.2.9", name="n0.casino.test")))[0])
    finally:
        await store.close()
