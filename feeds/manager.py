"""The feeds control plane: every source of every agency, from bytes to an installed snapshot.

Composes the parts, each with one job (the README's "control plane in code" has the map):
``SourceScheduler`` (when sources are fetched or read), ``UpdateService`` (parse -> guard -> diff
-> quarantine or apply), ``AdminDecisions`` (approve, reject, allowlist, audit), ``PolicyBuilder``
(compile, publish, save, the date timer) and ``FeedReadModel`` (status, metrics, provenance).
Owns what they share (the sources, the store and the update lock) and the start-up order
(written step by step in ``start`` and ``run``):

1. the snapshot persisted by the last run is installed at once when it was compiled under the
   same configuration and no date has passed since: the node answers before any source is
   reachable and before the store is read;
2. otherwise the lists held in the store, plus the local files, are compiled before the DNS
   listeners open, so that no listed name is ever answered unblocked;
3. then, in the background, the store is read, files are re-read and URLs polled.

The store is never made anew when one existed (its marker ``feeds.sqlite.id`` or a saved snapshot
says so): a missing, empty or damaged store stops the start with a message naming the way out
(restore a backup, or ``betblock feeds recover``), unless an intact saved snapshot can keep
enforcing. Then the node serves that snapshot, refuses every update (``StoreUnavailable``, 503)
and says why in ``status``, the metrics and the log.

A source that fails (network, size, checksum, signature, a parse error) keeps its last good
list; the failure shows in ``status`` and the metrics. Updates are serialised by one lock;
compiles run in a thread and coalesce (updates arriving during a compile share the next one).

Must not import the resolver, hits or betblock: the composition root hands in ``install``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from prometheus_client.core import Metric

from config.settings import AgencySettings, Settings, SourceSettings
from feeds import persist
from feeds.builder import CompileInputs, PolicyBuilder
from feeds.compile import AgencyList, PlainList, Timed, allow_names
from feeds.decisions import AdminDecisions
from feeds.formats import scope_of
from feeds.guard import Protected
from feeds.lists import SourceList, to_wire

# Re-exported: callers (the API, the CLI, tests) import the outcome and errors from here.
from feeds.ondisk import explain, load_saved, open_store
from feeds.outcomes import Conflict, NotFound, Refused, StoreUnavailable, UpdateResult, reject_json  # noqa: F401
from feeds.scheduler import SourceScheduler
from feeds.snapshot import PolicySnapshot, Scope
from feeds.status import FeedReadModel, source_status
from feeds.store import FeedStore, StoreProblem, read_marker
from feeds.updates import UpdateService
from feeds.xfr_source import ZoneFollower

log = structlog.get_logger("betblock.feeds")

STORE_FILE = "feeds.sqlite"


@dataclass
class SourceRuntime:
    """One configured source: its list in force and how fetching it has gone."""

    agency: AgencySettings
    settings: SourceSettings
    key: str
    path: Path | None = None  # file sources, resolved
    current: SourceList = field(default_factory=SourceList)
    timed: tuple[Timed, ...] = ()
    version: int | None = None
    sha256: str | None = None
    pending_version: int | None = None
    pending_sha: str | None = None
    pending_reason: str | None = None
    rejected_sha: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    last_change: float | None = None
    last_error: str | None = None
    failures: int = 0
    fetches: dict[str, int] = field(default_factory=dict)
    stat: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of a watched file
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    follower: ZoneFollower | None = None  # kind xfr: the followed zone

    def set_pending(self, version: int | None, sha: str | None = None, reason: str | None = None) -> None:
        """The version waiting in quarantine (None: none waits); the three fields change together."""
        self.pending_version, self.pending_sha, self.pending_reason = version, sha, reason

    def set_list(self, new: SourceList) -> None:
        self.current = new
        fmt, default = self.settings.format, self.agency.scope
        self.timed = tuple(Timed.of(e, scope_of(fmt, e.wildcard, default)) for e in new.rich.values())

    @property
    def scope(self) -> Scope:
        """What this source's plain names cover (its format's reading, else the agency's)."""
        return scope_of(self.settings.format, False, self.agency.scope)

    def count(self, result: str) -> None:
        self.fetches[result] = self.fetches.get(result, 0) + 1

    def status(self, now: float) -> dict[str, Any]:
        return source_status(self, now)

class FeedManager:
    """Owns the sources, the store and compiling; ``install`` hands a snapshot to the resolver."""

    def __init__(
        self,
        settings: Settings,
        install: Callable[[PolicySnapshot], None],
        *,
        clock: Callable[[], float] = time.time,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.agencies = {a.id: a for a in settings.agencies}
        self.sources: dict[tuple[str, str], SourceRuntime] = {}
        for agency in settings.agencies:
            for src in agency.all_sources():
                path = settings.resolve_path(src.path) if src.path is not None else None
                self.sources[(agency.id, src.key)] = SourceRuntime(agency, src, src.key, path)
                if src.kind == "xfr":
                    self.sources[(agency.id, src.key)].follower = ZoneFollower(src, settings.data_dir / "xfr-follow")
        self.data_dir = settings.data_dir
        self.store: FeedStore | None = None
        # Why the store cannot be used (the node then serves its saved snapshot, read-only).
        self.store_problem: str | None = None
        self._check_store = False  # run() checks a store opened beside a saved snapshot
        self._settled = asyncio.Event()  # loaded, or the store found unusable: updates may be answered
        self.protected = Protected()
        self.allow: list[bytes] = []
        self.admin_allow: list[bytes] = []
        self.fingerprint = persist.fingerprint(settings)
        self.loaded = asyncio.Event()  # the store's lists are in memory: updates may proceed
        self._lock = asyncio.Lock()  # one update at a time
        self.builder = PolicyBuilder(
            install=install, inputs=self._compile_inputs, store=lambda: self.store, clock=clock,
            ttl=settings.policy.sinkhole_ttl, snapshot_path=self.snapshot_path, fingerprint=self.fingerprint,
        )
        # Store writes of the lists read at start-up, done after the first snapshot is
        # installed (a million-row first version costs seconds the resolver need not wait).
        self._deferred: list[Callable[[], object]] = []
        self._reserved: dict[str, int] = {}
        self._flush_task: asyncio.Future[None] | None = None
        self.scheduler = SourceScheduler(
            self.sources, settings, ingest=self._ingest, store=lambda: self.store, clock=clock,
            session_factory=session_factory or (lambda: aiohttp.ClientSession(trust_env=False)),
        )
        self.updates = UpdateService(self)
        self.read = FeedReadModel(self)
        self.decisions = AdminDecisions(self)

    # -- paths ----------------------------------------------------------------------------

    @property
    def store_path(self) -> Path:
        return self.data_dir / STORE_FILE

    @property
    def snapshot_path(self) -> Path:
        return self.data_dir / persist.FILENAME

    # -- start-up -------------------------------------------------------------------------

    async def start(self) -> PolicySnapshot:
        """Install the first snapshot (see the module docstring); returns it. ``StoreProblem``
        when the store is unusable and no intact saved snapshot can stand in for it.

        The whole start-up, in order: ``start`` (steps 1-5, before the DNS listeners open), then
        ``run`` (steps 6-9, in the background)."""
        started = time.perf_counter()
        # 1. The configured allowlist and protected names: every later step reads them.
        await asyncio.to_thread(self._read_policy_files)
        # 2. The snapshot the last run saved, when it still holds (same configuration, no date
        #    passed since, intact).
        saved = await asyncio.to_thread(load_saved, self.snapshot_path, self.fingerprint, self.clock())
        # 3. The store, made anew only on a first start. Beside a saved snapshot the full check
        #    waits for run() (step 6): DNS need not wait for it.
        try:
            self.store = await asyncio.to_thread(open_store, self.store_path, self.snapshot_path, saved is None)
        except StoreProblem as exc:
            if saved is None:
                raise  # nothing could enforce the lists: the start stops, naming the way out
            # No usable store: the saved snapshot keeps enforcing, and every update is refused.
            self.builder.publish(saved, None)
            self._degrade(str(exc))
            return saved
        if saved is not None:
            # 4a. Serve the saved snapshot at once; the store's lists are read in step 8.
            self._check_store = True
            self.builder.publish(saved, None)
            # No date has passed since it was compiled: its dated decisions hold as of now.
            self.builder.dates_at = self.clock()
            # Already recorded by the run that compiled it, unless that run died first.
            await self.builder.record_install(saved.version, self.builder.dates_at, self.clock(), [])
            log.info("policy installed from the saved snapshot", version=saved.version,
                     seconds=round(time.perf_counter() - started, 3), **saved.stats)
            return saved
        # 4b. No saved snapshot: the store's lists plus the local files, compiled before DNS
        #     opens, so that no listed name is ever answered unblocked. The files' new versions
        #     are queued, not written: the resolver need not wait for a million-row insert.
        await self._load_state()
        await self.scheduler.refresh_files(defer=True)
        await self.compile(force=True)
        assert self.snapshot is not None
        log.info("policy installed", version=self.snapshot.version,
                 seconds=round(time.perf_counter() - started, 3), **self.snapshot.stats)
        # 5. The queued writes, in the background; updates wait for them (``loaded``).
        self._flush_task = asyncio.ensure_future(self._write_deferred())
        return self.snapshot

    def _degrade(self, problem: str) -> None:
        """Serve the snapshot in force without a store: updates get ``StoreUnavailable``."""
        self.store_problem = problem
        if self.store is not None:
            self.store.close()
            self.store = None
        log.error("feed store unusable: serving the saved snapshot, refusing updates until it is restored",
                  version=self.snapshot.version if self.snapshot else None, problem=problem)
        self._settled.set()

    def require_store(self) -> FeedStore:
        """The store, or ``StoreUnavailable`` saying why there is none."""
        if self.store is None:
            raise StoreUnavailable(self.store_problem or "the feed store is not open yet")
        return self.store

    async def _writable(self) -> FeedStore:
        """Wait until the store's lists are in memory; ``StoreUnavailable`` when it is unusable."""
        if self.store_problem is None:
            await self._settled.wait()
        return self.require_store()

    async def _store_call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A store write in a thread; a write SQLite refuses (disk full, damage) changes nothing
        and is ``StoreUnavailable``."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the feed store refused the write ({exc}); nothing was changed") from exc

    async def _write_deferred(self) -> None:
        """Record the versions read at start-up in the store; then updates may proceed."""
        assert self.store is not None
        async with self._lock:
            jobs, self._deferred = self._deferred, []
            try:
                await asyncio.to_thread(lambda: [job() for job in jobs])
            except sqlite3.Error as exc:  # the lists are in force; a restart reads the files again
                log.error("cannot record the lists read at start-up in the feed store", error=str(exc))
            except Exception:  # our own bug: the same, with the traceback
                log.exception("cannot record the lists read at start-up in the feed store")
            self._reserved.clear()
        self.loaded.set()
        self._settled.set()

    async def run(self) -> None:
        """The background work: load the store when start() did not, poll URLs, watch files,
        recompile when dates pass. Runs until cancelled."""
        if self.snapshot is None:
            await self.start()
        try:
            # 6. The full check of a store opened beside a saved snapshot (skipped in step 3).
            if self._check_store and self.store is not None:
                self._check_store = False
                problem = await asyncio.to_thread(self.store.check)
                if problem is not None:
                    self._degrade(explain(self.store_path, self.snapshot_path, f"damaged ({problem})",
                                          read_marker(self.store_path)))
            if self.store_problem is not None:
                await asyncio.Future()  # only the snapshot in force: nothing to read, poll or compile
            # 7. The writes queued in step 4b are in the store.
            if self._flush_task is not None:
                await self._flush_task
            # 8. After a saved snapshot (4a): the store's lists and the files, compiled anew;
            #    from here updates may proceed.
            if not self.loaded.is_set():
                await self._load_state()
                await self.scheduler.refresh_files()
                await self.compile(force=True)
                self.loaded.set()
                self._settled.set()
            # 9. Until cancelled: the date timer, and every polled or watched source.
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._timer())
                self.scheduler.start(tg)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session and wait for the snapshot on its way to disk."""
        await self.scheduler.aclose()
        if self.builder.persist_task is not None:
            await asyncio.shield(self.builder.persist_task)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    async def _load_state(self) -> None:
        """Read every configured source's list in force, pending version and fetch state."""
        assert self.store is not None
        store = self.store

        def load() -> None:
            for (agency_id, key), rt in self.sources.items():
                rt.set_list(store.live(agency_id, key))
                active = store.active(agency_id, key)
                if active is not None:
                    rt.version, rt.sha256 = active["version"], active["sha256"]
                latest = store.latest(agency_id, key)
                if latest is not None and latest["status"] == "quarantined":
                    rt.set_pending(latest["version"], latest["sha256"], latest["reason"])
                elif latest is not None and latest["status"] == "rejected":
                    rt.rejected_sha = latest["sha256"]
                st = store.source_state(agency_id, key)
                rt.etag, rt.last_modified = st.get("etag"), st.get("last_modified")
                rt.last_success, rt.last_change = st.get("last_success"), st.get("last_change")
                rt.last_error, rt.failures = st.get("last_error"), st.get("failures") or 0
            self.admin_allow = [to_wire(row["name"].encode("ascii")) for row in store.allowlist()]

        await asyncio.to_thread(load)
        self.builder.changed()

    def _read_policy_files(self) -> None:
        """The configured allowlist and protected names (inline and files)."""
        reports: dict[str, PlainList] = {}
        self.allow = allow_names(self.settings.policy, self.settings, reports)
        for source, parsed in reports.items():
            for lineno, text, reason in parsed.rejects[:20]:
                log.warning("allowlist line rejected", source=source, line=lineno, text=text, reason=reason)
        lines = list(self.settings.policy.protected)
        for path in self.settings.policy.protected_files:
            lines.extend(self.settings.resolve_path(path).read_text(encoding="utf-8").splitlines())
        self.protected, bad = Protected.parse(lines)
        for lineno, text, reason in bad:
            log.warning("protected name rejected", line=lineno, text=text, reason=reason)

    async def reload(self) -> None:
        """SIGHUP: re-read the allowlist, protected names and every file source; recompile."""
        try:
            await asyncio.to_thread(self._read_policy_files)
        except OSError as exc:
            log.error("reload: cannot read policy files; keeping the current ones", error=str(exc))
        await self._settled.wait()
        if self.store_problem is not None:
            log.error("reload: the feed store is unusable; the saved snapshot stays in force", problem=self.store_problem)
            return
        await self.scheduler.refresh_files()
        self.builder.changed()
        await self.compile()

    # -- sources (feeds/scheduler.py) -----------------------------------------------------

    async def refresh(self, rt: SourceRuntime, *, compile: bool = True, defer: bool = False) -> UpdateResult | None:
        """Fetch or read one source once; see ``SourceScheduler.refresh``."""
        return await self.scheduler.refresh(rt, compile=compile, defer=defer)

    async def _poll(self, rt: SourceRuntime) -> None:
        await self.scheduler.poll(rt)

    async def _watch(self, rt: SourceRuntime) -> None:
        await self.scheduler.watch(rt)

    def poke(self, agency: str, source: str | None = None) -> int:
        """Poll (url) or re-read (file) an agency's sources now; returns how many."""
        return self.scheduler.poke(agency, source)

    def notify(self, zone: str, client: str) -> bool:
        """A NOTIFY for ``zone`` from ``client``; see ``SourceScheduler.notify``."""
        return self.scheduler.notify(zone, client)

    # -- updates --------------------------------------------------------------------------

    def runtime(self, agency: str, source: str | None = None) -> SourceRuntime:
        if agency not in self.agencies:
            raise NotFound(f"no agency {agency!r}")
        if source is None:
            push = self.agencies[agency].push_source()
            if push is None:
                raise NotFound(f"agency {agency!r} has no push source")
            source = push.key
        rt = self.sources.get((agency, source))
        if rt is None:
            raise NotFound(f"agency {agency!r} has no source {source!r}")
        return rt

    # -- updates (feeds/updates.py) --------------------------------------------------------

    async def push(self, agency: str, data: bytes, *, fmt: str | None = None, actor: str) -> UpdateResult:
        """PUT: the agency's whole list through its push source."""
        return await self.updates.push(agency, data, fmt=fmt, actor=actor)

    async def patch(self, agency: str, add: list[dict[str, Any]], remove: list[str], *, actor: str) -> UpdateResult:
        """PATCH: add and remove entries of the agency's pushed list."""
        return await self.updates.patch(agency, add, remove, actor=actor)

    async def _ingest(self, rt: SourceRuntime, data: bytes, **kw: Any) -> UpdateResult:
        return await self.updates.ingest(rt, data, **kw)

    # -- admin decisions (feeds/decisions.py) ----------------------------------------------

    async def approve(self, agency: str, version: int, *, actor: str, **why: str) -> UpdateResult:
        """Apply a quarantined version; see ``AdminDecisions.approve``."""
        return await self.decisions.approve(agency, version, actor=actor, **why)

    async def reject(self, agency: str, version: int, *, actor: str, **why: str) -> dict[str, Any]:
        """Refuse a quarantined version for good; see ``AdminDecisions.reject``."""
        return await self.decisions.reject(agency, version, actor=actor, **why)

    async def allow_add(self, raw: str, *, actor: str, note: str = "") -> dict[str, Any]:
        return await self.decisions.allow_add(raw, actor=actor, note=note)

    async def allow_remove(self, raw: str, *, actor: str) -> dict[str, Any]:
        return await self.decisions.allow_remove(raw, actor=actor)

    # -- compile (feeds/builder.py) --------------------------------------------------------

    def _compile_inputs(self) -> CompileInputs:
        return CompileInputs(
            lists=[AgencyList(rt.agency, rt.current.plain, rt.timed, rt.scope) for rt in self.sources.values()],
            allow=self.allow + self.admin_allow,
            versions=[(aid, key, rt.version) for (aid, key), rt in self.sources.items() if rt.version is not None],
        )

    async def compile(self, *, force: bool = False) -> PolicySnapshot:
        """Compile what the sources hold now and install it; see ``PolicyBuilder.compile``."""
        return await self.builder.compile(force=force)

    async def tick(self) -> bool:
        """Recompile when a listing or removal date has passed; True when it did."""
        return await self.builder.tick()

    async def _timer(self) -> None:
        await self.builder.timer()

    async def flush(self) -> None:
        """Wait until the start-up lists are in the store and the latest snapshot is on disk."""
        if self._flush_task is not None:
            await self._flush_task
        if self.builder.persist_task is not None:
            await self.builder.persist_task

    # What the builder owns, read where callers have always read it.
    @property
    def snapshot(self) -> PolicySnapshot | None:
        return self.builder.snapshot

    @property
    def next_change(self) -> float | None:
        return self.builder.next_change

    @property
    def compile_seconds(self) -> float | None:
        return self.builder.compile_seconds

    @property
    def compiles(self) -> int:
        return self.builder.compiles

    @property
    def patches(self) -> int:
        return self.builder.patches

    # -- reading (feeds/status.py) ---------------------------------------------------------

    def status(self, agency: str | None = None) -> dict[str, Any]:
        """Each agency with its sources' state (or one agency)."""
        return self.read.status(agency)

    def policy_status(self) -> dict[str, Any]:
        return self.read.policy_status()

    def provenance(self, agency: str, name: str) -> dict[str, Any] | None:
        """What the agency's feed said about ``name``; see ``FeedReadModel.provenance``."""
        return self.read.provenance(agency, name)

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families for the feeds, read at scrape time."""
        return self.read.metrics()
