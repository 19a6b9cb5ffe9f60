"""A store that refuses hits (issue 8, items 8 and 9), on real SQLite and PostgreSQL.

A full disk is made real with SQLite's ``PRAGMA max_page_count``: the store answers SQLITE_FULL
exactly as on a full file system. The error is named by its cause, the held hits are kept (folded
into counts beyond the bound), shown and written once there is room, and what is lost is counted
truly. A PostgreSQL server down at start, or a schema cut back behind its checkpoint, leaves the
hit log failed and reported, never the node down."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from config.settings import HitsSettings
from hits.privacy import ClientPrivacy
from hits.recorder import HitRecorder
from hits.sqlite import SqliteStore
from hits.writer import HitWriter
from tests.hits.conftest import T0, hit


async def _full_store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "hits.sqlite")
    await store.open()
    assert store._w is not None
    pages = store._w.execute("PRAGMA page_count").fetchone()[0]
    store._w.execute(f"PRAGMA max_page_count = {pages}")  # not one page more: the disk is full
    return store


def _room(store: SqliteStore) -> None:
    assert store._w is not None
    store._w.execute("PRAGMA max_page_count = 1073741823")


def _record(rec: HitRecorder, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        rec.record(hit(T0 + i / 1000, f"192.0.2.{i % 200}", f"n{i}.casino.test", listed="casino.test"))


async def test_disk_full_is_named_held_and_written_once_there_is_room(tmp_path: Path) -> None:
    store = await _full_store(tmp_path)
    rec = HitRecorder(HitsSettings(buffer_size=1000), writer=HitWriter(store, ClientPrivacy("full"), "n"))
    try:
        _record(rec, 600)
        with capture_logs() as logs:
            await rec.flush()
            _record(rec, 300, 600)
            await rec.flush()
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1, errors  # once when it starts, not at every flush
        assert errors[0]["cause"] == "disk full" and "cannot rollback" not in errors[0]["error"]
        stats = rec.stats()
        assert stats["held"] == 900 and stats["lost"] == 0 and stats["store_state"] == "failing"
        assert rec.errors_by_cause == {"disk_full": 2}
        _room(store)
        with capture_logs() as logs:
            await rec.flush()
        assert any(e["event"].startswith("hit store writes again") for e in logs)
        stats = rec.stats()
        assert stats["held"] == 0 and stats["lost"] == 0 and stats["store_state"] == "ok"
        assert (await store.status())["hits"] == 900
        assert await store.verify() == (2, None)
    finally:
        rec.close()
        await store.close()


async def test_shutdown_on_a_full_disk_reports_every_hit_lost(tmp_path: Path) -> None:
    store = await _full_store(tmp_path)
    # flushes far apart: what the signal finds is in the buffer, the per-second counts and the
    # batches the store refused earlier
    rec = HitRecorder(HitsSettings(buffer_size=100, flush_interval=3600), writer=HitWriter(store, ClientPrivacy("full"), "n"))
    try:
        _record(rec, 250)
        await rec.flush()  # refused: 250 held
        _record(rec, 520, 250)  # 100 buffered, 420 counted per second and name (all distinct keys: 400 fit, 20 dropped)
        assert rec.dropped == 20
        assert rec.stats()["held"] == 250 + 500
        task = asyncio.create_task(rec.run())
        await asyncio.sleep(0)
        with capture_logs() as logs:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        lost = [e for e in logs if e["event"].startswith("hits lost at shutdown")]
        # every name is new, so folding into counts saves nothing: the oldest seconds gave way to
        # keep 4 x 100 held, and those 400 are lost at exit
        assert len(lost) == 1 and lost[0]["lost"] == 400 and lost[0]["cause"] == "disk full", logs
        stats = rec.stats()
        # everything taken in: 20 dropped at once, 350 to keep the bound, 400 at exit: 770 hits,
        # all counted lost, none stored
        assert stats["lost"] == 770 and stats["held"] == 0
        assert (await store.status())["hits"] == 0
    finally:
        rec.close()
        await store.close()


async def test_a_flood_held_on_a_full_disk_is_folded_into_counts_not_lost(tmp_path: Path) -> None:
    store = await _full_store(tmp_path)
    rec = HitRecorder(HitsSettings(buffer_size=100), writer=HitWriter(store, ClientPrivacy("full"), "n"))
    try:
        sent = 0
        for second in range(20):  # 20 flushes of a flood: 3 clients x 4 names, 300 hits a second
            for i in range(300):
                rec.record(hit(T0 + second + i / 1000, f"192.0.2.{i % 3}", f"n{i % 4}.casino.test", listed="casino.test"))
            sent += 300
            await rec.flush()
        stats = rec.stats()
        stored = (await store.status())["hits"]  # the first flushes may fit in free pages
        assert stats["held"] >= sent - 600 and stats["held"] + stored == sent and stats["lost"] == 0
        assert sum(len(b) // 7 + len(a) for b, a in rec._retry) <= 400  # thousands of hits in a few counts
        _room(store)
        await rec.flush()
        assert rec.stats()["held"] == 0 and rec.stats()["lost"] == 0
        assert (await store.status())["hits"] == sent
    finally:
        rec.close()
        await store.close()


async def test_postgres_down_at_start_holds_hits_and_writes_them_once_it_is_up(tmp_path: Path) -> None:
    """The hit log never stops the node from starting: an unreachable PostgreSQL leaves it
    failed (reported, hits held), and the retry writes the held hits once the server answers."""
    import socket

    from config.settings import Settings
    from hits.service import HitLog
    from tests.hits.conftest import PG_DSN, need_pg, pg_schema

    await need_pg()
    closed = socket.socket()  # bound, never listening: connections are refused
    closed.bind(("127.0.0.1", 0))
    schema = pg_schema()
    dead = f"postgresql://postgres@127.0.0.1:{closed.getsockname()[1]}/test"
    log = HitLog(Settings(data_dir=tmp_path, hits={"store": "postgres", "postgres_dsn": dead, "postgres_schema": schema}))
    try:
        with capture_logs() as logs:
            await log.open()
        health = log.health()
        assert health is not None and health["state"] == "failed" and "unreachable" in health["error"]
        assert [e["cause"] for e in logs if e["log_level"] == "error"] == ["store unreachable"]
        _record(log.recorder, 40)
        await log.recorder.flush()
        assert log.recorder.stats()["held"] == 40
        log.store.dsn = PG_DSN  # type: ignore[union-attr]  # the server is back
        await log._reopen()
        assert log.health() is not None  # open again; the held hits go at the next flush
        await log.recorder.flush()
        assert log.health() is None and log.recorder.stats()["held"] == 0
        assert (await log.store.status())["hits"] == 40  # type: ignore[union-attr]
    finally:
        closed.close()
        await log.close()
        from hits.postgres import PostgresStore

        await PostgresStore(PG_DSN, schema).drop_schema()


async def test_a_postgres_store_cut_back_behind_its_checkpoint_is_left_alone_and_reported(tmp_path: Path) -> None:
    """A PostgreSQL schema whose newest batches were deleted between runs: the next node does
    not write on (that would bury the cut), it reports the hit log failed and DNS is unaffected."""
    import asyncpg

    from config.settings import Settings
    from hits.service import HitLog
    from tests.hits.conftest import PG_DSN, need_pg, pg_schema

    await need_pg()
    schema = pg_schema()
    settings = Settings(data_dir=tmp_path, hits={"store": "postgres", "postgres_dsn": PG_DSN, "postgres_schema": schema})
    log = HitLog(settings)
    try:
        await log.open()
        for second in range(3):
            _record(log.recorder, 10, second * 10)
            await log.recorder.flush()
        await log.close()
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
        try:
            await conn.execute("DELETE FROM hits WHERE id > (SELECT MIN(last_hit) FROM batches)")
            await conn.execute("DELETE FROM batches WHERE id > (SELECT MIN(id) FROM batches)")
            await conn.execute("UPDATE meta SET value = '1' WHERE key = 'batches_total'")
        finally:
            await conn.close()
        log = HitLog(settings)
        with capture_logs() as logs:
            await log.open()
        health = log.health()
        assert health is not None and health["state"] == "failed" and "recorded 3" in health["error"], health
        assert [e["cause"] for e in logs if e["log_level"] == "error"] == ["store file is damaged"]
        _record(log.recorder, 5, 100)
        await log.recorder.flush()
        assert log.recorder.stats()["held"] == 5
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
        try:
            assert await conn.fetchval("SELECT COUNT(*) FROM batches") == 1  # nothing written on
        finally:
            await conn.close()
    finally:
        await log.close()
        from hits.postgres import PostgresStore

        await PostgresStore(PG_DSN, schema).drop_schema()
