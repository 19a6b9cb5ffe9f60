"""The control plane without a resolver: updates, quarantine, dates and expiry on an injected
clock, the persisted snapshot, file sources, SIGHUP reload, provenance. Real SQLite in tmp_path."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from feeds.compile import to_wire
from feeds.manager import Conflict, FeedManager, Refused
from feeds.snapshot import PolicySnapshot
from feeds.store import FeedStore
from tests.feeds_plane.helpers import Clock, push_agency, settings


def blocked(snap: PolicySnapshot | None, name: str) -> tuple[str, ...] | None:
    assert snap is not None
    m = snap.match(to_wire(name.encode()))
    return None if m is None else m.rule.agencies


class Node:
    """A FeedManager whose installs are recorded, as the resolver would receive them."""

    def __init__(self, tmp_path: Path, agencies: list[dict[str, Any]], clock: Clock | None = None, **kw: Any) -> None:
        self.installed: list[PolicySnapshot] = []
        self.clock = clock or Clock()
        self.settings = settings(tmp_path, agencies, **kw)
        self.m = FeedManager(self.settings, self.installed.append, clock=self.clock)

    @property
    def snap(self) -> PolicySnapshot:
        return self.installed[-1]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


async def test_push_applies_and_repeating_it_changes_nothing(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")])
    await n.m.start()
    assert n.installed and len(n.snap) == 0
    r1 = await n.m.push("pl-mf", b"kasyno.test\nbet.test\nbad name\n", actor="t")
    assert (r1.status, r1.version, r1.entries, r1.added) == ("applied", 1, 2, 2)
    assert [(r.line, r.reason) for r in r1.rejects] == [(3, "invalid character ' '")]
    assert blocked(n.snap, "www.kasyno.test") == ("pl-mf",)
    installs = len(n.installed)
    r2 = await n.m.push("pl-mf", b"kasyno.test\nbet.test\nbad name\n", actor="t")
    assert (r2.status, r2.version) == ("unchanged", 1)
    assert len(n.installed) == installs  # no recompile, no new version
    assert [v["version"] for v in n.m.store.versions("pl-mf")] == [1]  # type: ignore[union-attr]


async def test_nothing_valid_is_refused_and_keeps_the_list(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")])
    await n.m.start()
    await n.m.push("pl-mf", b"kasyno.test\n", actor="t")
    with pytest.raises(Refused) as exc:
        await n.m.push("pl-mf", b"co.uk\n192.0.2.1\n", actor="t")
    assert [(r.line, r.reason) for r in exc.value.rejects] == [(1, "public suffix"), (2, "IP literal")]
    assert blocked(n.snap, "kasyno.test") == ("pl-mf",)
    assert n.m.store.audit_log("pl-mf")[0]["action"] == "update refused"  # type: ignore[union-attr]


async def test_protected_names_are_rejected_equal_below_and_above(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")], policy={"protected": ["drive.usercontent.google.com", "gov.test"]})
    await n.m.start()
    r = await n.m.push(
        "pl-mf", b"kasyno.test\ngoogle.com\ndrive.usercontent.google.com\nx.gov.test\ngov.test\nmaps.google.com\n", actor="t"
    )
    reasons = {x.line: x.reason for x in r.rejects}
    assert reasons == {
        2: "protected name (drive.usercontent.google.com)",  # above: would block the protected name
        3: "protected name (drive.usercontent.google.com)",
        4: "protected name (gov.test)",  # below
        5: "protected name (gov.test)",
    }
    assert blocked(n.snap, "maps.google.com") == ("pl-mf",)
    assert blocked(n.snap, "drive.usercontent.google.com") is None


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (b"", "empties the list"),
        (b"\n".join(b"n%d.test" % i for i in range(60, 100)) + b"\n", "over the churn limit"),  # whitelist uploaded
    ],
)
async def test_big_or_emptying_updates_are_quarantined_until_approved(tmp_path: Path, update: bytes, reason: str) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")])
    await n.m.start()
    first = b"\n".join(b"n%d.test" % i for i in range(60)) + b"\n"
    assert (await n.m.push("pl-mf", first, actor="t")).status == "applied"
    held = await n.m.push("pl-mf", update, actor="agency:pl-mf")
    assert held.status == "quarantined" and reason in (held.reason or "")
    assert blocked(n.snap, "n1.test") == ("pl-mf",)  # not applied
    again = await n.m.push("pl-mf", update, actor="agency:pl-mf")
    assert (again.status, again.version) == ("quarantined", held.version)  # same version, not a new one
    assert n.m.status("pl-mf")["agencies"][0]["quarantined"] == [{"version": held.version, "reason": held.reason}]

    approved = await n.m.approve("pl-mf", held.version, actor="admin")  # type: ignore[arg-type]
    assert approved.status == "applied"
    assert blocked(n.snap, "n1.test") is None
    with pytest.raises(Conflict):
        await n.m.approve("pl-mf", held.version, actor="admin")  # type: ignore[arg-type]
    actions = [a["action"] for a in n.m.store.audit_log("pl-mf")]  # type: ignore[union-attr]
    assert actions[:2] == ["quarantine approved", "update quarantined"]
    statuses = {v["version"]: v["status"] for v in n.m.store.versions("pl-mf")}  # type: ignore[union-attr]
    assert statuses == {1: "superseded", 2: "active"}


async def test_a_rejected_quarantine_is_not_proposed_again(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")])
    await n.m.start()
    await n.m.push("pl-mf", b"a.test\nb.test\n", actor="t")
    held = await n.m.push("pl-mf", b"", actor="t")
    out = await n.m.reject("pl-mf", held.version, actor="admin")  # type: ignore[arg-type]
    assert out["status"] == "rejected"
    assert blocked(n.snap, "a.test") == ("pl-mf",)
    again = await n.m.push("pl-mf", b"", actor="t")
    assert again.status == "unchanged" and "rejected" in (again.reason or "")
    assert n.m.status("pl-mf")["agencies"][0]["quarantined"] == []


async def test_small_lists_change_freely_under_the_churn_floor(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf", churn_floor=3)])
    await n.m.start()
    await n.m.push("pl-mf", b"a.test\nb.test\n", actor="t")
    assert (await n.m.push("pl-mf", b"a.test\nc.test\nd.test\n", actor="t")).status == "applied"  # 3 changes
    assert (await n.m.push("pl-mf", b"e.test\nf.test\ng.test\nh.test\n", actor="t")).status == "quarantined"  # 7


async def test_listing_and_removal_dates_follow_the_injected_clock(tmp_path: Path) -> None:
    clock = Clock()
    n = Node(tmp_path, [push_agency("pl-mf")], clock=clock)
    await n.m.start()
    t0 = clock.now
    add = [
        {"name": "now.test"},
        {"name": "later.test", "listed_at": iso(t0 + 3600), "legal_ref": "MF/2025/7"},
        {"name": "ending.test", "removed_at": iso(t0 + 600)},
        {"name": "gone.test", "removed_at": iso(t0 - 1)},
    ]
    r = await n.m.patch("pl-mf", add, [], actor="t")
    assert r.status == "applied" and r.entries == 4
    assert [blocked(n.snap, x) for x in ("now.test", "later.test", "ending.test", "gone.test")] == [
        ("pl-mf",), None, ("pl-mf",), None,
    ]
    assert n.m.builder.next_change == t0 + 600
    assert await n.m.tick() is False  # nothing has passed yet
    clock.advance(600)
    assert await n.m.tick() is True
    assert blocked(n.snap, "ending.test") is None and n.m.builder.next_change == t0 + 3600
    clock.advance(3000)
    assert await n.m.tick() is True
    assert blocked(n.snap, "later.test") == ("pl-mf",) and n.m.builder.next_change is None
    assert n.m.provenance("pl-mf", "later.test")["legal_ref"] == "MF/2025/7"  # type: ignore[index]
    assert n.m.provenance("pl-mf", "now.test") is None


async def test_the_timer_recompiles_when_a_date_passes(tmp_path: Path) -> None:
    clock = Clock()
    n = Node(tmp_path, [push_agency("pl-mf")], clock=clock)
    await n.m.start()
    await n.m.patch("pl-mf", ["stay.test", {"name": "ending.test", "removed_at": iso(clock.now + 0.2)}], [], actor="t")
    assert blocked(n.snap, "ending.test") == ("pl-mf",)
    timer = asyncio.create_task(n.m.builder.timer())
    try:
        await asyncio.sleep(0)  # let the timer compute its delay (0.2 s) and wait
        assert blocked(n.snap, "ending.test") == ("pl-mf",)
        clock.advance(1)  # when it wakes, the date has passed
        await asyncio.wait_for(_until(lambda: blocked(n.snap, "ending.test") is None), 5)
    finally:
        timer.cancel()
        await asyncio.gather(timer, return_exceptions=True)


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.01)


async def test_restart_installs_the_saved_snapshot_before_reading_anything(tmp_path: Path) -> None:
    (tmp_path / "pl.txt").write_text("kasyno.test\n")
    agencies = [push_agency("pl-mf", lists=["pl.txt"])]
    first = Node(tmp_path, agencies)
    await first.m.start()
    await first.m.push("pl-mf", b"pushed.test\n", actor="t")
    await first.m.flush()
    first.m.close()

    (tmp_path / "pl.txt").unlink()  # sources unreachable after the restart
    second = Node(tmp_path, agencies)
    snap = await second.m.start()
    assert blocked(snap, "kasyno.test") == ("pl-mf",) and blocked(snap, "pushed.test") == ("pl-mf",)
    assert not second.m.loaded.is_set() and second.m.builder.compiles == 0  # the store was not even read
    # A changed configuration (another action) never trusts the saved file.
    third = Node(tmp_path, [push_agency("pl-mf", lists=["pl.txt"], action="nodata")])
    (tmp_path / "pl.txt").write_text("kasyno.test\n")
    snap3 = await third.m.start()
    assert third.m.builder.compiles == 1
    m = snap3.match(to_wire(b"pushed.test"))
    assert m is not None and m.rule.action == "nodata"  # compiled from the store


async def test_saved_snapshot_is_not_used_after_a_removal_date(tmp_path: Path) -> None:
    clock = Clock()
    agencies = [push_agency("pl-mf")]
    first = Node(tmp_path, agencies, clock=clock)
    await first.m.start()
    await first.m.patch("pl-mf", ["a.test", {"name": "b.test", "removed_at": iso(clock.now + 60)}], [], actor="t")
    await first.m.flush()
    first.m.close()
    clock.advance(120)
    second = Node(tmp_path, agencies, clock=clock)
    snap = await second.m.start()
    assert second.m.builder.compiles == 1 and blocked(snap, "b.test") is None and blocked(snap, "a.test") == ("pl-mf",)


async def test_file_source_failure_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "cz.txt"
    path.write_text("sazka.test\n")
    n = Node(tmp_path, [{"id": "cz-mf", "sources": [{"kind": "file", "path": "cz.txt", "format": "plain"}]}])
    await n.m.start()
    assert blocked(n.snap, "sazka.test") == ("cz-mf",)
    rt = next(iter(n.m.sources.values()))
    path.write_text("192.0.2.1\n")  # nothing valid
    assert await n.m.refresh(rt) is None
    assert rt.fetch.failures == 1 and "nothing valid" in (rt.fetch.last_error or "")
    assert blocked(n.snap, "sazka.test") == ("cz-mf",)
    path.write_text("sazka.test\nnew.test\n")
    r = await n.m.refresh(rt)
    assert r is not None and r.status == "applied" and rt.fetch.failures == 0 and rt.fetch.last_error is None
    assert blocked(n.snap, "new.test") == ("cz-mf",)


async def test_file_watch_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "it.txt"
    path.write_text("a.test\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("")
    n = Node(
        tmp_path,
        [{"id": "it-adm", "sources": [{"kind": "file", "path": "it.txt", "poll_interval": 0.05}]}],
        policy={"allowlist_files": ["allow.txt"]},
    )
    await n.m.start()
    rt = next(iter(n.m.sources.values()))
    watcher = asyncio.create_task(n.m.scheduler.watch(rt))
    try:
        path.write_text("a.test\nb.test\n")
        await asyncio.wait_for(_until(lambda: blocked(n.snap, "b.test") is not None), 5)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    allow.write_text("a.test\n")
    await n.m.reload()  # SIGHUP
    assert blocked(n.snap, "a.test") is None and blocked(n.snap, "b.test") == ("it-adm",)


async def test_a_reloaded_policy_section_reaches_the_compile_and_the_saved_file(tmp_path: Path) -> None:
    n = Node(tmp_path, [push_agency("pl-mf")], policy={"sinkhole_ttl": 300})
    await n.m.start()
    await n.m.push("pl-mf", b"a.test\n", actor="t")
    old = n.m.builder.fingerprint
    policy = n.settings.policy.model_copy(update={"sinkhole_ttl": 42, "allowlist": ["a.test"]})
    n.m.apply_policy(policy)  # SIGHUP with a changed [policy]
    await n.m.push("pl-mf", b"a.test\nb.test\n", actor="t")
    rule = n.snap.match(to_wire(b"b.test"))
    assert rule is not None and rule.rule.ttl == 42  # the new TTL, without waiting for the files
    assert n.m.builder.fingerprint != old  # the next save is read back by a start under the new config
    await n.m.reload()
    assert blocked(n.snap, "a.test") is None  # the new allowlist, read by reload


async def test_sources_of_one_agency_merge_and_precedence_decides(tmp_path: Path) -> None:
    (tmp_path / "pl1.txt").write_text("shared.test\nonly1.test\n")
    (tmp_path / "it.txt").write_text("shared.test\n")
    n = Node(
        tmp_path,
        [
            push_agency("pl-mf", lists=["pl1.txt"], precedence=30, action="redirect", redirect_ipv4=["145.237.235.240"]),
            {"id": "it-adm", "lists": ["it.txt"], "precedence": 20, "action": "redirect", "redirect_ipv4": ["217.175.53.72"]},
        ],
    )
    await n.m.start()
    await n.m.push("pl-mf", b"pushed.test\n", actor="t")
    m = n.snap.match(to_wire(b"www.shared.test"))
    assert m is not None and m.rule.agencies == ("pl-mf", "it-adm") and m.rule.ipv4 == ("145.237.235.240",)
    assert blocked(n.snap, "only1.test") == ("pl-mf",) and blocked(n.snap, "pushed.test") == ("pl-mf",)
    assert n.snap.stats["rules"] == 2  # shared per set of agencies, never per entry


async def test_store_keeps_history_per_entry(tmp_path: Path) -> None:
    clock = Clock()
    n = Node(tmp_path, [push_agency("pl-mf")], clock=clock)
    await n.m.start()
    await n.m.push("pl-mf", b"a.test\nb.test\n", actor="agency:pl-mf")
    clock.advance(100)
    await n.m.push("pl-mf", b"a.test\nc.test\n", actor="agency:pl-mf")
    store = FeedStore(n.m.gate.path, readonly=True)
    rows = {(r["name"], r["added_version"], r["dropped_version"]) for r in store.entries_named(["a.test", "b.test", "c.test"])}
    assert rows == {("a.test", 1, None), ("b.test", 1, 2), ("c.test", 2, None)}
    assert store.version_diff("pl-mf", 2) == {"added": ["c.test"], "removed": ["b.test"], "changed": [], "rejects": []}
    v2 = store.version("pl-mf", 2)
    assert v2 is not None and (v2["added"], v2["removed"], v2["entries"], v2["actor"]) == (1, 1, 2, "agency:pl-mf")
    store.close()


async def test_a_parser_bug_is_a_source_failure_not_a_dead_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "h.txt"
    path.write_text("0.0.0.0 a.test\n")
    n = Node(tmp_path, [{"id": "it-adm", "sources": [{"kind": "file", "path": "h.txt", "format": "hosts"}]}])
    await n.m.start()
    rt = next(iter(n.m.sources.values()))
    from feeds import formats

    def broken(_data: bytes) -> None:
        raise IndexError("parser bug")

    monkeypatch.setitem(formats.FORMATS, "hosts", broken)
    path.write_text("0.0.0.0 a.test\n0.0.0.0 b.test\n")
    assert await n.m.refresh(rt) is None
    assert rt.fetch.last_error == "IndexError: parser bug" and blocked(n.snap, "a.test") == ("it-adm",)
