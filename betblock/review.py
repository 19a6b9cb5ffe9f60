"""The feed side of the admin dashboard and quarantine review: ``hits.dashboard.FeedsView`` over
the feed manager.

Owns how a feed's health is judged for people (failing: its last fetch failed; quarantined: an
update waits for an admin; stale: not refreshed within its deadline or three poll intervals;
else ok), the policy version's ``v<n>`` (the n-th install recorded in the feed store), and the
review's reading of a quarantined version (counts, a sample of its diff, its rejected lines).
Reads go through the feeds parts (builder, decisions, sources), never the store. Part of the
composition root: may import feeds and hits.
"""

from __future__ import annotations

from typing import Any

from feeds.manager import Conflict, FeedManager, NotFound, Refused, StoreUnavailable
from feeds.scheduler import poll_interval
from feeds.store import iso

SAMPLE = 20


def next_poll(rt: Any) -> float | None:
    """When a polled source is asked next: its last attempt plus its interval, or the shorter
    retry delay while it fails (the scheduler's rule). Push and file sources are not polled."""
    if rt.settings.kind not in ("url", "xfr") or rt.fetch.last_attempt is None:
        return None
    return float(rt.fetch.last_attempt + poll_interval(rt))


class ManagerView:
    """``FeedsView`` for one ``FeedManager``."""

    def __init__(self, manager: FeedManager) -> None:
        self.m = manager

    async def health(self) -> list[dict[str, Any]]:
        now = self.m.clock()
        rows = []
        for a in self.m.sources.agency_list:
            runtimes = self.m.sources.of(a.id)
            failing = [rt for rt in runtimes if rt.fetch.last_error]
            waiting = [rt for rt in runtimes if rt.pending is not None]
            stale = []
            for rt in runtimes:
                st = rt.status(now)
                polled = rt.settings.kind in ("url", "xfr")
                success = rt.fetch.last_success
                late = polled and success is not None and now - success > 3 * rt.settings.interval
                if st["overdue"] or late or (polled and success is None):
                    stale.append(rt)
            if failing:
                state, detail = "failing", "; ".join(f"{rt.key}: {rt.fetch.last_error}" for rt in failing)
            elif waiting:
                state, detail = "quarantined", "; ".join(f"v{rt.pending.version}: {rt.pending.reason}" for rt in waiting)
            elif stale:
                state, detail = "stale", "not refreshed in time: " + ", ".join(rt.key for rt in stale)
            else:
                state, detail = "ok", ""
            successes = [rt.fetch.last_success for rt in runtimes]
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
        snap = self.m.builder.snapshot
        if snap is None:
            return None
        found = (await self.m.builder.installs({snap.version})).get(snap.version)
        if found is not None:
            return {"version": snap.version, "label": f"v{found[0]}", "installed": iso(found[1])}
        # Not recorded (no store): the version is the compile time in ms, shown as such.
        return {"version": snap.version, "label": "compiled " + (iso(snap.version / 1000) or ""), "installed": None}

    async def labels(self, versions: set[int]) -> dict[int, str]:
        """``v<n>`` of each policy version (snapshot) that has an install recorded."""
        return {v: f"v{seq}" for v, (seq, _at) in (await self.m.builder.installs(versions)).items()}

    async def quarantined(self) -> list[dict[str, Any]]:
        return await self.m.decisions.quarantined(sample=SAMPLE)

    async def decide(self, agency: str, version: int, approve: bool, actor: str, reason: str) -> str:
        decisions = self.m.decisions
        act = decisions.approve if approve else decisions.reject
        try:
            r = await act(agency, version, actor=actor, reason=reason)
        except (Conflict, NotFound, Refused, StoreUnavailable) as exc:
            raise ValueError(f"{agency} v{version}: {exc}") from None
        if approve:
            return f"{agency} v{version} approved and applied: {r.entries} entries (+{r.added} -{r.removed} ~{r.changed})"
        return f"{agency} v{version} rejected; the list in force stays"

    async def modes(self) -> list[dict[str, Any]]:
        return [{"id": a.id, "name": a.display_name, **self.m.modes.status(a.id)} for a in self.m.sources.agency_list]

    async def set_mode(self, agency: str, mode: str, actor: str, reason: str) -> str:
        try:
            r = await self.m.modes.switch(agency, mode, actor=actor, reason=reason)
        except (NotFound, StoreUnavailable, ValueError) as exc:
            raise ValueError(f"{agency}: {exc}") from None
        return f"{agency} now {r['mode']} (was {r['was']}); applied at once"

    async def audit(self, limit: int = 30) -> list[dict[str, Any]]:
        rows = await self.m.decisions.audit_log(None, limit, required=False)
        return [{"ts": r["time"], "actor": r["actor"], "action": r["action"], "agency": r.get("agency"),
                 "version": r.get("version"), "reason": (r.get("detail") or {}).get("reason", "")} for r in rows]
