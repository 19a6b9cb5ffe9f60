"""The hit log as one part for the composition root: store, writer, recorder, retention.

Owns building the configured store (SQLite file under data_dir, PostgreSQL, or none), the
client privacy from settings, and the retention job that deletes hits older than
``hits.retention_days`` (run at start and every ``hits.retention_interval``). The composition
root constructs ``HitLog``, hands ``recorder`` to the resolver, awaits ``open`` before the
listeners open, runs ``retention`` in its TaskGroup and awaits ``close`` after the recorder's
final flush. Must not import the resolver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import structlog

from config.settings import HitsSettings, Settings
from hits.privacy import ClientPrivacy
from hits.recorder import HitRecorder
from hits.store import DAY_MS, HitStore
from hits.writer import HitWriter

log = structlog.get_logger("betblock.hits")


def build_store(hits: HitsSettings, data_dir: Path, clock: Callable[[], float] = time.time) -> HitStore | None:
    if hits.store == "sqlite":
        from hits.sqlite import SqliteStore

        return SqliteStore(hits.sqlite_file(data_dir), clock=clock)
    if hits.store == "postgres":
        from hits.postgres import PostgresStore

        assert hits.postgres_dsn is not None
        return PostgresStore(hits.postgres_dsn.get_secret_value(), hits.postgres_schema, clock=clock)
    return None


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
        self.writer = HitWriter(self.store, self.privacy, node) if self.store is not None else None
        self.recorder = HitRecorder(settings.hits, writer=self.writer, privacy=self.privacy)

    async def open(self) -> None:
        if self.store is not None:
            await self.store.open()

    async def purge_once(self) -> int:
        if self.store is None:
            return 0
        cutoff = int(self.clock() * 1000) - self.settings.retention_days * DAY_MS
        removed = await self.store.purge(cutoff)
        if removed:
            log.info("hits past retention deleted", rows=removed, retention_days=self.settings.retention_days)
        return removed

    async def retention(self) -> None:
        """Delete hits past the retention age now and every ``retention_interval`` seconds."""
        while True:
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
        """Metric families of the hit store (read at scrape time by the composition root)."""
        from prometheus_client.core import CounterMetricFamily

        rec = self.recorder
        return [
            CounterMetricFamily("betblock_hits_stored_rows", "Rows written to the hit store", value=rec.stored_rows),
            CounterMetricFamily("betblock_hits_store_errors", "Failed writes to the hit store (batches kept and retried)", value=rec.store_errors),
        ]
