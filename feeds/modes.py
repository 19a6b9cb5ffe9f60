"""Agency modes: enforce or observe (RPZ's "log only"), and an admin's switch between them.

Owns which mode each agency is compiled in: the configuration's ``agencies[].mode`` is the
default, and an admin's decision stored in the feed store (``agency_modes``, with its audit row:
who, when, why) wins over it, across restarts, until another decision. ``switch`` writes the
decision and recompiles, so the resolver swaps to the new policy at once; ``effective`` gives
the compile each agency's settings in the mode in force.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, get_args

import structlog

from config.settings import AgencySettings, Mode
from feeds.outcomes import NotFound
from feeds.store import FeedStore, iso

if TYPE_CHECKING:
    from feeds.manager import FeedManager

log = structlog.get_logger("betblock.feeds")

MODES: tuple[str, ...] = get_args(Mode)


class AgencyModes:
    """The stored mode decisions of one manager, and the switch."""

    def __init__(self, manager: FeedManager) -> None:
        self.m = manager
        self.decided: dict[str, dict[str, Any]] = {}  # agency -> mode, set_at, set_by, reason
        self._copies: dict[tuple[int, str], AgencySettings] = {}

    def load(self, store: FeedStore) -> None:
        """Read the stored decisions (in a thread, with the rest of the store's state)."""
        self.decided = {a: d for a, d in store.modes().items() if a in self.m.agencies}

    def mode(self, agency: str) -> str:
        """The mode ``agency`` is compiled in: the admin's decision, else the configuration's."""
        d = self.decided.get(agency)
        return d["mode"] if d is not None else self.m.agencies[agency].mode

    def effective(self, agency: AgencySettings) -> AgencySettings:
        """``agency`` as the compile must read it: in the mode in force (one copy per mode)."""
        d = self.decided.get(agency.id)
        if d is None or d["mode"] == agency.mode:
            return agency
        key = (id(agency), d["mode"])
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = agency.model_copy(update={"mode": d["mode"]})
        return copy

    def status(self, agency: str) -> dict[str, Any]:
        """The mode in force and where it comes from (for status, lookup and the reports)."""
        d = self.decided.get(agency)
        if d is None:
            return {"mode": self.m.agencies[agency].mode, "set_by": "config"}
        return {"mode": d["mode"], "set_by": d["set_by"], "set_at": iso(d["set_at"]), "reason": d["reason"],
                "config": self.m.agencies[agency].mode}

    async def switch(self, agency: str, mode: str, *, actor: str, **why: str) -> dict[str, Any]:
        """Put ``agency`` in ``mode`` (stored with its audit row), recompile and install.
        ``NotFound`` for an unknown agency, ``ValueError`` for an unknown mode."""
        if agency not in self.m.agencies:
            raise NotFound(f"no agency {agency!r}")
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}, got {mode!r}")
        store = await self.m._writable()
        async with self.m._lock:
            was = self.mode(agency)
            now = self.m.clock()
            audit = self.m.decisions.audit_row(actor, f"mode {mode}", agency, was=was, **why)
            await self.m._store_call(store.set_mode, agency, mode, actor, now, why.get("reason", ""), audit)
            self.decided[agency] = {"mode": mode, "set_at": now, "set_by": actor, "reason": why.get("reason", "")}
            self.m.builder.changed()  # every rule may change: a full compile
        snapshot = await self.m.compile()
        log.info("agency mode switched", agency=agency, mode=mode, was=was, actor=actor, version=snapshot.version)
        return {"agency": agency, "was": was, **self.status(agency), "policy_version": snapshot.version}
