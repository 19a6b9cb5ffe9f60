"""The policy builder: from the lists in force to a published, persisted ``PolicySnapshot``.

Owns compiling (off the event loop, coalesced: callers arriving during a compile share the next
one), the choice between patching the last snapshot (only plain names of one source changed, up
to ``PATCH_LIMIT``) and a full compile, publishing (one call of ``install``), saving the snapshot
in the background (only the latest; a superseded one is never written; with DNS worker
processes before the hand-over instead, which then links the saved file), recording each install
for the compliance report, the timer that recompiles when a listing or removal date passes, and
its own metrics (compiles and patches, their durations, the last publish, the saved file's size).

What it compiles comes from ``inputs`` (the caller's sources and allowlists at the moment of the
compile), so it knows nothing of sources, updates or the store's schema.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from collections.abc import Awaitable
from pathlib import Path

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from feeds import persist
from feeds.compile import AgencyList, Compiled, compile_lists, patch_snapshot
from feeds.lists import ListDiff
from feeds.snapshot import PolicySnapshot
from feeds.store import FeedStore
from feeds.table import open_table

log = structlog.get_logger("betblock.feeds")

PATCH_LIMIT = 50_000  # changed names up to which a snapshot is patched rather than recompiled


@dataclass(frozen=True, slots=True)
class CompileInputs:
    """What one compile reads, taken in one go on the event loop."""

    lists: list[AgencyList]
    allow: list[bytes]
    versions: list[tuple[str, str, int]]  # (agency, source, version) read, for the compliance record


class PolicyBuilder:
    """Compiles, publishes and persists snapshots; ``changed`` says what a compile must read anew."""

    # Separate DNS processes take each compiled snapshot before it is published (and so counts as
    # in force): set by the composition root when it runs DNS worker processes.
    handover: Callable[[PolicySnapshot], Awaitable[None]] | None = None

    def __init__(
        self,
        *,
        install: Callable[[PolicySnapshot], None],
        inputs: Callable[[], CompileInputs],
        store: Callable[[], FeedStore | None],
        clock: Callable[[], float],
        ttl: int,
        snapshot_path: Path,
        fingerprint: str,
    ) -> None:
        # What a compile reads, where its snapshot goes and where the install is recorded.
        self._inputs, self._install, self._store, self.clock = inputs, install, store, clock
        self.ttl = ttl  # of sinkhole answers (policy.sinkhole_ttl; ``apply`` on reload)
        # Where the snapshot is saved, and the configuration it was compiled under.
        self.snapshot_path, self.fingerprint = snapshot_path, fingerprint
        self.snapshot: PolicySnapshot | None = None
        self.next_change: float | None = None
        self.compile_seconds: float | None = None
        self.compiles = 0
        self.patches = 0
        self.seconds_total = 0.0  # every compile's and patch's duration, summed
        self.published_at: float | None = None
        self.saved_bytes: int | None = None  # the size of the snapshot file last saved
        self._compile_lock = asyncio.Lock()
        self._gen = 0  # bumped by every change of what a compile reads
        # Names whose listing changed since the last compile, when nothing else did (then the
        # next snapshot is patched from the last one); None: compile everything.
        self._dirty: set[bytes] | None = None
        self._compiled_gen = -1
        self.dates_at = 0.0  # when the last full compile evaluated listing and removal dates
        self._last_version = 0
        self._timer_wake = asyncio.Event()
        self.persist_task: asyncio.Future[None] | None = None
        self._to_save: tuple[PolicySnapshot, float | None] | None = None
        self._stop_saving = threading.Event()  # set at shutdown (stop_saving); read by the saving thread
        self._saving = 0  # names in the snapshot being saved now

    async def compile(self, *, force: bool = False) -> PolicySnapshot:
        """Compile what the sources hold now, off the event loop, and install it. Callers that
        arrive during a compile share the next one."""
        wanted = self._gen
        async with self._compile_lock:
            if not force and self._compiled_gen >= wanted and self.snapshot is not None:
                return self.snapshot
            gen = self._gen
            dirty, self._dirty = self._dirty, set()
            inputs = self._inputs()
            lists, allow = inputs.lists, inputs.allow
            now = self.clock()
            version = max(self._last_version + 1, int(now * 1000))
            ttl = self.ttl
            started = time.perf_counter()
            try:
                patched = None
                if dirty is not None and not force and self.snapshot is not None:
                    patched = await asyncio.to_thread(
                        patch_snapshot, self.snapshot, lists, frozenset(allow), dirty, ttl, version=version
                    )
                if patched is not None:
                    compiled = Compiled(patched, self.next_change)
                    self.patches += 1
                    dates_at = self.dates_at  # a patch keeps the last compile's dated decisions
                else:
                    compiled = await asyncio.to_thread(compile_lists, lists, allow, ttl, version=version, now=now)
                    dates_at = now
            except BaseException:
                self._dirty = None  # what changed is no longer known: compile everything next time
                raise
            self.compile_seconds = time.perf_counter() - started
            self.seconds_total += self.compile_seconds
            self.compiles += 1
            self._compiled_gen = gen
            snapshot = compiled.snapshot
            saved = None
            if self.handover is not None:  # every DNS worker answers from it before it is reported in force
                # Saved first, so that the hand-over links the saved file: one write of the table
                # per compile, not two (and the dict this compile built is dropped for the mapping).
                saved = await self._save_now(snapshot, compiled.next_change)
                snapshot = saved or snapshot
                await self.handover(snapshot)
            self.publish(snapshot, compiled.next_change)
            installed = self.clock()
            self.dates_at = dates_at
            if saved is None:
                self._save_later(snapshot, compiled.next_change)
            await self.record_install(snapshot.version, dates_at, installed, inputs.versions, snapshot.observing)
            return snapshot

    async def record_install(
        self, snapshot: int, dates_at: float, installed: float, versions: list[tuple[str, str, int]],
        observing: tuple[str, ...] = (),
    ) -> None:
        """Record for the compliance report that ``snapshot`` went live (after the swap: the
        resolver never waits for it)."""
        store = self._store()
        if store is None:
            return
        try:
            await asyncio.to_thread(store.record_install, snapshot, dates_at, installed, versions, observing)
        except sqlite3.Error as exc:  # the snapshot is in force; only the evidence of it is missing
            log.error("cannot record a snapshot install in the feed store", version=snapshot, error=str(exc))
        except Exception:
            log.exception("cannot record a snapshot install in the feed store", version=snapshot)

    async def installs(self, snapshots: set[int]) -> dict[int, tuple[int, float]]:
        """(seq, installed_at) of the first recorded install of each of ``snapshots`` that has
        one (its ``v<seq>`` for people); empty without a store."""
        store = self._store()
        if store is None or not snapshots:
            return {}

        def read() -> dict[int, tuple[int, float]]:
            found = {v: store.install_of(v) for v in snapshots}
            return {v: f for v, f in found.items() if f is not None}

        return await asyncio.to_thread(read)

    def changed(self, d: ListDiff | None = None) -> None:
        """Something a compile reads changed: ``d`` when only one source's plain names did."""
        self._gen += 1
        if d is None or d.added_rich or d.removed_rich or self._dirty is None:
            self._dirty = None
            return
        self._dirty |= d.added_plain
        self._dirty |= d.removed_plain
        if len(self._dirty) > PATCH_LIMIT:
            self._dirty = None

    def apply(self, *, ttl: int, fingerprint: str) -> None:
        """A reloaded ``policy`` section: the next compile uses its TTL, the next save its fingerprint."""
        if (ttl, fingerprint) != (self.ttl, self.fingerprint):
            self.ttl, self.fingerprint = ttl, fingerprint
            self.changed()

    def publish(self, snapshot: PolicySnapshot, next_change: float | None) -> None:
        self._install(snapshot)
        self.published_at = self.clock()
        self.snapshot = snapshot
        self._last_version = max(self._last_version, snapshot.version)
        self.next_change = next_change
        self._timer_wake.set()

    def _save_later(self, snapshot: PolicySnapshot, next_change: float | None) -> None:
        """Save the latest snapshot in the background; a snapshot superseded before its turn is
        never written (nor kept in memory for it)."""
        self._to_save = (snapshot, next_change)
        if self.persist_task is None or self.persist_task.done():
            self.persist_task = asyncio.ensure_future(self._saver())

    async def _saver(self) -> None:
        while self._to_save is not None:
            snapshot, next_change = self._to_save
            self._to_save = None
            self._saving = len(snapshot)
            started = time.perf_counter()
            try:
                await asyncio.to_thread(persist.save, self.snapshot_path, snapshot, self.fingerprint, next_change,
                                        self._stop_saving.is_set)
                self.saved_bytes = self.snapshot_path.stat().st_size
                log.info("compiled snapshot saved", version=snapshot.version, bytes=self.saved_bytes,
                         seconds=round(time.perf_counter() - started, 3))
            except persist.SaveStopped:
                log.warning("shutdown stopped saving the compiled snapshot; the file before it stays",
                            version=snapshot.version)
                return
            except Exception as exc:  # a restart then compiles from the store instead
                log.error("cannot save the compiled snapshot", path=str(self.snapshot_path), error=str(exc))
            finally:
                self._saving = 0
            del snapshot

    async def _save_now(self, snapshot: PolicySnapshot, next_change: float | None) -> PolicySnapshot | None:
        """Save ``snapshot`` now and return it mapped from the saved file (``feeds.table``), for
        the hand-over to link; None when it was not saved (stopped, or an error, logged): the
        caller then hands over the compiled one and saves it in the background, as before."""
        self._to_save = None  # superseded by this one
        if self.persist_task is not None and not self.persist_task.done():
            await asyncio.shield(self.persist_task)  # one writer of the file (and its temporary) at a time
        if self._stop_saving.is_set():
            return None
        self._saving = len(snapshot)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(persist.save, self.snapshot_path, snapshot, self.fingerprint, next_change,
                                    self._stop_saving.is_set)
            mapped = await asyncio.to_thread(open_table, self.snapshot_path)
        except persist.SaveStopped:
            return None
        except Exception as exc:  # the hand-over writes its own file; the background save tries again
            log.error("cannot save the compiled snapshot", path=str(self.snapshot_path), error=str(exc))
            return None
        finally:
            self._saving = 0
        self.saved_bytes = self.snapshot_path.stat().st_size
        log.info("compiled snapshot saved", version=snapshot.version, bytes=self.saved_bytes,
                 seconds=round(time.perf_counter() - started, 3))
        return mapped

    def stop_saving(self, *, over: int = 0) -> None:
        """Shutdown: a save in progress or queued of a snapshot of more than ``over`` names stops
        at its next slice (the file before it stays) and none starts; the snapshot is derived,
        so the next start compiles it again if need be."""
        if max(self._saving, len(self._to_save[0]) if self._to_save else 0) > over:
            self._stop_saving.set()
            self._to_save = None

    async def tick(self) -> bool:
        """Recompile when a listing or removal date has passed; True when it did."""
        if self.next_change is None or self.next_change > self.clock():
            return False
        self.changed()
        await self.compile()
        return True

    async def timer(self) -> None:
        """Recompile at each listing or removal date; wakes early when a publish moves the date."""
        while True:
            self._timer_wake.clear()
            try:
                if await self.tick():
                    continue
            except Exception:
                log.exception("recompile at a listing or removal date failed; retrying in a minute")
                await asyncio.sleep(60)
                continue
            delay = 3600.0 if self.next_change is None else min(3600.0, self.next_change - self.clock())
            try:
                async with asyncio.timeout(max(delay, 0.05)):
                    await self._timer_wake.wait()
            except TimeoutError:
                pass

    def metrics(self) -> Iterator[Metric]:
        """The builder's Prometheus families, read at scrape time."""
        yield GaugeMetricFamily("betblock_policy_compile_seconds", "Duration of the last compile", value=self.compile_seconds or 0.0)
        yield CounterMetricFamily("betblock_policy_compiles", "Compiles since start (patches included)", value=self.compiles)
        yield CounterMetricFamily("betblock_policy_patches", "Compiles that patched the last snapshot", value=self.patches)
        yield CounterMetricFamily(
            "betblock_policy_compile_time_seconds", "Time spent compiling and patching since start", value=self.seconds_total
        )
        yield GaugeMetricFamily(
            "betblock_policy_next_change_timestamp", "Next listing or removal date (Unix time; 0 = none)",
            value=self.next_change or 0.0,
        )
        yield GaugeMetricFamily(
            "betblock_policy_published_timestamp", "When the snapshot in force was published (Unix time; 0 = none yet)",
            value=self.published_at or 0.0,
        )
        yield GaugeMetricFamily(
            "betblock_policy_saved_bytes", "Size of the snapshot file last saved (0 = none saved by this run)",
            value=self.saved_bytes or 0,
        )
