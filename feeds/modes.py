"""Agency modes: enforce or observe (RPZ's "log only"), and an admin's switch between them.

Owns which mode each agency is compiled in: the configuration's ``agencies[].mode`` is the
default, and an admin's decision stored in the feed store (``agency_modes``, with its audit row:
who, when, why) wins over it, across restarts, until another decision. ``switch`` writes the
decision and recompiles, so the resolver swaps to the new policy at once; ``effective`` gives
the compile each agency's settings in the mode in force.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args

import structlog

from config.settings import AgencySettings, Mode
from feeds.compile import AgencyList
from feeds.outcomes import NotFound
from feeds.store import Audit, FeedStore, iso

if TYPE_CHECKING:
    from feeds.builder import PolicyBuilder
    from feeds.storegate import StoreGate

log = structlog.get_logger("betblock.feeds")

MODES: tuple[str, ...] = get_args(Mode)


class AgencyModes:
    """The stored mode decisions, and the switch. Shares the update lock with the parts that
    change the sources (the manager hands the same one), so a switch never interleaves with an
    update or another decision."""

    def __init__(
        self, agencies: dict[str, AgencySettings], gate: StoreGate, *, lock: asyncio.Lock, builder: PolicyBuilder,
        clock: Callable[[], float],
    ) -> None:
        self.agencies, self.gate, self.lock, self.builder, self.clock = agencies, gate, lock, builder, clock
        self.decided: dict[str, dict[str, Any]] = {}  # agency -> mode, set_at, set_by, reason
        self._copies: dict[tuple[int, str], AgencySettings] = {}

    def load(self, store: FeedStore) -> None:
        """Read the stored decisions (in a thread, with the rest of the store's state)."""
        self.decided = {a: d for a, d in store.modes().items() if a in self.agencies}

    def mode(self, agency: str) -> str:
        """The mode ``agency`` is compiled in: the admin's decision, else the configuration's."""
        d = self.decided.get(agency)
        return d["mode"] if d is not None else self.agencies[agency].mode

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

    def apply(self, lists: list[AgencyList]) -> list[AgencyList]:
        """The compile's lists with each agency in the mode in force."""
        if not self.decided:
            return lists
        return [al if (a := self.effective(al.agency)) is al.agency else dataclasses.replace(al, agency=a) for al in lists]

    def status(self, agency: str) -> dict[str, Any]:
        """The mode in force and where it comes from (for status, lookup and the reports)."""
        d = self.decided.get(agency)
        if d is None:
            return {"mode": self.agencies[agency].mode, "set_by": "config"}
        return {"mode": d["mode"], "set_by": d["set_by"], "set_at": iso(d["set_at"]), "reason": d["reason"],
                "config": self.agencies[agency].mode}

    async def switch(self, agency: str, mode: str, *, actor: str, **why: str) -> dict[str, Any]:
        """Put ``agency`` in ``mode`` (stored with its audit row), recompile and install.
        ``NotFound`` for an unknown agency, ``ValueError`` for an unknown mode."""
        if agency not in self.agencies:
            raise NotFound(f"no agency {agency!r}")
        if mode not in MODES:
            raise ValueError(f"mode: one of {', '.join(MODES)}, got {mode!r}")
        store = await self.gate.writable()
        async with self.lock:
            was = self.mode(agency)
            now = self.clock()
            audit = Audit(actor, f"mode {mode}", now, agency, None, {"was": was, **why})
            await self.gate.call(store.set_mode, agency, mode, actor, now, why.get("reason", ""), audit)
            self.decided[agency] = {"mode": mode, "set_at": now, "set_by": actor, "reason": why.get("reason", "")}
            self.builder.changed()  # every rule may change: a full compile
        snapshot = await self.builder.compile()
        log.info("agency mode switched", agency=agency, mode=mode, was=was, actor=actor, version=snapshot.version)
        return {"agency": agency, "was": was, **self.status(agency), "policy_version": snapshot.version}
