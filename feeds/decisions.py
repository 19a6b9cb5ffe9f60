"""Admin decisions: approve or reject a quarantined version, the admin allowlist, the audit trail,
and the records an admin reads to decide (versions, their diffs, what waits in quarantine).

Owns the rule that every decision is written to the store together with its audit row, and the
reads the HTTP API needs of the store (the API's own reads move here once the auth-layer change
to feeds/api.py has landed). Decisions take the manager's update lock, so
a decision and an update never interleave; an applied decision recompiles.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from feeds.lists import diff, to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.outcomes import Conflict, NotFound, UpdateResult
from feeds.store import Audit, VersionInfo

if TYPE_CHECKING:
    from feeds.manager import FeedManager

log = structlog.get_logger("betblock.feeds")


class AdminDecisions:
    """What an admin decides, and reads to decide, over a manager's sources and store."""

    def __init__(self, manager: FeedManager) -> None:
        self.m = manager

    async def _quarantined(self, agency: str, version: int) -> dict[str, Any]:
        """The store's row of a version an admin may decide on; NotFound or Conflict otherwise."""
        row = await asyncio.to_thread(self.m.require_store().version, agency, version)
        if row is None:
            raise NotFound(f"agency {agency!r} has no version {version}")
        if row["status"] != "quarantined":
            raise Conflict(f"version {version} is {row['status']}, not quarantined")
        return row

    async def approve(self, agency: str, version: int, *, actor: str, **why: str) -> UpdateResult:
        """Apply a quarantined version; ``why`` (reason, operator) goes into the audit row."""
        store = await self.m._writable()
        async with self.m._lock:
            row = await self._quarantined(agency, version)
            rt = self.m.runtime(agency, row["source"])
            new = await asyncio.to_thread(store.pending_list, agency, version)
            if new is None:
                raise Conflict(f"version {version} has no list kept")
            d = await asyncio.to_thread(diff, rt.current, new)
            now = self.m.clock()
            info = VersionInfo(
                agency=agency, source=rt.key, kind=row["kind"], format=row["format"], sha256=row["sha256"],
                received_at=now, actor=actor, entries=len(new), rejects=row["rejects"],
            )
            audit = self.audit_row(actor, "quarantine approved", agency, source=rt.key,
                                    added=d.n_added, removed=d.n_removed, changed=d.changed, **why)
            await self.m._store_call(lambda: store.apply(info, d, [], version=version, approved=True, audit=audit))
            rt.set_list(new)
            rt.version, rt.sha256, rt.last_change = version, row["sha256"], now
            rt.set_pending(None)
            self.m.builder.changed()
        await self.m.compile()
        log.info("quarantined update approved", agency=agency, version=version, actor=actor)
        return UpdateResult("applied", agency, rt.key, version, len(new), d.n_added, d.n_removed, d.changed)

    async def reject(self, agency: str, version: int, *, actor: str, **why: str) -> dict[str, Any]:
        """Refuse a quarantined version for good; the source keeps its list; ``why`` as for approve."""
        store = await self.m._writable()
        async with self.m._lock:
            row = await self._quarantined(agency, version)
            rt = self.m.runtime(agency, row["source"])
            audit = self.audit_row(actor, "quarantine rejected", agency, version, source=rt.key, **why)
            await self.m._store_call(store.decide, agency, version, "rejected", actor, self.m.clock(), audit)
            rt.set_pending(None)
            rt.rejected_sha = row["sha256"]
        log.info("quarantined update rejected", agency=agency, version=version, actor=actor)
        return {"status": "rejected", "agency": agency, "version": version}

    async def allow_add(self, raw: str, *, actor: str, note: str = "") -> dict[str, Any]:
        name = allow_name(raw)
        store = await self.m._writable()
        audit = self.audit_row(actor, "allowlist add", name=name, note=note)
        added = await self.m._store_call(store.allow_add, name, actor, note, self.m.clock(), audit)
        if added:
            self.m.admin_allow = self.m.admin_allow + [to_wire(name.encode("ascii"))]
            self.m.builder.changed()
            await self.m.compile()
        return {"name": name, "added": added}

    async def allow_remove(self, raw: str, *, actor: str) -> dict[str, Any]:
        name = allow_name(raw)
        store = await self.m._writable()
        removed = await self.m._store_call(store.allow_remove, name, self.audit_row(actor, "allowlist remove", name=name))
        if removed:
            wire = to_wire(name.encode("ascii"))
            self.m.admin_allow = [w for w in self.m.admin_allow if w != wire]
            self.m.builder.changed()
            await self.m.compile()
        return {"name": name, "removed": removed}

    def audit(self, actor: str, action: str, agency: str | None, version: int | None, **detail: Any) -> None:
        """An audit row of its own, for what changes nothing in the store (a refused update)."""
        self.m.require_store().audit(actor, action, agency, version, ts=self.m.clock(), **detail)

    def audit_row(self, actor: str, action: str, agency: str | None = None, version: int | None = None, **detail: Any) -> Audit:
        """The audit row of a change, for the store to write in the change's own transaction."""
        return Audit(actor, action, self.m.clock(), agency, version, detail)

    # -- what an admin reads to decide ----------------------------------------------------

    async def versions(self, agency: str, limit: int) -> list[dict[str, Any]]:
        """The agency's latest versions, newest first."""
        return await asyncio.to_thread(self.m.require_store().versions, agency, limit)

    async def version(self, agency: str, version: int, limit: int, offset: int) -> dict[str, Any] | None:
        """One version with a page of its diff; None when the agency has no such version."""
        store = self.m.require_store()
        row = await asyncio.to_thread(store.version, agency, version)
        if row is not None:
            row["diff"] = await asyncio.to_thread(store.version_diff, agency, version, limit, offset)
        return row

    async def quarantined(self) -> list[dict[str, Any]]:
        """Every version waiting for an admin; empty without a store (the status says why)."""
        store = self.m.store
        return await asyncio.to_thread(store.quarantined) if store is not None else []

    async def allowlist(self) -> list[dict[str, Any]]:
        """The admin allowlist, with who added each name and why."""
        return await asyncio.to_thread(self.m.require_store().allowlist)

    async def audit_log(self, agency: str | None, limit: int) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.m.require_store().audit_log, agency, limit)


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
