"""The embedded hit store: one SQLite file in WAL mode.

Owns the SQLite schema and its migrations, the writer connection (used only by the writer
thread, so a write never runs on the event loop), and read-only connections in a small thread
pool for the API. WAL lets the API read while the writer appends. Also owns deferring the daily
roll-ups under load (``ROLLUP_SECONDS``, meta ``rolled_upto``): a flood hits the same names every
second, and one upsert per name every few seconds costs a fraction of one per name per batch.
Must not import the resolver.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


from hits.chain import GENESIS
from hits.checkpoint import ChainHead, create_private
from hits.store import BLOCK_SHIFT, CLIENT_BLOCK_SHIFT, DAY_MS, SCHEMA_VERSION, Batch, Entries, HitStore, StoreError, anchor_text

# SQLite's primary result codes (``sqlite3.Error.sqlite_errorcode & 0xff``) -> cause.
_CAUSES = {13: "disk_full", 8: "read_only", 11: "corrupt", 26: "corrupt", 10: "io", 14: "io", 5: "unavailable", 6: "unavailable"}


# Daily roll-ups are written with every batch while they are few (a quiet node, the tests: the
# statistics are current at once); beyond ``ROLLUP_KEYS`` keys pending they wait, merged in
# memory, at most ``ROLLUP_SECONDS``: under a flood each listed name is hit every second, and its
# upsert is the costliest statement per hit after the row itself. Meta ``rolled_upto`` is the
# newest hit id counted in the tables, written in the same transaction as the counts; at open,
# rows after it (a process killed with counts pending) are rolled up from the rows.
ROLLUP_SECONDS = 5.0
ROLLUP_KEYS = 1024


def sqlite_cause(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return exc.cause
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return _CAUSES.get(code & 0xFF, "other")
        text = str(exc)
        if "disk is full" in text:
            return "disk_full"
        if "malformed" in text or "not a database" in text:
            return "corrupt"
        if "readonly" in text:
            return "read_only"
    if isinstance(exc, OSError):
        import errno

        return {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only", errno.EIO: "io"}.get(exc.errno or 0, "io")
    return "other"


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open: SQLite ends it by itself on some errors
    (SQLITE_FULL among them), and a ROLLBACK then would hide the real error behind "cannot
    rollback - no transaction is active"."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _meta_int(conn: sqlite3.Connection, key: str) -> int | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else None


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


def _head(conn: sqlite3.Connection) -> ChainHead:
    """Where the chain stands (inside the caller's transaction)."""
    purged = _meta_int(conn, "purged_batches") or 0
    anchor = conn.execute("SELECT value FROM meta WHERE key = 'anchor'").fetchone()
    anchor_hex = anchor[0] if anchor else GENESIS.hex()
    total = _meta_int(conn, "batches_total")
    if total is None:
        total = conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] + purged
    newest = conn.execute("SELECT hash, last_hit FROM batches ORDER BY id DESC LIMIT 1").fetchone()
    if newest is None:
        return ChainHead(total, anchor_hex, _meta_int(conn, "last_id") or 0, purged, anchor_hex)
    return ChainHead(total, bytes(newest[0]).hex(), newest[1], purged, anchor_hex)

_ROWS_AFTER = "FROM batches b JOIN hits h ON h.id >= b.first_hit AND h.id <= b.last_hit WHERE b.last_hit > ? AND h.id > ?"
_DAY_OF = f"(b.min_ts + h.ts) / {DAY_MS}"
# The daily roll-ups of the rows after ``rolled_upto`` (bound twice), added to the tables.
ROLL_UP_AFTER = [
    f"INSERT INTO daily_rule (day, rule, hits) SELECT {_DAY_OF}, h.rule, SUM(h.cnt) {_ROWS_AFTER} GROUP BY 1, 2 "
    "ON CONFLICT (day, rule) DO UPDATE SET hits = hits + excluded.hits",
    f"INSERT INTO daily_name (day, name, hits) SELECT {_DAY_OF}, h.name, SUM(h.cnt) {_ROWS_AFTER} GROUP BY 1, 2 "
    "ON CONFLICT (day, name) DO UPDATE SET hits = hits + excluded.hits",
    f"INSERT INTO daily_net (day, net, hits) SELECT {_DAY_OF}, n.id, SUM(h.cnt) FROM batches b JOIN hits h "
    "ON h.id >= b.first_hit AND h.id <= b.last_hit JOIN clients c ON c.id = h.client JOIN nets n ON n.net = c.net "
    "WHERE b.last_hit > ? AND h.id > ? GROUP BY 1, 2 ON CONFLICT (day, net) DO UPDATE SET hits = hits + excluded.hits",
]


def _last_id(conn: sqlite3.Connection) -> int:
    top = conn.execute("SELECT MAX(id) FROM hits").fetchone()[0] or 0
    return max(top, _meta_int(conn, "last_id") or 0)


def _catch_up_rollups(conn: sqlite3.Connection) -> None:
    """Inside the caller's transaction: count rows after ``rolled_upto`` into the roll-ups
    (written before a crash, their counts still pending), or set it when a store has none."""
    rolled = _meta_int(conn, "rolled_upto")
    last = _last_id(conn)
    if rolled is None:  # a store written before deferral: every row is counted
        _set_meta(conn, "rolled_upto", str(last))
        return
    if rolled < last:
        for stmt in ROLL_UP_AFTER:
            conn.execute(stmt, (rolled, rolled))
        _set_meta(conn, "rolled_upto", str(last))


# Each migration moves the schema from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE nodes (id INTEGER PRIMARY KEY, node TEXT NOT NULL UNIQUE);
    CREATE TABLE clients (id INTEGER PRIMARY KEY, client TEXT NOT NULL UNIQUE, net TEXT NOT NULL);
    CREATE INDEX clients_net ON clients (net);
    CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, rev TEXT NOT NULL);
    CREATE INDEX names_rev ON names (rev);
    CREATE TABLE rules (id INTEGER PRIMARY KEY, agencies TEXT NOT NULL, action TEXT NOT NULL, UNIQUE (agencies, action));
    CREATE TABLE policies (id INTEGER PRIMARY KEY, version INTEGER NOT NULL UNIQUE);
    -- One row per hit, or per aggregated (second, client, name, type, entry) with its count.
    -- Integers only: SQLite stores each in 0-6 bytes (0 for a count of 1).
    CREATE TABLE hits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts INTEGER NOT NULL,      -- ms since the epoch
        node INTEGER NOT NULL,
        client INTEGER NOT NULL,
        name INTEGER NOT NULL,
        qtype INTEGER NOT NULL,
        listed INTEGER NOT NULL,  -- the matched entry (a names id)
        rule INTEGER NOT NULL,    -- agencies (winner first) and action
        policy INTEGER NOT NULL,
        cnt INTEGER NOT NULL
    );
    -- Each index holds (column, rowid): filtered pages walk them newest first.
    CREATE INDEX hits_name ON hits (name);
    CREATE INDEX hits_client ON hits (client);
    CREATE INDEX hits_rule ON hits (rule);
    CREATE TABLE batches (
        id INTEGER PRIMARY KEY,
        node INTEGER NOT NULL,
        written INTEGER NOT NULL,
        first_hit INTEGER NOT NULL,
        last_hit INTEGER NOT NULL,
        min_ts INTEGER NOT NULL,
        max_ts INTEGER NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE INDEX batches_max_ts ON batches (max_ts);
    CREATE INDEX batches_min_ts ON batches (min_ts);
    CREATE TABLE first_seen (name INTEGER PRIMARY KEY, ts INTEGER NOT NULL);
    CREATE INDEX first_seen_ts ON first_seen (ts);
    CREATE TABLE daily_rule (day INTEGER, rule INTEGER, hits INTEGER NOT NULL, PRIMARY KEY (day, rule)) WITHOUT ROWID;
    CREATE TABLE daily_name (day INTEGER, name INTEGER, hits INTEGER NOT NULL, PRIMARY KEY (day, name)) WITHOUT ROWID;
    CREATE TABLE daily_net (day INTEGER, net TEXT, hits INTEGER NOT NULL, PRIMARY KEY (day, net)) WITHOUT ROWID;
    """,
    # 2: which agency sets each name was hit under (serves name + agency filters).
    """
    CREATE TABLE name_rules (name INTEGER, rule INTEGER, PRIMARY KEY (name, rule)) WITHOUT ROWID;
    INSERT INTO name_rules (name, rule) SELECT DISTINCT name, rule FROM hits;
    """,
    # 3: compact rows. Time in ms after the batch's earliest hit (batches.min_ts), the node only
    # on the batch, the listed entry as a byte offset into the name (here: minus its names id, as
    # the rows of format-1 batches are rebuilt for their digest), ids assigned by the writer (no
    # AUTOINCREMENT bookkeeping per row), no index on the agency set (rule_blocks instead).
    """
    ALTER TABLE batches ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
    CREATE INDEX batches_first_hit ON batches (first_hit);
    INSERT INTO meta (key, value) SELECT 'last_id', CAST(COALESCE(MAX(seq), 0) AS TEXT) FROM sqlite_sequence WHERE name = 'hits';
    CREATE TABLE hits_v3 (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        client INTEGER NOT NULL,
        name INTEGER NOT NULL,
        qtype INTEGER NOT NULL,
        listed INTEGER NOT NULL,
        rule INTEGER NOT NULL,
        policy INTEGER NOT NULL,
        cnt INTEGER NOT NULL
    );
    INSERT INTO hits_v3 (id, ts, client, name, qtype, listed, rule, policy, cnt)
        SELECT h.id, h.ts - COALESCE((SELECT b.min_ts FROM batches b WHERE b.first_hit <= h.id ORDER BY b.first_hit DESC LIMIT 1), 0),
               h.client, h.name, h.qtype, -h.listed, h.rule, h.policy, h.cnt
        FROM hits h ORDER BY h.id;
    DROP TABLE hits;
    ALTER TABLE hits_v3 RENAME TO hits;
    -- Which hits each name and each client has, as an index would, but filled per batch by one
    -- sorted INSERT ... SELECT (neighbouring entries, no per-row binding): far cheaper than an
    -- index on hits maintained row by row in random name order.
    CREATE TABLE name_hits (n INTEGER, hid INTEGER, PRIMARY KEY (n, hid)) WITHOUT ROWID;
    INSERT INTO name_hits (n, hid) SELECT name, id FROM hits ORDER BY name, id;
    CREATE TABLE client_hits (c INTEGER, hid INTEGER, PRIMARY KEY (c, hid)) WITHOUT ROWID;
    INSERT INTO client_hits (c, hid) SELECT client, id FROM hits ORDER BY client, id;
    CREATE TABLE rule_blocks (rule INTEGER, block INTEGER, PRIMARY KEY (rule, block)) WITHOUT ROWID;
    INSERT INTO rule_blocks (rule, block) SELECT DISTINCT rule, id >> 10 FROM hits;
    -- A name is kept once, labels reversed ('test.casino.www'): the one unique index serves the
    -- exact name and its subdomains, and the text is the name read backwards.
    CREATE TABLE names_v3 (id INTEGER PRIMARY KEY, rev TEXT NOT NULL UNIQUE);
    INSERT INTO names_v3 (id, rev) SELECT id, rev FROM names ORDER BY id;
    DROP TABLE names;
    ALTER TABLE names_v3 RENAME TO names;
    -- Client networks by id in the daily roll-up (the text once, in nets).
    CREATE TABLE nets (id INTEGER PRIMARY KEY, net TEXT NOT NULL UNIQUE);
    INSERT INTO nets (net) SELECT DISTINCT net FROM daily_net ORDER BY net;
    CREATE TABLE daily_net_v3 (day INTEGER, net INTEGER, hits INTEGER NOT NULL, PRIMARY KEY (day, net)) WITHOUT ROWID;
    INSERT INTO daily_net_v3 (day, net, hits) SELECT d.day, n.id, d.hits FROM daily_net d JOIN nets n ON n.net = d.net;
    DROP TABLE daily_net;
    ALTER TABLE daily_net_v3 RENAME TO daily_net;
    """,
    # 4: which clients occur in each block of 4096 hit ids (CLIENT_BLOCK_SHIFT) instead of one
    # entry per hit: a client's hits repeat, and its filter scans those blocks.
    """
    CREATE TABLE client_blocks (client INTEGER, block INTEGER, PRIMARY KEY (client, block)) WITHOUT ROWID;
    INSERT INTO client_blocks (client, block) SELECT DISTINCT client, id >> 12 FROM hits;
    DROP TABLE client_hits;
    """,
]
assert len(MIGRATIONS) == SCHEMA_VERSION

DICT = {
    "node": ("nodes", ("node",)),
    "client": ("clients", ("client", "net")),
    "name": ("names", ("rev",)),
    "rule": ("rules", ("agencies", "action")),
    "policy": ("policies", ("version",)),
    "net": ("nets", ("net",)),
}
_INSERT = "INSERT INTO hits (ts, client, name, qtype, listed, rule, policy, cnt) VALUES (?,?,?,?,?,?,?,?)"
_INSERT_ID = "INSERT INTO hits (id, ts, client, name, qtype, listed, rule, policy, cnt) VALUES (?,?,?,?,?,?,?,?,?)"
# Rows go in ``_ROWS_PER`` at a time, one statement with that many VALUES: the sqlite3 module's
# per-statement overhead, paid per row by executemany, is most of a row's cost from Python.
_ROWS_PER = 128
_INSERT_MANY = _INSERT.replace("(?,?,?,?,?,?,?,?)", ",".join(["(?,?,?,?,?,?,?,?)"] * _ROWS_PER))
UNIQUE = {"node": ("node",), "client": ("client",), "name": ("rev",), "rule": ("agencies", "action"), "policy": ("version",), "net": ("net",)}


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error:
            conn.close()  # a damaged file: let go of it (and of the WAL files SQLite opened) at once
            raise
        # WAL + NORMAL: a committed batch survives a process crash; a power cut may lose the
        # last ones (the OS had not synced the WAL yet).
        conn.execute("PRAGMA synchronous = NORMAL")
        # A big batch grows the WAL; after each checkpoint it is cut back to the size at which
        # checkpoints start (1000 pages), so that the store's size is the database's.
        conn.execute("PRAGMA journal_size_limit = 4194304")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA cache_size = -65536")
    return conn


class SqliteStore(HitStore):
    """Hits in one SQLite file."""

    kind = "sqlite"
    postings = True
    client_blocks = True

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.path = Path(path)
        self._w: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hits-read")
        self._conns: list[sqlite3.Connection] = []
        self._wlock = threading.Lock()  # writer thread and retention never write at once
        # Daily roll-ups not written yet (table -> day -> key -> hits), and ``rolled_upto`` as
        # this process last wrote or read it (another value in the store: rebuilt meanwhile).
        self._pending: dict[str, dict[int, dict[int, int]]] = {"daily_rule": {}, "daily_name": {}, "daily_net": {}}
        self._pending_keys = 0
        self._rolled: int | None = None
        self._pending_upto = 0  # the newest hit id of the batches whose counts are pending
        self._rolled_at = float("-inf")  # time.monotonic() of the last roll-up write (the first write is due)

    async def open(self, create: bool = True) -> None:
        await asyncio.to_thread(self._open, create)

    def _open(self, create: bool) -> None:
        if not create and not self.path.is_file():
            raise StoreError(f"no such hit log: {self.path}", "missing")
        if not create and self.path.stat().st_size == 0:  # SQLite would take it for a new database
            raise StoreError(f"hit log {self.path} is empty (0 bytes): truncated or replaced", "corrupt")
        try:
            # Subscriber addresses: 0600, and SQLite creates the WAL and shm with the same mode.
            create_private(self.path)
            for suffix in ("", "-wal", "-shm"):  # files of an older version: made private too
                p = Path(str(self.path) + suffix)
                if p.exists() and p.stat().st_mode & 0o077:
                    p.chmod(0o600)
            self._w = _connect(self.path)
            self._migrate(self._w)
            self.head = _head(self._w)
        except (OSError, sqlite3.Error) as exc:
            if self._w is not None:
                self._w.close()
                self._w = None
            raise StoreError(f"cannot open hit store {self.path}: {exc}", sqlite_cause(exc)) from exc

    def classify(self, exc: BaseException) -> str:
        return sqlite_cause(exc)

    @property
    def ident(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    async def abandon(self) -> None:
        if self._w is not None:  # readers and their pool stay usable for a later open
            with self._wlock:
                self._w.close()
            self._w = None

    async def chain_head(self) -> ChainHead:
        return (await asyncio.to_thread(self._chain_head))

    def _chain_head(self) -> ChainHead:
        conn = self._w
        assert conn is not None
        with self._wlock:
            return _head(conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(f"hit store {self.path} has schema version {version}, newer than this program ({SCHEMA_VERSION})")
            for i in range(version, SCHEMA_VERSION):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )
            if _meta_int(conn, "batches_total") is None:  # stores written before checkpoints
                _set_meta(conn, "batches_total", str(_head(conn).batches))
            _catch_up_rollups(conn)
            self._rolled = _meta_int(conn, "rolled_upto")
            self._clear_pending()
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    async def close(self) -> None:
        self._readers.shutdown(wait=True)
        for c in self._conns:
            c.close()
        self._conns.clear()
        if self._w is not None:
            with self._wlock:
                self._flush_rollups()
                self._w.close()
            self._w = None

    # -- read ------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path, readonly=True)
            self._conns.append(conn)
        return conn

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, tuple(params)).fetchall()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._fetch, sql, params)

    async def size_bytes(self) -> int | None:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += Path(str(self.path) + suffix).stat().st_size
            except OSError:
                pass
        return total

    # -- write (writer thread) -------------------------------------------------------------

    def ids(self, kind: str, values: Entries) -> dict[str, int]:
        table, cols = DICT[kind]
        uniq = UNIQUE[kind]
        conn = self._w
        assert conn is not None
        out: dict[str, int] = {}
        rows = list(values.values())
        key_of = {row[: len(uniq)]: key for key, row in values.items()}
        ins = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) ON CONFLICT DO NOTHING"
        with self._wlock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(ins, rows)
                if len(uniq) == 1:
                    # Read the ids back in chunks (another process may have inserted some).
                    keys = [row[0] for row in rows]
                    for i in range(0, len(keys), 500):
                        part = keys[i : i + 500]
                        for ident, k in conn.execute(
                            f"SELECT id, {uniq[0]} FROM {table} WHERE {uniq[0]} IN ({', '.join('?' * len(part))})", part
                        ):
                            out[key_of[(k,)]] = ident
                else:
                    sel = f"SELECT id FROM {table} WHERE {' AND '.join(c + ' = ?' for c in uniq)}"
                    for key, row in values.items():
                        out[key] = conn.execute(sel, row[: len(uniq)]).fetchone()[0]
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        return out

    def write_batch(self, batch: Batch) -> tuple[int, int]:
        conn = self._w
        assert conn is not None and len(batch)
        n = len(batch)
        rows = batch.rows()
        with self._wlock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                prev = conn.execute("SELECT hash FROM batches ORDER BY id DESC LIMIT 1").fetchone()
                anchor = conn.execute("SELECT value FROM meta WHERE key = 'anchor'").fetchone()
                anchor_hex = anchor[0] if anchor else GENESIS.hex()
                prev_hash = bytes.fromhex(anchor_hex) if prev is None else bytes(prev[0])
                purged = _meta_int(conn, "purged_batches") or 0
                total = _meta_int(conn, "batches_total")
                if total is None:
                    total = conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] + purged
                _set_meta(conn, "batches_total", str(total + 1))
                # Ids are never reused: past the newest row and past any row retention deleted.
                top = conn.execute("SELECT MAX(id) FROM hits").fetchone()[0] or 0
                gone = conn.execute("SELECT value FROM meta WHERE key = 'last_id'").fetchone()
                first = max(top, int(gone[0]) if gone else 0) + 1
                # The first row takes its id explicitly, the others max(id) + 1 (contiguous: the
                # write lock is held), so that the rows bind no id.
                conn.execute(_INSERT_ID, (first, *next(rows)))
                if n > 1:
                    _insert_rows(conn, batch.columns)
                last = conn.execute("SELECT MAX(id) FROM hits").fetchone()[0]
                if last - first + 1 != n:
                    raise StoreError(f"hit ids not contiguous: {first}..{last} for {n} rows")
                conn.execute("INSERT INTO name_hits (n, hid) SELECT name, id FROM hits WHERE id >= ? ORDER BY name, id", (first,))
                conn.executemany("INSERT INTO client_blocks (client, block) VALUES (?,?) ON CONFLICT DO NOTHING", batch.client_blocks(first))
                h = batch.digest(prev_hash, first)
                conn.execute(
                    "INSERT INTO batches (node, written, first_hit, last_hit, min_ts, max_ts, hash, format) VALUES (?,?,?,?,?,?,?,2)",
                    (batch.node, int(self.clock() * 1000), first, last, batch.base_ts, batch.max_ts, h),
                )
                conn.executemany("INSERT INTO rule_blocks (rule, block) VALUES (?,?) ON CONFLICT DO NOTHING", batch.rule_blocks(first))
                _pairs(conn, batch)
                rolled = _meta_int(conn, "rolled_upto")
                if rolled != self._rolled or (self._pending_keys and first != self._pending_upto + 1):
                    # ``rebuild-index`` counted every row up to its own mark, a failed write lost
                    # what was pending, or rows of another writer lie between the pending ones and
                    # this batch: count the rows after the store's mark (this batch's too).
                    self._clear_pending()
                    _catch_up_rollups(conn)
                    due, new_rolled = True, last
                else:
                    pending = self._merge_pending(batch)
                    due = self._pending_keys <= ROLLUP_KEYS or time.monotonic() - self._rolled_at >= ROLLUP_SECONDS
                    if due:
                        _rollups(conn, pending)
                        _set_meta(conn, "rolled_upto", str(last))
                        new_rolled = last
                    else:
                        new_rolled = rolled
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                self._clear_pending()
                self._rolled = None  # counts of committed batches may have been lost: read it back and catch up
                raise
            self._rolled = new_rolled
            self._pending_upto = last
            if due:
                self._clear_pending()
                self._rolled_at = time.monotonic()
            self.head = ChainHead(total + 1, h.hex(), last, purged, anchor_hex)
        return first, last

    def _merge_pending(self, batch: Batch) -> dict[str, dict[int, dict[int, int]]]:
        """The batch's roll-ups added to what is pending (a copy when nothing was: the batch's own)."""
        pending = self._pending
        for table, per_day in (("daily_rule", batch.daily_rule), ("daily_name", batch.daily_name), ("daily_net", batch.daily_net)):
            into = pending[table]
            for day, counts in per_day.items():
                have = into.get(day)
                if have is None:
                    into[day] = dict(counts)
                    self._pending_keys += len(counts)
                    continue
                before = len(have)
                get = have.get
                for key, c in counts.items():
                    have[key] = get(key, 0) + c
                self._pending_keys += len(have) - before
        return pending

    def _clear_pending(self) -> None:
        self._pending = {"daily_rule": {}, "daily_name": {}, "daily_net": {}}
        self._pending_keys = 0

    def _flush_rollups(self) -> None:
        """Under the write lock: write the pending roll-ups now (shutdown, retention)."""
        conn = self._w
        if conn is None or not self._pending_keys:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            if _meta_int(conn, "rolled_upto") == self._rolled:
                _rollups(conn, self._pending)  # the rows after the mark, up to this writer's newest
                _set_meta(conn, "rolled_upto", str(self._pending_upto))
                _catch_up_rollups(conn)  # and any another writer added since (none, as a rule)
            else:  # rebuilt meanwhile (every row counted up to its mark), or the mark was lost
                _catch_up_rollups(conn)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            self._rolled = None  # the next write counts from the rows
            raise
        finally:
            self._clear_pending()
        self._rolled = _meta_int(conn, "rolled_upto")
        self._rolled_at = time.monotonic()

    async def execute_locked(self, stmts: Sequence[str]) -> None:
        await asyncio.to_thread(self._execute_locked, stmts)

    def _execute_locked(self, stmts: Sequence[str]) -> None:
        conn = self._w
        assert conn is not None
        with self._wlock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for s in stmts:
                    conn.execute(s)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise

    async def purge(self, cutoff_ms: int) -> int:
        return await asyncio.to_thread(self._purge, cutoff_ms)

    def _purge(self, cutoff_ms: int) -> int:
        conn = self._w
        assert conn is not None
        with self._wlock:  # counts pending for the days about to go would come back after them
            self._flush_rollups()
        removed = 0
        while True:
            # Oldest batches first, a chunk per transaction so that the writer is never held up long.
            with self._wlock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    batches = conn.execute(
                        "SELECT id, first_hit, last_hit, max_ts, hash FROM batches ORDER BY id LIMIT 200"
                    ).fetchall()
                    gone = []
                    for b in batches:
                        if b[3] >= cutoff_ms:
                            break
                        gone.append(b)
                    if gone:
                        conn.execute(
                            "INSERT INTO meta (key, value) SELECT 'last_id', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM hits WHERE true "
                            "ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))"
                        )
                        conn.executemany(
                            "DELETE FROM name_hits WHERE hid >= ? AND hid <= ? AND n IN (SELECT DISTINCT name FROM hits WHERE id >= ? AND id <= ?)",
                            [(b[1], b[2], b[1], b[2]) for b in gone],
                        )
                        conn.executemany("DELETE FROM hits WHERE id >= ? AND id <= ?", [(b[1], b[2]) for b in gone])
                        conn.execute("DELETE FROM rule_blocks WHERE block < ?", ((gone[-1][2] + 1) >> BLOCK_SHIFT,))
                        conn.execute("DELETE FROM client_blocks WHERE block < ?", ((gone[-1][2] + 1) >> CLIENT_BLOCK_SHIFT,))
                        conn.execute("DELETE FROM batches WHERE id <= ?", (gone[-1][0],))
                        conn.execute(
                            "INSERT INTO meta (key, value) VALUES ('anchor', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            (bytes(gone[-1][4]).hex(),),
                        )
                        purged = (_meta_int(conn, "purged_batches") or 0) + len(gone)
                        _set_meta(conn, "purged_batches", str(purged))
                        if self.seal is not None:
                            _set_meta(conn, "anchor_seal", self.seal(anchor_text(bytes(gone[-1][4]).hex(), purged)))
                        removed += sum(b[2] - b[1] + 1 for b in gone)
                    day = cutoff_ms // DAY_MS
                    for table in ("daily_rule", "daily_name", "daily_net"):
                        conn.execute(f"DELETE FROM {table} WHERE day < ?", (day,))
                    head = _head(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                self.head = head
            if len(gone) < 200:
                break
        self.last_purge = {"at": self.clock(), "cutoff_ms": cutoff_ms, "rows_removed": removed}
        return removed


def _insert_rows(conn: sqlite3.Connection, columns: tuple[list[int], ...]) -> None:
    """Every row but the first (already inserted with its id), ``_ROWS_PER`` per statement."""
    width = len(columns)
    flat: list[int] = [0] * (width * (len(columns[0]) - 1))
    for i, col in enumerate(columns):
        flat[i::width] = col[1:]  # interleaved at C speed
    step = width * _ROWS_PER
    whole = len(flat) - len(flat) % step
    if whole:
        conn.executemany(_INSERT_MANY, (flat[j : j + step] for j in range(0, whole, step)))
    if whole < len(flat):  # the last rows one by one: one prepared statement, not one per remainder
        conn.executemany(_INSERT, (flat[j : j + width] for j in range(whole, len(flat), width)))


def _rollups(conn: sqlite3.Connection, pending: dict[str, dict[int, dict[int, int]]]) -> None:
    for table, key in (("daily_rule", "rule"), ("daily_name", "name"), ("daily_net", "net")):
        for day, counts in pending[table].items():
            # The day as a literal (an int), the rows as (key, hits) pairs in key order:
            # neighbouring rows of the table, and no tuple built per row.
            conn.executemany(
                f"INSERT INTO {table} (day, {key}, hits) VALUES ({int(day)}, ?, ?) "
                f"ON CONFLICT (day, {key}) DO UPDATE SET hits = hits + excluded.hits",
                sorted(counts.items()),
            )


def _pairs(conn: sqlite3.Connection, batch: Batch) -> None:
    if batch.name_rules:
        conn.executemany("INSERT INTO name_rules (name, rule) VALUES (?,?) ON CONFLICT DO NOTHING", batch.name_rules)
    if batch.first_seen:
        conn.executemany(
            "INSERT INTO first_seen (name, ts) VALUES (?,?) ON CONFLICT (name) DO NOTHING", list(batch.first_seen.items())
        )
