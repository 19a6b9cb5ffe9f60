"""The feeds control plane: every source of every agency, from bytes to an installed snapshot.

Owns the life of each source (poll a URL, watch a file, accept a push), the path of an update
(parse -> guard -> diff -> quarantine or apply -> store -> compile -> install), the decisions an
admin takes (approve or reject a quarantined version, the allowlist), the timer that recompiles
when a listing or removal date passes, and the start-up order:

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
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.errors import BetblockError
from config.settings import INTEGRITY_OPTION, AgencySettings, Settings, SourceSettings
from feeds import persist
from feeds.compile import (
    AgencyList,
    Compiled,
    PlainList,
    Timed,
    allow_names,
    compile_lists,
    patch_snapshot,
    read_plain,
)
from feeds.entry import MAX_REJECT_TEXT, Entry, FeedError, Reject, clip
from feeds.fetch import FetchError, fetch
from feeds.guard import Change, Protected, entry_refusal, quarantine_reason
from feeds.lists import Key, ListDiff, SourceList, diff, to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.formats import scope_of
from feeds.snapshot import PolicySnapshot, Scope
from feeds.store import Audit, FeedStore, StoreProblem, VersionInfo, iso, read_marker, write_marker
from feeds.xfr_source import ZoneFollower

log = structlog.get_logger("betblock.feeds")

STORE_FILE = "feeds.sqlite"
PATCH_LIMIT = 50_000  # changed names up to which a snapshot is patched rather than recompiled
MAX_REJECTS_SHOWN = 1000


class Refused(BetblockError):
    """Nothing valid remains of an update (every line rejected): it is not recorded as a version."""

    def __init__(self, message: str, rejects: list[Reject]) -> None:
        super().__init__(message)
        self.rejects = rejects


class NotFound(BetblockError):
    """No such agency, source or version."""


class StoreUnavailable(BetblockError):
    """The feed store cannot take or give what was asked (damaged, missing, or a write it
    refused); nothing was changed. The API answers 503."""


class Conflict(BetblockError):
    """The request does not fit the state (approving a version that is not quarantined)."""


@dataclass
class UpdateResult:
    """What became of one update, for the API, the CLI and the log."""

    status: str  # applied | unchanged | quarantined
    agency: str
    source: str
    version: int | None
    entries: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    rejects: list[Reject] = field(default_factory=list)
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "agency": self.agency,
            "source": self.source,
            "version": self.version,
            "entries": self.entries,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "reason": self.reason,
            "rejected": len(self.rejects),
            "rejects": [reject_json(r) for r in self.rejects[:MAX_REJECTS_SHOWN]],
        }


def reject_json(r: Reject) -> dict[str, Any]:
    return {"line": r.line, "text": r.text, "reason": r.reason}


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
        s = self.settings
        deadline = self.agency.deadline_hours * 3600
        overdue = bool(deadline) and s.kind != "push" and (self.last_success is None or now - self.last_success > deadline)
        out: dict[str, Any] = {
            "id": self.key,
            "kind": s.kind,
            "format": s.format,
            "version": self.version,
            "entries": len(self.current),
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "last_change": iso(self.last_change),
            "last_error": self.last_error,
            "failures": self.failures,
            "overdue": overdue,
        }
        if s.kind == "url":
            out["url"] = s.url
            out["etag"] = self.etag
        elif s.kind == "file":
            out["path"] = str(self.path)
        if self.pending_version is not None:
            out["quarantined"] = {"version": self.pending_version, "reason": self.pending_reason}
        return out


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
        self._install = install
        self.clock = clock
        self._session_factory = session_factory or (lambda: aiohttp.ClientSession(trust_env=False))
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
        self.snapshot: PolicySnapshot | None = None
        self.next_change: float | None = None
        self.protected = Protected()
        self.allow: list[bytes] = []
        self.admin_allow: list[bytes] = []
        self.fingerprint = persist.fingerprint(settings)
        self.compile_seconds: float | None = None
        self.compiles = 0
        self.loaded = asyncio.Event()  # the store's lists are in memory: updates may proceed
        self._lock = asyncio.Lock()  # one update at a time
        self._compile_lock = asyncio.Lock()
        self._gen = 0  # bumped by every change of what a compile reads
        # Names whose listing changed since the last compile, when nothing else did (then the
        # next snapshot is patched from the last one); None: compile everything.
        self._dirty: set[bytes] | None = None
        self.patches = 0
        self._compiled_gen = -1
        self._dates_at = 0.0  # when the last full compile evaluated listing and removal dates
        self._last_version = 0
        self._timer_wake = asyncio.Event()
        self._persist_task: asyncio.Future[None] | None = None
        self._to_save: tuple[PolicySnapshot, float | None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Store writes of the lists read at start-up, done after the first snapshot is
        # installed (a million-row first version costs seconds the resolver need not wait).
        self._deferred: list[Callable[[], object]] = []
        self._reserved: dict[str, int] = {}
        self._flush_task: asyncio.Future[None] | None = None

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
        when the store is unusable and no intact saved snapshot can stand in for it."""
        started = time.perf_counter()
        await asyncio.to_thread(self._read_policy_files)
        saved = await asyncio.to_thread(self._load_saved)
        try:
            # Beside a saved snapshot the full check waits for run(): DNS need not wait for it.
            self.store = await asyncio.to_thread(self._open_store, saved is None)
        except StoreProblem as exc:
            if saved is None:
                raise
            self._publish(saved, None)
            self._degrade(str(exc))
            return saved
        if saved is not None:
            self._check_store = True
            self._publish(saved, None)
            # No date has passed since it was compiled: its dated decisions hold as of now.
            self._dates_at = self.clock()
            # Already recorded by the run that compiled it, unless that run died first.
            await self._record_install(saved.version, self._dates_at, self.clock(), [])
            log.info("policy installed from the saved snapshot", version=saved.version,
                     seconds=round(time.perf_counter() - started, 3), **saved.stats)
            return saved
        await self._load_state()
        await self._refresh_files(defer=True)
        await self.compile(force=True)
        assert self.snapshot is not None
        log.info("policy installed", version=self.snapshot.version,
                 seconds=round(time.perf_counter() - started, 3), **self.snapshot.stats)
        self._flush_task = asyncio.ensure_future(self._write_deferred())
        return self.snapshot

    def _open_store(self, check: bool) -> FeedStore:
        """The store, made only on a first start (neither its marker nor a saved snapshot says
        one existed); ``check``: SQLite's quick check of every page first."""
        marker = read_marker(self.store_path)
        existed = marker is not None or self.snapshot_path.exists()
        try:
            store = FeedStore(self.store_path, create=not existed)
            problem = store.check() if check else None
            if problem is not None:
                store.close()
                raise StoreProblem(f"damaged ({problem})")
        except StoreProblem as exc:
            raise StoreProblem(self._explain(str(exc), marker)) from None
        if marker is None or marker.get("store_id") != store.store_id:
            if marker is not None:
                log.warning("the feed store is not the one its marker names; taking it as the store",
                            path=str(self.store_path), marker=marker.get("store_id"), store=store.store_id)
            write_marker(store)
        return store

    def _explain(self, what: str, marker: dict[str, Any] | None) -> str:
        if marker is not None and marker.get("store_id"):
            had = f"store {marker['store_id']}, created {marker.get('created')}"
        elif marker is not None:
            had = str(marker.get("problem"))
        else:
            had = f"a saved snapshot {self.snapshot_path} exists"
        return (
            f"the feed store {self.store_path} is {what}, but this data directory had one ({had}). "
            "It is not made anew: that would drop every pushed list, the version history and the audit trail, "
            "and answer pushed names unblocked. Restore the file from a backup, or run "
            "'betblock feeds recover --config <this config>' to set it aside and start an empty store"
        )

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

    def _load_saved(self) -> PolicySnapshot | None:
        """The saved snapshot when it holds; a damaged one is named in one log line and left
        for the next save to replace."""
        try:
            return persist.load_checked(self.snapshot_path, self.fingerprint, self.clock())
        except persist.SnapshotDamaged as exc:
            log.error("saved snapshot rejected as damaged; compiling from the feed store instead",
                      path=str(self.snapshot_path), reason=str(exc))
            return None

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
            if self._check_store and self.store is not None:
                self._check_store = False
                problem = await asyncio.to_thread(self.store.check)
                if problem is not None:
                    self._degrade(self._explain(f"damaged ({problem})", read_marker(self.store_path)))
            if self.store_problem is not None:
                await asyncio.Future()  # only the snapshot in force: nothing to read, poll or compile
            if self._flush_task is not None:
                await self._flush_task
            if not self.loaded.is_set():
                await self._load_state()
                await self._refresh_files()
                await self.compile(force=True)
                self.loaded.set()
                self._settled.set()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._timer())
                for rt in self.sources.values():
                    if rt.settings.kind in ("url", "xfr"):
                        tg.create_task(self._poll(rt))
                    elif rt.settings.kind == "file":
                        tg.create_task(self._watch(rt))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session and wait for the snapshot on its way to disk."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._persist_task is not None:
            await asyncio.shield(self._persist_task)

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
                    rt.pending_version, rt.pending_sha, rt.pending_reason = latest["version"], latest["sha256"], latest["reason"]
                elif latest is not None and latest["status"] == "rejected":
                    rt.rejected_sha = latest["sha256"]
                st = store.source_state(agency_id, key)
                rt.etag, rt.last_modified = st.get("etag"), st.get("last_modified")
                rt.last_success, rt.last_change = st.get("last_success"), st.get("last_change")
                rt.last_error, rt.failures = st.get("last_error"), st.get("failures") or 0
            self.admin_allow = [to_wire(row["name"].encode("ascii")) for row in store.allowlist()]

        await asyncio.to_thread(load)
        self._changed()

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
        await self._refresh_files()
        self._changed()
        await self.compile()

    # -- sources --------------------------------------------------------------------------

    async def _refresh_files(self, *, defer: bool = False) -> None:
        for rt in self.sources.values():
            if rt.settings.kind == "file":
                await self.refresh(rt, compile=False, defer=defer)

    async def refresh(self, rt: SourceRuntime, *, compile: bool = True, defer: bool = False) -> UpdateResult | None:
        """Fetch or read one source once and ingest what changed; failures are recorded on the
        source, never raised. Returns the update's result, or None when nothing new came."""
        now = self.clock()
        rt.last_attempt = now
        try:
            if rt.settings.kind == "url":
                if self._session is None:
                    self._session = self._session_factory()
                got = await fetch(self._session, rt.settings, etag=rt.etag, last_modified=rt.last_modified)
                if got.body is None:
                    rt.count("not_modified")
                    await self._source_ok(rt, now)
                    return None
                data, control, etag, lm = got.body, got.control, got.etag, got.last_modified
            elif rt.settings.kind == "file":
                data, control = await asyncio.to_thread(self._read_file, rt)
                etag = lm = None
            elif rt.follower is not None:
                body = await rt.follower.fetch()  # the zone as text when its serial moved
                if body is None:
                    rt.count("not_modified")
                    await self._source_ok(rt, now)
                    return None
                data, control, etag, lm = body, None, None, None
            else:
                return None
            result = await self._ingest(rt, data, control=control, actor=f"source:{rt.key}", compile=compile, defer=defer)
        except Exception as exc:  # never CancelledError: that is not an Exception
            rt.count("failed")
            rt.failures += 1
            rt.last_error = str(exc) if isinstance(exc, (FetchError, FeedError, Refused)) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, (FetchError, FeedError, Refused, OSError)):
                log.warning("source failed; keeping its last good list", agency=rt.agency.id, source=rt.key, error=rt.last_error)
            else:  # our own bug: one log line with the traceback, and the node keeps serving
                log.exception("source update failed; keeping its last good list", agency=rt.agency.id, source=rt.key)
            await self._save_source(rt, last_attempt=now, last_error=rt.last_error, failures=rt.failures)
            return None
        rt.count(result.status)
        if rt.settings.kind == "url":
            # Only after the body was dealt with: a failed check must fetch the body again.
            rt.etag, rt.last_modified = etag, lm
        await self._source_ok(rt, now)
        return result

    def _read_file(self, rt: SourceRuntime) -> tuple[bytes, bytes | None]:
        assert rt.path is not None
        try:
            st = os.stat(rt.path)
        except OSError:
            rt.stat = None  # the watcher re-reads when the file comes back
            raise
        if st.st_size > rt.settings.max_bytes:
            raise FeedError(f"{rt.path}: {st.st_size} bytes is over max_bytes {rt.settings.max_bytes}")
        rt.stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        data = rt.path.read_bytes()
        control = None
        if rt.settings.control_file is not None:
            control = self.settings.resolve_path(rt.settings.control_file).read_bytes()
        return data, control

    async def _source_ok(self, rt: SourceRuntime, now: float) -> None:
        rt.last_success = now
        rt.last_error = None
        rt.failures = 0
        await self._save_source(
            rt, etag=rt.etag, last_modified=rt.last_modified, last_attempt=now, last_success=now,
            last_change=rt.last_change, last_error=None, failures=0,
        )

    async def _save_source(self, rt: SourceRuntime, **fields: Any) -> None:
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.save_source_state, rt.agency.id, rt.key, **fields)
        except Exception as exc:  # fetch bookkeeping only; the lists are not at stake
            log.error("cannot record a source's fetch state", agency=rt.agency.id, source=rt.key, error=str(exc))

    async def _poll(self, rt: SourceRuntime) -> None:
        while True:
            await self.refresh(rt)
            interval = rt.follower.interval() if rt.follower is not None else rt.settings.interval
            if rt.failures:
                # Retry a failing source sooner than its interval: legal deadlines run.
                interval = min(interval, 30.0 * 2 ** min(rt.failures - 1, 10))
            try:
                async with asyncio.timeout(interval):
                    await rt.wake.wait()
            except TimeoutError:
                pass
            rt.wake.clear()

    async def _watch(self, rt: SourceRuntime) -> None:
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
            if forced or seen != rt.stat:
                await self.refresh(rt)
            elif seen is not None and rt.failures == 0:
                # Unchanged and readable: the list in force is the file's list, still fresh.
                rt.last_success = self.clock()

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

    async def push(self, agency: str, data: bytes, *, fmt: str | None = None, actor: str) -> UpdateResult:
        """PUT: the agency's whole list through its push source."""
        rt = self.runtime(agency)
        await self._writable()
        result = await self._ingest(rt, data, control=None, actor=actor, fmt=fmt)
        now = self.clock()
        rt.last_attempt = now
        rt.count(result.status)
        await self._source_ok(rt, now)
        return result

    async def _ingest(
        self,
        rt: SourceRuntime,
        data: bytes,
        *,
        control: bytes | None,
        actor: str,
        fmt: str | None = None,
        compile: bool = True,
        defer: bool = False,
    ) -> UpdateResult:
        fmt = fmt or rt.settings.format
        sha = hashlib.sha256(data).hexdigest()
        async with self._lock:
            same = self._same(rt, sha, fmt)
            if same is not None:
                return same
            received = self.clock()
            new, rejects, meta = await asyncio.to_thread(self._parse, rt, data, control, fmt)
            if not len(new) and rejects:
                await self._store_call(
                    self._audit, actor, "update refused", rt.agency.id, None, source=rt.key, sha256=sha, rejects=len(rejects)
                )
                raise Refused("nothing valid remains: every line was rejected", rejects)
            info = VersionInfo(
                agency=rt.agency.id, source=rt.key, kind=rt.settings.kind, format=fmt, sha256=sha,
                received_at=received, actor=actor, entries=len(new), rejects=len(rejects),
                checksum=meta.get("checksum"), signature=meta.get("signature"),
                meta={k: v for k, v in meta.items() if k in ("header", "version", "serial", "order", "date", "origin", "lines")},
            )
            result = await self._decide(rt, new, info, rejects, defer=defer)
        if compile and result.status == "applied":
            await self.compile()
        return result

    def _same(self, rt: SourceRuntime, sha: str, fmt: str) -> UpdateResult | None:
        """Idempotence: the list in force, the one waiting in quarantine or the one an admin
        rejected, sent again, changes nothing."""
        if sha == rt.sha256:
            return UpdateResult("unchanged", rt.agency.id, rt.key, rt.version, len(rt.current))
        if sha == rt.pending_sha:
            return UpdateResult("quarantined", rt.agency.id, rt.key, rt.pending_version, len(rt.current), reason=rt.pending_reason)
        if sha == rt.rejected_sha:
            return UpdateResult("unchanged", rt.agency.id, rt.key, rt.version, len(rt.current), reason="this list was rejected by an admin")
        return None

    async def _decide(
        self, rt: SourceRuntime, new: SourceList, info: VersionInfo, rejects: list[Reject], *, defer: bool = False
    ) -> UpdateResult:
        """Quarantine or apply ``new`` (the caller holds the update lock). ``defer``: queue the
        store writes for ``_write_deferred`` (start-up only)."""
        assert self.store is not None
        store = self.store
        d = await asyncio.to_thread(diff, rt.current, new)
        version: int | None = None
        if defer:
            agency = rt.agency.id
            version = self._reserved.get(agency) or await asyncio.to_thread(store.next_version, agency)
            self._reserved[agency] = version + 1

        async def write(job: Callable[[], Any]) -> Any:
            if defer:
                self._deferred.append(job)
                return None
            return await self._store_call(job)

        change = Change(len(rt.current), len(new), d.n_added, d.n_removed, d.changed)
        reason = quarantine_reason(rt.agency, change)
        base = dict(agency=rt.agency.id, source=rt.key, entries=len(new), added=d.n_added, removed=d.n_removed,
                    changed=d.changed, rejects=rejects)
        counts = dict(added=d.n_added, removed=d.n_removed, changed=d.changed)
        if reason is not None:
            audit = self._audit_row(info.actor, "update quarantined", rt.agency.id, source=rt.key, sha256=info.sha256,
                                    reason=reason, **counts)
            v = await write(lambda: store.quarantine(info, new, d, rejects, reason, version=version, audit=audit))
            v = version if v is None else v
            rt.pending_version, rt.pending_sha, rt.pending_reason = v, info.sha256, reason
            log.warning("update quarantined", agency=rt.agency.id, source=rt.key, version=v, reason=reason)
            return UpdateResult("quarantined", version=v, reason=reason, **base)  # type: ignore[arg-type]
        audit = self._audit_row(info.actor, "update applied", rt.agency.id, source=rt.key, sha256=info.sha256,
                                entries=len(new), **counts)
        v = await write(lambda: store.apply(info, d, rejects, version=version, audit=audit))
        v = version if v is None else v
        rt.set_list(new)
        rt.version, rt.sha256, rt.last_change = v, info.sha256, info.received_at
        rt.pending_version = rt.pending_sha = rt.pending_reason = None
        self._changed(d)
        log.info("update applied", agency=rt.agency.id, source=rt.key, version=v, entries=len(new),
                 added=d.n_added, removed=d.n_removed, changed=d.changed, rejected=len(rejects))
        return UpdateResult("applied", version=v, **base)  # type: ignore[arg-type]

    def _parse(
        self, rt: SourceRuntime, data: bytes, control: bytes | None, fmt: str
    ) -> tuple[SourceList, list[Reject], dict[str, Any]]:
        """Bytes to a list, its rejects and its file-level facts (in a thread)."""
        if len(data) > rt.settings.max_bytes:
            raise FeedError(f"{len(data)} bytes is over max_bytes {rt.settings.max_bytes}")
        if fmt == "plain" and not rt.settings.options:
            plain = read_plain(data, self.protected)
            rejects = [Reject(line, clip(text), reason) for line, text, reason in plain.rejects]
            if not plain.wild:
                return SourceList.build(plain.names, ()), rejects, {"lines": plain.lines}
            wild_idx = {i for i, _line in plain.wild}
            names = [n for i, n in enumerate(plain.names) if i not in wild_idx]
            from feeds.lists import from_wire

            wild = [Entry(from_wire(plain.names[i]), line, wildcard=True) for i, line in plain.wild]
            return SourceList.build(names, wild), rejects, {"lines": plain.lines}
        from feeds.formats import FORMATS

        parser = FORMATS.get(fmt)
        if parser is None:
            raise FeedError(f"unknown format {fmt!r}")
        options: dict[str, Any] = dict(rt.settings.options)
        if control is not None and fmt in INTEGRITY_OPTION:
            options[INTEGRITY_OPTION[fmt]] = control
        if rt.settings.public_key is not None:
            options["public_key_pem"] = self.settings.resolve_path(rt.settings.public_key).read_bytes()
        try:
            result = parser(data, **options)
        except TypeError as exc:
            raise FeedError(f"format {fmt}: bad options {sorted(options)}: {exc}") from None
        kept: list[Entry] = []
        rejects = list(result.rejects)
        for e in result.entries:
            refusal = None if e.allow else entry_refusal(e.name, self.protected)
            if refusal is not None:
                rejects.append(Reject(e.line, e.name, refusal))
            else:
                kept.append(e)
        rejects.sort(key=lambda r: r.line)
        return SourceList.build((), kept), rejects, dict(result.meta)

    async def patch(self, agency: str, add: list[dict[str, Any]], remove: list[str], *, actor: str) -> UpdateResult:
        """PATCH: add and remove entries of the agency's pushed list."""
        rt = self.runtime(agency)
        await self._writable()
        entries, rejects = _patch_entries(add, self.protected)
        keys: list[Key] = []
        for i, raw in enumerate(remove, len(add) + 1):
            try:
                name, wildcard, _ = normalize_detail(str(raw))
            except InvalidName as exc:
                rejects.append(Reject(i, clip(str(raw)), exc.reason))
                continue
            key = (name, wildcard, False)
            if not rt.current.has(key):
                rejects.append(Reject(i, clip(str(raw)), "not listed"))
                continue
            keys.append(key)
        if not entries and not keys and rejects:
            await self._store_call(self._audit, actor, "patch refused", agency, None, rejects=len(rejects))
            raise Refused("nothing valid remains: every item was rejected", rejects)
        body = repr((sorted((e.name, e.wildcard, repr(e)) for e in entries), sorted(keys))).encode()
        sha = hashlib.sha256(body).hexdigest()
        async with self._lock:
            new = rt.current.patched(entries, keys)
            info = VersionInfo(
                agency=agency, source=rt.key, kind="push", format="patch", sha256=sha, received_at=self.clock(),
                actor=actor, entries=len(new), rejects=len(rejects),
            )
            d = await asyncio.to_thread(diff, rt.current, new)
            if d.empty:
                result = UpdateResult("unchanged", agency, rt.key, rt.version, len(new), rejects=rejects)
            else:
                result = await self._decide(rt, new, info, rejects)
        if result.status == "applied":
            await self.compile()
        now = self.clock()
        rt.last_attempt = now
        rt.count(result.status)
        await self._source_ok(rt, now)
        return result

    # -- admin decisions ------------------------------------------------------------------

    async def _quarantined(self, agency: str, version: int) -> dict[str, Any]:
        """The store's row of a version an admin may decide on; NotFound or Conflict otherwise."""
        row = await asyncio.to_thread(self.require_store().version, agency, version)
        if row is None:
            raise NotFound(f"agency {agency!r} has no version {version}")
        if row["status"] != "quarantined":
            raise Conflict(f"version {version} is {row['status']}, not quarantined")
        return row

    async def approve(self, agency: str, version: int, *, actor: str) -> UpdateResult:
        """Apply a quarantined version."""
        store = await self._writable()
        async with self._lock:
            row = await self._quarantined(agency, version)
            rt = self.runtime(agency, row["source"])
            new = await asyncio.to_thread(store.pending_list, agency, version)
            if new is None:
                raise Conflict(f"version {version} has no list kept")
            d = await asyncio.to_thread(diff, rt.current, new)
            now = self.clock()
            info = VersionInfo(
                agency=agency, source=rt.key, kind=row["kind"], format=row["format"], sha256=row["sha256"],
                received_at=now, actor=actor, entries=len(new), rejects=row["rejects"],
            )
            audit = self._audit_row(actor, "quarantine approved", agency, source=rt.key,
                                    added=d.n_added, removed=d.n_removed, changed=d.changed)
            await self._store_call(lambda: store.apply(info, d, [], version=version, approved=True, audit=audit))
            rt.set_list(new)
            rt.version, rt.sha256, rt.last_change = version, row["sha256"], now
            rt.pending_version = rt.pending_sha = rt.pending_reason = None
            self._changed()
        await self.compile()
        log.info("quarantined update approved", agency=agency, version=version, actor=actor)
        return UpdateResult("applied", agency, rt.key, version, len(new), d.n_added, d.n_removed, d.changed)

    async def reject(self, agency: str, version: int, *, actor: str) -> dict[str, Any]:
        """Refuse a quarantined version for good; the source keeps its list."""
        store = await self._writable()
        async with self._lock:
            row = await self._quarantined(agency, version)
            rt = self.runtime(agency, row["source"])
            audit = self._audit_row(actor, "quarantine rejected", agency, version, source=rt.key)
            await self._store_call(store.decide, agency, version, "rejected", actor, self.clock(), audit)
            rt.pending_version = rt.pending_sha = rt.pending_reason = None
            rt.rejected_sha = row["sha256"]
        log.info("quarantined update rejected", agency=agency, version=version, actor=actor)
        return {"status": "rejected", "agency": agency, "version": version}

    async def allow_add(self, raw: str, *, actor: str, note: str = "") -> dict[str, Any]:
        name = allow_name(raw)
        store = await self._writable()
        audit = self._audit_row(actor, "allowlist add", name=name, note=note)
        added = await self._store_call(store.allow_add, name, actor, note, self.clock(), audit)
        if added:
            self.admin_allow = self.admin_allow + [to_wire(name.encode("ascii"))]
            self._changed()
            await self.compile()
        return {"name": name, "added": added}

    async def allow_remove(self, raw: str, *, actor: str) -> dict[str, Any]:
        name = allow_name(raw)
        store = await self._writable()
        removed = await self._store_call(store.allow_remove, name, self._audit_row(actor, "allowlist remove", name=name))
        if removed:
            wire = to_wire(name.encode("ascii"))
            self.admin_allow = [w for w in self.admin_allow if w != wire]
            self._changed()
            await self.compile()
        return {"name": name, "removed": removed}

    def _audit(self, actor: str, action: str, agency: str | None, version: int | None, **detail: Any) -> None:
        """An audit row of its own, for what changes nothing in the store (a refused update)."""
        self.require_store().audit(actor, action, agency, version, ts=self.clock(), **detail)

    def _audit_row(self, actor: str, action: str, agency: str | None = None, version: int | None = None, **detail: Any) -> Audit:
        """The audit row of a change, for the store to write in the change's own transaction."""
        return Audit(actor, action, self.clock(), agency, version, detail)

    # -- compile --------------------------------------------------------------------------

    async def compile(self, *, force: bool = False) -> PolicySnapshot:
        """Compile what the sources hold now, off the event loop, and install it. Callers that
        arrive during a compile share the next one."""
        wanted = self._gen
        async with self._compile_lock:
            if not force and self._compiled_gen >= wanted and self.snapshot is not None:
                return self.snapshot
            gen = self._gen
            dirty, self._dirty = self._dirty, set()
            lists = [
                AgencyList(rt.agency, rt.current.plain, rt.timed, rt.scope) for rt in self.sources.values()
            ]
            allow = self.allow + self.admin_allow
            # The versions this compile reads, for the compliance record of its install.
            versions = [(aid, key, rt.version) for (aid, key), rt in self.sources.items() if rt.version is not None]
            now = self.clock()
            version = max(self._last_version + 1, int(now * 1000))
            ttl = self.settings.policy.sinkhole_ttl
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
                    dates_at = self._dates_at  # a patch keeps the last compile's dated decisions
                else:
                    compiled = await asyncio.to_thread(compile_lists, lists, allow, ttl, version=version, now=now)
                    dates_at = now
            except BaseException:
                self._dirty = None  # what changed is no longer known: compile everything next time
                raise
            self.compile_seconds = time.perf_counter() - started
            self.compiles += 1
            self._compiled_gen = gen
            self._publish(compiled.snapshot, compiled.next_change)
            installed = self.clock()
            self._dates_at = dates_at
            self._save_later(compiled.snapshot, compiled.next_change)
            await self._record_install(compiled.snapshot.version, dates_at, installed, versions)
            return compiled.snapshot

    async def _record_install(
        self, snapshot: int, dates_at: float, installed: float, versions: list[tuple[str, str, int]]
    ) -> None:
        """Record for the compliance report that ``snapshot`` went live (after the swap: the
        resolver never waits for it)."""
        if self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.record_install, snapshot, dates_at, installed, versions)
        except sqlite3.Error as exc:  # the snapshot is in force; only the evidence of it is missing
            log.error("cannot record a snapshot install in the feed store", version=snapshot, error=str(exc))
        except Exception:
            log.exception("cannot record a snapshot install in the feed store", version=snapshot)

    def _changed(self, d: ListDiff | None = None) -> None:
        """Something a compile reads changed: ``d`` when only one source's plain names did."""
        self._gen += 1
        if d is None or d.added_rich or d.removed_rich or self._dirty is None:
            self._dirty = None
            return
        self._dirty |= d.added_plain
        self._dirty |= d.removed_plain
        if len(self._dirty) > PATCH_LIMIT:
            self._dirty = None

    def _publish(self, snapshot: PolicySnapshot, next_change: float | None) -> None:
        self._install(snapshot)
        self.snapshot = snapshot
        self._last_version = max(self._last_version, snapshot.version)
        self.next_change = next_change
        self._timer_wake.set()

    def _save_later(self, snapshot: PolicySnapshot, next_change: float | None) -> None:
        """Save the latest snapshot in the background; a snapshot superseded before its turn is
        never written (nor kept in memory for it)."""
        self._to_save = (snapshot, next_change)
        if self._persist_task is None or self._persist_task.done():
            self._persist_task = asyncio.ensure_future(self._saver())

    async def _saver(self) -> None:
        while self._to_save is not None:
            snapshot, next_change = self._to_save
            self._to_save = None
            try:
                await asyncio.to_thread(persist.save, self.snapshot_path, snapshot, self.fingerprint, next_change)
            except Exception as exc:  # a restart then compiles from the store instead
                log.error("cannot save the compiled snapshot", path=str(self.snapshot_path), error=str(exc))
            del snapshot

    async def flush(self) -> None:
        """Wait until the start-up lists are in the store and the latest snapshot is on disk."""
        if self._flush_task is not None:
            await self._flush_task
        if self._persist_task is not None:
            await self._persist_task

    async def tick(self) -> bool:
        """Recompile when a listing or removal date has passed; True when it did."""
        if self.next_change is None or self.next_change > self.clock():
            return False
        self._changed()
        await self.compile()
        return True

    async def _timer(self) -> None:
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

    # -- reading --------------------------------------------------------------------------

    def status(self, agency: str | None = None) -> dict[str, Any]:
        """Each agency with its sources' state (or one agency)."""
        now = self.clock()
        out = []
        for a in self.settings.agencies:
            if agency is not None and a.id != agency:
                continue
            srcs = [rt.status(now) for (aid, _k), rt in self.sources.items() if aid == a.id]
            out.append(
                {
                    "id": a.id,
                    "name": a.display_name,
                    "jurisdiction": a.jurisdiction,
                    "precedence": a.precedence,
                    "action": a.action,
                    "push": a.push_source() is not None,
                    "entries": sum(s["entries"] for s in srcs),
                    "quarantined": [s["quarantined"] for s in srcs if "quarantined" in s],
                    "failing": [s["id"] for s in srcs if s["last_error"]],
                    "sources": srcs,
                }
            )
        return {
            "policy": self.policy_status(),
            "agencies": out,
        }

    def policy_status(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "version": snap.version if snap else None,
            "stats": dict(snap.stats) if snap else {},
            "next_change": iso(self.next_change),
            "compile_seconds": None if self.compile_seconds is None else round(self.compile_seconds, 3),
            "loaded": self.loaded.is_set(),
            "store": {
                "path": str(self.store_path),
                "ok": self.store_problem is None,
                "id": self.store.store_id if self.store is not None else None,
                "problem": self.store_problem,
            },
        }

    def provenance(self, agency: str, name: str) -> dict[str, Any] | None:
        """What the agency's feed said about ``name`` (legal reference, dates), for the
        warning page; None when it said nothing but the name."""
        for (aid, _k), rt in self.sources.items():
            if aid != agency:
                continue
            for e in rt.current.get(name):
                if e.allow:
                    continue
                facts = {
                    "legal_ref": e.legal_ref,
                    "listed_at": e.listed_at.isoformat() if e.listed_at else None,
                    "removed_at": e.removed_at.isoformat() if e.removed_at else None,
                    "source_id": e.source_id,
                }
                if any(facts.values()):
                    return facts
        return None

    def metrics(self) -> Iterator[Metric]:
        """Prometheus families for the feeds, read at scrape time."""
        labels = ["agency", "source"]
        entries = GaugeMetricFamily("betblock_feed_entries", "Entries in force per source", labels=labels)
        version = GaugeMetricFamily("betblock_feed_version", "Version in force per source", labels=labels)
        success = GaugeMetricFamily("betblock_feed_last_success_timestamp", "Last good fetch or read (Unix time)", labels=labels)
        failures = GaugeMetricFamily("betblock_feed_failures", "Consecutive failed fetches or reads", labels=labels)
        quarantined = GaugeMetricFamily("betblock_feed_quarantined", "1 when a version waits for an admin", labels=labels)
        overdue = GaugeMetricFamily("betblock_feed_overdue", "1 when not refreshed within the agency's legal deadline", labels=labels)
        fetches = CounterMetricFamily("betblock_feed_updates", "Fetches, reads and pushes by result", labels=[*labels, "result"])
        age = GaugeMetricFamily(
            "betblock_feed_age_seconds", "Seconds since the last good fetch or read (sources never fetched are left out)", labels=labels
        )
        error = GaugeMetricFamily(
            "betblock_feed_last_error_info", "1 per failing source, its last error in the label", labels=[*labels, "error"]
        )
        now = self.clock()
        for (aid, key), rt in self.sources.items():
            lv = [aid, key]
            st = rt.status(now)
            entries.add_metric(lv, len(rt.current))
            version.add_metric(lv, rt.version or 0)
            success.add_metric(lv, rt.last_success or 0)
            failures.add_metric(lv, rt.failures)
            quarantined.add_metric(lv, 1 if rt.pending_version is not None else 0)
            overdue.add_metric(lv, 1 if st["overdue"] else 0)
            if rt.last_success is not None:
                age.add_metric(lv, max(0.0, now - rt.last_success))
            if rt.last_error:
                error.add_metric([*lv, rt.last_error[:200]], 1)
            for result, n in rt.fetches.items():
                fetches.add_metric([*lv, result], n)
        yield from (entries, version, success, failures, quarantined, overdue, fetches, age, error)
        yield GaugeMetricFamily(
            "betblock_policy_compile_seconds", "Duration of the last compile", value=self.compile_seconds or 0.0
        )
        yield CounterMetricFamily("betblock_policy_compiles", "Compiles since start", value=self.compiles)
        yield GaugeMetricFamily(
            "betblock_feed_store_ok",
            "0 when the feed store is missing, empty or damaged: the saved snapshot is served and updates are refused",
            value=0 if self.store_problem is not None else 1,
        )
        yield GaugeMetricFamily(
            "betblock_policy_next_change_timestamp", "Next listing or removal date (Unix time; 0 = none)",
            value=self.next_change or 0.0,
        )


def allow_name(raw: str) -> str:
    """An allowlist name: lenient (a public suffix may be allowlisted), but a name."""
    text = raw.strip().lower().rstrip(".")
    if text.startswith("*."):
        text = text[2:]
    try:
        name, _w, _p = normalize_detail(text)
        return name
    except InvalidName as exc:
        if exc.reason == "public suffix" and "." in text:
            return text.encode("idna").decode("ascii") if not text.isascii() else text
        raise


def _patch_entries(items: Iterable[Any], protected: Protected) -> tuple[list[Entry], list[Reject]]:
    """PATCH ``add`` items (a name, or an object with name and optional dates, legal_ref,
    source_id, wildcard) to entries; item n is "line" n."""
    entries: list[Entry] = []
    rejects: list[Reject] = []
    for i, item in enumerate(items, 1):
        shown = clip(str(item))[:MAX_REJECT_TEXT]
        fields: dict[str, Any] = {}
        if isinstance(item, str):
            raw = item
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            raw = item["name"]
            try:
                for key in ("listed_at", "removed_at"):
                    if item.get(key):
                        value = datetime.fromisoformat(str(item[key]).replace("Z", "+00:00"))
                        fields[key] = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            except ValueError:
                rejects.append(Reject(i, shown, "bad date (ISO 8601 expected)"))
                continue
            for key in ("legal_ref", "source_id"):
                if item.get(key) is not None:
                    fields[key] = str(item[key])
            unknown = set(item) - {"name", "listed_at", "removed_at", "legal_ref", "source_id", "wildcard"}
            if unknown:
                rejects.append(Reject(i, shown, f"unknown field {sorted(unknown)[0]!r}"))
                continue
        else:
            rejects.append(Reject(i, shown, "not a name or an object with a name"))
            continue
        try:
            name, wildcard, _ = normalize_detail(raw)
        except InvalidName as exc:
            rejects.append(Reject(i, shown, exc.reason))
            continue
        if isinstance(item, dict) and item.get("wildcard"):
            wildcard = True
        refusal = entry_refusal(name, protected)
        if refusal is not None:
            rejects.append(Reject(i, shown, refusal))
            continue
        entries.append(Entry(name, i, wildcard, **fields))
    return entries, rejects
