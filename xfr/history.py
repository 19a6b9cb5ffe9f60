"""The zones' serials and their recent differences, kept on disk for IXFR across restarts.

Owns ``data_dir/xfr.sqlite``: per zone the serial in force and the policy version it was made
from, and a bounded list of steps (serial -> next serial, records deleted, records added) that
an IXFR answer chains together. Records are stored as the wire bytes ``xfr.rpz`` encodes,
``marshal``-ed (loading runs no code). Kept apart from the feed store on purpose: it is the
transfer side's own state, and losing it only costs the secondaries one full AXFR.

Must not import the resolver or aiohttp.
"""

from __future__ import annotations

import marshal
import sqlite3
import threading
from pathlib import Path

FORMAT = 2  # the record format of the steps (xfr.rpz.relative)
SCHEMA = """
CREATE TABLE IF NOT EXISTS zone (
    name TEXT PRIMARY KEY,
    serial INTEGER NOT NULL,
    policy_version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS step (
    zone TEXT NOT NULL,
    serial_from INTEGER NOT NULL,
    serial_to INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    deleted BLOB NOT NULL,
    added BLOB NOT NULL,
    PRIMARY KEY (zone, seq)
);
"""


class History:
    """Serials and IXFR steps of every zone; one connection, used from worker threads."""

    def __init__(self, path: Path, keep: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        if self._db.execute("PRAGMA user_version").fetchone()[0] != FORMAT:
            # Steps in another record format cannot be replayed: those secondaries AXFR once.
            self._db.execute("DELETE FROM step")
            self._db.execute(f"PRAGMA user_version = {FORMAT}")

    def state(self, zone: str) -> tuple[int, int] | None:
        """(serial, policy version) last recorded for ``zone``."""
        with self._lock:
            row = self._db.execute("SELECT serial, policy_version FROM zone WHERE name = ?", (zone,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_state(self, zone: str, serial: int, policy_version: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO zone (name, serial, policy_version) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET serial = excluded.serial, policy_version = excluded.policy_version",
                (zone, serial, policy_version),
            )

    def record(
        self, zone: str, serial_from: int, serial_to: int, policy_version: int,
        deleted: list[bytes] | None, added: list[bytes] | None,
    ) -> None:
        """The zone moved to ``serial_to``; ``deleted``/``added`` None: the step is not known
        (a restart under another policy), so older secondaries get an AXFR."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            if deleted is None or added is None:
                self._db.execute("DELETE FROM step WHERE zone = ?", (zone,))
            else:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM step WHERE zone = ?", (zone,)).fetchone()[0]
                self._db.execute(
                    "INSERT INTO step (zone, serial_from, serial_to, seq, deleted, added) VALUES (?, ?, ?, ?, ?, ?)",
                    (zone, serial_from, serial_to, seq, marshal.dumps(deleted), marshal.dumps(added)),
                )
                self._db.execute("DELETE FROM step WHERE zone = ? AND seq <= ?", (zone, seq - self.keep))
            self._db.execute(
                "INSERT INTO zone (name, serial, policy_version) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET serial = excluded.serial, policy_version = excluded.policy_version",
                (zone, serial_to, policy_version),
            )

    def steps(self, zone: str, since: int, until: int) -> list[tuple[int, int, list[bytes], list[bytes]]] | None:
        """The steps from serial ``since`` to ``until`` in order, or None when the kept history
        does not reach back to ``since``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT serial_from, serial_to, deleted, added FROM step WHERE zone = ? ORDER BY seq", (zone,)
            ).fetchall()
        start = next((i for i, r in enumerate(rows) if r[0] == since), None)
        if start is None:
            return None
        out: list[tuple[int, int, list[bytes], list[bytes]]] = []
        serial = since
        for r in rows[start:]:
            if r[0] != serial:
                return None
            out.append((r[0], r[1], marshal.loads(r[2]), marshal.loads(r[3])))
            serial = r[1]
            if serial == until:
                return out
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()
