"""The feed store as the services see it: there, not yet, or unusable and why.

Owns the store reference after start-up, the reason there is none (the node then serves its
saved snapshot and refuses updates), the two moments updates wait for (``loaded``: the store's
lists are in memory; ``settled``: that, or the store was found unusable), the rule that a write
SQLite refuses changes nothing and is ``StoreUnavailable``, and the store's own metric. Every
component reaches the store through here, never through another component.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric

from feeds.outcomes import StoreUnavailable
from feeds.store import FeedStore

log = structlog.get_logger("betblock.feeds")

STORE_FILE = "feeds.sqlite"


class StoreGate:
    """The store of one data directory, or why there is none."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / STORE_FILE
        self.store: FeedStore | None = None
        self.problem: str | None = None  # why the store cannot be used
        self.loaded = asyncio.Event()  # the store's lists are in memory: updates may proceed
        self.settled = asyncio.Event()  # loaded, or the store found unusable: updates may be answered
        self.closing = False  # set by close: a write that fails now was interrupted by shutdown

    def require(self) -> FeedStore:
        """The store, or ``StoreUnavailable`` saying why there is none."""
        if self.store is None:
            raise StoreUnavailable(self.problem or "the feed store is not open yet")
        return self.store

    async def writable(self) -> FeedStore:
        """Wait until the store's lists are in memory; ``StoreUnavailable`` when it is unusable."""
        if self.problem is None:
            await self.settled.wait()
        return self.require()

    async def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A store write in a thread; a write SQLite refuses (disk full, damage) changes nothing
        and is ``StoreUnavailable``."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the feed store refused the write ({exc}); nothing was changed") from exc

    async def read(self, fn: Callable[[FeedStore], Any], default: Any = None) -> Any:
        """``fn(store)`` in a thread; ``default`` without a store (the status then says why)."""
        store = self.store
        return default if store is None else await asyncio.to_thread(fn, store)

    async def save_source(self, agency: str, key: str, **fields: Any) -> None:
        """A source's fetch state (ETag, last success, failures); a failure is logged, not raised."""
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.save_source_state, agency, key, **fields)
        except Exception as exc:  # fetch bookkeeping only; the lists are not at stake
            log.error("cannot record a source's fetch state", agency=agency, source=key, error=str(exc))

    def opened(self, store: FeedStore) -> None:
        self.store = store

    def ready(self) -> None:
        """The store's lists are in memory: updates may proceed."""
        self.loaded.set()
        self.settled.set()

    def degrade(self, problem: str, version: int | None) -> None:
        """No usable store: the snapshot in force (``version``) stays, updates get ``StoreUnavailable``."""
        self.problem = problem
        if self.store is not None:
            self.store.close()
            self.store = None
        log.error("feed store unusable: serving the saved snapshot, refusing updates until it is restored",
                  version=version, problem=problem)
        self.settled.set()

    def interrupt(self) -> None:
        """Shutdown begins: store work in flight is interrupted (a write is rolled back whole)
        rather than waited for, so SIGTERM never waits on a big start-up write. Blocks briefly:
        call it in a thread."""
        self.closing = True
        store = self.store
        if store is not None:
            store.interrupt()

    def close(self) -> None:
        """Shutdown: store work still in flight (a write is rolled back whole) is interrupted
        rather than waited for, so SIGTERM never waits on a big start-up write."""
        self.closing = True
        if self.store is not None:
            self.store.close(interrupt=True)

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.problem is None,
            "id": self.store.store_id if self.store is not None else None,
            "problem": self.problem,
        }

    def metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "betblock_feed_store_ok",
            "0 when the feed store is missing, empty or damaged: the saved snapshot is served and updates are refused",
            value=0 if self.problem is not None else 1,
        )
