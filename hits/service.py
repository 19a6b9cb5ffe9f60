"""The hit log as one part for the composition root: store, writer, recorder, retention.

Owns building the configured store (SQLite file under data_dir, PostgreSQL, or none), its
checkpoint file, the client privacy from settings, the store's health (failed at open, or
refusing writes) for /readyz, status and metrics, and the retention job that deletes hits older
than ``hits.retention_days`` (run at start and every ``hits.retention_interval``; it also reopens
a store that was unreachable at start). The composition root constructs ``HitLog``, hands
``recorder`` to the resolver, awaits ``open`` before the listeners open (it never raises: the hit
log must not keep DNS from starting), runs ``retention`` in its TaskGroup and awaits ``close``
after the recorder's final flush. Must not import the resolver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import structlog

from config.settings import HitsSettings, Settings
from hits.checkpoint import Checkpointer, CheckpointLog
from hits.privacy import ClientPrivacy
from hits.recorder import HitRecorder
from hits import damage
from hits.store import CAUSES, DAY_MS, HitStore, StoreError
from hits.writer import HitWriter

log = structlog.get_logger("betblock.hits")

REOPEN_SECONDS = 30.0
RETRYABLE = ("unavailable", "io", "other")  # a damaged, full or read-only store is not retried by reopening


def build_store(hits: HitsSettings, data_dir: Path, clock: Callable[[], float] = time.time) -> HitStore | None:
    if hits.store == "sqlite":
        from hits.sqlite import SqliteStore

        return SqliteStore(hits.sqlite_file(data_dir), clock=clock)
    if hits.store == "postgres":
        from hits.postgres import PostgresStore

        assert hits.postgres_dsn is not None
        return PostgresStore(hits.postgres_dsn.get_secret_value(), hits.postgres_schema, clock=clock)
    return None


def build_checkpoints(hits: HitsSettings, data_dir: Path) -> CheckpointLog:
    key = hits.checkpoint_key.get_secret_value().encode() if hits.checkpoint_key is not None else None
    return CheckpointLog(hits.checkpoint_file(data_dir), key)


def build_privacy(hits: HitsSettings) -> ClientPrivacy:
    secret = hits.hash_secret.get_secret_value().encode() if hits.hash_secret is not None else b""
    return ClientPrivacy(hits.privacy, ipv4_prefix=hits.truncate_ipv4, ipv6_prefix=hits.truncate_ipv6, secret=secret)


class HitLog:
    """Everything of the hit log that one node runs."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        import socket

        self.settings = settings.hits
        self.clock = clock
        self.store = build_store(settings.hits, settings.data_dir, clock) if settings.hits.enabled else None
        self.privacy = build_privacy(settings.hits)
        node = settings.hits.node or socket.gethostname()
        self.checkpoints = build_checkpoints(settings.hits, settings.data_dir)
        if self.store is not None:
            self.store.seal = self.checkpoints.seal
        self.checkpointer = Checkpointer(self.store, self.checkpoints) if self.store is not None else None
        self.writer = HitWriter(self.store, self.privacy, node, self.checkpointer.record) if self.checkpointer is not None else None
        self.recorder = HitRecorder(settings.hits, writer=self.writer, privacy=self.privacy)
        self.failure: tuple[str, str] | None = None  # why the store could not be opened

    async def open(self) -> None:
        """Open the store. Never raises: a store that cannot be opened, or is damaged, leaves the
        hit log failed (one log line, the status, /readyz, the metrics say so) and DNS answering;
        hits are then held in memory (bounded) and counted as lost beyond that."""
        if self.store is None:
            return
        try:
            await damage.open_checked(self.store, self.checkpoints, self.settings.on_damaged)
        except StoreError as exc:
            self.failure = (exc.cause, str(exc))
            self.recorder.fail(exc.cause, str(exc))
            log.error(
                "hit store failed; DNS keeps answering, hits are held in memory and lost beyond the limit",
                cause=CAUSES.get(exc.cause, exc.cause), error=str(exc), limit=self.recorder.cap * 4,
                retry_seconds=REOPEN_SECONDS if exc.cause in RETRYABLE else None,
            )
            return
        self.failure = None
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.record, True)

    async def _reopen(self) -> None:
        """A store that was unreachable or busy at start: try again (a damaged one stays failed)."""
        assert self.store is not None
        try:
            await damage.open_checked(self.store, self.checkpoints, self.settings.on_damaged)
        except StoreError as exc:
            self.failure = (exc.cause, str(exc))
            return
        self.failure = None
        self.recorder.reopened()
        log.info("hit store open; held hits are written at the next flush", held=self.recorder.held())
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.record, True)

    def health(self) -> dict[str, Any] | None:
        """None while the store takes hits; else its state, cause and error (for /readyz and status)."""
        rec = self.recorder.stats()
        if self.store is None or rec["store_state"] == "ok":
            return None
        return {"state": rec["store_state"], "error": rec["store_error"], "held": rec["held"], "lost": rec["lost"]}

    async def purge_once(self) -> int:
        if self.store is None:
            return 0
        cutoff = int(self.clock() * 1000) - self.settings.retention_days * DAY_MS
        removed = await self.store.purge(cutoff)
        if removed:
            log.info("hits past retention deleted", rows=removed, retention_days=self.settings.retention_days)
            if self.checkpointer is not None:  # the anchor moved: say so outside the store
                await asyncio.to_thread(self.checkpointer.record, True)
        return removed

    async def retention(self) -> None:
        """Delete hits past the retention age now and every ``retention_interval`` seconds (and
        reopen a store that could not be opened at start, every ``REOPEN_SECONDS``)."""
        while True:
            if self.failure is not None:
                if self.failure[0] in RETRYABLE:
                    await self._reopen()
                if self.failure is not None:
                    await asyncio.sleep(REOPEN_SECONDS)
                    continue
            try:
                await self.purge_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the job must outlive a failed run
                log.error("hit retention failed", error=str(exc))
            await asyncio.sleep(self.settings.retention_interval)

    async def close(self) -> None:
        self.recorder.close()
        if self.store is not None:
            await self.store.close()

    def metrics(self) -> list[Any]:
        """Metric families of the hit log (read at scrape time by the composition root): each
        part reports its own, the recorder (and the store writes it makes) and the checkpointer
        (the chain head)."""
        out = self.recorder.metrics()
        if self.checkpointer is not None:
            out += self.checkpointer.metrics()
        return out
