"""The feeds read model: what the control plane shows of itself, read at the moment of asking.

Owns the status JSON (``GET /v1/feeds``, ``betblock feeds status``), the Prometheus families of
the sources, the provenance of a listed name for the warning page, and the compliance report. It only reads the sources,
the builder and the store gate, never changes them, so a status request can never disturb an
update. (The builder and the store gate report their own metrics.)

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from config.settings import AgencySettings
from feeds.compliance import report
from feeds.store import iso

if TYPE_CHECKING:
    from feeds.builder import PolicyBuilder
    from feeds.modes import AgencyModes
    from feeds.sources import SourceRuntime, SourceTable
    from feeds.storegate import StoreGate


def source_status(rt: SourceRuntime, now: float) -> dict[str, Any]:
    """One source's state as the status JSON shows it."""
    s = rt.settings
    deadline = rt.agency.deadline_hours * 3600
    f = rt.fetch
    overdue = bool(deadline) and s.kind != "push" and (f.last_success is None or now - f.last_success > deadline)
    out: dict[str, Any] = {
        "id": rt.key,
        "kind": s.kind,
        "format": s.format,
        "version": rt.version,
        "entries": len(rt.current),
        "last_attempt": iso(f.last_attempt),
        "last_success": iso(f.last_success),
        "last_change": iso(rt.in_force.changed_at),
        "last_error": f.last_error,
        "failures": f.failures,
        "overdue": overdue,
    }
    if s.kind == "url":
        out["url"] = s.url
        out["etag"] = f.etag
    elif s.kind == "file":
        out["path"] = str(rt.path)
    if rt.pending is not None:
        out["quarantined"] = {"version": rt.pending.version, "reason": rt.pending.reason}
    return out


class FeedReadModel:
    """Status, metrics and provenance over the sources, the builder and the store (read-only)."""

    def __init__(
        self, sources: SourceTable, builder: PolicyBuilder, gate: StoreGate, clock: Callable[[], float],
        modes: AgencyModes | None = None,
    ) -> None:
        self.sources = sources
        self.builder = builder
        self.gate = gate
        self.clock = clock
        self.modes = modes  # enforce/observe per agency (None: every agency as configured)

    def status(self, agency: str | None = None) -> dict[str, Any]:
        """Each agency with its sources' state (or one agency)."""
        now = self.clock()
        out = []
        for a in self.sources.agency_list:
            if agency is not None and a.id != agency:
                continue
            srcs = [source_status(rt, now) for rt in self.sources.of(a.id)]
            out.append(
                {
                    "id": a.id,
                    "name": a.display_name,
                    "jurisdiction": a.jurisdiction,
                    "precedence": a.precedence,
                    "action": a.action,
                    # mode (enforce/observe) and who set it
                    **(self.modes.status(a.id) if self.modes is not None else {"mode": a.mode, "set_by": "config"}),
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
        snap, b = self.builder.snapshot, self.builder
        return {
            "version": snap.version if snap else None,
            "stats": dict(snap.stats) if snap else {},
            "next_change": iso(b.next_change),
            "compile_seconds": None if b.compile_seconds is None else round(b.compile_seconds, 3),
            "loaded": self.gate.loaded.is_set(),
            "store": self.gate.status(),
        }

    async def compliance(self, agency: AgencySettings, now: float | None = None) -> dict[str, Any]:
        """The agency's compliance report (``feeds.compliance.report``) as of ``now``, read from
        the store in a thread; ``StoreUnavailable`` without one."""
        store = self.gate.require()
        return await asyncio.to_thread(report, store, agency, self.clock() if now is None else now)

    def provenance(self, agency: str, name: str) -> dict[str, Any] | None:
        """What the agency's feed said about ``name`` (legal reference, dates), for the
        warning page; None when it said nothing but the name."""
        for rt in self.sources.of(agency):
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
        """Prometheus families of the sources, read at scrape time."""
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
            lv, f = [aid, key], rt.fetch
            st = source_status(rt, now)
            entries.add_metric(lv, len(rt.current))
            version.add_metric(lv, rt.version or 0)
            success.add_metric(lv, f.last_success or 0)
            failures.add_metric(lv, f.failures)
            quarantined.add_metric(lv, 1 if rt.pending is not None else 0)
            overdue.add_metric(lv, 1 if st["overdue"] else 0)
            if f.last_success is not None:
                age.add_metric(lv, max(0.0, now - f.last_success))
            if f.last_error:
                error.add_metric([*lv, f.last_error[:200]], 1)
            for result, n in f.results.items():
                fetches.add_metric([*lv, result], n)
        yield from (entries, version, success, failures, quarantined, overdue, fetches, age, error)
