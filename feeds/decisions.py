"""Admin decisions: approve or reject a quarantined version, the admin allowlist, the audit trail,
and the records an admin reads to decide (versions, their diffs, what waits in quarantine).

Owns the rule that every decision is written to the store together with its audit row, and the
reads of the store the HTTP API needs (the API holds no store). Decisions take the update lock
they share with the update service (the manager hands both the same one), so a decision and an
update never interleave; an applied decision recompiles.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from feeds.lists import diff, to_wire
from feeds.normalize import InvalidName, normalize_detail
from feeds.outcomes import Conflict, NotFound, UpdateResult
from feeds.sources import SourceWriter
from feeds.store import Audit, FeedStore, VersionInfo


log = structlog.get_logger("betblock.feeds")


class AdminDecisions(SourceWriter):
    """What an admin decides, and reads to decide, over the sources and the store."""

    async def _quarantined(self, agency: str, version: int) -> dict[str, Any]:
        """The store's row of a version an admin may decide on; NotFound or Conflict otherwise."""
        row = await asyncio.to_thread(self.gate.require().version, agency, version)
        if row is None:
            raise NotFound(f"agency {agency!r} has no version {version}")
        if row["status"] != "quarantined":
            raise Conflict(f"version {version} is {row['status']}, not quarantined")
        return row

    async def approve(self, agency: str, version: int, *, actor: str, **why: str) -> UpdateResult:
        """Apply a quarantined version; ``why`` (reason, operator) goes into the audit row."""
        store = await self.gate.writable()
        async with self.lock:
            row = await self._quarantined(agency, version)
            rt = self.sources.runtime(agency, row["source"])
            new = await asyncio.to_thread(store.pending_list, agency, version)
            if new is None:
                raise Conflict(f"version {version} has no list kept")
            d = await asyncio.to_thread(diff, rt.current, new)
            now = self.clock()
            info = VersionInfo(
                agency=agency, source=rt.key, kind=row["kind"], format=row["format"], sha256=row["sha256"],
                received_at=now, actor=actor, entries=len(new), rejects=row["rejects"],
            )
            audit = self.audit_row(actor, "quarantine approved", agency, source=rt.key,
                                    added=d.n_added, removed=d.n_removed, changed=d.changed, **why)
            await self.gate.call(lambda: store.apply(info, d, [], version=version, approved=True, audit=audit))
            rt.enforce(new, version, row["sha256"], now)
            self.builder.changed()
        await self.builder.compile()
        log.info("quarantined update approved", agency=agency, version=version, actor=actor)
        return UpdateResult("applied", agency, rt.key, version, len(new), d.n_added, d.n_removed, d.changed)

    async def reject(self, agency: str, version: int, *, actor: str, **why: str) -> dict[str, Any]:
        """Refuse a quarantined version for good; the source keeps its list; ``why`` as for approve."""
        store = await self.gate.writable()
        async with self.lock:
            row = await self._quarantined(agency, version)
            rt = self.sources.runtime(agency, row["source"])
            audit = self.audit_row(actor, "quarantine rejected", agency, version, source=rt.key, **why)
            await self.gate.call(store.decide, agency, version, "rejected", actor, self.clock(), audit)
            rt.reject(row["sha256"])
        log.info("quarantined update rejected", agency=agency, version=version, actor=actor)
        return {"status": "rejected", "agency": agency, "version": version}

    async def allow_add(self, raw: str, *, actor: str, note: str = "") -> dict[str, Any]:
        name = allow_name(raw)
        store = await self.gate.writable()
        audit = self.audit_row(actor, "allowlist add", name=name, note=note)
        added = await self.gate.call(store.allow_add, name, actor, note, self.clock(), audit)
        if added:
            self.files.admin_allow = self.files.admin_allow + [to_wire(name.encode("ascii"))]
            self.builder.changed()
            await self.builder.compile()
        return {"name": name, "added": added}

    async def allow_remove(self, raw: str, *, actor: str) -> dict[str, Any]:
        name = allow_name(raw)
        store = await self.gate.writable()
        removed = await self.gate.call(store.allow_remove, name, self.audit_row(actor, "allowlist remove", name=name))
        if removed:
            wire = to_wire(name.encode("ascii"))
            self.files.admin_allow = [w for w in self.files.admin_allow if w != wire]
            self.builder.changed()
            await self.builder.compile()
        return {"name": name, "removed": removed}

    def audit(self, actor: str, action: str, agency: str | None, version: int | None, **detail: Any) -> None:
        """An audit row of its own, for what changes nothing in the store (a refused update)."""
        self.gate.require().audit(actor, action, agency, version, ts=self.clock(), **detail)

    def audit_row(self, actor: str, action: str, agency: str | None = None, version: int | None = None, **detail: Any) -> Audit:
        """The audit row of a change, for the store to write in the change's own transaction."""
        return Audit(actor, action, self.clock(), agency, version, detail)

    # -- what an admin reads to decide ----------------------------------------------------

    async def versions(self, agency: str, limit: int) -> list[dict[str, Any]]:
        """The agency's latest versions, newest first."""
        return await asyncio.to_thread(self.gate.require().versions, agency, limit)

    async def version(self, agency: str, version: int, limit: int, offset: int) -> dict[str, Any] | None:
        """One version with a page of its diff; None when the agency has no such version."""
        row = await asyncio.to_thread(self.gate.require().version, agency, version)
        if row is not None:
            row["diff"] = await self.diff(agency, version, limit, offset)
        return row

    async def diff(self, agency: str, version: int, limit: int, offset: int = 0) -> dict[str, Any]:
        """A page of one version's diff (names added, removed, changed) and its rejected lines."""
        return await asyncio.to_thread(self.gate.require().version_diff, agency, version, limit, offset)

    async def quarantined(self, sample: int = 0) -> list[dict[str, Any]]:
        """Every version waiting for an admin; empty without a store (the status says why).
        ``sample``: with the first names of its diff (``sample``) and its rejected lines
        (``rejects_sample``), for a review."""

        def read(store: FeedStore) -> list[dict[str, Any]]:
            out = store.quarantined()
            if sample:
                for v in out:
                    d = store.version_diff(v["agency"], v["version"], limit=sample)
                    v.update(sample=d, rejects_sample=d.pop("rejects", []))
            return out

        return await self.gate.read(read, [])

    async def allowlists(self) -> dict[str, Any]:
        """Both allowlists: the configured names and files (as the policy section in force
        has them), and the admin allowlist with who added each name and why."""
        policy = self.files.policy
        admin = await asyncio.to_thread(self.gate.require().allowlist)
        return {"config": [*policy.allowlist, *map(str, policy.allowlist_files)], "admin": admin}

    async def audit_log(self, agency: str | None, limit: int, *, required: bool = True) -> list[dict[str, Any]]:
        """The latest audit rows; without a store ``StoreUnavailable``, or empty when not ``required``."""
        if not required:
            return await self.gate.read(lambda store: store.audit_log(agency, limit), [])
        return await asyncio.to_thread(self.gate.require().audit_log, agency, limit)


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

