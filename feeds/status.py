"""The feeds read model: what the control plane shows of itself, read at the moment of asking.

Owns the status JSON (``GET /v1/feeds``, ``betblock feeds status``), the Prometheus families of
the feeds and the compiles, and the provenance of a listed name for the warning page. It only
reads the manager's state, never changes it, so a status request can never disturb an update.

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from feeds.store import iso

if TYPE_CHECKING:
    from feeds.manager import FeedManager, SourceRuntime


def source_status(rt: SourceRuntime, now: float) -> dict[str, Any]:
    """One source's state as the status JSON shows it."""
    s = rt.settings
    deadline = rt.agency.deadline_hours * 3600
    overdue = bool(deadline) and s.kind != "push" and (rt.last_success is None or now - rt.last_success > deadline)
    out: dict[str, Any] = {
        "id": rt.key,
        "kind": s.kind,
        "format": s.format,
        "version": rt.version,
        "entries": len(rt.current),
        "last_attempt": iso(rt.last_attempt),
        "last_success": iso(rt.last_success),
        "last_change": iso(rt.last_change),
        "last_error": rt.last_error,
        "failures": rt.failures,
        "overdue": overdue,
    }
    if s.kind == "url":
        out["url"] = s.url
        out["etag"] = rt.etag
    elif s.kind == "file":
        out["path"] = str(rt.path)
    if rt.pending_version is not None:
        out["quarantined"] = {"version": rt.pending_version, "reason": rt.pending_reason}
    return out


class FeedReadModel:
    """Status, metrics and provenance over a manager's live state (read-only)."""

    def __init__(self, manager: FeedManager) -> None:
        self.m = manager

    def status(self, agency: str | None = None) -> dict[str, Any]:
        """Each agency with its sources' state (or one agency)."""
        now = self.m.clock()
        out = []
        for a in self.m.settings.agencies:
            if agency is not None and a.id != agency:
                continue
            srcs = [source_status(rt, now) for (aid, _k), rt in self.m.sources.items() if aid == a.id]
            out.append(
                {
                    "id": a.id,
                    "name": a.display_name,
                    "jurisdiction": a.jurisdiction,
                    "precedence": a.precedence,
                    "action": a.action,
                    **self.m.modes.status(a.id),  # mode (enforce/observe) and who set it
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
        snap = self.m.snapshot
        return {
            "version": snap.version if snap else None,
            "stats": dict(snap.stats) if snap else {},
            "next_change": iso(self.m.next_change),
            "compile_seconds": None if self.m.compile_seconds is None else round(self.m.compile_seconds, 3),
            "loaded": self.m.loaded.is_set(),
            "store": {
                "path": str(self.m.store_path),
                "ok": self.m.store_problem is None,
                "id": self.m.store.store_id if self.m.store is not None else None,
                "problem": self.m.store_problem,
            },
        }

    def provenance(self, agency: str, name: str) -> dict[str, Any] | None:
        """What the agency's feed said about ``name`` (legal reference, dates), for the
        warning page; None when it said nothing but the name."""
        for (aid, _k), rt in self.m.sources.items():
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
        now = self.m.clock()
        for (aid, key), rt in self.m.sources.items():
            lv = [aid, key]
            st = source_status(rt, now)
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
        # The mode each agency has in the policy in force (1; the other mode 0): what the
        # resolver does now, whichever way it was set (configuration or an admin's switch).
        mode = GaugeMetricFamily("betblock_agency_mode", "Agency mode in the policy in force (1) by agency and mode", labels=["agency", "mode"])
        snap = self.m.snapshot
        for a in self.m.settings.agencies:
            observing = a.id in snap.observing if snap is not None else self.m.modes.mode(a.id) == "observe"
            mode.add_metric([a.id, "enforce"], 0 if observing else 1)
            mode.add_metric([a.id, "observe"], 1 if observing else 0)
        yield mode
        yield GaugeMetricFamily(
            "betblock_policy_compile_seconds", "Duration of the last compile", value=self.m.compile_seconds or 0.0
        )
        yield CounterMetricFamily("betblock_policy_compiles", "Compiles since start", value=self.m.compiles)
        yield GaugeMetricFamily(
            "betblock_feed_store_ok",
            "0 when the feed store is missing, empty or damaged: the saved snapshot is served and updates are refused",
            value=0 if self.m.store_problem is not None else 1,
        )
        yield GaugeMetricFamily(
            "betblock_policy_next_change_timestamp", "Next listing or removal date (Unix time; 0 = none)",
            value=self.m.next_change or 0.0,
        )
