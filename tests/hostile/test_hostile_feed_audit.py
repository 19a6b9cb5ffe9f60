"""A change to the feed store and the audit row that records it are one transaction (issue 8,
item 10): kill -9 between "apply" and "audit" used to leave an enforced version with no audit row.

The failure is injected for real: a SQLite trigger makes the audit insert (or the insert of an
install's versions) fail inside the very transaction of the change. Every change must then
leave the store exactly as it was, and the manager's lists and snapshot too. Once in process for
each kind of change, once through a real ``betblock serve`` process and its HTTP API.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from feeds.compile import to_wire
from feeds.manager import FeedManager, StoreUnavailable
from feeds.snapshot import PolicySnapshot
from tests.fakedns import FakeDns
from tests.feeds_plane.helpers import Clock, push_agency, settings
from tests.hostile.feednode import FeedNode

FAIL_AUDIT = "CREATE TRIGGER fail_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END"
FAIL_INSTALL = (
    "CREATE TRIGGER fail_install BEFORE INSERT ON installed_versions "
    "BEGIN SELECT RAISE(ABORT, 'injected install failure'); END"
)


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [line for line in db.iterdump() if "TRIGGER" not in line]
    finally:
        db.close()


def _sql(path: Path, statement: str) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute(statement)
        db.commit()
    finally:
        db.close()


def _blocked(snap: PolicySnapshot, name: str) -> bool:
    return snap.match(to_wire(name.encode())) is not None


async def _manager(tmp_path: Path) -> tuple[FeedManager, list[PolicySnapshot]]:
    installed: list[PolicySnapshot] = []
    # churn_floor 1: the second push below is quarantined (it replaces the whole list).
    m = FeedManager(settings(tmp_path, [push_agency("pl-mf", churn_floor=1)]), installed.append, clock=Clock())
    await m.start()
    await m.push("pl-mf", b"kasyno.test\nbet.test\n", actor="t")  # version 1, applied
    await m.push("pl-mf", b"other.test\n", actor="t")  # version 2, quarantined
    await m.flush()
    return m, installed


Change = Callable[[FeedManager], Awaitable[Any]]
CHANGES: dict[str, Change] = {
    "apply": lambda m: m.push("pl-mf", b"kasyno.test\nbet.test\nnew.test\n", actor="t"),
    "quarantine": lambda m: m.push("pl-mf", b"third.test\n", actor="t"),
    "approve": lambda m: m.approve("pl-mf", 2, actor="admin"),
    "reject": lambda m: m.reject("pl-mf", 2, actor="admin"),
    "allowlist add": lambda m: m.allow_add("kasyno.test", actor="admin"),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_failed_audit_row_leaves_the_change_unmade(tmp_path: Path, change: str) -> None:
    m, installed = await _manager(tmp_path)
    try:
        assert m.store is not None
        path = m.store.path
        before = _dump(path)
        status = m.status("pl-mf")
        snap = installed[-1]
        _sql(path, FAIL_AUDIT)
        with pytest.raises(StoreUnavailable, match="injected audit failure"):
            await CHANGES[change](m)
        _sql(path, "DROP TRIGGER fail_audit")
        assert _dump(path) == before  # neither the change nor its audit row
        assert m.status("pl-mf") == status and installed[-1] is snap
        assert _blocked(snap, "kasyno.test") and not _blocked(snap, "new.test")
        # With the store writable again, the same change is made, with its audit row.
        await CHANGES[change](m)
        assert len(m.store.audit_log()) == len([line for line in before if "INSERT INTO \"audit\"" in line]) + 1
    finally:
        await m.aclose()
        m.close()


async def test_an_install_is_recorded_whole_or_not_at_all(tmp_path: Path) -> None:
    m, _installed = await _manager(tmp_path)
    try:
        assert m.store is not None
        path = m.store.path
        installs = len(m.store.installs())
        _sql(path, FAIL_INSTALL)
        await m.push("pl-mf", b"kasyno.test\nbet.test\nnew.test\n", actor="t")  # applied; its install record fails
        _sql(path, "DROP TRIGGER fail_install")
        assert len(m.store.installs()) == installs  # no install row without its versions
    finally:
        await m.aclose()
        m.close()


async def _loaded(node: FeedNode) -> None:
    await node.feeds_when(lambda status, body: status == 200 and body["policy"]["loaded"], "a policy to be loaded")


async def test_a_push_whose_audit_row_fails_is_not_enforced_after_a_restart(tmp_path: Path) -> None:
    upstream = await FakeDns().start()
    node = FeedNode(tmp_path, upstream)
    await node.start()
    try:
        await node.ready()
        status, body = await node.push(["kasyno.test"])
        assert status == 200, body
        await node.until_sinkholed("kasyno.test")
        _sql(node.store, FAIL_AUDIT)  # a live server: the trigger is in the file it writes
        status, body = await node.push(["kasyno.test", "bet.test"])
        assert status == 503 and "injected audit failure" in body["detail"], body
    finally:
        await node.stop()
    _sql(node.store, "DROP TRIGGER fail_audit")
    db = sqlite3.connect(node.store)
    try:
        versions = db.execute("SELECT version FROM versions WHERE agency = 'pl-mf'").fetchall()
        audited = db.execute("SELECT version FROM audit WHERE action = 'update applied'").fetchall()
    finally:
        db.close()
    assert versions == audited == [(1,)]
    await node.start()
    try:
        await node.ready()
        await _loaded(node)
        assert await node.sinkholed("kasyno.test") and not await node.sinkholed("bet.test")
    finally:
        await node.stop()
