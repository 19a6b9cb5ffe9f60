"""The feed side of the admin dashboard and quarantine review: ``hits.dashboard.FeedsView`` over
the feed manager.

Owns how a feed's health is judged for people (failing: its last fetch failed; quarantined: an
update waits for an admin; stale: not refreshed within its deadline or three poll intervals;
else ok), the policy version's ``v<n>`` (the n-th install recorded in the feed store), and the
review's reading of a quarantined version (counts, a sample of its diff, its rejected lines).
Store reads run in a thread. Part of the composition root: may import feeds and hits.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from feeds.manager import Conflict, FeedManager, NotFound, Refused, StoreUnavailable
from feeds.store import iso

SAMPLE = 20


def next_poll(rt: Any) -> float | None:
    """When a polled source is asked next: its last attempt plus its interval, or the shorter
    retry delay while it fails (the scheduler's rule). Push and file sources are not polled."""
    if rt.settings.kind not in ("url", "xfr") or rt.last_attempt is None:
        return None
    interval = rt.follower.interval() if rt.follower is not None else rt.settings.interval
    if rt.failures:
        interval = min(interval, 30.0 * 2 ** min(rt.failures - 1, 10))
    return float(rt.last_attempt + interval)


def takes_reason(decide: Any) -> bool:
    """Whether the manager's approve/reject records ``reason`` in its own audit row."""
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "reason" for p in inspect.signature(decide).parameters.values())


class ManagerView:
    """``FeedsView`` for one ``FeedManager``."""

    def __init__(self, manager: FeedManager) -> None:
        self.m = manager

    async def health(self) -> list[dict[str, Any]]:
        now = self.m.clock()
        rows = []
        for a in self.m.settings.agencies:
            runtimes = [rt for (aid, _k), rt in self.m.sources.items() if aid == a.id]
            failing = [rt for rt in runtimes if rt.last_error]
            waiting = [rt for rt in runtimes if rt.pending_version is not None]
            stale = []
            for rt in runtimes:
                st = rt.status(now)
                polled = rt.settings.kind in ("url", "xfr")
                late = polled and rt.last_success is not None and now - rt.last_success > 3 * rt.settings.interval
                if st["overdue"] or late or (polled and rt.last_success is None):
                    stale.append(rt)
            if failing:
                state, detail = "failing", "; ".join(f"{rt.key}: {rt.last_error}" for rt in failing)
            elif waiting:
                state, detail = "quarantined", "; ".join(f"v{rt.pending_version}: {rt.pending_reason}" for rt in waiting)
            elif stale:
                state, detail = "stale", "not refreshed in time: " + ", ".join(rt.key for rt in stale)
            else:
                state, detail = "ok", ""
            successes = [rt.last_success for rt in runtimes]
            polls = [t for t in (next_poll(rt) for rt in runtimes) if t is not None]
            rows.append({
                "id": a.id,
                "name": a.display_name,
                "state": state,
                "detail": detail,
                "entries": sum(len(rt.current) for rt in runtimes),
                # The oldest good fetch of its sources: the one a deadline runs out on first.
                "last_success": None if not successes or None in successes else iso(min(s for s in successes if s is not None)),
                "next_poll": iso(min(polls)) if polls else None,
                "next_poll_note": "on push" if all(rt.settings.kind == "push" for rt in runtimes)
                else "file watched" if all(rt.settings.kind in ("push", "file") for rt in runtimes) else "",
                "mode": self.m.modes.mode(a.id),
            })
        return rows

    async def policy(self) -> dict[str, Any] | None:
        snap = self.m.snapshot
        if snap is None:
            return None
        store = self.m.store
        found = await asyncio.to_thread(store.install_of, snap.version) if store is not None else None
        if found is not None:
            return {"version": snap.version, "label": f"v{found[0]}", "installed": iso(found[1])}
        # Not recorded (no store): the version is the compile time in ms, shown as such.
        return {"version": snap.version, "label": "compiled " + (iso(snap.version / 1000) or ""), "installed": None}

    async def labels(self, versions: set[int]) -> dict[int, str]:
        """``v<n>`` of each policy version (snapshot) that has an install recorded."""
        store = self.m.store
        if store is None or not versions:
            return {}

        def read() -> dict[int, str]:
            found = {v: store.install_of(v) for v in versions}
            return {v: f"v{f[0]}" for v, f in found.items() if f is not None}

        return await asyncio.to_thread(read)

    async def quarantined(self) -> list[dict[str, Any]]:
        store = self.m.store
        if store is None:
            return []

        def read() -> list[dict[str, Any]]:
            out = []
            for v in store.quarantined():
                d = store.version_diff(v["agency"], v["version"], limit=SAMPLE)
                out.append({**v, "sample": d, "rejects_sample": d.pop("rejects", [])})
            return out

        return await asyncio.to_thread(read)

    async def decide(self, agency: str, version: int, approve: bool, actor: str, reason: str) -> str:
        act = self.m.approve if approve else self.m.reject
        why = {"reason": reason} if takes_reason(act) else {}
        try:
            r = await act(agency, version, actor=actor, **why)
        except (Conflict, NotFound, Refused, StoreUnavailable) as exc:
            raise ValueError(f"{agency} v{version}: {exc}") from None
        if not why and self.m.store is not None:
            # A manager whose decisions take no reason: the reason gets an audit row of its own.
            store = self.m.store
            await asyncio.to_thread(store.audit, actor, "decision reason", agency, version, reason=reason)
        if approve:
            return f"{agency} v{version} approved and applied: {r.entries} entries (+{r.added} -{r.removed} ~{r.changed})"
        return f"{agency} v{version} rejected; the list in force stays"

    async def modes(self) -> list[dict[str, Any]]:
        return [{"id": a.id, "name": a.display_name, **self.m.modes.status(a.id)} for a in self.m.settings.agencies]

    async def set_mode(self, agency: str, mode: str, actor: str, reason: str) -> str:
        try:
            r = await self.m.modes.switch(agency, mode, actor=actor, reason=reason)
        except (NotFound, StoreUnavailable, ValueError) as exc:
            raise ValueError(f"{agency}: {exc}") from None
        return f"{agency} now {r['mode']} (was {r['was']}); applied at once"

    async def audit(self, limit: int = 30) -> list[dict[str, Any]]:
        store = self.m.store
        if store is None:
            return []
        rows = await asyncio.to_thread(store.audit_log, None, limit)
        return [{"ts": r["time"], "actor": r["actor"], "action": r["action"], "agency": r.get("agency"),
                 "version": r.get("version"), "reason": (r.get("detail") or {}).get("reason", "")} for r in rows]
