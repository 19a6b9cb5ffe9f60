"""The feed store (SQLite): every version of every source, every entry, the audit trail.

Owns the schema and every query on it:

- ``versions``: one row per update received from a source, applied or not: its hash, source,
  time received, counts, what it added and removed, checksum and signature status, and its
  status (``active`` = the source's list now, ``superseded``, ``quarantined`` = waiting for an
  admin, ``rejected`` by an admin).
- ``entries``: one row per listing per version range. A row is added by the version that
  listed it and closed (``dropped_version``) by the one that no longer does, so the list of any
  version, the diff of any version and the history of any name are queries, and an update costs
  rows in proportion to its change, not to the list. Names are stored in wire format (the form
  the compiler holds), so a million-name version is written and read without converting a name.
- ``pending``: the full list of a quarantined version, until an admin decides.
- ``rejects``: the first rejected lines of each version.
- ``sources``: fetch state per source (ETag, Last-Modified, last success and error).
- ``allowlist``: names an admin allowlisted through the API.
- ``audit``: who changed what and when.
- ``installs`` and ``installed_versions``: every snapshot installed in the resolver, in order (its
  version, the time its listing and removal dates were evaluated, the time it went live) and,
  per source version, the first install that enforced it: the compliance report's "enforced at"
  and "lifted at" (``feeds/compliance.py``).

Every change is one transaction with the audit row that records it (a version applied and its
"update applied" row, a decision and the version it changed, an install and the versions it
enforced): a crash between two writes leaves both or neither, never an enforced version that the
audit trail does not show.

Blocking calls: the caller runs them in a thread. One connection guarded by a lock; WAL so
that ``betblock lookup`` can read while the server writes. Must not import aiohttp or resolver
code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from config.errors import BetblockError
from feeds.entry import Entry, Reject
from feeds.lists import ListDiff, SourceList, from_wire, to_wire

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    agency TEXT NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    format TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    actor TEXT NOT NULL,
    status TEXT NOT NULL,
    entries INTEGER NOT NULL,
    added INTEGER NOT NULL,
    removed INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    rejects INTEGER NOT NULL,
    checksum TEXT,
    signature TEXT,
    reason TEXT,
    meta TEXT,
    decided_at REAL,
    decided_by TEXT,
    PRIMARY KEY (agency, version)
);
CREATE INDEX IF NOT EXISTS versions_source ON versions(agency, source, version);
CREATE TABLE IF NOT EXISTS entries (
    agency TEXT NOT NULL,
    source TEXT NOT NULL,
    name BLOB NOT NULL,
    wildcard INTEGER NOT NULL,
    allow INTEGER NOT NULL,
    action TEXT,
    redirect TEXT,
    listed_at REAL,
    removed_at REAL,
    legal_ref TEXT,
    source_id TEXT,
    line INTEGER,
    added_version INTEGER NOT NULL,
    added_at REAL NOT NULL,
    dropped_version INTEGER,
    dropped_at REAL
);
CREATE INDEX IF NOT EXISTS entries_name ON entries(name);
-- Closed rows only: an index over every row's version would double the cost of writing a
-- big list; "what did version v add" scans instead (an admin question, asked rarely).
CREATE INDEX IF NOT EXISTS entries_dropped ON entries(agency, dropped_version) WHERE dropped_version IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending (
    agency TEXT NOT NULL,
    version INTEGER NOT NULL,
    list BLOB,
    diff TEXT NOT NULL,
    PRIMARY KEY (agency, version)
);
CREATE TABLE IF NOT EXISTS rejects (
    agency TEXT NOT NULL,
    version INTEGER NOT NULL,
    line INTEGER NOT NULL,
    text TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rejects_version ON rejects(agency, version);
CREATE TABLE IF NOT EXISTS sources (
    agency TEXT NOT NULL,
    source TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    last_attempt REAL,
    last_success REAL,
    last_change REAL,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (agency, source)
);
CREATE TABLE IF NOT EXISTS allowlist (
    name TEXT PRIMARY KEY,
    added_at REAL NOT NULL,
    added_by TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
-- Agencies an install only observed (observe mode): their listings in it blocked nothing, so
-- the compliance report does not count that install as enforcing them.
CREATE TABLE IF NOT EXISTS install_observing (
    seq INTEGER NOT NULL,
    agency TEXT NOT NULL,
    PRIMARY KEY (agency, seq)
);
-- An admin's switch of an agency between enforce and observe: wins over the configured mode.
CREATE TABLE IF NOT EXISTS agency_modes (
    agency TEXT PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('enforce', 'observe')),
    set_at REAL NOT NULL,
    set_by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
-- The store's identity (store_id, created_at), also kept in a marker file beside it, so that a
-- store that existed is never taken for a first start when it goes missing or empty.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    agency TEXT,
    version INTEGER,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_agency ON audit(agency, id);
-- In the order they happened (seq), whatever the wall clock did meanwhile.
CREATE TABLE IF NOT EXISTS installs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot INTEGER NOT NULL,
    dates_at REAL NOT NULL,
    installed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS installed_versions (
    agency TEXT NOT NULL,
    source TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    installed_at REAL NOT NULL,
    PRIMARY KEY (agency, source, version)
);
"""

MAX_STORED_REJECTS = 1000
SCHEMA_VERSION = 1


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def iso(ts: float | None) -> str | None:
    """A store timestamp as ISO 8601 UTC, for people and JSON."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """What is recorded about one update, before its rows."""

    agency: str
    source: str
    kind: str
    format: str
    sha256: str
    received_at: float
    actor: str
    entries: int
    rejects: int
    checksum: str | None = None
    signature: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Audit:
    """An audit row, written in the same transaction as the change it records (its version is
    the one the change gets when the writer assigns it)."""

    actor: str
    action: str
    ts: float
    agency: str | None = None
    version: int | None = None
    detail: dict[str, Any] | None = None


class StoreProblem(BetblockError):
    """The store file cannot be used as it is: missing, empty, damaged or of another schema
    (the message says which). Never answered by making a new store in its place."""


class FeedStore:
    """The SQLite file under ``data_dir``; every method blocks, call it from a thread.

    ``create``: make the file when there is none, or when it is empty (a first start). Without
    it, a missing or empty file raises ``StoreProblem``; a damaged one always does."""

    def __init__(self, path: Path, *, readonly: bool = False, create: bool = True) -> None:
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
        else:
            if not create:
                # Checked before SQLite opens it: opening an empty file would make it a store.
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise StoreProblem("missing") from None
                if size == 0:
                    raise StoreProblem("empty (0 bytes)")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            try:
                self._prepare(create)
            except sqlite3.DatabaseError as exc:
                self.db.close()
                raise StoreProblem(f"damaged ({exc})") from None
            except StoreProblem:
                self.db.close()
                raise
        self.db.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        self.refusing = False  # set by interrupt (shutdown): a write that would start now fails
        self.store_id: str | None = None
        self.created_at: float | None = None
        if not readonly:
            self.store_id, self.created_at = self._identity()

    def _prepare(self, create: bool) -> None:
        path = self.path
        found = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = self.db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if not tables and not create:
            raise StoreProblem("empty (a database without tables)")
        if tables and found != SCHEMA_VERSION:
            if not create:
                raise StoreProblem(f"of schema version {found}, not {SCHEMA_VERSION}")
            # A store from an older development build: set aside, never silently mixed.
            self.db.close()
            set_aside(path, f"schema{found}")
            self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA cache_size=-32768")  # 32 MB: index pages of a big first version
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _identity(self) -> tuple[str, float]:
        """The store's id and creation time, given once, when it is first opened."""
        with self._tx():
            rows = dict(self.db.execute("SELECT key, value FROM meta WHERE key IN ('store_id', 'created_at')").fetchall())
            if "store_id" not in rows:
                rows = {"store_id": uuid.uuid4().hex, "created_at": repr(time.time())}
                self.db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        return rows["store_id"], float(rows["created_at"])

    def check(self) -> str | None:
        """What SQLite finds wrong with the file (``PRAGMA quick_check``), or None."""
        try:
            with self.lock:
                rows = [r[0] for r in self.db.execute("PRAGMA quick_check(5)").fetchall()]
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if rows == ["ok"] else "; ".join(rows)

    def close(self, *, interrupt: bool = False) -> None:
        """Close the connection once no call holds it; ``interrupt``: see ``interrupt``."""
        if interrupt:
            self._take_interrupting()
        else:
            self.lock.acquire()
        try:
            self.db.close()
        finally:
            self.lock.release()

    def interrupt(self) -> None:
        """Shutdown: stop a call in flight in another thread, such as the start-up write of a
        million-name version, at SQLite's next step instead of waiting for it; its transaction
        is rolled back whole (the store keeps every version before it and none of it), so the
        version is written again when the next start reads its source. Returns once it has."""
        self._take_interrupting()
        self.lock.release()

    def _take_interrupting(self) -> None:
        # Refuse first: a write's row feeds (``_rows``) stop at their next thousand rows, and
        # no write starts. interrupt() stops a long read or statement, but only while one is
        # running: between rows of executemany none is, so it is asked again until the caller
        # lets go.
        self.refusing = True
        while not self.lock.acquire(timeout=0.02):
            self.db.interrupt()

    def _rows(self, rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``rows`` for executemany, stopping (the transaction then rolls back) once
        ``interrupt`` refuses."""
        for i, row in enumerate(rows):
            if not i & 1023 and self.refusing:
                raise sqlite3.OperationalError("interrupted: the node is shutting down")
            yield row

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction under the lock: committed whole, or rolled back whole on any
        error (the connection is in autocommit mode, so without it each statement commits)."""
        with self.lock:
            if self.refusing:
                raise sqlite3.OperationalError("interrupted: the node is shutting down")
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite may have rolled back already (disk full)
                    self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _insert_audit(self, a: Audit, version: int | None = None) -> None:
        self.db.execute(
            "INSERT INTO audit (ts, actor, action, agency, version, detail) VALUES (?,?,?,?,?,?)",
            (a.ts, a.actor, a.action, a.agency, a.version if version is None else version,
             json.dumps(a.detail or {}, default=str)),
        )

    # -- versions -----------------------------------------------------------------------

    def _next_version(self, agency: str) -> int:
        row = self.db.execute("SELECT MAX(version) FROM versions WHERE agency = ?", (agency,)).fetchone()
        return (row[0] or 0) + 1

    def next_version(self, agency: str) -> int:
        """The number the agency's next version gets."""
        with self.lock:
            return self._next_version(agency)

    def latest(self, agency: str, source: str) -> dict[str, Any] | None:
        """The newest version of a source, whatever its status."""
        with self.lock:
            row = self.db.execute(
                "SELECT * FROM versions WHERE agency = ? AND source = ? ORDER BY version DESC LIMIT 1",
                (agency, source),
            ).fetchone()
        return dict(row) if row else None

    def active(self, agency: str, source: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute(
                "SELECT * FROM versions WHERE agency = ? AND source = ? AND status = 'active'", (agency, source)
            ).fetchone()
        return dict(row) if row else None

    def apply(
        self,
        info: VersionInfo,
        d: ListDiff,
        rejects: Sequence[Reject],
        *,
        version: int | None = None,
        approved: bool = False,
        audit: Audit | None = None,
    ) -> int:
        """Record an applied version: its row, its entry rows, its rejects, and ``audit`` with
        the version's number; the source's previous active version becomes superseded, as does
        any quarantined one older than it. ``version`` is the number to give it (default: the
        next); ``approved`` marks an existing quarantined version active (decided by ``audit``'s
        actor) instead of recording a new one."""
        now = info.received_at
        with self._tx():
            v = version if version is not None else self._next_version(info.agency)
            self.db.execute(
                "UPDATE versions SET status = 'superseded' WHERE agency = ? AND source = ? AND status IN ('active', 'quarantined') AND version != ?",
                (info.agency, info.source, v),
            )
            if not approved:
                self._insert_version(info, v, "active", d, len(rejects), None)
                self._insert_rejects(info.agency, v, rejects)
            else:
                self.db.execute(
                    "UPDATE versions SET status = 'active', decided_at = ?, decided_by = ? WHERE agency = ? AND version = ?",
                    (now, audit.actor if audit else info.actor, info.agency, v),
                )
            self._drop_pending_lists(info.agency, info.source)
            # Close the rows of what this version no longer lists, then add what it lists anew.
            self.db.executemany(
                "UPDATE entries SET dropped_version = ?, dropped_at = ? WHERE agency = ? AND source = ? "
                "AND name = ? AND wildcard = ? AND allow = ? AND dropped_version IS NULL",
                self._rows(_removed_keys(v, now, info.agency, info.source, d)),
            )
            a, src = info.agency, info.source
            self.db.executemany(
                "INSERT INTO entries (agency, source, name, wildcard, allow, added_version, added_at) VALUES (?,?,?,0,0,?,?)",
                self._rows((a, src, w, v, now) for w in d.added_plain),
            )
            self.db.executemany(
                "INSERT INTO entries (agency, source, name, wildcard, allow, action, redirect, listed_at, removed_at, "
                "legal_ref, source_id, line, added_version, added_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                self._rows(_entry_row(a, src, e, v, now) for e in d.added_rich),
            )
            if audit is not None:
                self._insert_audit(audit, v)
        return v

    def quarantine(
        self,
        info: VersionInfo,
        new: SourceList,
        d: ListDiff,
        rejects: Sequence[Reject],
        reason: str,
        *,
        version: int | None = None,
        audit: Audit | None = None,
    ) -> int:
        """Record a version held for an admin, with its whole list, and ``audit``; an older
        quarantined version of the same source is superseded by it."""
        with self._tx():
            v = version if version is not None else self._next_version(info.agency)
            self.db.execute(
                "UPDATE versions SET status = 'superseded' WHERE agency = ? AND source = ? AND status = 'quarantined'",
                (info.agency, info.source),
            )
            self._drop_pending_lists(info.agency, info.source)
            self._insert_version(info, v, "quarantined", d, len(rejects), reason)
            self._insert_rejects(info.agency, v, rejects)
            self.db.execute(
                "INSERT INTO pending (agency, version, list, diff) VALUES (?,?,?,?)",
                (info.agency, v, new.dumps(), json.dumps(d.summary(limit=10_000))),
            )
            if audit is not None:
                self._insert_audit(audit, v)
        return v

    def pending_list(self, agency: str, version: int) -> SourceList | None:
        with self.lock:
            row = self.db.execute("SELECT list FROM pending WHERE agency = ? AND version = ?", (agency, version)).fetchone()
        return SourceList.loads(row[0]) if row and row[0] is not None else None

    def _drop_pending_lists(self, agency: str, source: str) -> None:
        # The whole list of a version no longer waiting is not needed; its diff stays.
        self.db.execute(
            "UPDATE pending SET list = NULL WHERE list IS NOT NULL AND agency = ? AND version IN "
            "(SELECT version FROM versions WHERE agency = ? AND source = ? AND status != 'quarantined')",
            (agency, agency, source),
        )

    def decide(self, agency: str, version: int, status: str, actor: str, ts: float, audit: Audit | None = None) -> None:
        """Mark a quarantined version ``rejected`` (approval goes through ``apply``), with ``audit``."""
        with self._tx():
            if audit is not None:
                self._insert_audit(audit)
            self.db.execute(
                "UPDATE versions SET status = ?, decided_at = ?, decided_by = ? WHERE agency = ? AND version = ?",
                (status, ts, actor, agency, version),
            )
            self.db.execute("UPDATE pending SET list = NULL WHERE agency = ? AND version = ?", (agency, version))

    def _insert_version(self, info: VersionInfo, v: int, status: str, d: ListDiff, n_rejects: int, reason: str | None) -> None:
        self.db.execute(
            "INSERT INTO versions (agency, version, source, kind, format, sha256, received_at, actor, status, entries, "
            "added, removed, changed, rejects, checksum, signature, reason, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                info.agency, v, info.source, info.kind, info.format, info.sha256, info.received_at, info.actor, status,
                info.entries, d.n_added, d.n_removed, d.changed, n_rejects, info.checksum, info.signature, reason,
                json.dumps(info.meta or {}, default=str),
            ),
        )

    def _insert_rejects(self, agency: str, v: int, rejects: Sequence[Reject]) -> None:
        self.db.executemany(
            "INSERT INTO rejects (agency, version, line, text, reason) VALUES (?,?,?,?,?)",
            ((agency, v, r.line, r.text, r.reason) for r in rejects[:MAX_STORED_REJECTS]),
        )

    def versions(self, agency: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute(
                "SELECT * FROM versions WHERE agency = ? ORDER BY version DESC LIMIT ?", (agency, limit)
            ).fetchall()
        return [_version_json(r) for r in rows]

    def version(self, agency: str, version: int) -> dict[str, Any] | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM versions WHERE agency = ? AND version = ?", (agency, version)).fetchone()
        return _version_json(row) if row else None

    def quarantined(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM versions WHERE status = 'quarantined' ORDER BY received_at").fetchall()
        return [_version_json(r) for r in rows]

    def version_diff(self, agency: str, version: int, limit: int = 1000, offset: int = 0) -> dict[str, Any]:
        """Names the version added, removed and changed (applied versions from the entry rows;
        quarantined ones from what was computed when they arrived)."""
        with self.lock:
            pend = self.db.execute("SELECT diff FROM pending WHERE agency = ? AND version = ?", (agency, version)).fetchone()
            if pend is not None:
                d = json.loads(pend[0])
                out = {k: v[offset : offset + limit] for k, v in d.items()}
                out["rejects"] = [
                    {"line": r[0], "text": r[1], "reason": r[2]}
                    for r in self.db.execute(
                        "SELECT line, text, reason FROM rejects WHERE agency = ? AND version = ? ORDER BY line LIMIT ?",
                        (agency, version, limit),
                    )
                ]
                return out
            added = sorted(
                from_wire(r[0])
                for r in self.db.execute("SELECT name FROM entries WHERE agency = ? AND added_version = ?", (agency, version))
            )
            removed = sorted(
                from_wire(r[0])
                for r in self.db.execute(
                    "SELECT name FROM entries WHERE agency = ? AND dropped_version = ?", (agency, version)
                )
            )
            rejects = [
                {"line": r[0], "text": r[1], "reason": r[2]}
                for r in self.db.execute(
                    "SELECT line, text, reason FROM rejects WHERE agency = ? AND version = ? ORDER BY line LIMIT ?",
                    (agency, version, limit),
                )
            ]
        changed = set(added) & set(removed)
        return {
            "added": [n for n in added if n not in changed][offset : offset + limit],
            "removed": [n for n in removed if n not in changed][offset : offset + limit],
            "changed": sorted(changed)[offset : offset + limit],
            "rejects": rejects,
        }

    # -- entries ------------------------------------------------------------------------

    def live(self, agency: str, source: str) -> SourceList:
        """The list a source holds now, rebuilt from its open entry rows."""
        plain: list[bytes] = []
        rich: list[Entry] = []
        with self.lock:
            cur = self.db.execute(
                "SELECT name, wildcard, allow, action, redirect, listed_at, removed_at, legal_ref, source_id "
                "FROM entries WHERE agency = ? AND source = ? AND dropped_version IS NULL",
                (agency, source),
            )
            for row in cur:
                if not any(row[1:]):
                    plain.append(row[0])
                else:
                    rich.append(_row_entry(row))
        return SourceList.build(plain, rich)

    def entries_named(self, names: Iterable[str], *, history: bool = True) -> list[dict[str, Any]]:
        """Entry rows (open, and closed when ``history``) for exactly these names."""
        wires = [to_wire(n.encode("ascii")) for n in names]
        if not wires:
            return []
        marks = ",".join("?" * len(wires))
        sql = f"SELECT * FROM entries WHERE name IN ({marks})"
        if not history:
            sql += " AND dropped_version IS NULL"
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY added_at", wires).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            item["name"] = from_wire(item["name"])
            out.append(item)
        return out

    def pending_named(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """Entries for exactly these names in versions waiting in quarantine (one list per
        waiting source, so a lookup reads a handful of lists at most)."""
        wanted = list(names)
        with self.lock:
            rows = self.db.execute(
                "SELECT v.agency, v.version, v.source, v.reason, v.received_at, p.list FROM versions v "
                "JOIN pending p ON p.agency = v.agency AND p.version = v.version "
                "WHERE v.status = 'quarantined' AND p.list IS NOT NULL ORDER BY v.received_at"
            ).fetchall()
        out: list[dict[str, Any]] = []
        for agency, version, source, reason, received_at, blob in rows:
            pending = SourceList.loads(blob)
            for name in wanted:
                for e in pending.get(name):
                    out.append({"agency": agency, "source": source, "version": version, "listed": name,
                                "wildcard": e.wildcard, "exception": e.allow, "reason": reason,
                                "received": iso(received_at)})
        return out

    def compliance_entries(self, agency: str) -> list[dict[str, Any]]:
        """Every listing row of an agency (exceptions left out), oldest first, with the receipt
        time of the version that added it and of the one that dropped it."""
        with self.lock:
            rows = self.db.execute(
                "SELECT e.source, e.name, e.wildcard, e.listed_at, e.removed_at, e.legal_ref, e.source_id, "
                "e.added_version, e.added_at, e.dropped_version, e.dropped_at, "
                "va.received_at AS added_received, vd.received_at AS dropped_received "
                "FROM entries e "
                "LEFT JOIN versions va ON va.agency = e.agency AND va.version = e.added_version "
                "LEFT JOIN versions vd ON vd.agency = e.agency AND vd.version = e.dropped_version "
                "WHERE e.agency = ? AND e.allow = 0 ORDER BY e.rowid",
                (agency,),
            ).fetchall()
        return [dict(r) for r in rows]

    # -- installs -----------------------------------------------------------------------

    def record_install(
        self, snapshot: int, dates_at: float, installed_at: float, versions: Iterable[tuple[str, str, int]],
        observing: Iterable[str] = (),
    ) -> None:
        """A snapshot went live; each (agency, source, version) it holds is recorded unless an
        earlier snapshot already enforced it (the first one is the one that counts), and so is
        each agency it only observed."""
        with self._tx():
            seq = self.db.execute(
                "INSERT INTO installs (snapshot, dates_at, installed_at) VALUES (?,?,?)", (snapshot, dates_at, installed_at)
            ).lastrowid
            self.db.executemany(
                "INSERT OR IGNORE INTO installed_versions (agency, source, version, seq, installed_at) VALUES (?,?,?,?,?)",
                ((a, s, v, seq, installed_at) for a, s, v in versions),
            )
            self.db.executemany("INSERT INTO install_observing (seq, agency) VALUES (?,?)", ((seq, a) for a in observing))

    def observing_installs(self, agency: str) -> set[int]:
        """Seqs of the installs that only observed ``agency`` (observe mode)."""
        with self.lock:
            try:
                return {r[0] for r in self.db.execute("SELECT seq FROM install_observing WHERE agency = ?", (agency,))}
            except sqlite3.OperationalError:  # a read-only store written before observe mode
                return set()

    def installs(self) -> list[tuple[int, float, float]]:
        """(seq, dates_at, installed_at) of every install, in the order they happened."""
        with self.lock:
            try:
                return [tuple(r) for r in self.db.execute("SELECT seq, dates_at, installed_at FROM installs ORDER BY seq")]  # type: ignore[misc]
            except sqlite3.OperationalError:  # a read-only store written before installs were recorded
                return []

    def install_of(self, snapshot: int) -> tuple[int, float] | None:
        """(seq, installed_at) of the first install of ``snapshot``: its ``v<seq>`` for people."""
        with self.lock:
            try:
                row = self.db.execute(
                    "SELECT seq, installed_at FROM installs WHERE snapshot = ? ORDER BY seq LIMIT 1", (snapshot,)
                ).fetchone()
            except sqlite3.OperationalError:  # a read-only store written before installs were recorded
                return None
        return (int(row[0]), float(row[1])) if row else None

    def installed_versions(self, agency: str) -> list[tuple[str, int, int]]:
        """(source, version, seq of its first install) of every enforced version of an agency."""
        with self.lock:
            try:
                return [
                    tuple(r)  # type: ignore[misc]
                    for r in self.db.execute(
                        "SELECT source, version, seq FROM installed_versions WHERE agency = ? ORDER BY source, version",
                        (agency,),
                    )
                ]
            except sqlite3.OperationalError:
                return []

    # -- sources ------------------------------------------------------------------------

    def source_state(self, agency: str, source: str) -> dict[str, Any]:
        with self.lock:
            row = self.db.execute("SELECT * FROM sources WHERE agency = ? AND source = ?", (agency, source)).fetchone()
        return dict(row) if row else {}

    def save_source_state(self, agency: str, source: str, **fields: Any) -> None:
        cols = ", ".join(fields)
        marks = ", ".join("?" * len(fields))
        updates = ", ".join(f"{c} = excluded.{c}" for c in fields)
        with self._tx():
            self.db.execute(
                f"INSERT INTO sources (agency, source, {cols}) VALUES (?, ?, {marks}) "
                f"ON CONFLICT(agency, source) DO UPDATE SET {updates}",
                (agency, source, *fields.values()),
            )

    # -- allowlist and audit ------------------------------------------------------------

    def allowlist(self) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM allowlist ORDER BY name").fetchall()
        return [dict(r) for r in rows]

    def allow_add(self, name: str, actor: str, note: str, ts: float, audit: Audit | None = None) -> bool:
        """Allowlist ``name``; ``audit`` is written with it, only when it was not listed yet."""
        with self._tx():
            cur = self.db.execute(
                "INSERT OR IGNORE INTO allowlist (name, added_at, added_by, note) VALUES (?,?,?,?)", (name, ts, actor, note)
            )
            added = cur.rowcount > 0
            if added and audit is not None:
                self._insert_audit(audit)
            return added

    def allow_remove(self, name: str, audit: Audit | None = None) -> bool:
        """Take ``name`` off the allowlist; ``audit`` is written with it, only when it was there."""
        with self._tx():
            removed = self.db.execute("DELETE FROM allowlist WHERE name = ?", (name,)).rowcount > 0
            if removed and audit is not None:
                self._insert_audit(audit)
            return removed

    def modes(self) -> dict[str, dict[str, Any]]:
        """The admins' mode decisions per agency (mode, set_at, set_by, reason); empty in a
        store written before there were any (the table is made on the next writable open)."""
        try:
            with self.lock:
                rows = self.db.execute("SELECT * FROM agency_modes ORDER BY agency").fetchall()
        except sqlite3.OperationalError:  # read-only open of an older store: no such table
            return {}
        return {r["agency"]: {k: r[k] for k in ("mode", "set_at", "set_by", "reason")} for r in rows}

    def set_mode(self, agency: str, mode: str, actor: str, ts: float, reason: str, audit: Audit) -> None:
        """Record an admin's mode for ``agency`` (replacing any earlier one) with its audit row."""
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO agency_modes (agency, mode, set_at, set_by, reason) VALUES (?,?,?,?,?)",
                (agency, mode, ts, actor, reason),
            )
            self._insert_audit(audit)

    def audit(self, actor: str, action: str, agency: str | None = None, version: int | None = None, ts: float | None = None, **detail: Any) -> None:
        """An audit row that records no change of its own (a refused update)."""
        with self._tx():
            self._insert_audit(Audit(actor, action, time.time() if ts is None else ts, agency, version, detail))

    def audit_log(self, agency: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = "SELECT * FROM audit"
        args: list[Any] = []
        if agency is not None:
            sql += " WHERE agency = ?"
            args.append(agency)
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        out = []
        for r in rows:
            item = dict(r)
            item["detail"] = json.loads(item["detail"])
            item["time"] = iso(item.pop("ts"))
            out.append(item)
        return out


MARKER_SUFFIX = ".id"  # feeds.sqlite.id: the marker beside the store


def marker_path(store: Path) -> Path:
    return store.with_name(store.name + MARKER_SUFFIX)


def read_marker(store: Path) -> dict[str, Any] | None:
    """The marker of the store that lived at ``store``: None when there is none (a first start);
    a damaged marker still says that a store existed."""
    path = marker_path(store)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"store_id": None, "problem": f"unreadable marker {path}: {exc}"}
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and isinstance(doc.get("store_id"), str):
            return doc
    except ValueError:
        pass
    return {"store_id": None, "problem": f"damaged marker {path}"}


def write_marker(store: FeedStore) -> None:
    """Record beside the store that it exists (atomically: temporary file, fsync, rename)."""
    path = marker_path(store.path)
    doc = {
        "store_id": store.store_id,
        "created": iso(store.created_at),
        "store": store.path.name,
        "note": "betblock: a feed store lives beside this file. If it goes missing or empty, betblock "
        "refuses to start rather than make a new one; see 'betblock feeds recover'.",
    }
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def set_aside(path: Path, label: str) -> Path | None:
    """Move the store file (and its -wal and -shm) out of the way under a dated name; returns
    the new name, or None when there was no file."""
    aside = path.with_name(f"{path.name}.{label}-{int(time.time())}")
    moved = None
    if path.exists():
        os.replace(path, aside)
        moved = aside
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return moved


def _removed_keys(v: int, now: float, agency: str, source: str, d: ListDiff) -> Iterator[tuple[Any, ...]]:
    for w in d.removed_plain:
        yield (v, now, agency, source, w, 0, 0)
    for e in d.removed_rich:
        yield (v, now, agency, source, to_wire(e.name.encode("ascii")), int(e.wildcard), int(e.allow))


def _entry_row(agency: str, source: str, e: Entry, v: int, now: float) -> tuple[Any, ...]:
    return (
        agency, source, to_wire(e.name.encode("ascii")), int(e.wildcard), int(e.allow), e.action,
        ",".join(e.redirect) if e.redirect else None, _ts(e.listed_at), _ts(e.removed_at),
        e.legal_ref, e.source_id, e.line or None, v, now,
    )


def _row_entry(row: Sequence[Any]) -> Entry:
    name, wildcard, allow, action, redirect, listed_at, removed_at, legal_ref, source_id = row
    return Entry(
        name=from_wire(name),
        line=0,
        wildcard=bool(wildcard),
        allow=bool(allow),
        action=action,
        redirect=tuple(redirect.split(",")) if redirect else (),
        listed_at=datetime.fromtimestamp(listed_at, timezone.utc) if listed_at is not None else None,
        removed_at=datetime.fromtimestamp(removed_at, timezone.utc) if removed_at is not None else None,
        legal_ref=legal_ref,
        source_id=source_id,
    )


def _version_json(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    item["meta"] = json.loads(item["meta"] or "{}")
    item["received"] = iso(item.pop("received_at"))
    item["decided"] = iso(item.pop("decided_at"))
    return item



