"""Opening what a start finds on disk: the feed store (made anew only on a first start) and the
snapshot the last run saved.

Owns the rule that a store which existed (its marker ``feeds.sqlite.id`` or a saved snapshot
says so) is never made anew, and the message that names the way out when it is missing, empty or
damaged. Runs in a thread (file and SQLite work); the manager decides what the node does then.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from feeds import persist
from feeds.snapshot import PolicySnapshot
from feeds.store import FeedStore, StoreProblem, read_marker, write_marker

log = structlog.get_logger("betblock.feeds")


def open_store(store_path: Path, snapshot_path: Path, check: bool) -> FeedStore:
    """The store, made only on a first start (neither its marker nor a saved snapshot says
    one existed); ``check``: SQLite's quick check of every page first."""
    marker = read_marker(store_path)
    existed = marker is not None or snapshot_path.exists()
    try:
        store = FeedStore(store_path, create=not existed)
        problem = store.check() if check else None
        if problem is not None:
            store.close()
            raise StoreProblem(f"damaged ({problem})")
    except StoreProblem as exc:
        raise StoreProblem(explain(store_path, snapshot_path, str(exc), marker)) from None
    if marker is None or marker.get("store_id") != store.store_id:
        if marker is not None:
            log.warning("the feed store is not the one its marker names; taking it as the store",
                        path=str(store_path), marker=marker.get("store_id"), store=store.store_id)
        write_marker(store)
    return store


def explain(store_path: Path, snapshot_path: Path, what: str, marker: dict[str, Any] | None) -> str:
    """Why the store is not made anew, and the way out, for the error and the log."""
    if marker is not None and marker.get("store_id"):
        had = f"store {marker['store_id']}, created {marker.get('created')}"
    elif marker is not None:
        had = str(marker.get("problem"))
    else:
        had = f"a saved snapshot {snapshot_path} exists"
    return (
        f"the feed store {store_path} is {what}, but this data directory had one ({had}). "
        "It is not made anew: that would drop every pushed list, the version history and the audit trail, "
        "and answer pushed names unblocked. Restore the file from a backup, or run "
        "'betblock feeds recover --config <this config>' to set it aside and start an empty store"
    )


def load_saved(snapshot_path: Path, fingerprint: str, now: float) -> PolicySnapshot | None:
    """The saved snapshot when it holds; a damaged one is named in one log line and left
    for the next save to replace."""
    try:
        return persist.load_checked(snapshot_path, fingerprint, now)
    except persist.SnapshotDamaged as exc:
        log.error("saved snapshot rejected as damaged; compiling from the feed store instead",
                  path=str(snapshot_path), reason=str(exc))
        return None
