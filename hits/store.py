"""The hit store's contract and everything both stores (SQLite, PostgreSQL) share.

Owns the schema's shape (dictionary tables for nodes, clients, names, agency sets and policy
versions; one compact integer row per hit or per aggregated count, its time relative to its
batch and its node on the batch; the batch chain; which agency sets each block of ids holds;
daily roll-ups for the statistics), the read side (pages, export, statistics, status, chain
verification) written once in portable SQL, and the retention rule (whole batches older than
the retention age, oldest first, so the chain stays verifiable from an anchor).

A store is written by one writer thread (``write_batch``, ``ids``) and read from the event loop
(``fetch``). Must not import the resolver.
"""

from __future__ import annotations

import abc
import time
from itertools import repeat
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.errors import BetblockError
from hits.checkpoint import ChainHead
from hits.chain import GENESIS, REFS, Row, digest, digest_v2, referenced, referenced_v2, text_block
from hits.query import DRIVE_MAX, INLINE_MAX, OBSERVE, Filters, Resolved, action_matches, hit_dict, name_rev, page_sql

SCHEMA_VERSION = 4
DAY_MS = 86_400_000
BLOCK_SHIFT = 10  # rule_blocks: which agency sets occur among each 1024 consecutive hit ids
# client_blocks (SQLite, schema 4): which clients occur among each 4096 consecutive hit ids. Far
# fewer entries than one per hit where clients repeat (a flood, a busy subscriber), and a client
# filter then scans only those blocks, 4096 rows at most each.
CLIENT_BLOCK_SHIFT = 12
BOUNDARY_MAX = 64  # batches straddling a time bound matched one by one; beyond, per row through batches
KINDS = ("node", "client", "name", "rule", "policy")
# kind -> (table, text column expression, key column)
DICT_TABLES = {
    "node": ("nodes", "node", "node"),
    "client": ("clients", "client || char(31) || net", "client"),
    "name": ("names", "rev", "rev"),  # stored reversed: the text is name_rev(rev)
    "rule": ("rules", "agencies || '|' || action", "agencies"),
    "policy": ("policies", "version", "version"),
}


class StoreError(BetblockError):
    """The hit store cannot be opened or written; ``cause`` says why in one word (see ``CAUSES``)."""

    def __init__(self, message: str, cause: str = "other") -> None:
        super().__init__(message)
        self.cause = cause


# Why a write or an open failed, as the metrics and the log name it.
CAUSES = {
    "disk_full": "disk full",
    "read_only": "store is read-only",
    "corrupt": "store file is damaged",
    "io": "I/O error",
    "unavailable": "store unreachable",
    "missing": "no such hit log",
    "other": "error",
}

# New dictionary entries for ``HitStore.ids``: key text -> the values of the table's other columns
# (a client's network, a rule's action, ...; see ``DICT_TABLES``).
Entries = Mapping[str, tuple[str | int, ...]]


@dataclass
class Batch:
    """What the writer hands to a store: compact rows as columns, plus what the chain and
    roll-ups need. Row times are ms after ``base_ts`` (the batch's earliest hit); the node is
    the batch's, not the row's; ``listed`` is the byte offset of the matched entry inside the
    queried name's wire form, or minus its names id when it is not a suffix (CNAME inspection)."""

    node: int
    base_ts: int  # ms since the epoch
    max_ts: int
    columns: tuple[list[int], ...]  # chain.COLUMNS: ts, client, name, qtype, listed, rule, policy, cnt
    text_block: bytes  # ``chain.text_block`` of every dictionary entry the rows refer to
    # Roll-ups, day -> key -> hits (a batch is almost always within one day: one dict each).
    daily_rule: dict[int, dict[int, int]] = field(default_factory=dict)  # rule
    daily_name: dict[int, dict[int, int]] = field(default_factory=dict)  # name
    daily_net: dict[int, dict[int, int]] = field(default_factory=dict)  # client network (nets id)
    first_seen: dict[int, int] = field(default_factory=dict)  # name id -> ts ms
    name_rules: list[tuple[int, int]] = field(default_factory=list)  # (name, rule) pairs new in this batch

    def __len__(self) -> int:
        return len(self.columns[0])

    def rows(self) -> Iterator[tuple[int, ...]]:
        return zip(*self.columns)

    def digest(self, prev: bytes, first: int) -> bytes:
        return digest_v2(prev, self.node, first, self.base_ts, self.columns, self.text_block)

    def rule_blocks(self, first: int) -> list[tuple[int, int]]:
        """(rule, block) pairs of the rows once their first id is known (one set per block)."""
        return blocks(self.columns[5], first, BLOCK_SHIFT)

    def client_blocks(self, first: int) -> list[tuple[int, int]]:
        """(client, block) pairs of the rows, blocks of ``CLIENT_BLOCK_SHIFT``."""
        return blocks(self.columns[1], first, CLIENT_BLOCK_SHIFT)


def blocks(values: Sequence[int], first: int, shift: int) -> list[tuple[int, int]]:
    """(value, block) pairs of a column whose first row has id ``first``: which values occur in
    each ``1 << shift`` consecutive ids (one set per block, C-level)."""
    out: set[tuple[int, int]] = set()
    i, n = 0, len(values)
    while i < n:
        block = (first + i) >> shift
        end = min(n, ((block + 1) << shift) - first)
        out.update(zip(set(values[i:end]), repeat(block)))
        i = end
    return sorted(out)


@dataclass(frozen=True)
class Broken:
    """The first link of the chain that does not verify."""

    batch: int
    first_hit: int
    last_hit: int
    reason: str


# (batch id, first hit id, hash, base time, max_ts as stored, rows) of each verified batch
Visit = Callable[[int, int, bytes, int, int, list[tuple[Any, ...]]], None]


class HitStore(abc.ABC):
    """A hit store. Subclasses provide the connection handling and the dialect."""

    kind = "?"
    postings = False  # names drive through name_hits (SQLite), else an index on hits
    client_blocks = False  # clients drive through client_blocks (SQLite), else an index on hits

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.last_purge: dict[str, Any] | None = None
        # Where the chain stood after this process's last write or purge (for checkpoints).
        self.head: ChainHead | None = None
        # Signs the anchor each purge leaves (the checkpoint key, which is not in the store), so
        # that only retention, not someone editing the store, can move the anchor.
        self.seal: Callable[[bytes], str] | None = None

    # -- lifecycle and primitives (per dialect) ----------------------------------------------

    @abc.abstractmethod
    async def open(self, create: bool = True) -> None:
        """Connect, create (unless ``create`` is false: StoreError "no such hit log") or migrate the schema."""

    @abc.abstractmethod
    async def chain_head(self) -> ChainHead:
        """Where the chain stands now, read from the store."""

    def classify(self, exc: BaseException) -> str:
        """The cause (a ``CAUSES`` key) of a failed open or write."""
        if isinstance(exc, StoreError):
            return exc.cause
        return "other"

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def abandon(self) -> None:
        """Close what ``open`` opened, so that ``open`` may be called again (a damaged store)."""
        await self.close()

    @property
    def ident(self) -> str:
        """Which store this is, as checkpoints name it."""
        return self.kind

    @abc.abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query (``?`` placeholders) and return its rows."""

    @abc.abstractmethod
    def ids(self, kind: str, values: Entries) -> dict[str, int]:
        """Writer thread: the dictionary ids of ``values`` (key -> extra columns), inserting new ones."""

    @abc.abstractmethod
    def write_batch(self, batch: Batch) -> tuple[int, int]:
        """Writer thread: append rows, chain link and roll-ups in one transaction; (first id, last id)."""

    @abc.abstractmethod
    async def purge(self, cutoff_ms: int) -> int:
        """Delete the oldest batches whose hits are all older than ``cutoff_ms``; the count of rows."""

    @abc.abstractmethod
    async def size_bytes(self) -> int | None: ...

    @abc.abstractmethod
    async def execute_locked(self, stmts: Sequence[str]) -> None:
        """Run write statements in one transaction under the writers' lock (maintenance only)."""

    # -- read side -------------------------------------------------------------------------

    async def _resolve(self, f: Filters) -> list[Resolved] | None:
        """Dictionary ids for each filter; None when some filter can match nothing."""
        out: list[Resolved] = []
        if f.name is not None:
            rev = name_rev(f.name)
            if f.exact:
                where, params = "rev = ?", (rev,)
            else:
                where, params = "rev = ? OR (rev > ? AND rev < ?)", (rev, rev + ".", rev + "/")
            ids = [r[0] for r in await self.fetch(f"SELECT id FROM names WHERE {where} LIMIT {INLINE_MAX + 1}", params)]
            if not ids:
                return None
            if len(ids) > INLINE_MAX:
                out.append(Resolved("name", None, (f"SELECT id FROM names WHERE {where}", params)))
            else:
                out.append(Resolved("name", tuple(ids)))
        if f.client is not None:
            ids = [r[0] for r in await self.fetch(f"SELECT id FROM clients WHERE client = ? OR net = ? LIMIT {INLINE_MAX + 1}", (f.client, f.client))]
            if not ids:
                return None
            if len(ids) > INLINE_MAX:
                out.append(Resolved("client", None, ("SELECT id FROM clients WHERE client = ? OR net = ?", (f.client, f.client))))
            else:
                out.append(Resolved("client", tuple(ids)))
        if f.agency is not None or f.action is not None:
            rules = await self.fetch("SELECT id, agencies, action FROM rules")
            ids = [
                rid
                for rid, agencies, action in rules
                if (f.agency is None or f.agency in agencies.split(",")) and (f.action is None or action_matches(f.action, action))
            ]
            if not ids:
                return None
            out.append(Resolved("rule", tuple(ids)))
        names = next((r for r in out if r.column == "name" and r.ids), None)
        rules = next((r for r in out if r.column == "rule" and r.ids), None)
        if names is not None and rules is not None:
            # A name is hit under few agency sets: keep only names ever hit under a wanted one,
            # so that "popular name AND other agency" does not walk all of that name's hits.
            assert names.ids is not None and rules.ids is not None
            pairs = await self.fetch(
                f"SELECT DISTINCT name FROM name_rules WHERE name IN ({', '.join('?' * len(names.ids))}) "
                f"AND rule IN ({', '.join('?' * len(rules.ids))})",
                (*names.ids, *rules.ids),
            )
            if not pairs:
                return None
            out[out.index(names)] = Resolved("name", tuple(sorted(r[0] for r in pairs)))
        # The first short list drives the query through its index: names are the most selective
        # column (a name has few hits next to an agency), then clients, then agency sets.
        priority = {"name": 0, "client": 1, "rule": 2}
        out.sort(key=lambda r: (r.ids is None or len(r.ids) > DRIVE_MAX, priority[r.column]))
        return out

    async def _id_bounds(self, f: Filters) -> tuple[int | None, int | None]:
        """Ids that can hold hits in the time range, from the batches' time spans."""
        lo = hi = None
        if f.since is not None:
            rows = await self.fetch("SELECT MIN(first_hit) FROM batches WHERE max_ts >= ?", (int(f.since * 1000),))
            lo = rows[0][0] if rows and rows[0][0] is not None else None
            if lo is None:
                return -1, -1  # nothing that recent
        if f.until is not None:
            rows = await self.fetch("SELECT MAX(last_hit) FROM batches WHERE min_ts < ?", (int(f.until * 1000),))
            hi = rows[0][0] if rows and rows[0][0] is not None else -1
        return lo, hi

    async def _time_preds(self, f: Filters, lo: int | None, hi: int | None) -> tuple[list[str], list[Any]]:
        """Exact time bounds on rows whose time is relative to their batch: the id range from
        ``_id_bounds`` holds whole batches, so only batches straddling a bound (or, out of time
        order, wholly outside it) need a predicate on ids and relative time."""
        preds: list[str] = []
        params: list[Any] = []
        bounds = []
        if f.since is not None:
            ms = int(f.since * 1000)
            bounds.append((ms, True, await self.fetch(
                f"SELECT first_hit, last_hit, min_ts, max_ts FROM batches WHERE first_hit >= ? AND min_ts < ? LIMIT {BOUNDARY_MAX + 1}",
                (lo if lo is not None else -1, ms))))
        if f.until is not None:
            ms = int(f.until * 1000)
            bounds.append((ms, False, await self.fetch(
                f"SELECT first_hit, last_hit, min_ts, max_ts FROM batches WHERE first_hit <= ? AND max_ts >= ? LIMIT {BOUNDARY_MAX + 1}",
                (hi if hi is not None else 1 << 62, ms))))
        for ms, since, edge in bounds:
            op = ">=" if since else "<"
            if len(edge) > BOUNDARY_MAX:  # many nodes or clock jumps: each row's batch base
                preds.append(f"ts + (SELECT b.min_ts FROM batches b WHERE b.first_hit <= hits.id ORDER BY b.first_hit DESC LIMIT 1) {op} ?")
                params.append(ms)
                continue
            for first, last, min_ts, max_ts in edge:
                if (max_ts < ms) if since else (min_ts >= ms):
                    preds.append("(id < ? OR id > ?)")
                    params += [first, last]
                else:
                    preds.append(f"(id < ? OR id > ? OR ts {op} ?)")
                    params += [first, last, ms - min_ts]
        return preds, params

    async def page(self, f: Filters, limit: int = 100, before: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Up to ``limit`` hits older than the cursor ``before``, newest first, and the next cursor."""
        resolved = await self._resolve(f)
        if resolved is None:
            return [], None
        lo, hi = await self._id_bounds(f)
        if lo == -1 and hi == -1:
            return [], None
        extra = await self._time_preds(f, lo, hi)
        drive = next((r for r in resolved if r.ids is not None and 0 < len(r.ids) <= DRIVE_MAX), None)
        if drive is not None and (drive.column == "rule" or (drive.column == "client" and self.client_blocks)):
            rows = await self._page_by_blocks(resolved, drive, f, lo, hi, before, limit, extra)
        else:
            sql, params = page_sql(resolved, f, lo, hi, before, limit, extra, self.postings)
            rows = await self.fetch(sql, params)
        hits = [hit_dict(r) for r in rows]
        nxt = hits[-1]["id"] if len(hits) == limit else None
        return hits, nxt

    async def _page_by_blocks(
        self, resolved: list[Resolved], drive: Resolved, f: Filters, lo: int | None, hi: int | None,
        before: int | None, limit: int, extra: tuple[list[str], list[Any]],
    ) -> list[tuple[Any, ...]]:
        """Agency sets (and, in SQLite, clients) have no index on the hits (an index costs every
        hit): ``rule_blocks`` says which 1024-id blocks hold an agency set, ``client_blocks``
        which 4096-id blocks a client; scan only those, newest first."""
        rules = drive.ids or ()
        table, col, shift = ("rule_blocks", "rule", BLOCK_SHIFT) if drive.column == "rule" else ("client_blocks", "client", CLIENT_BLOCK_SHIFT)
        top = before - 1 if before is not None else (hi if hi is not None else 1 << 62)
        if hi is not None:
            top = min(top, hi)
        bottom = lo if lo is not None else 0
        out: list[tuple[Any, ...]] = []
        chunk = 256
        while top >= bottom and len(out) < limit:
            parts = " UNION ALL ".join(
                f"SELECT * FROM (SELECT {col}, block FROM {table} WHERE {col} = ? AND block <= ? AND block >= ? "
                f"ORDER BY block DESC LIMIT {chunk}) AS b{i}"
                for i in range(len(rules))
            )
            params: list[Any] = []
            for r in rules:
                params += [r, top >> shift, bottom >> shift]
            per_rule: dict[int, list[int]] = {}
            for rule, block in await self.fetch(parts, params):
                per_rule.setdefault(rule, []).append(block)
            if not per_rule:
                break
            found = sorted({b for bs in per_rule.values() for b in bs}, reverse=True)
            # A rule that filled its list may have more blocks below its lowest: stop there this round.
            full = [min(bs) for bs in per_rule.values() if len(bs) >= chunk]
            floor = max(full) if full else bottom >> shift
            ranges: list[list[int]] = []
            for block in found:
                if block < floor:
                    break
                a, b = block << shift, ((block + 1) << shift) - 1
                if ranges and ranges[-1][0] == b + 1:
                    ranges[-1][0] = a
                else:
                    ranges.append([a, b])
            for a, b in ranges:
                a, b = max(a, bottom), min(b, top)
                if a > b:
                    continue
                # Inside a block the rows are few: scanned by id, whichever column drives.
                sql, params = page_sql(resolved, f, a, b, None, limit - len(out), extra, self.postings and drive.column != "client")
                out += await self.fetch(sql, params)
                if len(out) >= limit:
                    break
            top = (floor << shift) - 1
        return out[:limit]

    async def iterate(self, f: Filters, chunk: int = 5000) -> AsyncIterator[list[dict[str, Any]]]:
        """Every hit matching ``f``, newest first, in pages (for export)."""
        before = None
        while True:
            hits, before = await self.page(f, chunk, before)
            if hits:
                yield hits
            if before is None:
                return

    async def _series(self) -> dict[int, list[str]]:
        """Per stored rule, the series its hits count in: each agency whose entry matched, and
        ``<agency> (would block)`` for a rule in observe mode, so that charts and statistics
        never add what was only observed to what was blocked."""
        out: dict[int, list[str]] = {}
        for rid, agencies, action in await self.fetch("SELECT id, agencies, action FROM rules"):
            names = agencies.split(",")
            out[rid] = [f"{a} (would block)" for a in names] if action.startswith(OBSERVE + ":") else names
        return out

    async def stats(self, days: int = 30, top: int = 20, now: float | None = None) -> dict[str, Any]:
        """Hits per agency per day, top names and client networks, names first seen in the last day."""
        now = self.clock() if now is None else now
        first_day = int(now * 1000) // DAY_MS - days + 1
        rules = await self._series()
        per: dict[tuple[int, str], int] = {}
        for day, rule, hits in await self.fetch(
            "SELECT day, rule, SUM(hits) FROM daily_rule WHERE day >= ? GROUP BY day, rule", (first_day,)
        ):
            for agency in rules.get(rule, []):  # a hit counts for every agency whose entry matched
                per[(day, agency)] = per.get((day, agency), 0) + int(hits)
        # Summed per name id, and only the top ones joined to their text (ties: the older name).
        top_names = [(name_rev(rev), s) for rev, s in await self.fetch(
            "SELECT n.rev, t.s FROM (SELECT name, SUM(hits) AS s FROM daily_name WHERE day >= ? "
            "GROUP BY name ORDER BY s DESC, name LIMIT ?) AS t JOIN names n ON n.id = t.name ORDER BY t.s DESC, t.name",
            (first_day, top),
        )]
        top_nets = await self.fetch(
            "SELECT n.net, SUM(d.hits) AS s FROM daily_net d JOIN nets n ON n.id = d.net WHERE d.day >= ? "
            "GROUP BY n.net ORDER BY s DESC, n.net LIMIT ?",
            (first_day, top),
        )
        new_names = [(name_rev(rev), ts) for rev, ts in await self.fetch(
            "SELECT n.rev, f.ts FROM first_seen f JOIN names n ON n.id = f.name WHERE f.ts >= ? ORDER BY f.ts DESC, n.rev LIMIT ?",
            (int((now - 86400) * 1000), top * 5),
        )]
        return {
            "days": days,
            "per_agency_day": [
                {"day": _day_text(day), "agency": agency, "hits": hits} for (day, agency), hits in sorted(per.items())
            ],
            "top_names": [{"name": n, "hits": int(s)} for n, s in top_names],
            "top_networks": [{"network": n, "hits": int(s)} for n, s in top_nets],
            "new_names": [{"name": n, "first_seen": _ms_text(ts)} for n, ts in new_names],
        }

    async def hourly(self, hours: int = 24, now: float | None = None, max_rows: int = 500_000) -> dict[str, Any]:
        """Hits per agency per hour over the last ``hours`` (UTC hours, oldest first). There is no
        hourly roll-up, so the rows are read: at most the newest ``max_rows`` of them; when the
        window holds more, ``since`` says from when the counts are complete."""
        now = self.clock() if now is None else now
        first_hour = int(now) // 3600 - hours + 1
        cutoff = first_hour * 3_600_000
        bounds = await self.fetch("SELECT MIN(first_hit), MAX(last_hit) FROM batches WHERE max_ts >= ?", (cutoff,))
        lo, hi = bounds[0]
        per: dict[tuple[int, str], int] = {}
        partial = False
        if lo is not None:
            if hi - lo + 1 > max_rows:
                lo, partial = hi - max_rows + 1, True
            rules = await self._series()
            # Each row's time is relative to its batch: the batches of the window, joined by id range.
            rows = await self.fetch(
                "SELECT (b.min_ts + h.ts) / 3600000 AS hr, h.rule, SUM(h.cnt) FROM batches b "
                "JOIN hits h ON h.id >= b.first_hit AND h.id <= b.last_hit "
                "WHERE b.max_ts >= ? AND b.last_hit >= ? AND h.id >= ? AND b.min_ts + h.ts >= ? "
                "GROUP BY (b.min_ts + h.ts) / 3600000, h.rule",
                (cutoff, lo, lo, cutoff),
            )
            for hr, rule, hits in rows:
                for agency in rules.get(rule, []):
                    per[(int(hr), agency)] = per.get((int(hr), agency), 0) + int(hits)
        since = None
        if partial:
            first = await self.fetch("SELECT min_ts FROM batches WHERE first_hit <= ? ORDER BY first_hit DESC LIMIT 1", (lo,))
            since = _ms_text(first[0][0]) if first else None
        return {
            "hours": hours,
            "first_hour": time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(first_hour * 3600)),
            "since": since,
            "per_agency_hour": [
                {"hour": time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(hr * 3600)), "agency": agency, "hits": hits}
                for (hr, agency), hits in sorted(per.items())
            ],
        }

    async def status(self) -> dict[str, Any]:
        rows = await self.fetch("SELECT MIN(first_hit), MAX(last_hit), MIN(min_ts), MAX(max_ts), COUNT(*) FROM batches")
        lo, hi, oldest, newest, batches = rows[0]
        total = await self.fetch("SELECT SUM(hits) FROM daily_rule")
        hits = int(total[0][0] or 0)
        rolled = await self.fetch("SELECT value FROM meta WHERE key = 'rolled_upto'")
        if rolled:  # rows whose roll-ups the writer still holds (SQLite, under load)
            tail = await self.fetch("SELECT SUM(cnt) FROM hits WHERE id > ?", (int(rolled[0][0]),))
            hits += int(tail[0][0] or 0)
        return {
            "store": self.kind,
            "rows": (hi - lo + 1) if lo is not None else 0,
            "hits": hits,
            "batches": batches,
            "oldest": _ms_text(oldest) if oldest is not None else None,
            "newest": _ms_text(newest) if newest is not None else None,
            "size_bytes": await self.size_bytes(),
            "last_purge": self.last_purge,
        }

    # -- chain verification ----------------------------------------------------------------

    async def verify(self, chunk: int = 500, visit: Visit | None = None) -> tuple[int, Broken | None]:
        """Walk the chain from its anchor; (batches verified, the first broken link or None).
        ``visit`` sees each verified batch with its rows (``hits.audit`` recomputes from them)."""
        anchor_rows = await self.fetch("SELECT value FROM meta WHERE key = 'anchor'")
        prev = bytes.fromhex(anchor_rows[0][0]) if anchor_rows else GENESIS
        verified = 0
        covered = 0
        last = -1
        while True:
            batches = await self.fetch(
                "SELECT id, first_hit, last_hit, hash, node, min_ts, format, max_ts FROM batches WHERE id > ? ORDER BY id LIMIT ?",
                (last, chunk),
            )
            if not batches:
                break
            for bid, first, lastid, stored, node, base_ts, fmt, max_ts in batches:
                stored = bytes(stored)
                rows = await self.fetch(
                    "SELECT ts, client, name, qtype, listed, rule, policy, cnt FROM hits WHERE id >= ? AND id <= ? ORDER BY id",
                    (first, lastid),
                )
                if len(rows) != lastid - first + 1:
                    return verified, Broken(bid, first, lastid, f"{lastid - first + 1 - len(rows)} rows missing")
                if fmt == 1:  # written before schema 3: the rows as they were stored then
                    old: list[Row] = [(ts + base_ts, node, c, n, q, -li, r, p, k) for ts, c, n, q, li, r, p, k in rows]
                    ok = digest(prev, old, await self._texts(referenced(old))) == stored
                else:
                    columns = tuple(list(col) for col in zip(*rows)) if rows else tuple([] for _ in range(8))
                    block = text_block(await self._texts(referenced_v2(node, columns)))
                    ok = digest_v2(prev, node, first, base_ts, columns, block) == stored
                if not ok:
                    return verified, Broken(bid, first, lastid, "hash does not match the rows and names stored")
                prev = stored
                verified += 1
                covered += len(rows)
                last = bid
                if visit is not None:
                    visit(bid, first, stored, base_ts, max_ts, rows)
        count = (await self.fetch("SELECT COUNT(*) FROM hits"))[0][0]
        if count != covered:
            return verified, Broken(last, -1, -1, f"{count - covered} rows outside every batch")
        return verified, None

    async def _texts(self, refs: dict[str, set[int]]) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for kind, ids in refs.items():
            table, expr, _key = DICT_TABLES[kind]
            out[kind] = {}
            items = sorted(ids)
            for i in range(0, len(items), 500):
                part = items[i : i + 500]
                for ident, text in await self.fetch(
                    f"SELECT id, {self.text_expr(kind, expr)} FROM {table} WHERE id IN ({', '.join('?' * len(part))})", part
                ):
                    out[kind][ident] = name_rev(text) if kind == "name" else str(text)
        return out

    def text_expr(self, kind: str, expr: str) -> str:
        return expr


def anchor_text(anchor_hex: str, purged: int) -> bytes:
    """What the anchor seal signs: the anchor and how many batches lie behind it."""
    return b"betblock-anchor %s %d" % (anchor_hex.encode(), purged)


def _day_text(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400))


def _ms_text(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{int(ms) % 1000:03d}Z"


__all__ = ["Batch", "Broken", "Entries", "HitStore", "StoreError", "BLOCK_SHIFT", "CLIENT_BLOCK_SHIFT", "DAY_MS", "KINDS", "REFS", "SCHEMA_VERSION", "DICT_TABLES", "blocks"]
