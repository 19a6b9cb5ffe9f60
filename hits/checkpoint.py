"""Checkpoints of the hash chain, kept outside the database.

The chain in the store proves that no batch was edited between its anchor and its head, but
not where the head and the anchor are: deleting the newest batches, or the oldest ones while
moving the anchor along, or the whole database, leaves a chain that verifies. So after every
write and every retention run the node appends one line to a checkpoint file beside its data
(``hits.checkpoint_path``): how many batches the chain has had, the newest batch's hash and
last hit id, and how many batches retention removed with the anchor they left, HMAC-SHA256
signed with a key that is not in the database (``hits.checkpoint_key``, else a random key file
created once beside the checkpoints). The same head goes to the log and to /metrics, so that
copies live elsewhere too (``betblock hits verify --expect`` checks against such a copy).

Owns the line format, its MAC, appending (0600 files, compacted when large) and reading the
latest valid line, and the head's metric families. Must not import the resolver.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from config.errors import BetblockError

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from hits.store import HitStore

log = structlog.get_logger("betblock.hits")
LOG_SECONDS = 600.0  # the chain's head goes to the log at most this often (and at start and after retention)

FORMAT = 1
COMPACT_BYTES = 1 << 20  # beyond this the file is rewritten with its newest lines
KEEP_LINES = 2000


class CheckpointError(BetblockError):
    """The checkpoint file or its key cannot be read, or a line does not verify."""


@dataclass(frozen=True)
class ChainHead:
    """Where the chain stands: what a checkpoint records."""

    batches: int  # batches ever written to this chain (those removed by retention included)
    head: str  # hex hash of the newest batch (the anchor when none is left)
    last_hit: int  # id of the newest row (0 when none)
    purged: int  # batches removed by retention
    anchor: str  # hex hash the oldest remaining batch chains from

    def short(self) -> str:
        return f"{self.head[:16]}/{self.batches}"


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    at: float
    store: str
    head: ChainHead


def _private(path: Path) -> None:
    """Subscriber data and keys: readable by the service account only."""
    try:
        os.chmod(path, 0o600)
    except OSError:
        pass


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 when missing (SQLite then gives its WAL the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _tail_seq(fd: int) -> int:
    """The sequence number of the file's last complete line (0 for an empty file)."""
    size = os.fstat(fd).st_size
    n = min(size, 8192)
    lines = os.pread(fd, n, size - n).split(b"\n")
    for raw in reversed(lines[:-1]):  # the part after the last newline is not a line yet
        if raw:
            try:
                return int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                return 0
    return 0


class CheckpointLog:
    """One node's checkpoint file."""

    def __init__(self, path: Path, key: bytes | None = None, key_path: Path | None = None) -> None:
        self.path = Path(path)
        self._key = key
        self.key_path = key_path if key_path is not None else self.path.with_name(self.path.name + ".key")
        self.last: Checkpoint | None = None
        self._lock = threading.Lock()  # the writer thread and the retention job both append

    def reset(self) -> None:
        """The file was moved away: the next append starts a new one."""
        with self._lock:
            self.last = None

    def key(self, create: bool) -> bytes:
        if self._key is not None:
            return self._key
        try:
            self._key = bytes.fromhex(self.key_path.read_text().strip())
        except FileNotFoundError:
            if not create:
                raise CheckpointError(f"checkpoint key {self.key_path} is missing") from None
            self.key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            return self.key(create=False)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint key {self.key_path} cannot be read: {exc}") from exc
        return self._key

    def seal(self, data: bytes) -> str:
        """HMAC of ``data`` with the checkpoint key (the anchor seal retention writes in the store)."""
        return hmac.new(self.key(create=True), data, hashlib.sha256).hexdigest()

    def sealed(self, data: bytes, mac: str | None) -> bool:
        if not mac:
            return False
        try:
            return hmac.compare_digest(mac, hmac.new(self.key(create=False), data, hashlib.sha256).hexdigest())
        except CheckpointError:
            return False

    def _mac(self, body: dict[str, object], create: bool = False) -> str:
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self.key(create), raw, hashlib.sha256).hexdigest()

    def _line(self, cp: Checkpoint) -> bytes:
        body: dict[str, object] = {"v": FORMAT, "seq": cp.seq, "at": round(cp.at, 3), "store": cp.store, **asdict(cp.head)}
        body["mac"] = self._mac(body, create=True)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    def _parse(self, raw: bytes, lineno: int) -> Checkpoint:
        try:
            body = json.loads(raw)
            mac = body.pop("mac")
            if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(body)):
                raise CheckpointError(f"{self.path} line {lineno}: signature does not match (edited, or another key)")
            head = ChainHead(int(body["batches"]), str(body["head"]), int(body["last_hit"]), int(body["purged"]), str(body["anchor"]))
            return Checkpoint(int(body["seq"]), float(body["at"]), str(body["store"]), head)
        except CheckpointError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{self.path} line {lineno}: not a checkpoint ({exc})") from None

    def read(self) -> list[Checkpoint]:
        """Every line, each verified; CheckpointError at the first bad one. [] when no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CheckpointError(f"cannot read {self.path}: {exc}") from exc
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # a line cut short by a crash mid-append: not a checkpoint yet
        out = [self._parse(raw, i + 1) for i, raw in enumerate(lines)]
        for a, b in zip(out, out[1:]):
            if b.seq != a.seq + 1:
                raise CheckpointError(f"{self.path}: checkpoint {b.seq} follows {a.seq} (lines removed or reordered)")
        return out

    def latest(self) -> Checkpoint | None:
        got = self.read()
        return got[-1] if got else None

    def append(self, store: str, head: ChainHead, at: float | None = None) -> Checkpoint:
        """Record ``head`` (writer thread or retention; one process appends at a time)."""
        with self._lock:
            return self._append(store, head, at)

    def _append(self, store: str, head: ChainHead, at: float | None) -> Checkpoint:
        # Under an exclusive lock on the file, the sequence number continues the file's last
        # line: `betblock hits purge` may append while the node runs.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open_locked()
        try:
            cp = Checkpoint(_tail_seq(fd) + 1, time.time() if at is None else at, store, head)
            os.write(fd, self._line(cp))
            if os.fstat(fd).st_size > COMPACT_BYTES:
                self._compact()
        finally:
            os.close(fd)  # and the lock with it
        self.last = cp
        return cp

    def _open_locked(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # compacted or moved aside meanwhile: lock the file now at the path

    def _compact(self) -> None:
        """Keep the newest lines (atomically: a crash leaves the old file or the new one)."""
        data = self.path.read_bytes().split(b"\n")
        keep = b"\n".join(line for line in data[-KEEP_LINES - 1 :] if line) + b"\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(keep)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _private(self.path)


class Checkpointer:
    """Records a store's chain head in its checkpoint file after each write and purge, and now
    and then in the log. A failure is counted and logged, never raised: the batch itself is
    committed, and the next checkpoint covers it."""

    def __init__(self, store: HitStore, checkpoints: CheckpointLog) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.errors = 0
        self._logged_at = 0.0

    def metrics(self) -> list[Metric]:
        """The chain head as recorded (a copy outside the store and its checkpoint file) and the
        checkpoints that could not be written (read at scrape time)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        out: list[Metric] = []
        head = self.store.head
        if head is not None:
            out.append(GaugeMetricFamily("betblock_hits_chain_batches", "Batches the hit chain has had (checkpointed)", value=head.batches))
            info = GaugeMetricFamily("betblock_hits_chain_head", "The hit chain's newest batch hash (prefix) and length", labels=["head", "batches"])
            info.add_metric([head.head[:16], str(head.batches)], 1)
            out.append(info)
        out.append(CounterMetricFamily("betblock_hits_checkpoint_errors", "Checkpoints that could not be written", value=self.errors))
        return out

    def record(self, force_log: bool = False) -> None:
        head = self.store.head
        if head is None:
            return
        try:
            cp = self.checkpoints.append(self.store.ident, head)
        except (OSError, CheckpointError) as exc:
            self.errors += 1
            log.error("hit log checkpoint not written", error=str(exc), path=str(self.checkpoints.path))
            return
        now = time.monotonic()
        if force_log or now - self._logged_at >= LOG_SECONDS:
            self._logged_at = now
            log.info("hit log checkpoint", seq=cp.seq, batches=head.batches, head=head.head[:16], last_hit=head.last_hit)
