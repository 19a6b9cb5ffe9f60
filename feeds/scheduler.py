"""The source scheduler: when each source is fetched or read, and the bookkeeping of how it went.

Owns polling URLs and zone transfers (at the source's interval, sooner while it fails: legal
deadlines run), watching files (re-read when mtime, size or inode change), the wake-ups an admin
(``refresh``) or a NOTIFY asks for, the HTTP session, and each source's fetch state (ETag,
last success, last error, failures) in memory and in the store. What a fetched body becomes is
the update service's business (``ingest``); a failure is recorded on the source, never raised,
and the source keeps its last good list.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog

from feeds.entry import FeedError
from feeds.fetch import FetchError, fetch
from feeds.outcomes import Refused, UpdateResult
from feeds.storegate import StoreGate

if TYPE_CHECKING:
    from feeds.sources import SourceRuntime, SourceTable

log = structlog.get_logger("betblock.feeds")

# (source, body, control file, actor, compile after, defer store writes) -> what became of it
Ingest = Callable[..., Awaitable[UpdateResult]]


async def record_success(gate: StoreGate, rt: SourceRuntime, now: float) -> None:
    """A fetch, read or push of ``rt`` went through: its failures are over (kept in the store too)."""
    f = rt.fetch
    f.succeeded(now)
    await gate.save_source(
        rt.agency.id, rt.key, etag=f.etag, last_modified=f.last_modified, last_attempt=now, last_success=now,
        last_change=rt.in_force.changed_at, last_error=None, failures=0,
    )


def poll_interval(rt: SourceRuntime) -> float:
    """Seconds until a polled source is asked again: its interval (a followed zone's refresh),
    shorter while it fails, doubling from 30 s: legal deadlines run."""
    interval = rt.follower.interval() if rt.follower is not None else rt.settings.interval
    if rt.fetch.failures:
        interval = min(interval, 30.0 * 2 ** min(rt.fetch.failures - 1, 10))
    return float(interval)


class SourceScheduler:
    """Fetches, reads and watches the configured sources; hands each new body to ``ingest``."""

    def __init__(
        self,
        sources: SourceTable,
        *,
        resolve: Callable[[Path], Path],
        ingest: Ingest,
        gate: StoreGate,
        clock: Callable[[], float],
        session_factory: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.sources, self.gate, self.clock = sources, gate, clock
        self.resolve = resolve  # control files
        self._ingest = ingest  # what becomes of a body: the update service's business
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None  # made at the first URL fetch

    def start(self, tg: asyncio.TaskGroup) -> None:
        """One task per source that is polled or watched (push sources wait for the API)."""
        for rt in self.sources.values():
            if rt.settings.kind in ("url", "xfr"):
                tg.create_task(self.poll(rt))
            elif rt.settings.kind == "file":
                tg.create_task(self.watch(rt))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def refresh_files(self, *, defer: bool = False) -> None:
        for rt in self.sources.values():
            if rt.settings.kind == "file":
                await self.refresh(rt, compile=False, defer=defer)

    async def refresh(self, rt: SourceRuntime, *, compile: bool = True, defer: bool = False) -> UpdateResult | None:
        """Fetch or read one source once and ingest what changed; failures are recorded on the
        source, never raised. Returns the update's result, or None when nothing new came."""
        now = self.clock()
        f = rt.fetch
        f.last_attempt = now
        try:
            if rt.settings.kind == "url":
                if self._session is None:
                    self._session = self._session_factory()
                got = await fetch(self._session, rt.settings, etag=f.etag, last_modified=f.last_modified)
                if got.body is None:
                    f.count("not_modified")
                    await record_success(self.gate, rt, now)
                    return None
                data, control, etag, lm = got.body, got.control, got.etag, got.last_modified
            elif rt.settings.kind == "file":
                data, control = await asyncio.to_thread(self._read_file, rt)
                etag = lm = None
            elif rt.follower is not None:
                body = await rt.follower.fetch()  # the zone as text when its serial moved
                if body is None:
                    f.count("not_modified")
                    await record_success(self.gate, rt, now)
                    return None
                data, control, etag, lm = body, None, None, None
            else:
                return None
            result = await self._ingest(rt, data, control=control, actor=f"source:{rt.key}", compile=compile, defer=defer)
        except Exception as exc:  # never CancelledError: that is not an Exception
            f.failed(str(exc) if isinstance(exc, (FetchError, FeedError, Refused)) else f"{type(exc).__name__}: {exc}")
            if isinstance(exc, (FetchError, FeedError, Refused, OSError)):
                log.warning("source failed; keeping its last good list", agency=rt.agency.id, source=rt.key, error=f.last_error)
            else:  # our own bug: one log line with the traceback, and the node keeps serving
                log.exception("source update failed; keeping its last good list", agency=rt.agency.id, source=rt.key)
            await self.gate.save_source(rt.agency.id, rt.key, last_attempt=now, last_error=f.last_error, failures=f.failures)
            return None
        f.count(result.status)
        if rt.settings.kind == "url":
            # Only after the body was dealt with: a failed check must fetch the body again.
            f.etag, f.last_modified = etag, lm
        await record_success(self.gate, rt, now)
        return result

    def _read_file(self, rt: SourceRuntime) -> tuple[bytes, bytes | None]:
        assert rt.path is not None
        try:
            st = os.stat(rt.path)
        except OSError:
            rt.fetch.stat = None  # the watcher re-reads when the file comes back
            raise
        if st.st_size > rt.settings.max_bytes:
            raise FeedError(f"{rt.path}: {st.st_size} bytes is over max_bytes {rt.settings.max_bytes}")
        rt.fetch.stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        data = rt.path.read_bytes()
        control = None
        if rt.settings.control_file is not None:
            control = self.resolve(rt.settings.control_file).read_bytes()
        return data, control

    async def poll(self, rt: SourceRuntime) -> None:
        while True:
            await self.refresh(rt)
            try:
                async with asyncio.timeout(poll_interval(rt)):
                    await rt.wake.wait()
            except TimeoutError:
                pass
            rt.wake.clear()

    async def watch(self, rt: SourceRuntime) -> None:
        assert rt.path is not None
        while True:
            try:
                async with asyncio.timeout(rt.settings.interval):
                    await rt.wake.wait()
            except TimeoutError:
                pass
            forced = rt.wake.is_set()
            rt.wake.clear()
            try:
                st = await asyncio.to_thread(os.stat, rt.path)
                seen: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
            except OSError:
                seen = None
            if forced or seen != rt.fetch.stat:
                await self.refresh(rt)
            elif seen is not None and rt.fetch.failures == 0:
                # Unchanged and readable: the list in force is the file's list, still fresh.
                rt.fetch.last_success = self.clock()

    def poke(self, agency: str, source: str | None = None) -> int:
        """Poll (url) or re-read (file) an agency's sources now; returns how many."""
        n = 0
        for (a, key), rt in self.sources.items():
            if a == agency and (source is None or key == source) and rt.settings.kind != "push":
                rt.wake.set()
                n += 1
        return n

    def notify(self, zone: str, client: str) -> bool:
        """A NOTIFY (RFC 1996) for ``zone`` from ``client``: check the xfr sources that follow
        it from there now; False when none does."""
        found = False
        for rt in self.sources.values():
            if rt.follower is not None and rt.follower.matches(zone, client):
                rt.wake.set()
                found = True
        return found
