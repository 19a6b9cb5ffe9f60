"""The compliance report on an injected clock: listing, receipt, enforcement, removal and
lifting per entry, against the agency's deadline. A FeedManager with a real SQLite store; the
install records are written at each install, exactly as under the resolver."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feeds.compliance import COLUMNS, report, to_csv
from feeds.manager import FeedManager
from feeds.snapshot import PolicySnapshot
from tests.feeds_plane.helpers import Clock, push_agency, settings

H = 3600.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class Node:
    def __init__(self, tmp_path: Path, agencies: list[dict[str, Any]]) -> None:
        self.installed: list[PolicySnapshot] = []
        self.clock = Clock()
        self.settings = settings(tmp_path, agencies)
        self.m = FeedManager(self.settings, self.installed.append, clock=self.clock)

    def report(self) -> dict[str, Any]:
        assert self.m.store is not None
        return report(self.m.store, self.settings.agencies[0], self.clock())

    def entries(self) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.report()["entries"]}


async def test_a_quarantined_listing_crosses_the_deadline_and_is_reported_late(tmp_path: Path) -> None:
    # churn_floor 0: every change of an existing list waits for an admin.
    n = Node(tmp_path, [push_agency("pl-mf", deadline_hours=48, churn_floor=0)])
    await n.m.start()
    t0 = n.clock.now
    assert (await n.m.push("pl-mf", b"a.test\nb.test\n", actor="t")).status == "applied"
    n.clock.advance(1 * H)
    t1 = n.clock.now
    r = await n.m.push("pl-mf", b"a.test\nc.test\n", actor="t")  # adds c, drops b
    assert r.status == "quarantined"

    n.clock.advance(47 * H)  # 47 h after c was received: still within the deadline
    e = n.entries()
    assert (e["a.test"]["status"], e["a.test"]["enforced_at"], e["a.test"]["late"]) == ("enforced", iso(t0), False)
    assert e["a.test"]["enforce_hours"] == 0.0
    assert (e["c.test"]["status"], e["c.test"]["received_at"], e["c.test"]["enforced_at"]) == ("quarantined", iso(t1), None)
    assert e["c.test"]["late"] is False
    b = e["b.test"]  # the drop of b waits for the admin too
    assert (b["status"], b["removal_received_at"], b["lifted_at"], b["late"]) == ("lifting", iso(t1), None, False)

    n.clock.advance(2 * H)  # 49 h: the deadline has passed with c still not enforced
    e = n.entries()
    assert (e["c.test"]["status"], e["c.test"]["late"], e["c.test"]["enforce_late"]) == ("quarantined", True, True)
    assert (e["b.test"]["lift_late"], e["b.test"]["late"]) == (True, True)
    assert n.report()["summary"]["late"] == 2

    n.clock.advance(1 * H)  # the admin approves at 50 h
    await n.m.approve("pl-mf", r.version, actor="admin")  # type: ignore[arg-type]
    rep = n.report()
    e = {x["name"]: x for x in rep["entries"]}
    t_approve = t1 + 50 * H
    assert (e["c.test"]["status"], e["c.test"]["enforced_at"], e["c.test"]["enforce_hours"]) == ("enforced", iso(t_approve), 50.0)
    assert e["c.test"]["late"] is True
    b = e["b.test"]
    assert (b["status"], b["removal_received_at"], b["lifted_at"], b["lift_hours"], b["lift_late"]) == (
        "lifted", iso(t1), iso(t_approve), 50.0, True,
    )
    assert e["a.test"]["late"] is False
    assert rep["summary"] == {"entries": 3, "late": 2, "enforced": 2, "lifted": 1}
    assert rep["deadline_hours"] == 48

    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert tuple(rows[0]) == COLUMNS
    by_name = {row["name"]: row for row in rows}
    assert (by_name["c.test"]["late"], by_name["c.test"]["enforce_hours"]) == ("yes", "50.0")
    assert by_name["a.test"]["late"] == "no"


async def test_dated_listings_and_removals_are_enforced_when_the_timer_recompiles(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf", deadline_hours=48)])
    await n.m.start()
    t0 = n.clock.now
    add = [
        {"name": "later.test", "listed_at": iso(t0 + 10 * H), "legal_ref": "=MF/2025/7"},
        {"name": "old.test", "listed_at": iso(t0 - 49 * H)},  # the agency listed it 49 h before we got it
        {"name": "recent.test", "listed_at": iso(t0 - 47 * H)},
        {"name": "ending.test", "removed_at": iso(t0 + 5 * H)},
    ]
    assert (await n.m.patch("pl-mf", add, [], actor="t")).status == "applied"
    e = n.entries()
    assert (e["later.test"]["status"], e["later.test"]["enforced_at"]) == ("scheduled", None)
    assert (e["old.test"]["enforce_hours"], e["old.test"]["late"]) == (49.0, True)
    assert (e["recent.test"]["enforce_hours"], e["recent.test"]["late"]) == (47.0, False)
    assert e["ending.test"]["status"] == "enforced"

    n.clock.advance(6 * H)  # the removal date passed an hour ago; the timer recompiles now
    assert await n.m.tick()
    e = n.entries()
    assert (e["ending.test"]["status"], e["ending.test"]["removal_at"]) == ("lifted", iso(t0 + 5 * H))
    assert (e["ending.test"]["lifted_at"], e["ending.test"]["lift_hours"]) == (iso(t0 + 6 * H), 1.0)
    assert e["later.test"]["status"] == "scheduled"

    n.clock.advance(5 * H)  # an hour after the listing date
    assert await n.m.tick()
    e = n.entries()
    assert (e["later.test"]["status"], e["later.test"]["enforced_at"], e["later.test"]["enforce_hours"]) == (
        "enforced", iso(t0 + 11 * H), 1.0,
    )
    assert e["later.test"]["legal_ref"] == "=MF/2025/7"
    row = next(r for r in csv.DictReader(io.StringIO(to_csv(n.report()))) if r["name"] == "later.test")
    assert row["legal_ref"] == "'=MF/2025/7"  # never a spreadsheet formula


async def test_a_changed_entry_is_one_item_and_a_superseded_one_was_never_enforced(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf", deadline_hours=48)])
    await n.m.start()
    t0 = n.clock.now
    await n.m.patch("pl-mf", [{"name": "x.test", "legal_ref": "A/1"}], [], actor="t")
    n.clock.advance(H)
    # The same name again with a removal date: a change of its row, not a removal and a new listing.
    await n.m.patch("pl-mf", [{"name": "x.test", "legal_ref": "A/1", "removed_at": iso(t0 + 30 * H)}], [], actor="t")
    items = [x for x in n.report()["entries"] if x["name"] == "x.test"]
    assert len(items) == 1
    assert (items[0]["enforced_at"], items[0]["removal_at"], items[0]["status"]) == (iso(t0), iso(t0 + 30 * H), "enforced")

    # Two versions received while no compile ran (as at start-up or under a burst): the first
    # one's entry that the second dropped never went live.
    store = n.m.store
    assert store is not None
    rt = n.m.runtime("pl-mf")
    from feeds.lists import SourceList, diff, to_wire
    from feeds.store import VersionInfo

    for names, version in ((["x.test", "brief.test"], 90), (["x.test"], 91)):
        new = SourceList.build([to_wire(s.encode()) for s in names], ())
        info = VersionInfo("pl-mf", rt.key, "push", "plain", f"sha{version}", n.clock(), "t", len(new), 0)
        store.apply(info, diff(rt.current, new), [], version=version)
        rt.enforce(new, version, f"sha{version}", n.clock())
    await n.m.compile(force=True)
    e = n.entries()
    assert (e["brief.test"]["status"], e["brief.test"]["late"]) == ("never enforced", False)


async def test_a_restart_keeps_the_first_enforcement_time(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf", deadline_hours=48)])
    await n.m.start()
    t0 = n.clock.now
    await n.m.push("pl-mf", b"a.test\n", actor="t")
    await n.m.flush()
    n.m.close()

    n.clock.advance(3 * H)  # down for three hours, then started from the saved snapshot
    again = FeedManager(n.settings, n.installed.append, clock=n.clock)
    await again.start()
    running = asyncio.create_task(again.run())  # reads the store, re-installs with its versions
    try:
        await asyncio.wait_for(again.loaded.wait(), 10)
        await again.push("pl-mf", b"a.test\nb.test\n", actor="t")
        assert again.store is not None
        e = {x["name"]: x for x in report(again.store, n.settings.agencies[0], n.clock())["entries"]}
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        again.close()
    assert (e["a.test"]["enforced_at"], e["b.test"]["enforced_at"]) == (iso(t0), iso(t0 + 3 * H))
