"""Tampering that the hash chain alone did not see (issue 8, item 7), on real SQLite and
PostgreSQL: batches cut from either end, the whole store emptied, derived tables edited. The
checkpoint kept outside the store and the audit of the derived tables catch each."""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from config.settings import HitsSettings
from hits.audit import Audit, audit
from hits.checkpoint import Checkpointer, CheckpointError, CheckpointLog
from hits.privacy import ClientPrivacy
from hits.store import DAY_MS, HitStore
from hits.writer import HitWriter
from tests.hits.conftest import CZ, PG_DSN, PL, T0, Clock, hit, write
from tests.procutil import betblock

BATCHES = 30


async def _fill(store: HitStore, tmp_path: Path) -> tuple[HitWriter, CheckpointLog]:
    cps = CheckpointLog(tmp_path / "hits.checkpoints")
    store.seal = cps.seal
    w = HitWriter(store, ClientPrivacy("truncate"), "node-a", Checkpointer(store, cps).record)
    for b in range(BATCHES):
        rule = CZ if b % 3 == 0 else PL
        await write(w, [hit(T0 + b, f"192.0.{b % 4}.{i}", f"n{i}.casino{b % 5}.test", rule=rule, listed=f"casino{b % 5}.test") for i in range(3)])
    return w, cps


async def _audit(store: HitStore, cps: CheckpointLog, **kw: Any) -> Audit:
    mine = [cp for cp in cps.read() if cp.store == store.ident]
    return await audit(store, mine[-1] if mine else None, sealed=cps.sealed, **kw)


async def _tamper(store: HitStore, *stmts: str) -> None:
    """Edit the store behind its back, as someone with access to the database could."""
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
        try:
            for s in stmts:
                conn.execute(s)
        finally:
            conn.close()
        return
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": store.schema})  # type: ignore[attr-defined]
    try:
        for s in stmts:
            await conn.execute(s)
    finally:
        await conn.close()


async def _batch(store: HitStore, nth: int) -> tuple[int, int, int, str]:
    """(id, first hit, last hit, hash hex) of the nth batch (1-based) in chain order."""
    rows = await store.fetch("SELECT id, first_hit, last_hit, hash FROM batches ORDER BY id")
    bid, first, last, h = rows[nth - 1]
    return bid, first, last, bytes(h).hex()


def _meta(key: str, value: str) -> str:
    return f"UPDATE meta SET value = '{value}' WHERE key = '{key}'"


async def test_an_untouched_store_verifies_with_its_checkpoint(store: HitStore, tmp_path: Path) -> None:
    _w, cps = await _fill(store, tmp_path)
    report = await _audit(store, cps)
    assert report.ok, report.problems
    assert report.batches == BATCHES and cps.latest().head.batches == BATCHES  # type: ignore[union-attr]
    assert report.head == cps.latest().head.head  # type: ignore[union-attr]


@pytest.mark.parametrize("cut", [1, 20])
async def test_deleting_the_newest_batches_is_caught(store: HitStore, tmp_path: Path, cut: int) -> None:
    await _fill(store, tmp_path)
    _bid, first, _last, _h = await _batch(store, BATCHES - cut + 1)
    await _tamper(
        store,
        f"DELETE FROM hits WHERE id >= {first}",
        f"DELETE FROM batches WHERE first_hit >= {first}",
        _meta("batches_total", str(BATCHES - cut)),
    )
    verified, broken = await store.verify()
    assert (verified, broken) == (BATCHES - cut, None)  # the chain alone still verifies
    report = await _audit(store, cps=CheckpointLog(tmp_path / "hits.checkpoints"))
    assert any(f"the newest {cut} batches were removed" in p for p in report.problems), report.problems


@pytest.mark.parametrize("smart", [False, True], ids=["anchor", "anchor+count"])
async def test_deleting_the_oldest_batches_and_moving_the_anchor_is_caught(store: HitStore, tmp_path: Path, smart: bool) -> None:
    _w, cps = await _fill(store, tmp_path)
    _bid, _first, last, h = await _batch(store, 10)
    stmts = [
        f"DELETE FROM hits WHERE id <= {last}",
        f"DELETE FROM batches WHERE last_hit <= {last}",
        f"INSERT INTO meta (key, value) VALUES ('anchor', '{h}')",
    ]
    if smart:  # also say that retention removed them
        stmts.append("INSERT INTO meta (key, value) VALUES ('purged_batches', '10')")
    await _tamper(store, *stmts)
    assert (await store.verify())[1] is None
    report = await _audit(store, cps)
    assert any("anchor" in p for p in report.problems), report.problems


async def test_emptying_the_store_is_caught(store: HitStore, tmp_path: Path) -> None:
    _w, cps = await _fill(store, tmp_path)
    await _tamper(store, "DELETE FROM hits", "DELETE FROM batches", _meta("batches_total", "0"))
    assert await store.verify() == (0, None)
    report = await _audit(store, cps)
    assert any(f"the newest {BATCHES} batches were removed" in p for p in report.problems), report.problems


async def test_retention_moves_the_anchor_without_a_false_alarm(store: HitStore, tmp_path: Path, clock: Clock) -> None:
    w, cps = await _fill(store, tmp_path)
    await write(w, [hit(T0 + 10 * 86400, "192.0.2.9", "late.casino.test")])
    clock.now = T0 + 10 * 86400
    assert await store.purge(int(clock.now * 1000) - DAY_MS) == BATCHES * 3
    # no checkpoint after the purge (a crash right after it): the seal in the store vouches
    report = await _audit(store, cps)
    assert report.ok, report.problems
    await asyncio.to_thread(w.after_write)
    report = await _audit(store, cps)
    assert report.ok and report.batches == BATCHES + 1, report.problems
    # but the seal does not vouch for an anchor moved by hand afterwards
    await _tamper(store, "DELETE FROM hits", "DELETE FROM batches", _meta("purged_batches", str(BATCHES + 1)),
                  _meta("anchor", (await _batch(store, 1))[3]))
    report = await _audit(store, cps)
    assert not report.ok


DERIVED = {
    "name index": ("DELETE FROM name_hits WHERE hid IN (SELECT MIN(id) FROM hits)", "name_hits"),
    "client blocks": ("DELETE FROM client_blocks WHERE block IN (SELECT MAX(block) FROM client_blocks)", "client_blocks"),
    "name and agency": ("DELETE FROM name_rules WHERE rule IN (SELECT MIN(rule) FROM name_rules)", "name_rules"),
    "agency blocks": ("DELETE FROM rule_blocks WHERE rule IN (SELECT MIN(rule) FROM rule_blocks)", "rule_blocks"),
    "batch time bounds": ("UPDATE batches SET max_ts = min_ts - 1 WHERE id IN (SELECT MAX(id) FROM batches)", "time bounds"),
    "daily agency roll-up": ("UPDATE daily_rule SET hits = hits - 1", "daily_rule"),
    "daily name roll-up": ("DELETE FROM daily_name WHERE name IN (SELECT MIN(name) FROM daily_name)", "daily_name"),
    "networks": ("UPDATE nets SET net = 'x' || net", "daily_net"),
    "first seen": ("DELETE FROM first_seen", "first_seen"),
}


@pytest.mark.parametrize("what", list(DERIVED))
async def test_edited_derived_tables_are_named(store: HitStore, tmp_path: Path, what: str) -> None:
    sql, named = DERIVED[what]
    if not store.postings and ("_hits" in sql or "client_blocks" in sql):
        pytest.skip("PostgreSQL finds names and clients through real indexes on the hits")
    _w, cps = await _fill(store, tmp_path)
    await _tamper(store, sql)
    assert (await store.verify())[1] is None  # not covered by the chain
    report = await _audit(store, cps)
    assert any(named in p for p in report.problems), report.problems


async def test_rebuild_writes_every_derived_table_anew(store: HitStore, tmp_path: Path, clock: Clock) -> None:
    from hits.audit import rebuild

    w, cps = await _fill(store, tmp_path)
    await write(w, [hit(T0 + 3 * 86400, "192.0.9.9", "late.casino.test")])
    clock.now = T0 + 3 * 86400
    await store.purge(int(clock.now * 1000) - DAY_MS + 1)  # retention leaves partial days behind
    await asyncio.to_thread(w.after_write)
    # a day after the oldest remaining batch's: its roll-ups are complete, and compared
    await write(w, [hit(T0 + 4 * 86400 + i, f"192.0.8.{i}", f"x{i}.casino.test") for i in range(5)])
    assert (await _audit(store, cps)).ok
    await _tamper(store, *(sql for sql, _ in DERIVED.values() if store.postings or ("_hits" not in sql and "client_blocks" not in sql)))
    named = " ".join((await _audit(store, cps)).problems)
    assert all(what in named for what in ("time bounds", "daily_rule", "daily_net", "first_seen")), named
    await rebuild(store)
    report = await _audit(store, cps)
    assert report.ok, report.problems


def test_an_edited_checkpoint_line_is_refused(tmp_path: Path) -> None:
    from hits.checkpoint import ChainHead

    cps = CheckpointLog(tmp_path / "c")
    cps.append("sqlite:x", ChainHead(5, "ab" * 32, 15, 0, "00" * 32))
    cps.append("sqlite:x", ChainHead(6, "cd" * 32, 18, 0, "00" * 32))
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o600 and (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    data = (tmp_path / "c").read_text().replace('"batches":6', '"batches":9')
    (tmp_path / "c").write_text(data)
    with pytest.raises(CheckpointError, match="line 2: signature"):
        cps.read()


# -- the command line --------------------------------------------------------------------


_cli = partial(betblock, "hits")


async def test_verify_on_a_mistyped_path_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[hits]\nsqlite_path = "{tmp_path / "hitz.sqlite"}"\n')
    rc, out, err = await _cli("--config", str(cfg), "verify")
    assert rc != 0 and "no such hit log" in err and "intact" not in out
    assert not (tmp_path / "hitz.sqlite").exists()


async def test_verify_catches_a_store_truncated_to_nothing_and_an_expected_head(tmp_path: Path) -> None:
    from hits.sqlite import SqliteStore

    settings = HitsSettings(sqlite_path=tmp_path / "hits.sqlite")
    st = SqliteStore(settings.sqlite_file(tmp_path))
    await st.open()
    try:
        _w, cps = await _fill(st, tmp_path / "var")
    finally:
        await st.close()
    head = cps.latest().head  # type: ignore[union-attr]
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[hits]\nsqlite_path = "{tmp_path / "hits.sqlite"}"\n')
    rc, out, _ = await _cli("--config", str(cfg), "verify", "--expect", f"{head.head[:16]}/{BATCHES}")
    assert rc == 0 and out.startswith(f"ok: {BATCHES} batches verified"), out
    rc, out, _ = await _cli("--config", str(cfg), "verify", "--expect", f"{head.head[:16]}/{BATCHES + 1}")
    assert rc == 1 and "expected" in out, out
    (tmp_path / "hits.sqlite").write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"hits.sqlite{suffix}").unlink(missing_ok=True)
    rc, out, _ = await _cli("--config", str(cfg), "verify")
    assert rc == 1 and "BROKEN" in out and "0 bytes" in out, out
    assert (tmp_path / "hits.sqlite").stat().st_size == 0


async def test_state_files_are_private(tmp_path: Path) -> None:
    """Subscriber addresses and the checkpoint key: mode 0600 whatever the umask (issue 8, item 13)."""
    import os

    from config.settings import Settings
    from hits.service import HitLog

    old = os.umask(0o022)
    try:
        log = HitLog(Settings(data_dir=tmp_path, hits={"jsonl_path": str(tmp_path / "hits.jsonl")}))
        await log.open()
        log.recorder.record(hit(T0, "192.0.2.1", "casino.test"))
        await log.recorder.flush()
        files = ["hits.sqlite", "hits.sqlite-wal", "hits.sqlite-shm", "hits.jsonl", "hits.checkpoints", "hits.checkpoints.key"]
        modes = {f: (tmp_path / f).stat().st_mode & 0o777 for f in files}
        await log.close()
    finally:
        os.umask(old)
    assert modes == {f: 0o600 for f in files}


def test_two_writers_of_one_checkpoint_file_keep_one_sequence(tmp_path: Path) -> None:
    """The node and `betblock hits purge` may append at once: one sequence, every line valid."""
    from concurrent.futures import ThreadPoolExecutor

    from hits.checkpoint import ChainHead

    a, b = CheckpointLog(tmp_path / "c"), CheckpointLog(tmp_path / "c")
    a.append("s", ChainHead(1, "ab" * 32, 1, 0, "00" * 32))  # the key exists before the race

    def burst(log: CheckpointLog) -> None:
        for i in range(200):
            log.append("s", ChainHead(i, "ab" * 32, i, 0, "00" * 32))

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(burst, (a, b)))
    assert [cp.seq for cp in a.read()] == list(range(1, 402))
