"""The compliance report: for each entry of an agency, when it was listed, received and enforced,
and when it was removed, received and lifted, against the agency's legal deadline.

Owns the definitions (also in the README):

- **listed_at** / **removal_at**: the dates the agency's feed gives for the entry (listing date,
  removal date), when it carries them.
- **received_at**: when betblock received the version of the feed that added the entry;
  **removal_received_at**: when it received the version that dropped it (or, for an entry that
  carries a removal date, the version that carried that date).
- **enforced_at** / **lifted_at**: when the first snapshot that blocks it (or no longer blocks
  it) went live in the resolver, from the install records of the feed store. A listing date in
  the future is enforced by the first snapshot compiled at or after it; a removal date likewise.
- An install that held the entry while its agency was in **observe mode** blocked nothing: the
  entry counts as enforced from the first install that enforced the agency; until then its
  status is ``observed`` (and late once its deadline passes, as any entry not enforced).
- The legal clock of a listing starts at ``listed_at`` when the feed carries one, else at
  ``received_at``; of a removal at the earlier of ``removal_at`` (once passed) and the receipt of
  the version that dropped the entry. An entry is **late** when enforcement (or lifting) came
  more than ``deadline_hours`` after its clock started, or has not come and that time has passed.

A name whose entry row changed (new dates, legal reference) is one item: the listing facts
of its first row and the removal facts of its last. Must not import aiohttp or resolver code.
"""

from __future__ import annotations

import bisect
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from config.settings import AgencySettings
from feeds.entry import Entry
from feeds.lists import diff, from_wire, to_wire
from feeds.store import FeedStore, iso

# Report columns, in CSV order.
COLUMNS = (
    "agency", "name", "wildcard", "source", "legal_ref", "feed_id", "status", "late",
    "listed_at", "received_at", "enforced_at", "enforce_hours", "enforce_late",
    "removal_at", "removal_received_at", "lifted_at", "lift_hours", "lift_late",
)
_TIMES = ("listed_at", "received_at", "enforced_at", "removal_at", "removal_received_at", "lifted_at")


@dataclass(frozen=True, slots=True)
class Timeline:
    """The installs of the resolver, in order, and per source the first install of each version."""

    seqs: list[int]
    dates_at: list[float]  # when each install's listing and removal dates were evaluated
    installed_at: list[float]
    versions: dict[str, tuple[list[int], list[int]]]  # source -> (versions, index of first install)
    observing: list[bool]  # per install: it only observed the agency (observe mode)

    @classmethod
    def load(cls, store: FeedStore, agency: str) -> Timeline:
        installs = store.installs()
        index = {seq: i for i, (seq, _d, _t) in enumerate(installs)}
        versions: dict[str, tuple[list[int], list[int]]] = {}
        for source, version, seq in store.installed_versions(agency):
            if seq not in index:
                continue
            vs, idx = versions.setdefault(source, ([], []))
            vs.append(version)
            idx.append(index[seq])
        observed = store.observing_installs(agency)
        return cls([s for s, _d, _t in installs], [d for _s, d, _t in installs], [t for _s, _d, t in installs], versions,
                   [s in observed for s, _d, _t in installs])

    def first_enforcing(self, start: int) -> int | None:
        """The first install from ``start`` that enforced the agency (not in observe mode)."""
        for i in range(start, len(self.observing)):
            if not self.observing[i]:
                return i
        return None

    def first_with(self, source: str, version: int) -> tuple[int, int] | None:
        """(install index, version) of the first install holding ``version`` or a later one."""
        vs, idx = self.versions.get(source, ([], []))
        k = bisect.bisect_left(vs, version)
        if k == len(vs):
            return None
        # Versions of a source only grow, so the first install of a later version is later too.
        return idx[k], vs[k]

    def version_at(self, source: str, i: int) -> int | None:
        """The version of ``source`` the install ``i`` held."""
        vs, idx = self.versions.get(source, ([], []))
        k = bisect.bisect_right(idx, i)
        return vs[k - 1] if k else None

    def first_dated(self, when: float, start: int = 0) -> int | None:
        """The first install from ``start`` whose dates were evaluated at or after ``when``."""
        k = bisect.bisect_left(self.dates_at, when, lo=start)
        return k if k < len(self.dates_at) else None


def report(store: FeedStore, agency: AgencySettings, now: float) -> dict[str, Any]:
    """The whole report of one agency: summary and entries (blocking: call it in a thread)."""
    timeline = Timeline.load(store, agency.id)
    rows = store.compliance_entries(agency.id)
    deadline = agency.deadline_hours * 3600 if agency.deadline_hours else None
    added, removed = _quarantined(store, agency.id)
    items = []
    for chain in _chains(rows):
        last = chain[-1]
        asked = removed.get((last["source"], last["name"], last["wildcard"])) if last["dropped_version"] is None else None
        items.append(_item(agency.id, chain, timeline, deadline, now, asked))
    for source, e, received in added:
        start = e.listed_at.timestamp() if e.listed_at is not None else received
        late = _late(deadline, start, None, now)
        items.append(
            {
                "agency": agency.id, "name": e.name, "wildcard": e.wildcard, "source": source,
                "legal_ref": e.legal_ref, "feed_id": e.source_id, "listed_at": _ts(e.listed_at),
                "received_at": received, "enforced_at": None, "removal_at": _ts(e.removed_at),
                "removal_received_at": None, "lifted_at": None, "enforce_hours": None, "enforce_late": late,
                "lift_hours": None, "lift_late": False, "status": "quarantined", "late": late,
            }
        )
    memo: dict[float, str | None] = {}
    summary: dict[str, int] = {"entries": len(items), "late": sum(1 for it in items if it["late"])}
    for it in items:
        summary[it["status"]] = summary.get(it["status"], 0) + 1
    decided = store.modes().get(agency.id)
    return {
        "agency": agency.id,
        "agency_name": agency.display_name,
        "jurisdiction": agency.jurisdiction,
        # the mode in force: an admin's switch (feeds.modes) wins over the configuration
        "mode": decided["mode"] if decided else agency.mode,
        "mode_set": {"by": decided["set_by"], "at": iso(decided["set_at"]), "reason": decided["reason"]} if decided else {"by": "config"},
        "deadline_hours": agency.deadline_hours or None,
        "generated_at": iso(now),
        "tracking_since": iso(timeline.installed_at[0]) if timeline.installed_at else None,
        "summary": summary,
        "entries": [_iso_times(it, memo) for it in items],
    }


def _quarantined(
    store: FeedStore, agency: str
) -> tuple[list[tuple[str, Entry, float]], dict[tuple[str, bytes, int], float]]:
    """What the agency's versions waiting for an admin would add (source, entry, received) and
    drop ((source, wire name, wildcard) -> received): received, not yet enforced or lifted."""
    added: list[tuple[str, Entry, float]] = []
    removed: dict[tuple[str, bytes, int], float] = {}
    for row in store.quarantined():
        if row["agency"] != agency:
            continue
        pending = store.pending_list(agency, row["version"])
        if pending is None:
            continue
        received = datetime.fromisoformat(row["received"]).timestamp()
        d = diff(store.live(agency, row["source"]), pending)
        gone = {(to_wire(e.name.encode("ascii")), int(e.wildcard)) for e in d.removed() if not e.allow}
        for e in d.added():
            key = (to_wire(e.name.encode("ascii")), int(e.wildcard))
            if e.allow or key in gone:  # a changed row: still listed, already enforced
                gone.discard(key)
                continue
            added.append((row["source"], e, received))
        for w, wildcard in gone:
            removed[(row["source"], w, wildcard)] = received
    return added, removed


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _chains(rows: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    """Group rows into items: a row closed by version v and the same key's row added by v are
    one listing that changed, not a removal and a new listing."""
    open_by: dict[tuple[str, bytes, int, int], list[dict[str, Any]]] = {}
    chains: list[list[dict[str, Any]]] = []
    for row in rows:  # oldest first: a changed row's successor comes after it
        key = (row["source"], row["name"], row["wildcard"], row["added_version"])
        chain = open_by.pop(key, None)
        if chain is None:
            chain = []
            chains.append(chain)
        chain.append(row)
        if row["dropped_version"] is not None:
            open_by[(row["source"], row["name"], row["wildcard"], row["dropped_version"])] = chain
    return chains


def _item(
    agency: str, chain: list[dict[str, Any]], tl: Timeline, deadline: float | None, now: float, asked: float | None
) -> dict[str, Any]:
    """One listing; ``asked``: when a version waiting for an admin that drops it was received."""
    first, last = chain[0], chain[-1]
    source = first["source"]
    received = first["added_received"] if first["added_received"] is not None else first["added_at"]
    listed = first["listed_at"]
    removal = last["removed_at"]
    dropped = last["dropped_version"]
    item: dict[str, Any] = {
        "agency": agency,
        "name": from_wire(first["name"]),
        "wildcard": bool(first["wildcard"]),
        "source": source,
        "legal_ref": last["legal_ref"] or first["legal_ref"],
        "feed_id": last["source_id"] or first["source_id"],
        "listed_at": listed,
        "received_at": received,
        "enforced_at": None,
        "removal_at": removal,
        "removal_received_at": None,
        "lifted_at": None,
    }
    # -- enforcement: the first install holding this version (or a later one still listing
    # the entry) whose dates were evaluated at or after the listing date.
    enforced_i: int | None = None
    status = "pending"
    hit = tl.first_with(source, first["added_version"])
    if hit is not None and hit[1] > first["added_version"] and tl.installed_at and received < tl.installed_at[0]:
        status = "unknown"  # received before installs were recorded
        hit = None
    if hit is not None:
        i, version = hit
        if listed is not None and tl.dates_at[i] < listed:
            j = tl.first_dated(listed, i)
            i, version = (j, tl.version_at(source, j) or version) if j is not None else (-1, version)
        observed = False
        if i >= 0 and tl.observing[i]:
            # Observe mode: that install blocked nothing; the first that enforced the agency counts.
            j = tl.first_enforcing(i)
            if j is None:
                observed, i = True, -1
            else:
                i, version = j, tl.version_at(source, j) or version
        if i >= 0 and (dropped is None or version < dropped) and (removal is None or tl.dates_at[i] < removal):
            enforced_i = i
        elif observed and dropped is None and not (removal is not None and removal <= now):
            status = "observed"  # in force in observe mode only: would block, blocks nothing
        elif i >= 0 or dropped is not None or (removal is not None and removal <= now):
            status = "never enforced"  # superseded or removed before a snapshot enforced it
    if enforced_i is not None:
        item["enforced_at"] = tl.installed_at[enforced_i]
        status = "enforced"
    # -- removal: the agency's removal date, or the version that dropped the entry.
    starts: list[float] = []
    if removal is not None and removal <= now:
        starts.append(removal)
    if dropped is not None:
        item["removal_received_at"] = last["dropped_received"] if last["dropped_received"] is not None else last["dropped_at"]
        starts.append(item["removal_received_at"])
    elif asked is not None:
        item["removal_received_at"] = asked
        starts.append(asked)
    elif removal is not None:
        item["removal_received_at"] = last["added_received"] if last["added_received"] is not None else last["added_at"]
    if enforced_i is not None and starts:
        lifts: list[int] = []
        if dropped is not None:
            got = tl.first_with(source, dropped)
            if got is not None:
                lifts.append(got[0])
        if removal is not None:
            j = tl.first_dated(removal, enforced_i)
            if j is not None:
                lifts.append(j)
        if lifts:
            item["lifted_at"] = tl.installed_at[min(lifts)]
            status = "lifted"
        else:
            status = "lifting"  # asked for; no snapshot has lifted it yet (e.g. the drop waits for an admin)
    # -- the deadline.
    start = listed if listed is not None else received
    item["enforce_hours"] = _hours(item["enforced_at"], start)
    item["enforce_late"] = _late(deadline, start, item["enforced_at"], now) if status not in ("unknown", "never enforced") else False
    if status == "pending" and start > now:
        status = "scheduled"
    remove_start = min(starts) if starts else None
    item["lift_hours"] = _hours(item["lifted_at"], remove_start)
    item["lift_late"] = _late(deadline, remove_start, item["lifted_at"], now) if enforced_i is not None and remove_start is not None else False
    item["status"] = status
    item["late"] = item["enforce_late"] or item["lift_late"]
    return item


def _hours(done: float | None, start: float | None) -> float | None:
    if done is None or start is None:
        return None
    return round((done - start) / 3600, 3)


def _late(deadline: float | None, start: float | None, done: float | None, now: float) -> bool:
    if deadline is None or start is None:
        return False
    return (done if done is not None else now) - start > deadline


def _iso_times(item: dict[str, Any], memo: dict[float, str | None]) -> dict[str, Any]:
    # Most entries share a handful of times (one receipt and one install per version): convert
    # each once.
    for k in _TIMES:
        v = item[k]
        if v is not None:
            text = memo.get(v)
            if text is None:
                text = memo[v] = iso(v)
            item[k] = text
    return item


def to_csv(rep: dict[str, Any]) -> str:
    """The report's entries as CSV (one row per entry, COLUMNS), for a spreadsheet."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(COLUMNS)
    for it in rep["entries"]:
        w.writerow([_cell(it.get(c)) for c in COLUMNS])
    return out.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value)
    # Feed text (legal references) must not become a spreadsheet formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
