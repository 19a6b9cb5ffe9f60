"""The feeds control plane: every source of every agency, from bytes to an installed snapshot.

Composes the parts, each with one job and its own settings section (the README's "control plane
in code" has the map): ``SourceTable`` (the sources and their state), ``StoreGate`` (the store,
or why there is none), ``PolicyFiles`` (allowlist and protected names), ``PolicyBuilder``
(compile, publish, save, the date timer), ``AdminDecisions`` and ``UpdateService`` (which share
the one update lock made here), ``SourceScheduler`` (when sources are fetched or read),
``FeedReadModel`` (status, metrics, provenance), ``LookupService`` and ``AgencyModes`` (enforce or
observe per agency, and the admin's switch). Owns only the start-up
order, written once as numbered steps in ``start`` (before DNS opens) and ``run`` (after):

1. the snapshot persisted by the last run is installed at once when it was compiled under the
   same configuration and no date has passed since: the node answers before any source is
   reachable and before the store is read;
2. otherwise the lists held in the store, plus the local files, are compiled before the DNS
   listeners open, so that no listed name is ever answered unblocked;
3. then, in the background, the store is read, files are re-read and URLs polled.

The store is never made anew when one existed (``feeds/ondisk.py``): a missing, empty or damaged
store stops the start with a message naming the way out, unless an intact saved snapshot can keep
enforcing; then the node serves that snapshot and refuses every update (``StoreUnavailable``).
A source that fails keeps its last good list; compiles run in a thread and coalesce.

Must not import the resolver, hits or betblock: the composition root hands in ``install``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import structlog

from config.settings import PolicySettings, Settings
from feeds import persist
from feeds.builder import CompileInputs, PolicyBuilder
from feeds.decisions import AdminDecisions
from feeds.modes import AgencyModes
from feeds.lookup import LookupService
from feeds.ondisk import explain, load_saved, open_store

# Re-exported: callers (the API, the CLI, tests) import the outcome and errors from here.
from feeds.outcomes import Conflict, NotFound, Refused, StoreUnavailable, UpdateResult, reject_json  # noqa: F401
from feeds.policyfiles import PolicyFiles
from feeds.scheduler import SourceScheduler
from feeds.snapshot import PolicySnapshot
from feeds.sources import SourceTable
from feeds.status import FeedReadModel
from feeds.store import FeedStore, StoreProblem, read_marker
from feeds.storegate import STORE_FILE, StoreGate  # noqa: F401  (STORE_FILE: re-exported)
from feeds.updates import UpdateService

log = structlog.get_logger("betblock.feeds")

SAVE_WAIT_NAMES = 200_000  # a save of up to this many names is waited for at shutdown (well under a second)


class FeedManager:
    """Builds the feeds parts from the settings and runs the start-up; ``install`` hands a
    snapshot to the resolver. Callers use the parts (``updates``, ``decisions``, ``read``, ...)
    or the entry points bound below."""

    def __init__(
        self,
        settings: Settings,
        install: Callable[[PolicySnapshot], None],
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.clock = clock
        resolve = settings.resolve_path
        self._fingerprint = lambda policy: persist.fingerprint_of(policy, settings.agencies, resolve)
        self.sources = SourceTable(settings.agencies, resolve, settings.data_dir / "xfr-follow")
        self.gate = StoreGate(settings.data_dir)
        self.files = PolicyFiles(settings.policy, resolve)
        self.snapshot_path = settings.data_dir / persist.FILENAME
        self.builder = PolicyBuilder(
            install=install, inputs=self._compile_inputs, store=lambda: self.gate.store, clock=clock,
            ttl=settings.policy.sinkhole_ttl, snapshot_path=self.snapshot_path,
            fingerprint=self._fingerprint(settings.policy),
        )
        # One lock for every change of the sources, update or admin decision: both get the same.
        shared = dict(lock=asyncio.Lock(), files=self.files, builder=self.builder, clock=clock)
        self.decisions = AdminDecisions(self.sources, self.gate, **shared)
        self.updates = UpdateService(self.sources, self.gate, decisions=self.decisions, resolve=resolve, **shared)
        self.scheduler = SourceScheduler(
            self.sources, resolve=resolve, ingest=self.updates.ingest, gate=self.gate, clock=clock,
            session_factory=session_factory or (lambda: aiohttp.ClientSession(trust_env=False)),
        )
        # enforce/observe per agency: the configuration's, then an admin's switch (stored)
        self.modes = AgencyModes(self.sources.agencies, self.gate, lock=shared["lock"], builder=self.builder, clock=clock)
        self.read = FeedReadModel(self.sources, self.builder, self.gate, clock, modes=self.modes)
        self.lookup = LookupService(settings.agencies, self.gate, self.files, lambda: self.builder.snapshot, clock)
        # Each part reports its own metrics; the composition root registers them.
        self.collectors = [self.read.metrics, self.builder.metrics, self.gate.metrics]
        self._check_store = False  # run() checks a store opened beside a saved snapshot
        self._flush_task: asyncio.Future[None] | None = None
        # The parts' entry points, for callers that hold the manager (CLI, pages, tests).
        self.agencies, self.runtime, self.require_store = self.sources.agencies, self.sources.runtime, self.gate.require
        self.loaded = self.gate.loaded  # set once the store's lists are in memory
        self.push, self.patch = self.updates.push, self.updates.patch
        self.approve, self.reject = self.decisions.approve, self.decisions.reject
        self.allow_add, self.allow_remove = self.decisions.allow_add, self.decisions.allow_remove
        self.refresh, self.poke, self.notify = self.scheduler.refresh, self.scheduler.poke, self.scheduler.notify
        self.compile, self.tick = self.builder.compile, self.builder.tick
        self.status, self.provenance = self.read.status, self.read.provenance

    @property
    def store(self) -> FeedStore | None:
        return self.gate.store

    def _compile_inputs(self) -> CompileInputs:
        return CompileInputs(self.modes.apply(self.sources.compile_lists()), self.files.compile_allow(), self.sources.versions())

    # -- start-up -------------------------------------------------------------------------

    async def start(self) -> PolicySnapshot:
        """Install the first snapshot (see the module docstring); returns it. ``StoreProblem``
        when the store is unusable and no intact saved snapshot can stand in for it.

        The whole start-up, in order: ``start`` (steps 1-5, before the DNS listeners open), then
        ``run`` (steps 6-9, in the background)."""
        started = time.perf_counter()
        # 1. The configured allowlist and protected names: every later step reads them.
        await asyncio.to_thread(self.files.read)
        # 2. The snapshot the last run saved, when it still holds (same configuration, no date
        #    passed since, intact).
        saved = await asyncio.to_thread(load_saved, self.snapshot_path, self.builder.fingerprint, self.clock())
        # 3. The store, made anew only on a first start. Beside a saved snapshot the full check
        #    waits for run() (step 6): DNS need not wait for it.
        try:
            self.gate.opened(await asyncio.to_thread(open_store, self.gate.path, self.snapshot_path, saved is None))
        except StoreProblem as exc:
            if saved is None:
                raise  # nothing could enforce the lists: the start stops, naming the way out
            # No usable store: the saved snapshot keeps enforcing, and every update is refused.
            self.builder.publish(saved, None)
            self.gate.degrade(str(exc), saved.version)
            return saved
        if saved is not None:
            # 4a. Serve the saved snapshot at once; the store's lists are read in step 8.
            self._check_store = True
            self.builder.publish(saved, None)
            # No date has passed since it was compiled: its dated decisions hold as of now.
            self.builder.dates_at = self.clock()
            # Already recorded by the run that compiled it, unless that run died first.
            await self.builder.record_install(saved.version, self.builder.dates_at, self.clock(), [], saved.observing)
            log.info("policy installed from the saved snapshot", version=saved.version,
                     seconds=round(time.perf_counter() - started, 3), **saved.stats)
            return saved
        # 4b. No saved snapshot: the store's lists plus the local files, compiled before DNS
        #     opens, so that no listed name is ever answered unblocked. The files' new versions
        #     are queued, not written: the resolver need not wait for a million-row insert.
        await self._load_state()
        await self.scheduler.refresh_files(defer=True)
        snapshot = await self.builder.compile(force=True)
        log.info("policy installed", version=snapshot.version,
                 seconds=round(time.perf_counter() - started, 3), **snapshot.stats)
        # 5. The queued writes, in the background; updates wait for them (``loaded``).
        self._flush_task = asyncio.ensure_future(self._write_deferred())
        return snapshot

    async def _write_deferred(self) -> None:
        await self.updates.write_deferred()
        self.gate.ready()

    async def run(self) -> None:
        """The background work: load the store when start() did not, poll URLs, watch files,
        recompile when dates pass. Runs until cancelled."""
        if self.builder.snapshot is None:
            await self.start()
        try:
            # 6. The full check of a store opened beside a saved snapshot (skipped in step 3).
            if self._check_store and self.gate.store is not None:
                self._check_store = False
                problem = await asyncio.to_thread(self.gate.store.check)
                if problem is not None:
                    why = explain(self.gate.path, self.snapshot_path, f"damaged ({problem})", read_marker(self.gate.path))
                    self.gate.degrade(why, self.builder.snapshot.version if self.builder.snapshot else None)
            if self.gate.problem is not None:
                await asyncio.Future()  # only the snapshot in force: nothing to read, poll or compile
            # 7. The writes queued in step 4b are in the store.
            if self._flush_task is not None:
                await self._flush_task
            # 8. After a saved snapshot (4a): the store's lists and the files, compiled anew;
            #    from here updates may proceed.
            if not self.gate.loaded.is_set():
                await self._load_state()
                await self.scheduler.refresh_files()
                await self.builder.compile(force=True)
                self.gate.ready()
            # 9. Until cancelled: the date timer, and every polled or watched source.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.builder.timer())
                self.scheduler.start(tg)
        finally:
            await self.aclose()

    async def _load_state(self) -> None:
        """Every source's list in force, pending version and fetch state, and the admin
        allowlist, as the store holds them."""
        store = self.gate.require()
        await asyncio.to_thread(lambda: (self.sources.load(store), self.files.load_admin(store), self.modes.load(store)))
        self.builder.changed()

    # -- reload and shutdown --------------------------------------------------------------

    def apply_policy(self, policy: PolicySettings) -> None:
        """A re-read ``policy`` section (SIGHUP): ``reload`` reads its files; the next compile
        uses its TTL and the next save its fingerprint."""
        self.files.policy = policy
        self.builder.apply(ttl=policy.sinkhole_ttl, fingerprint=self._fingerprint(policy))

    async def reload(self) -> None:
        """SIGHUP: re-read the allowlist, protected names and every file source; recompile."""
        try:
            await asyncio.to_thread(self.files.read)
        except OSError as exc:
            log.error("reload: cannot read policy files; keeping the current ones", error=str(exc))
        await self.gate.settled.wait()
        if self.gate.problem is not None:
            log.error("reload: the feed store is unusable; the saved snapshot stays in force", problem=self.gate.problem)
            return
        await self.scheduler.refresh_files()
        self.builder.changed()
        await self.builder.compile()

    async def flush(self) -> None:
        """Wait until the start-up lists are in the store and the latest snapshot is on disk."""
        if self._flush_task is not None:
            await self._flush_task
        if self.builder.persist_task is not None:
            await self.builder.persist_task

    async def interrupt(self) -> None:
        """Shutdown begins (SIGTERM): stop the work that may take minutes at 10M names rather
        than wait for it; nothing is lost. Feed-store work in flight is interrupted and rolled
        back whole (the next start records it again); a save of a snapshot over
        ``SAVE_WAIT_NAMES`` stops between slices (the file before it stays; the next start
        compiles what it would have held). A smaller save is waited for by ``aclose``."""
        self.builder.stop_saving(over=SAVE_WAIT_NAMES)
        if self._flush_task is not None and not self._flush_task.done():
            log.warning("shutdown interrupts recording the lists read at start-up in the feed store; the next start records them")
        await asyncio.to_thread(self.gate.interrupt)

    async def aclose(self) -> None:
        """Close the HTTP session and wait for the snapshot on its way to disk (unless
        ``interrupt`` stopped it)."""
        await self.scheduler.aclose()
        if self.builder.persist_task is not None:
            await asyncio.shield(self.builder.persist_task)

    def close(self) -> None:
        self.gate.close()
