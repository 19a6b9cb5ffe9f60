"""``hits verify`` in full: the chain, its checkpoint, and every table the queries read.

The chain covers the rows and the dictionaries. The queries also read tables derived from the
rows (which hits each name and client has, which agency sets each block of ids holds, which
agency sets each name was hit under, the batches' time bounds, the daily roll-ups and the
networks they count): editing those hides hits from filters, exports and statistics without
touching a chained byte. The audit recomputes each from the verified rows and names every
difference; ``rebuild`` writes them anew from the rows. The checkpoint (``hits.checkpoint``)
says how long the chain was and where its anchor stood, which the store alone cannot.

Owns the comparison and the report. Must not import the resolver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hits.checkpoint import ChainHead, Checkpoint
from hits.store import BLOCK_SHIFT, CLIENT_BLOCK_SHIFT, DAY_MS, Broken, HitStore, anchor_text

MAX_SHOWN = 5  # differences named per table


@dataclass
class Audit:
    verified: int = 0
    broken: Broken | None = None
    batches: int = 0  # batches ever written, as the walk found them (purged + verified)
    head: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken is None and not self.problems


class _Acc:
    """What the walk collects from the verified rows."""

    def __init__(self, purged: int, expect: list[tuple[int, str, str]], rolled: int | None = None) -> None:
        self.index = purged
        self.rolled = rolled  # newest hit id the roll-ups count (SQLite defers them under load); None: every row
        self.expect = {n: (h, what) for n, h, what in expect}
        self.found: dict[int, str] = {}
        self.head = ""
        self.daily_rule: Counter[tuple[int, int]] = Counter()
        self.daily_name: Counter[tuple[int, int]] = Counter()
        self.daily_client: Counter[tuple[int, int]] = Counter()
        self.name_rules: set[tuple[int, int]] = set()
        self.rule_blocks: set[tuple[int, int]] = set()
        self.client_blocks: set[tuple[int, int]] = set()
        self.names: set[int] = set()
        self.bad_bounds: list[str] = []
        self.first_batch_max: int | None = None

    def visit(self, bid: int, first: int, stored: bytes, base_ts: int, max_ts: int, rows: list[tuple[Any, ...]]) -> None:
        self.index += 1
        self.head = stored.hex()
        if self.index in self.expect:
            self.found[self.index] = self.head
        if self.first_batch_max is None:
            self.first_batch_max = max_ts
        if not rows:
            return
        ts, client, name, _q, _l, rule, _p, cnt = zip(*rows)
        real_max = base_ts + max(ts)
        if real_max != max_ts:
            self.bad_bounds.append(f"batch {bid}: max_ts {max_ts}, its rows end at {real_max}")
        self.name_rules.update(zip(name, rule))
        self.rule_blocks.update(zip(rule, ((first + i) >> BLOCK_SHIFT for i in range(len(rows)))))
        self.client_blocks.update(zip(client, ((first + i) >> CLIENT_BLOCK_SHIFT for i in range(len(rows)))))
        self.names.update(name)
        if self.rolled is not None and first + len(rows) - 1 > self.rolled:  # counts still pending in the writer
            keep = max(0, self.rolled - first + 1)
            if not keep:
                return
            ts, client, name, rule, cnt = ts[:keep], client[:keep], name[:keep], rule[:keep], cnt[:keep]
        lo, hi = base_ts // DAY_MS, real_max // DAY_MS
        days = [lo] * len(ts) if lo == hi else [(base_ts + t) // DAY_MS for t in ts]
        single = max(cnt) == 1  # no aggregated rows: count pairs at C speed
        for c, key in ((self.daily_rule, rule), (self.daily_name, name), (self.daily_client, client)):
            if single:
                c.update(zip(days, key))
            else:
                for pair, k in zip(zip(days, key), cnt):
                    c[pair] += k


def _diff(label: str, want: dict[Any, int], have: dict[Any, int]) -> list[str]:
    out = []
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            out.append(f"{key}: rows say {want.get(key, 0)}, table says {have.get(key, 'nothing')}")
    if not out:
        return []
    shown = "; ".join(out[:MAX_SHOWN]) + (f"; and {len(out) - MAX_SHOWN} more" if len(out) > MAX_SHOWN else "")
    return [f"{label} differs from the chained rows ({len(out)} entries): {shown}"]


def _missing(label: str, want: set[Any], have: set[Any]) -> list[str]:
    gone = sorted(want - have)
    if not gone:
        return []
    shown = ", ".join(map(str, gone[:MAX_SHOWN])) + (f" and {len(gone) - MAX_SHOWN} more" if len(gone) > MAX_SHOWN else "")
    return [f"{label} lacks {len(gone)} entries the chained rows need (their hits are hidden from filters): {shown}"]


async def _meta(store: HitStore, key: str) -> str | None:
    rows = await store.fetch("SELECT value FROM meta WHERE key = ?", (key,))
    return str(rows[0][0]) if rows else None


async def audit(
    store: HitStore,
    checkpoint: Checkpoint | None = None,
    *,
    sealed: Callable[[bytes, str | None], bool] | None = None,
    expect: tuple[str, int] | None = None,
) -> Audit:
    """Verify the chain, compare it with ``checkpoint`` (and ``expect``: a head hash prefix and
    batch count from elsewhere) and recompute the derived tables."""
    purged = int(await _meta(store, "purged_batches") or 0)
    anchor = await _meta(store, "anchor") or "00" * 32
    wanted: list[tuple[int, str, str]] = []
    cp = checkpoint.head if checkpoint is not None else None
    if cp is not None and cp.batches > purged:
        wanted.append((cp.batches, cp.head, "checkpoint"))
    if expect is not None and expect[1] > purged:
        wanted.append((expect[1], expect[0], "expected head"))
    rolled = await _meta(store, "rolled_upto")
    acc = _Acc(purged, wanted, int(rolled) if rolled is not None else None)
    out = Audit()
    out.verified, out.broken = await store.verify(visit=acc.visit)
    out.batches = purged + out.verified
    out.head = acc.head or anchor
    if out.broken is not None:
        return out
    problems = out.problems

    total = await _meta(store, "batches_total")
    if total is not None and int(total) != out.batches:
        problems.append(f"the store says {total} batches were written, the chain has {out.batches}")
    seal_ok = purged > 0 and sealed is not None and sealed(anchor_text(anchor, purged), await _meta(store, "anchor_seal"))
    if cp is not None and checkpoint is not None:
        where = f"checkpoint {checkpoint.seq} ({_when(checkpoint.at)})"
        problems += _against(cp, where, out, acc, purged, anchor, seal_ok)
    elif purged and not seal_ok:
        problems.append("the anchor was moved without the seal retention writes: the oldest batches were deleted by hand")
        if out.batches > cp.batches:
            out.notes.append(f"{out.batches - cp.batches} batches written after {where}")
    if expect is not None:
        prefix, count = expect
        if count > out.batches:
            problems.append(f"the chain has {out.batches} batches, {count} were expected: the newest were removed")
        elif count > purged and not acc.found.get(count, "").startswith(prefix.lower()):
            problems.append(f"batch {count} is not the expected head {prefix}")
        elif count == purged and not anchor.startswith(prefix.lower()):
            problems.append(f"the anchor is not the expected head {prefix}")
    problems += await _derived(store, acc, purged)
    if acc.rolled is not None:
        newest = (await store.fetch("SELECT MAX(last_hit) FROM batches"))[0][0]
        if acc.rolled > max(newest or 0, int(await _meta(store, "last_id") or 0)):
            problems.append(f"rolled_upto ({acc.rolled}) lies beyond the newest hit: the statistics would skip the next hits")
    return out


def _when(at: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _against(cp: ChainHead, where: str, out: Audit, acc: _Acc, purged: int, anchor: str, seal_ok: bool) -> list[str]:
    problems = []
    if cp.batches > out.batches:
        problems.append(
            f"the chain has {out.batches} batches but {where} recorded {cp.batches}: "
            f"the newest {cp.batches - out.batches} batches were removed"
        )
    elif cp.batches > purged and acc.found.get(cp.batches) != cp.head:
        problems.append(f"batch {cp.batches} is not the one {where} recorded (head {cp.head[:16]})")
    elif cp.batches == purged and cp.head != anchor:
        problems.append(f"the anchor is not the head {where} recorded")
    if purged == cp.purged and anchor != cp.anchor:
        problems.append(f"the anchor differs from {where}: the oldest batches were removed and the anchor moved")
    elif purged < cp.purged:
        problems.append(f"{where} recorded {cp.purged} batches removed by retention, the store says {purged}")
    elif purged > cp.purged:
        if not seal_ok:
            problems.append(
                f"{purged - cp.purged} batches were removed from the start after {where} and the anchor moved without "
                "the seal retention writes (or with another key: every node of a fleet needs the same hits.checkpoint_key)"
            )
        else:
            out.notes.append(f"{purged - cp.purged} batches removed by retention since {where}")
    return problems


async def _derived(store: HitStore, acc: _Acc, purged: int) -> list[str]:
    problems: list[str] = []
    if acc.bad_bounds:
        problems.append(f"batch time bounds differ from their rows (time filters skip hits): {'; '.join(acc.bad_bounds[:MAX_SHOWN])}")
    # Roll-ups: retention deletes whole days before its cutoff and whole batches, so only days
    # after the first remaining batch's last day are complete (all of them when nothing was purged).
    d0 = (acc.first_batch_max // DAY_MS) if purged and acc.first_batch_max is not None else -1
    if purged and acc.first_batch_max is None:
        d0 = (1 << 31) - 1  # nothing left to compare
    for table, key, have_want in (("daily_rule", "rule", acc.daily_rule), ("daily_name", "name", acc.daily_name)):
        want = {k: v for k, v in have_want.items() if k[0] > d0}
        have = {(int(d), int(k)): int(h) for d, k, h in await store.fetch(f"SELECT day, {key}, hits FROM {table} WHERE day > ?", (d0,))}
        problems += _diff(table, want, have)
    clients = {int(i): str(net) for i, net in await store.fetch("SELECT id, net FROM clients")}
    nets = {str(net): int(i) for i, net in await store.fetch("SELECT id, net FROM nets")}
    want_net: Counter[tuple[int, Any]] = Counter()
    for (day, client), n in acc.daily_client.items():
        if day > d0:
            net = clients.get(client)
            want_net[(day, nets.get(net, -1) if net is not None else -1)] += n  # -1: a network missing from nets
    have_net = {(int(d), int(k)): int(h) for d, k, h in await store.fetch("SELECT day, net, hits FROM daily_net WHERE day > ?", (d0,))}
    problems += _diff("daily_net", dict(want_net), have_net)
    have_pairs = {(int(a), int(b)) for a, b in await store.fetch("SELECT name, rule FROM name_rules")}
    problems += _missing("name_rules", acc.name_rules, have_pairs)
    have_blocks = {(int(a), int(b)) for a, b in await store.fetch("SELECT rule, block FROM rule_blocks")}
    problems += _missing("rule_blocks", acc.rule_blocks, have_blocks)
    have_seen = {int(r[0]) for r in await store.fetch("SELECT name FROM first_seen")}
    problems += _missing("first_seen", acc.names, have_seen)
    if store.client_blocks:  # SQLite: clients are found through the blocks that hold them
        have_clients = {(int(a), int(b)) for a, b in await store.fetch("SELECT client, block FROM client_blocks")}
        problems += _missing("client_blocks", acc.client_blocks, have_clients)
    if store.postings:  # SQLite: the name lookups are a table, filled per batch
        for table, key, col in (("name_hits", "n", "name"),):
            gone = (await store.fetch(
                f"SELECT COUNT(*) FROM hits h WHERE NOT EXISTS (SELECT 1 FROM {table} x WHERE x.{key} = h.{col} AND x.hid = h.id)"
            ))[0][0]
            extra = (await store.fetch(
                f"SELECT COUNT(*) FROM {table} x WHERE NOT EXISTS (SELECT 1 FROM hits h WHERE h.id = x.hid AND h.{col} = x.{key})"
            ))[0][0]
            if gone:
                problems.append(f"{table} lacks {gone} hits (hidden from {col} filters)")
            if extra:
                problems.append(f"{table} has {extra} entries that match no hit")
    return problems


# -- rebuild ---------------------------------------------------------------------------------

# Each derived table from the rows, as one statement per table; ``{d0}`` is the last day whose
# roll-ups retention may have cut (see ``_derived``). Portable SQL: SQLite and PostgreSQL.
_BATCH_ROWS = "FROM batches b JOIN hits h ON h.id >= b.first_hit AND h.id <= b.last_hit"
_DAY = f"(h.ts + b.min_ts) / {DAY_MS}"
REBUILD = [
    "UPDATE batches SET max_ts = min_ts + (SELECT MAX(h.ts) FROM hits h WHERE h.id >= batches.first_hit AND h.id <= batches.last_hit)",
    "DELETE FROM rule_blocks",
    f"INSERT INTO rule_blocks (rule, block) SELECT DISTINCT rule, id / {1 << BLOCK_SHIFT} FROM hits",
    "DELETE FROM name_rules",
    "INSERT INTO name_rules (name, rule) SELECT DISTINCT name, rule FROM hits",
    f"INSERT INTO first_seen (name, ts) SELECT h.name, MIN(h.ts + b.min_ts) {_BATCH_ROWS} WHERE true GROUP BY h.name ON CONFLICT (name) DO NOTHING",
    "INSERT INTO nets (net) SELECT DISTINCT net FROM clients WHERE true ON CONFLICT (net) DO NOTHING",
    "DELETE FROM daily_rule WHERE day > {d0}",
    f"INSERT INTO daily_rule (day, rule, hits) SELECT * FROM (SELECT {_DAY} AS day, h.rule, SUM(h.cnt) AS hits {_BATCH_ROWS} GROUP BY 1, 2) AS x WHERE day > {{d0}}",
    "DELETE FROM daily_name WHERE day > {d0}",
    f"INSERT INTO daily_name (day, name, hits) SELECT * FROM (SELECT {_DAY} AS day, h.name, SUM(h.cnt) AS hits {_BATCH_ROWS} GROUP BY 1, 2) AS x WHERE day > {{d0}}",
    "DELETE FROM daily_net WHERE day > {d0}",
    f"INSERT INTO daily_net (day, net, hits) SELECT * FROM (SELECT {_DAY} AS day, n.id, SUM(h.cnt) AS hits {_BATCH_ROWS} "
    "JOIN clients c ON c.id = h.client JOIN nets n ON n.net = c.net GROUP BY 1, 2) AS x WHERE day > {d0}",
]
REBUILD_POSTINGS = [  # SQLite only: the name and client lookups are tables; the roll-ups count every row
    "INSERT INTO meta (key, value) SELECT 'rolled_upto', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM hits WHERE true "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "DELETE FROM name_hits",
    "INSERT INTO name_hits (n, hid) SELECT name, id FROM hits ORDER BY name, id",
    "DELETE FROM client_blocks",
    f"INSERT INTO client_blocks (client, block) SELECT DISTINCT client, id >> {CLIENT_BLOCK_SHIFT} FROM hits",
]


async def rebuild(store: HitStore) -> None:
    """Write every derived table anew from the rows (after ``audit`` named differences). Run
    only on a store whose chain verifies: the rows are then the evidence."""
    purged = int(await _meta(store, "purged_batches") or 0)
    stmts = list(REBUILD) + (REBUILD_POSTINGS if store.postings else [])
    first = await store.fetch("SELECT min_ts + (SELECT MAX(h.ts) FROM hits h WHERE h.id >= b.first_hit AND h.id <= b.last_hit) "
                              "FROM batches b ORDER BY b.id LIMIT 1")
    if not purged:
        d0 = -1
    elif first and first[0][0] is not None:
        d0 = int(first[0][0]) // DAY_MS
    else:
        d0 = (1 << 31) - 1
    await store.execute_locked([s.replace("{d0}", str(d0)) for s in stmts])
