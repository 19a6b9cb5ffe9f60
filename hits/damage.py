"""Opening the hit store at start without trusting it: a damaged store is never written over.

A store is damaged when it cannot be read (SQLite says the file is malformed or not a
database), or when it is shorter than its newest checkpoint (its file missing or empty while
the checkpoints record batches, fewer batches, another newest batch, another anchor): writing
on would bury that. ``hits.on_damaged`` decides: ``keep`` leaves everything untouched and the
store unopened (StoreError, cause ``corrupt``: the hit log reports itself failed), ``move_aside``
renames the SQLite file, its WAL and its checkpoint file to ``<name>.damaged-<UTC time>`` and
starts a new store and checkpoint file. Must not import the resolver.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import structlog

from hits.checkpoint import ChainHead, Checkpoint, CheckpointError, CheckpointLog
from hits.store import HitStore, StoreError

log = structlog.get_logger("betblock.hits")


def mismatch(head: ChainHead, cp: Checkpoint | None) -> str | None:
    """Why a store whose chain stands at ``head`` cannot be the one ``cp`` recorded, or None."""
    if cp is None:
        return None
    c = cp.head
    where = f"checkpoint {cp.seq} of {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(cp.at))}"
    if head.batches < c.batches:
        return f"the store has {head.batches} batches but {where} recorded {c.batches} (batches removed, or the store replaced)"
    if head.batches == c.batches and head.head != c.head:
        return f"the newest batch is not the one {where} recorded"
    if head.purged < c.purged or (head.purged == c.purged and head.anchor != c.anchor):
        return f"the chain's anchor is not the one {where} recorded"
    return None


def _checkpoints(checkpoints: CheckpointLog, ident: str) -> Checkpoint | None:
    """The newest checkpoint of this store; an unreadable file is set aside (and logged)."""
    try:
        lines = checkpoints.read()
    except CheckpointError as exc:
        aside = _aside(checkpoints.path, "unreadable")
        log.error("hit log checkpoints unreadable; set aside, a new file is started", error=str(exc), moved_to=str(aside))
        checkpoints.reset()
        return None
    mine = [cp for cp in lines if cp.store == ident]
    return mine[-1] if mine else None


def _aside_name(path: Path, why: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}.{n}")
    return target


def _aside(path: Path, why: str) -> Path:
    target = _aside_name(path, why)
    os.rename(path, target)
    return target


def move_aside(store_path: Path, checkpoints: CheckpointLog) -> list[str]:
    """Rename the store's files (database, WAL, shm) and the checkpoints; the new names."""
    target = _aside_name(store_path, "damaged")
    moved = []
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(store_path) + suffix)
        if p.exists():
            os.rename(p, Path(str(target) + suffix))
            moved.append(str(target) + suffix)
    if checkpoints.path.exists():
        moved.append(str(_aside(checkpoints.path, "damaged")))
    checkpoints.reset()
    return moved


async def open_checked(store: HitStore, checkpoints: CheckpointLog, on_damaged: str) -> None:
    """Open ``store`` if it is sound (or, per ``on_damaged``, a new one in place of a damaged
    SQLite file); StoreError otherwise (cause ``corrupt`` for a damaged store)."""
    latest = await asyncio.to_thread(_checkpoints, checkpoints, store.ident)
    problem = None
    path: Path | None = getattr(store, "path", None)
    if path is not None and latest is not None and latest.head.batches > latest.head.purged:
        size = path.stat().st_size if path.exists() else None
        if not size:
            problem = f"{path} is {'missing' if size is None else 'empty'} but checkpoint {latest.seq} recorded {latest.head.batches} batches"
    if problem is None:
        try:
            await store.open()
        except StoreError as exc:
            if exc.cause != "corrupt":
                raise
            problem = str(exc)
        else:
            assert store.head is not None
            problem = mismatch(store.head, latest)
            if problem is not None:
                await store.abandon()
    if problem is None:
        return
    if on_damaged != "move_aside" or path is None:
        raise StoreError(f"hit store damaged, left untouched: {problem}", "corrupt")
    moved = await asyncio.to_thread(move_aside, path, checkpoints)
    log.error("hit store damaged; moved aside and a new store started", problem=problem, moved_to=moved)
    await store.open()
