"""Both hit stores, the same tests: filters, pagination, retention, chain, stats, schema."""

from __future__ import annotations

import sqlite3
from typing import Any

import asyncpg
import pytest

from hits.postgres import numbered
from hits.query import Filters
from hits.store import DAY_MS, HitStore
from hits.writer import HitWriter
from tests.hits.conftest import CZ, PG_DSN, PL, PL_IT, T0, Clock, hit, write


async def tamper(store: HitStore, sql: str, *params: Any) -> None:
    """Edit the store behind its back, as an attacker with database access would."""
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        conn.execute(sql, params)
        conn.commit()
        conn.close()
    else:
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": store.schema})  # type: ignore[attr-defined]
        await conn.execute(numbered(sql), *params)
        await conn.close()


SAMPLE = [
    # (seconds after T0, client, name, qtype, rule, listed)
    (0, "192.0.2.1", "casino.test", 1, PL, "casino.test"),
    (1, "192.0.2.2", "www.casino.test", 28, PL, "casino.test"),
    (2, "198.51.100.7", "a.b.casino.test", 1, PL, "casino.test"),
    (3, "2001:db8::1", "bet.test", 65, PL_IT, "bet.test"),
    (4, "192.0.2.1", "xcasino.test", 1, CZ, "xcasino.test"),  # not a subdomain of casino.test
    (5, "192.0.2.9", "m.bet.test", 1, PL_IT, "bet.test"),
    (3600, "198.51.100.7", "poker.test", 16, CZ, "poker.test"),
]


@pytest.fixture
async def filled(store: HitStore, writer: HitWriter) -> HitStore:
    await write(writer, [hit(T0 + dt, c, n, t, r, l) for dt, c, n, t, r, l in SAMPLE[:4]])
    await write(writer, [hit(T0 + dt, c, n, t, r, l) for dt, c, n, t, r, l in SAMPLE[4:]])
    return store


FILTER_CASES = [
    ({}, ["poker.test", "m.bet.test", "xcasino.test", "bet.test", "a.b.casino.test", "www.casino.test", "casino.test"]),
    ({"name": "casino.test"}, ["a.b.casino.test", "www.casino.test", "casino.test"]),
    ({"name": "casino.test", "exact": "1"}, ["casino.test"]),
    ({"name": "CASINO.test."}, ["a.b.casino.test", "www.casino.test", "casino.test"]),
    ({"name": "b.casino.test"}, ["a.b.casino.test"]),
    ({"name": "nothing.test"}, []),
    ({"agency": "it-adm"}, ["m.bet.test", "bet.test"]),
    ({"agency": "pl-mf"}, ["m.bet.test", "bet.test", "a.b.casino.test", "www.casino.test", "casino.test"]),
    ({"agency": "cz-mf"}, ["poker.test", "xcasino.test"]),
    ({"agency": "nope"}, []),
    ({"client": "192.0.2.1"}, ["xcasino.test", "casino.test"]),
    ({"client": "192.0.2.0/24"}, ["m.bet.test", "xcasino.test", "www.casino.test", "casino.test"]),
    ({"client": "2001:db8::1"}, ["bet.test"]),
    ({"qtype": "AAAA"}, ["www.casino.test"]),
    ({"qtype": "65"}, ["bet.test"]),
    ({"type": "txt"}, ["poker.test"]),
    ({"action": "nxdomain"}, ["poker.test", "xcasino.test"]),
    ({"action": "redirect", "agency": "cz-mf"}, []),
    ({"since": str(T0 + 2), "until": str(T0 + 5)}, ["xcasino.test", "bet.test", "a.b.casino.test"]),
    ({"since": "2026-09-21T14:30:00Z"}, ["poker.test"]),
    ({"until": "2026-09-21T14:13:21"}, ["casino.test"]),
    ({"since": str(T0 + 7200)}, []),
    ({"name": "casino.test", "client": "192.0.2.0/24", "qtype": "A"}, ["casino.test"]),
    ({"agency": "pl-mf", "since": str(T0 + 3)}, ["m.bet.test", "bet.test"]),
    ({"name": "bet.test", "agency": "it-adm"}, ["m.bet.test", "bet.test"]),
    ({"name": "bet.test", "agency": "cz-mf"}, []),
    ({"name": "test", "agency": "cz-mf"}, ["poker.test", "xcasino.test"]),
]


@pytest.mark.parametrize(("params", "expected"), FILTER_CASES, ids=[str(p) for p, _ in FILTER_CASES])
async def test_each_filter(filled: HitStore, params: dict[str, str], expected: list[str]) -> None:
    hits, nxt = await filled.page(Filters.parse(params), limit=100)
    assert [h["name"] for h in hits] == expected
    assert nxt is None


async def test_hit_fields(filled: HitStore) -> None:
    hits, _ = await filled.page(Filters.parse({"name": "bet.test", "exact": "1"}))
    (h,) = hits
    assert h == {
        "id": h["id"], "time": "2026-09-21T14:13:23.000Z", "node": "node-a", "client": "2001:db8::1",
        "name": "bet.test", "qtype": "HTTPS", "listed": "bet.test", "agency": "pl-mf",
        "agencies": ["pl-mf", "it-adm"], "action": "redirect", "policy_version": 7, "count": 1,
    }


async def test_pagination_is_stable_while_hits_arrive(store: HitStore, writer: HitWriter) -> None:
    await write(writer, [hit(T0 + i, "192.0.2.1", f"n{i}.casino.test", listed="casino.test") for i in range(25)])
    f = Filters.parse({"name": "casino.test"})
    seen: list[str] = []
    page, cursor = await store.page(f, limit=10)
    seen += [h["name"] for h in page]
    # New hits arrive between pages (newer ids): they must neither shift nor repeat older ones.
    await write(writer, [hit(T0 + 100 + i, "192.0.2.1", f"new{i}.casino.test", listed="casino.test") for i in range(10)])
    while cursor is not None:
        page, cursor = await store.page(f, limit=10, before=cursor)
        seen += [h["name"] for h in page]
    assert seen == [f"n{i}.casino.test" for i in reversed(range(25))]
    first, _ = await store.page(f, limit=10)
    assert [h["name"] for h in first] == [f"new{i}.casino.test" for i in reversed(range(10))]


async def test_many_names_under_a_suffix_and_many_agency_sets(store: HitStore, writer: HitWriter) -> None:
    # More names than the query drives through the index one by one, and more than are inlined.
    await write(writer, [hit(T0 + i / 1000, "192.0.2.1", f"h{i}.bet.test", listed="bet.test") for i in range(700)])
    hits, nxt = await store.page(Filters.parse({"name": "bet.test"}), limit=50)
    assert [h["name"] for h in hits] == [f"h{i}.bet.test" for i in range(699, 649, -1)]
    total = 0
    async for chunk in store.iterate(Filters.parse({"name": "bet.test", "agency": "pl-mf"}), chunk=128):
        total += len(chunk)
    assert total == 700


async def test_retention_by_injected_clock(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    day = 86400
    await write(writer, [hit(T0 - 100 * day, "192.0.2.1", "old.test")])
    await write(writer, [hit(T0 - 10 * day, "192.0.2.1", "mid.test")])
    await write(writer, [hit(T0, "192.0.2.1", "new.test"), hit(T0 + 1, "192.0.2.2", "new.test")])
    assert await store.purge(int(clock() * 1000) - 90 * DAY_MS) == 1
    names = [h["name"] for h in (await store.page(Filters()))[0]]
    assert names == ["new.test", "new.test", "mid.test"]
    status = await store.status()
    assert status["rows"] == 3 and status["oldest"].startswith("2026-09-11")
    assert status["last_purge"]["rows_removed"] == 1
    assert await store.verify() == (2, None)  # the chain verifies from the anchor the purge left
    stats = await store.stats(days=3650, now=clock())
    assert sum(d["hits"] for d in stats["per_agency_day"]) == 3  # the roll-ups went too
    clock.now += 85 * day
    assert await store.purge(int(clock() * 1000) - 90 * DAY_MS) == 1
    assert [h["name"] for h in (await store.page(Filters()))[0]] == ["new.test", "new.test"]
    await write(writer, [hit(clock.now, "192.0.2.3", "later.test")])
    assert await store.verify() == (2, None)


async def test_chain_catches_an_edited_row(store: HitStore, writer: HitWriter) -> None:
    for b in range(3):
        await write(writer, [hit(T0 + b * 10 + i, "192.0.2.1", f"b{b}-{i}.casino.test", listed="casino.test") for i in range(3)])
    assert await store.verify() == (3, None)
    hits, _ = await store.page(Filters.parse({"name": "b1-1.casino.test"}))
    await tamper(store, "UPDATE hits SET cnt = 40 WHERE id = ?", hits[0]["id"])
    verified, broken = await store.verify()
    assert verified == 1 and broken is not None
    assert broken.first_hit <= hits[0]["id"] <= broken.last_hit
    assert "hash" in broken.reason
    await tamper(store, "UPDATE hits SET cnt = 1 WHERE id = ?", hits[0]["id"])
    assert await store.verify() == (3, None)


async def test_chain_catches_an_edited_name_a_deleted_row_and_a_deleted_batch(store: HitStore, writer: HitWriter) -> None:
    for b in range(3):
        await write(writer, [hit(T0 + b * 10 + i, f"192.0.2.{b}", f"b{b}-{i}.casino.test", listed="casino.test") for i in range(3)])
    await tamper(store, "UPDATE names SET rev = 'test.innocent' WHERE rev = 'test.casino.b2-0'")
    verified, broken = await store.verify()
    assert verified == 2 and broken is not None and "hash" in broken.reason
    await tamper(store, "UPDATE names SET rev = 'test.casino.b2-0' WHERE rev = 'test.innocent'")
    assert await store.verify() == (3, None)

    hits, _ = await store.page(Filters.parse({"name": "b0-2.casino.test"}))
    await tamper(store, "DELETE FROM hits WHERE id = ?", hits[0]["id"])
    verified, broken = await store.verify()
    assert verified == 0 and broken is not None and "missing" in broken.reason


async def test_chain_catches_a_deleted_batch_and_an_inserted_row(store: HitStore, writer: HitWriter) -> None:
    for b in range(3):
        await write(writer, [hit(T0 + b, "192.0.2.1", f"b{b}.casino.test", listed="casino.test")])
    await tamper(store, "INSERT INTO hits (ts, client, name, qtype, listed, rule, policy, cnt) SELECT ts, client, name, qtype, listed, rule, policy, cnt FROM hits WHERE id = (SELECT MIN(id) FROM hits)")
    verified, broken = await store.verify()
    assert verified == 3 and broken is not None and "outside" in broken.reason
    await tamper(store, "DELETE FROM hits WHERE id = (SELECT MAX(id) FROM hits)")
    await tamper(store, "DELETE FROM batches WHERE id = (SELECT MIN(id) + 1 FROM batches)")
    verified, broken = await store.verify()
    assert verified == 1 and broken is not None


async def test_stats(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    day = 86400
    await write(writer, [hit(T0 - 3 * day, "192.0.2.1", "old.bet.test", rule=PL_IT, listed="bet.test")])
    await write(
        writer,
        [hit(T0 - 60, "192.0.2.1", "casino.test")] * 3
        + [hit(T0 - 30, "198.51.100.4", "fresh.test", rule=CZ), hit(T0 - 20, "192.0.2.200", "old.bet.test", rule=PL_IT, listed="bet.test")],
    )
    s = await store.stats(days=7, top=10, now=clock())
    per = {(d["day"], d["agency"]): d["hits"] for d in s["per_agency_day"]}
    assert per == {
        ("2026-09-18", "pl-mf"): 1, ("2026-09-18", "it-adm"): 1,
        ("2026-09-21", "pl-mf"): 4, ("2026-09-21", "it-adm"): 1, ("2026-09-21", "cz-mf"): 1,
    }
    assert s["top_names"][0] == {"name": "casino.test", "hits": 3}
    assert {"name": "old.bet.test", "hits": 2} in s["top_names"]
    assert s["top_networks"][0] == {"network": "192.0.2.0/24", "hits": 5}
    assert [n["name"] for n in s["new_names"]] == ["fresh.test", "casino.test"]  # old.bet.test was seen 3 days ago
    only_today = await store.stats(days=1, now=clock())
    assert sum(d["hits"] for d in only_today["per_agency_day"] if d["agency"] == "pl-mf") == 4


async def test_aggregated_rows_keep_their_counts(store: HitStore, writer: HitWriter) -> None:
    h = hit(T0 + 0.5, "192.0.2.1", "casino.test")
    key = (int(h[0]),) + h[1:]
    await write(writer, [h], {key: 5000})
    hits, _ = await store.page(Filters())
    assert [x["count"] for x in hits] == [5000, 1]
    assert (await store.status())["hits"] == 5001
    assert await store.verify() == (1, None)


async def test_schema_is_migrated_once_and_reopens(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    await write(writer, [hit(T0, "192.0.2.1", "casino.test")])
    assert (await store.fetch("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
    if store.kind == "sqlite":
        from hits.sqlite import SqliteStore

        again: HitStore = SqliteStore(store.path, clock=clock)  # type: ignore[attr-defined]
    else:
        from hits.postgres import PostgresStore

        again = PostgresStore(PG_DSN, store.schema, clock=clock)  # type: ignore[attr-defined]
    await again.open()
    try:
        assert len((await again.page(Filters()))[0]) == 1
    finally:
        await again.close()
    await tamper(store, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    from hits.store import StoreError

    newer = SqliteStore(store.path, clock=clock) if store.kind == "sqlite" else PostgresStore(PG_DSN, store.schema, clock=clock)  # type: ignore[attr-defined]
    with pytest.raises(StoreError, match="99"):
        await newer.open()
    await newer.close()


async def test_migration_from_version_1_keeps_the_hits(tmp_path, clock: Clock) -> None:
    from hits.privacy import ClientPrivacy
    from hits.sqlite import MIGRATIONS, SqliteStore

    path = tmp_path / "v1.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + "; INSERT INTO meta VALUES ('schema_version', '1');")
    conn.close()
    store = SqliteStore(path, clock=clock)
    await store.open()
    try:
        w = HitWriter(store, ClientPrivacy("full"), "n")
        await write(w, [hit(T0, "192.0.2.1", "bet.test", rule=PL_IT)])
        assert (await store.fetch("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
        assert [h["name"] for h in (await store.page(Filters(name="bet.test", agency="it-adm")))[0]] == ["bet.test"]
    finally:
        await store.close()


async def test_listed_entry_as_offset_or_name(store: HitStore, writer: HitWriter) -> None:
    # A suffix of the queried name is stored as a byte offset (escaped labels included); an entry
    # that is not a suffix (CNAME inspection matched the target) as a names id.
    await write(writer, [
        hit(T0, "192.0.2.1", "www.casino.test", listed="casino.test"),
        hit(T0 + 1, "192.0.2.1", "a=b.x.casino.test", listed="x.casino.test"),
        hit(T0 + 2, "192.0.2.1", "alias.test", listed="cdn.bet.test"),
        hit(T0 + 3, "192.0.2.1", "casino.test"),
    ])
    hits, _ = await store.page(Filters())
    assert [(h["name"], h["listed"]) for h in hits] == [
        ("casino.test", "casino.test"),
        ("alias.test", "cdn.bet.test"),
        ("a\\061b.x.casino.test", "x.casino.test"),
        ("www.casino.test", "casino.test"),
    ]
    assert await store.verify() == (1, None)
    await tamper(store, "UPDATE names SET rev = 'test.good.cdn' WHERE rev = 'test.bet.cdn'")
    assert (await store.verify())[1] is not None  # the listed entry is covered by the chain too


async def test_rare_agency_pages_through_rule_blocks(store: HitStore, writer: HitWriter) -> None:
    # 5000 hits over several 1024-id blocks; the CZ agency set only in a few of them.
    hits = [hit(T0 + i / 100, "192.0.2.1", f"h{i}.casino.test", rule=CZ if i % 1500 == 7 else PL, listed="casino.test") for i in range(5000)]
    await write(writer, hits[:2500])
    await write(writer, hits[2500:])
    expected = [f"h{i}.casino.test" for i in reversed(range(5000)) if i % 1500 == 7]
    seen: list[str] = []
    page, cursor = await store.page(Filters(agency="cz-mf"), limit=2)
    seen += [h["name"] for h in page]
    while cursor is not None:
        page, cursor = await store.page(Filters(agency="cz-mf"), limit=2, before=cursor)
        seen += [h["name"] for h in page]
    assert seen == expected
    since = await store.page(Filters(agency="cz-mf", since=T0 + 10, until=T0 + 40), limit=10)
    assert [h["name"] for h in since[0]] == ["h3007.casino.test", "h1507.casino.test"]
    pl = await store.page(Filters(agency="pl-mf", until=T0 + 1), limit=3)
    assert [h["name"] for h in pl[0]] == ["h99.casino.test", "h98.casino.test", "h97.casino.test"]


async def test_time_bounds_across_many_straddling_batches(store: HitStore, writer: HitWriter) -> None:
    # More batches straddle the bound than are matched one by one: rows go through their batch.
    for b in range(70):
        await write(writer, [hit(T0 + b / 1000, "192.0.2.1", f"early{b}.test"), hit(T0 + 100 + b / 1000, "192.0.2.1", f"late{b}.test")])
    hits, _ = await store.page(Filters(since=T0 + 50), limit=1000)
    assert sorted(h["name"] for h in hits) == sorted(f"late{b}.test" for b in range(70))
    hits, _ = await store.page(Filters(until=T0 + 50, name="early3.test"), limit=1000)
    assert [h["name"] for h in hits] == ["early3.test"]
    hits, _ = await store.page(Filters(until=T0 + 50), limit=1000)
    assert len(hits) == 70 and all(h["name"].startswith("early") for h in hits)


async def test_ids_are_not_reused_after_everything_is_purged(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    await write(writer, [hit(T0 - 200 * 86400, "192.0.2.1", "old.test") for _ in range(3)])
    old_ids = [h["id"] for h in (await store.page(Filters()))[0]]
    assert await store.purge(int(clock() * 1000) - 90 * DAY_MS) == 3
    await write(writer, [hit(T0, "192.0.2.1", "new.test")])
    (new,), _ = await store.page(Filters())
    assert new["id"] > max(old_ids)
    assert await store.verify() == (1, None)


def _v2_store(path: Any) -> list[int]:
    """A schema-2 store as the previous writer left it: two chained batches (format 1); the hit ids."""
    from hits.chain import GENESIS, digest, referenced
    from hits.sqlite import MIGRATIONS

    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + ";" + MIGRATIONS[1] + "; INSERT INTO meta VALUES ('schema_version', '2');")
    conn.execute("INSERT INTO nodes VALUES (1, 'node-a')")
    conn.executemany("INSERT INTO clients VALUES (?,?,?)", [(1, "192.0.2.1", "192.0.2.0/24"), (2, "198.51.100.7", "198.51.100.0/24")])
    conn.executemany("INSERT INTO names VALUES (?,?,?)", [(1, "casino.test", "test.casino"), (2, "www.casino.test", "test.casino.www"), (3, "bet.test", "test.bet")])
    conn.executemany("INSERT INTO rules VALUES (?,?,?)", [(1, "pl-mf", "redirect"), (2, "cz-mf", "nxdomain")])
    conn.execute("INSERT INTO policies VALUES (1, 7)")
    t0 = int(T0 * 1000)
    batches = [
        [(t0, 1, 1, 2, 1, 1, 1, 1, 1), (t0 + 500, 1, 2, 1, 28, 1, 1, 1, 4)],
        [(t0 + 60_000, 1, 1, 3, 1, 3, 2, 1, 1)],
    ]
    prev = GENESIS
    dicts = {"node": "SELECT id, node FROM nodes", "client": "SELECT id, client || char(31) || net FROM clients",
             "name": "SELECT id, name FROM names", "rule": "SELECT id, agencies || '|' || action FROM rules",
             "policy": "SELECT id, version FROM policies"}
    texts_all = {k: {i: str(t) for i, t in conn.execute(q)} for k, q in dicts.items()}
    for rows in batches:
        cur = conn.executemany("INSERT INTO hits (ts, node, client, name, qtype, listed, rule, policy, cnt) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        last = conn.execute("SELECT MAX(id) FROM hits").fetchone()[0]
        first = last - len(rows) + 1
        refs = referenced(rows)
        prev = digest(prev, rows, {k: {i: texts_all[k][i] for i in ids} for k, ids in refs.items()})
        conn.execute("INSERT INTO batches (node, written, first_hit, last_hit, min_ts, max_ts, hash) VALUES (1, ?, ?, ?, ?, ?, ?)",
                     (t0, first, last, min(r[0] for r in rows), max(r[0] for r in rows), prev))
        for r in rows:
            conn.execute("INSERT INTO daily_rule VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET hits = hits + excluded.hits", (r[0] // DAY_MS, r[6], r[8]))
            net = "192.0.2.0/24" if r[2] == 1 else "198.51.100.0/24"
            conn.execute("INSERT INTO daily_net VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET hits = hits + excluded.hits", (r[0] // DAY_MS, net, r[8]))
        del cur
    conn.commit()
    ids = [r[0] for r in conn.execute("SELECT id FROM hits ORDER BY id")]
    conn.close()
    return ids


async def test_migration_from_version_2_keeps_hits_filters_and_chain(tmp_path: Any, clock: Clock) -> None:
    from hits.privacy import ClientPrivacy
    from hits.sqlite import SqliteStore

    path = tmp_path / "v2.sqlite"
    old_ids = _v2_store(path)
    store = SqliteStore(path, clock=clock)
    await store.open()
    try:
        assert (await store.fetch("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
        assert await store.verify() == (2, None)  # format-1 batches verify from the migrated rows
        hits, _ = await store.page(Filters())
        assert [(h["name"], h["listed"], h["qtype"], h["client"], h["agency"], h["node"], h["count"], h["time"]) for h in hits] == [
            ("bet.test", "bet.test", "A", "192.0.2.1", "cz-mf", "node-a", 1, "2026-09-21T14:14:20.000Z"),
            ("casino.test", "casino.test", "AAAA", "198.51.100.7", "pl-mf", "node-a", 4, "2026-09-21T14:13:20.500Z"),
            ("www.casino.test", "casino.test", "A", "192.0.2.1", "pl-mf", "node-a", 1, "2026-09-21T14:13:20.000Z"),
        ]
        for params, names in [
            ({"name": "casino.test"}, ["casino.test", "www.casino.test"]),
            ({"client": "198.51.100.0/24"}, ["casino.test"]),
            ({"agency": "cz-mf"}, ["bet.test"]),
            ({"since": str(T0 + 0.2), "until": str(T0 + 30)}, ["casino.test"]),
        ]:
            assert [h["name"] for h in (await store.page(Filters.parse(params)))[0]] == names, params
        w = HitWriter(store, ClientPrivacy("full"), "node-a")
        await write(w, [hit(T0 + 120, "192.0.2.1", "m.bet.test", rule=CZ, listed="bet.test")])
        hits, _ = await store.page(Filters())
        assert hits[0]["name"] == "m.bet.test" and hits[0]["listed"] == "bet.test" and hits[0]["id"] > max(old_ids)
        assert await store.verify() == (3, None)
        assert (await store.status())["hits"] == 7
        nets = (await store.stats(days=2, now=T0 + 200))["top_networks"]
        assert nets == [{"network": "198.51.100.0/24", "hits": 4}, {"network": "192.0.2.0/24", "hits": 3}]
        await tamper(store, "UPDATE hits SET cnt = 5 WHERE id = ?", old_ids[1])
        verified, broken = await store.verify()
        assert verified == 0 and broken is not None and "hash" in broken.reason
    finally:
        await store.close()


async def test_postgres_migration_from_version_2(clock: Clock) -> None:
    from hits.chain import GENESIS, digest, referenced
    from hits.postgres import MIGRATIONS, PostgresStore
    from hits.privacy import ClientPrivacy
    from tests.hits.conftest import need_pg, pg_schema

    await need_pg()
    schema = pg_schema()
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"; SET search_path = "{schema}"')
        await conn.execute("CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)")
        await conn.execute(MIGRATIONS[0])
        await conn.execute(MIGRATIONS[1])
        await conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        await conn.execute("INSERT INTO nodes (node) VALUES ('node-a'); INSERT INTO clients (client, net) VALUES ('192.0.2.1', '192.0.2.0/24');"
                           "INSERT INTO names (name, rev) VALUES ('casino.test', 'test.casino'), ('www.casino.test', 'test.casino.www');"
                           "INSERT INTO rules (agencies, action) VALUES ('pl-mf', 'redirect'); INSERT INTO policies (version) VALUES (7)")
        t0 = int(T0 * 1000)
        rows = [(t0, 1, 1, 2, 1, 1, 1, 1, 1), (t0 + 500, 1, 1, 1, 28, 1, 1, 1, 4)]
        await conn.executemany("INSERT INTO hits (ts, node, client, name, qtype, listed, rule, policy, cnt) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)", rows)
        texts = {"node": {1: "node-a"}, "client": {1: "192.0.2.1\x1f192.0.2.0/24"}, "name": {1: "casino.test", 2: "www.casino.test"},
                 "rule": {1: "pl-mf|redirect"}, "policy": {1: "7"}}
        assert referenced(rows).keys() == texts.keys()
        h = digest(GENESIS, rows, texts)
        await conn.execute("INSERT INTO batches (node, written, first_hit, last_hit, min_ts, max_ts, hash) VALUES (1, $1, 1, 2, $1, $2, $3)", t0, t0 + 500, h)
    finally:
        await conn.close()
    store = PostgresStore(PG_DSN, schema, clock=clock)
    await store.open()
    try:
        assert (await store.fetch("SELECT value FROM meta WHERE key = 'schema_version'")) == [("4",)]
        assert await store.verify() == (1, None)
        hits, _ = await store.page(Filters.parse({"name": "casino.test"}))
        assert [(h["name"], h["listed"], h["count"], h["time"]) for h in hits] == [
            ("casino.test", "casino.test", 4, "2026-09-21T14:13:20.500Z"),
            ("www.casino.test", "casino.test", 1, "2026-09-21T14:13:20.000Z"),
        ]
        w = HitWriter(store, ClientPrivacy("full"), "node-a")
        await write(w, [hit(T0 + 120, "192.0.2.1", "m.casino.test", listed="casino.test")])
        hits, _ = await store.page(Filters(agency="pl-mf"))
        assert [h["id"] for h in hits] == [3, 2, 1]
        assert await store.verify() == (2, None)
    finally:
        await store.close()
        await store.drop_schema()


async def test_batch_across_midnight_and_mostly_aggregated(store: HitStore, writer: HitWriter, clock: Clock) -> None:
    day = 86400
    midnight = (int(T0) // day) * day
    plain = [hit(midnight - 1, "192.0.2.1", "casino.test"), hit(midnight + 1, "192.0.2.2", "bet.test", rule=CZ)]
    agg = {(midnight + 2, "192.0.2.1", *hit(0, "", "casino.test")[2:]): 30, (midnight - 2, "198.51.100.1", *hit(0, "", "bet.test", rule=CZ)[2:]): 5}
    await write(writer, plain, agg)
    s = await store.stats(days=3, top=10, now=clock())
    per = {(d["day"], d["agency"]): d["hits"] for d in s["per_agency_day"]}
    assert per == {("2026-09-20", "pl-mf"): 1, ("2026-09-20", "cz-mf"): 5, ("2026-09-21", "pl-mf"): 30, ("2026-09-21", "cz-mf"): 1}
    assert s["top_names"] == [{"name": "casino.test", "hits": 31}, {"name": "bet.test", "hits": 6}]
    assert {n["network"]: n["hits"] for n in s["top_networks"]} == {"192.0.2.0/24": 32, "198.51.100.0/24": 5}
    hits, _ = await store.page(Filters(until=midnight))
    assert sorted((h["name"], h["count"]) for h in hits) == [("bet.test", 5), ("casino.test", 1)]
    assert await store.verify() == (1, None)


async def test_retention_removes_the_lookup_entries_too(tmp_path: Any, clock: Clock) -> None:
    from hits.privacy import ClientPrivacy
    from hits.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "h.sqlite", clock=clock)
    await store.open()
    try:
        w = HitWriter(store, ClientPrivacy("full"), "n")
        await write(w, [hit(T0 - 100 * 86400, f"192.0.2.{i}", f"old{i}.test") for i in range(50)])
        await write(w, [hit(T0, "192.0.2.1", "new.test")])
        await store.purge(int(clock() * 1000) - 90 * DAY_MS)
        assert (await store.fetch("SELECT COUNT(*) FROM name_hits")) == [(1,)]
        # client_blocks: a block goes when retention removes all of it (here it holds the new hit too)
        assert (await store.fetch("SELECT MAX(block) FROM client_blocks")) == [(0,)]
        assert [h["name"] for h in (await store.page(Filters(client="192.0.2.1")))[0]] == ["new.test"]
    finally:
        await store.close()
