"""The update service: what becomes of a list that arrives (fetched, read, pushed or patched).

Owns the path parse -> guard (protected names, then the agency's churn limits) -> diff ->
decide (quarantine for an admin, or apply), each decision written to the store with its audit
row and answered as a typed ``UpdateResult`` (applied, unchanged, quarantined); ``Refused`` when
nothing valid remains. Idempotent: the list in force, the one in quarantine or one an admin
rejected, sent again, changes nothing. Updates and admin decisions share one lock (handed to
both by the manager), so they never interleave; an applied update asks the builder for a compile.
At start-up the store writes of the lists read before DNS opens are queued here (``defer``) and
written by ``write_deferred`` once the first snapshot is installed.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from config.settings import INTEGRITY_OPTION
from feeds.compile import read_plain
from feeds.entry import MAX_REJECT_TEXT, Entry, FeedError, Reject, clip
from feeds.guard import Change, Protected, entry_refusal, quarantine_reason
from feeds.lists import Key, SourceList, diff
from feeds.normalize import InvalidName, normalize_detail
from feeds.outcomes import Refused, UpdateResult
from feeds.scheduler import record_success
from feeds.sources import Pending, SourceRuntime, SourceWriter
from feeds.store import VersionInfo

if TYPE_CHECKING:
    from feeds.decisions import AdminDecisions

log = structlog.get_logger("betblock.feeds")


class UpdateService(SourceWriter):
    """Ingests, pushes and patches lists into the sources and the store."""

    def __init__(self, *args: Any, decisions: AdminDecisions, resolve: Callable[[Path], Path], **kw: Any) -> None:
        super().__init__(*args, **kw)  # the sources, the store, the shared lock, ... (SourceWriter)
        self.decisions = decisions  # audit rows
        self.resolve = resolve  # a source's key and control files
        # Store writes of the lists read at start-up, done after the first snapshot is
        # installed (a million-row first version costs seconds the resolver need not wait).
        self._deferred: list[Callable[[], object]] = []
        self._reserved: dict[str, int] = {}  # the next version number per agency, while deferring

    async def push(self, agency: str, data: bytes, *, fmt: str | None = None, actor: str) -> UpdateResult:
        """PUT: the agency's whole list through its push source."""
        rt = self.sources.runtime(agency)
        await self.gate.writable()
        result = await self.ingest(rt, data, control=None, actor=actor, fmt=fmt)
        await self._pushed(rt, result)
        return result

    async def _pushed(self, rt: SourceRuntime, result: UpdateResult) -> None:
        """A push or patch is a successful fetch of the push source, for its status."""
        now = self.clock()
        rt.fetch.last_attempt = now
        rt.fetch.count(result.status)
        await record_success(self.gate, rt, now)

    async def write_deferred(self) -> None:
        """Record the versions read at start-up in the store (errors are logged: the lists are in
        force, and a restart reads the files again)."""
        async with self.lock:
            jobs, self._deferred = self._deferred, []
            started = time.perf_counter()
            try:
                await asyncio.to_thread(lambda: [job() for job in jobs])
                if jobs:
                    log.info("lists read at start-up recorded in the feed store", versions=len(jobs),
                             seconds=round(time.perf_counter() - started, 3))
            except sqlite3.Error as exc:
                if self.gate.closing:  # SIGTERM (logged by the manager): rolled back whole; the next start records it
                    log.debug("start-up store write interrupted", error=str(exc))
                else:
                    log.error("cannot record the lists read at start-up in the feed store", error=str(exc))
            except Exception:  # our own bug: the same, with the traceback
                log.exception("cannot record the lists read at start-up in the feed store")
            self._reserved.clear()

    async def ingest(
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
        async with self.lock:
            same = self._same(rt, sha, fmt)
            if same is not None:
                return same
            received = self.clock()
            new, rejects, meta = await asyncio.to_thread(self._parse, rt, data, control, fmt)
            if not len(new) and rejects:
                await self.gate.call(
                    self.decisions.audit, actor, "update refused", rt.agency.id, None, source=rt.key, sha256=sha, rejects=len(rejects)
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
            await self.builder.compile()
        return result

    def _same(self, rt: SourceRuntime, sha: str, fmt: str) -> UpdateResult | None:
        """Idempotence: the list in force, the one waiting in quarantine or the one an admin
        rejected, sent again, changes nothing."""
        if sha == rt.sha256:
            return UpdateResult("unchanged", rt.agency.id, rt.key, rt.version, len(rt.current))
        if rt.pending is not None and sha == rt.pending.sha256:
            return UpdateResult("quarantined", rt.agency.id, rt.key, rt.pending.version, len(rt.current), reason=rt.pending.reason)
        if sha == rt.rejected_sha:
            return UpdateResult("unchanged", rt.agency.id, rt.key, rt.version, len(rt.current), reason="this list was rejected by an admin")
        return None

    async def _decide(
        self, rt: SourceRuntime, new: SourceList, info: VersionInfo, rejects: list[Reject], *, defer: bool = False
    ) -> UpdateResult:
        """Quarantine or apply ``new`` (the caller holds the update lock). ``defer``: queue the
        store writes for ``_write_deferred`` (start-up only)."""
        store = self.gate.require()
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
            return await self.gate.call(job)

        change = Change(len(rt.current), len(new), d.n_added, d.n_removed, d.changed)
        reason = quarantine_reason(rt.agency, change)
        base = dict(agency=rt.agency.id, source=rt.key, entries=len(new), added=d.n_added, removed=d.n_removed,
                    changed=d.changed, rejects=rejects)
        counts = dict(added=d.n_added, removed=d.n_removed, changed=d.changed)
        if reason is not None:
            audit = self.decisions.audit_row(info.actor, "update quarantined", rt.agency.id, source=rt.key, sha256=info.sha256,
                                    reason=reason, **counts)
            v = await write(lambda: store.quarantine(info, new, d, rejects, reason, version=version, audit=audit))
            v = version if v is None else v
            rt.pending = Pending(v, info.sha256, reason)
            log.warning("update quarantined", agency=rt.agency.id, source=rt.key, version=v, reason=reason)
            return UpdateResult("quarantined", version=v, reason=reason, **base)  # type: ignore[arg-type]
        audit = self.decisions.audit_row(info.actor, "update applied", rt.agency.id, source=rt.key, sha256=info.sha256,
                                entries=len(new), **counts)
        v = await write(lambda: store.apply(info, d, rejects, version=version, audit=audit))
        v = version if v is None else v
        rt.enforce(new, v, info.sha256, info.received_at)
        self.builder.changed(d)
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
            plain = read_plain(data, self.files.protected)
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
            options["public_key_pem"] = self.resolve(rt.settings.public_key).read_bytes()
        try:
            result = parser(data, **options)
        except TypeError as exc:
            raise FeedError(f"format {fmt}: bad options {sorted(options)}: {exc}") from None
        kept: list[Entry] = []
        rejects = list(result.rejects)
        for e in result.entries:
            refusal = None if e.allow else entry_refusal(e.name, self.files.protected)
            if refusal is not None:
                rejects.append(Reject(e.line, e.name, refusal))
            else:
                kept.append(e)
        rejects.sort(key=lambda r: r.line)
        return SourceList.build((), kept), rejects, dict(result.meta)

    async def patch(self, agency: str, add: list[dict[str, Any]], remove: list[str], *, actor: str) -> UpdateResult:
        """PATCH: add and remove entries of the agency's pushed list."""
        rt = self.sources.runtime(agency)
        await self.gate.writable()
        entries, rejects = patch_entries(add, self.files.protected)
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
            await self.gate.call(self.decisions.audit, actor, "patch refused", agency, None, rejects=len(rejects))
            raise Refused("nothing valid remains: every item was rejected", rejects)
        body = repr((sorted((e.name, e.wildcard, repr(e)) for e in entries), sorted(keys))).encode()
        sha = hashlib.sha256(body).hexdigest()
        async with self.lock:
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
            await self.builder.compile()
        await self._pushed(rt, result)
        return result


def patch_entries(items: Iterable[Any], protected: Protected) -> tuple[list[Entry], list[Reject]]:
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
