"""Daily roll-ups deferred under load (SQLite): a flood's counts wait in the writer, merged, and
still add up to the rows: in the status at once, after a clean close, after a crash (counted
from the rows at the next open), across a ``rebuild-index``; a moved mark is named by the audit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import hits.sqlite
from hits.audit import audit, rebuild
from hits.privacy import ClientPrivacy
from hits.sqlite import SqliteStore
from hits.writer import HitWriter
from tests.hits.conftest import CZ, PL, T0, Clock, hit, write


@pytest.fixture(autouse=True)
def _defer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every batch after the first counts as a flood: more keys pending than this, and never due by time.
    monkeypatch.setattr(hits.sqlite, "ROLLUP_KEYS", 4)
    monkeypatch.setattr(hits.sqlite, "ROLLUP_SECONDS", 1e9)


@pytest.fixture
async def sq(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteStore]:
    st = SqliteStore(tmp_path / "hits.sqlite", clock=clock)
    await st.open()
    yield st
    await st.close()


def _batch(b: int, n: int = 10) -> list[tuple[object, ...]]:
    return [hit(T0 + b, f"192.0.{b}.{i}", f"n{i}.casino{b}.test", rule=CZ if i % 3 == 0 else PL) for i in range(n)]


def _tables(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT COALESCE(SUM(hits), 0) FROM {t}").fetchone()[0] for t in ("daily_rule", "daily_name", "daily_net")}
    finally:
        conn.close()


async def test_a_flood_waits_in_the_writer_and_adds_up_in_the_status_and_after_close(sq: SqliteStore, tmp_path: Path) -> None:
    w = HitWriter(sq, ClientPrivacy("truncate"), "node-a")
    await write(w, _batch(0))  # the first write is due: counted at once
    assert _tables(sq.path) == {"daily_rule": 10, "daily_name": 10, "daily_net": 10}
    await write(w, _batch(1))
    await write(w, _batch(2))
    assert _tables(sq.path)["daily_name"] == 10  # two batches pending
    assert (await sq.status())["hits"] == 30  # the rows after the mark are counted
    report = await audit(sq)
    assert report.ok, report.problems  # the audit counts up to the mark
    await sq.close()
    assert _tables(tmp_path / "hits.sqlite") == {"daily_rule": 30, "daily_name": 30, "daily_net": 30}


async def test_counts_lost_in_a_crash_are_counted_from_the_rows_at_the_next_open(sq: SqliteStore, tmp_path: Path, clock: Clock) -> None:
    w = HitWriter(sq, ClientPrivacy("full"), "node-a")
    for b in range(3):
        await write(w, _batch(b))
    sq._clear_pending()  # what kill -9 loses: the counts held in memory, not the committed rows
    again = SqliteStore(tmp_path / "hits.sqlite", clock=clock)
    await again.open()
    try:
        assert _tables(again.path) == {"daily_rule": 30, "daily_name": 30, "daily_net": 30}
        report = await audit(again)
        assert report.ok, report.problems
        # The first process writes on (a fleet on one file, or a slow exit): its mark is stale,
        # so it counts from the rows after the store's mark, never twice.
        await write(w, _batch(3))
        await write(w, _batch(4))
    finally:
        await again.close()
    await sq.close()
    assert _tables(tmp_path / "hits.sqlite") == {"daily_rule": 50, "daily_name": 50, "daily_net": 50}
    fresh = SqliteStore(tmp_path / "hits.sqlite")
    await fresh.open(create=False)
    try:
        report = await audit(fresh)
        assert report.ok, report.problems
    finally:
        await fresh.close()


async def test_a_rebuild_while_counts_are_pending_counts_each_hit_once(sq: SqliteStore, tmp_path: Path) -> None:
    w = HitWriter(sq, ClientPrivacy("full"), "node-a")
    for b in range(3):
        await write(w, _batch(b))
    await rebuild(sq)  # counts every row, pending ones included
    await write(w, _batch(3))
    await sq.close()
    assert _tables(tmp_path / "hits.sqlite") == {"daily_rule": 40, "daily_name": 40, "daily_net": 40}


@pytest.mark.parametrize("mark", ["0", "1000000"])
async def test_a_moved_mark_is_named_by_the_audit(sq: SqliteStore, mark: str) -> None:
    w = HitWriter(sq, ClientPrivacy("full"), "node-a")
    for b in range(3):
        await write(w, _batch(b))
    await asyncio.to_thread(sq._execute_locked, [f"UPDATE meta SET value = '{mark}' WHERE key = 'rolled_upto'"])
    report = await audit(sq)
    assert not report.ok
    assert any("daily_" in p or "rolled_upto" in p for p in report.problems), report.problems


async def test_two_writers_of_one_file_count_each_hit_once(sq: SqliteStore, tmp_path: Path, clock: Clock) -> None:
    other = SqliteStore(tmp_path / "hits.sqlite", clock=clock)
    await other.open()
    try:
        w1 = HitWriter(sq, ClientPrivacy("full"), "node-a")
        w2 = HitWriter(other, ClientPrivacy("full"), "node-b")
        for b in range(6):  # each holds counts pending while the other writes rows between
            await write(w1 if b % 2 == 0 else w2, _batch(b))
        assert (await sq.status())["hits"] == 60
    finally:
        await other.close()
    await sq.close()
    assert _tables(tmp_path / "hits.sqlite") == {"daily_rule": 60, "daily_name": 60, "daily_net": 60}
