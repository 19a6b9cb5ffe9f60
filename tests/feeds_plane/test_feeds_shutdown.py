"""Shutdown never waits on big feeds work and loses nothing: a store write in flight is
interrupted and rolled back whole, and recorded again at the next start; a snapshot save is
stopped between slices and the file before it stays. Real SQLite in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from itertools import count
from pathlib import Path

import pytest

from feeds import persist
from feeds.lists import ListDiff
from feeds.snapshot import PolicySnapshot, Rule
from feeds.store import FeedStore, VersionInfo
from tests.feeds_plane.test_feeds_manager import Node, blocked

INFO = VersionInfo(agency="pl-mf", source="file:x", kind="file", format="plain", sha256="0" * 64,
                   received_at=1.0, actor="test", entries=0, rejects=0)


class Endless:
    """Plain names without end; ``started`` is set once the store has taken the first 100. The
    write only ends when something stops it."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[bytes]:
        for i in count():
            if i == 100:
                self.started.set()
            yield b"\x04name" + str(i).encode().rjust(8, b"0") + b"\x04test\x00"


def test_close_interrupts_a_write_in_flight_and_rolls_it_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "feeds.sqlite"
    store = FeedStore(path)
    first = store.apply(INFO, ListDiff(frozenset({b"\x03old\x04test\x00"}), frozenset(), [], [], 0, 0, 1), [])
    names = Endless()
    failed: list[BaseException] = []

    def write() -> None:
        try:
            store.apply(replace(INFO, sha256="1" * 64), ListDiff(names, frozenset(), [], [], 0, 1, 1), [])  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - what the write ended with is the point
            failed.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert names.started.wait(30)
    store.close(interrupt=True)  # returns only once the writer has let go of the connection
    writer.join()
    assert failed and "interrupt" in str(failed[0]).lower(), failed
    again = FeedStore(path, create=False)
    try:
        assert again.check() is None
        assert [v["version"] for v in again.versions("pl-mf")] == [first]  # nothing of the interrupted one
        assert again.live("pl-mf", "file:x").plain == {b"\x03old\x04test\x00"}
        # the same version can be written again (what the next start does)
        v = again.apply(replace(INFO, sha256="1" * 64), ListDiff(frozenset({b"\x03new\x04test\x00"}), frozenset(), [], [], 0, 1, 2), [])
        assert v == first + 1
    finally:
        again.close()


def test_a_stopped_save_leaves_the_file_before_it_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / persist.FILENAME
    rules = (None, Rule(1, ("pl-mf",), "MF", "nxdomain"))
    small = PolicySnapshot(version=1, table={b"\x03old\x04test\x00": 1}, rules=rules)
    persist.save(path, small, "fp", None)
    before = path.read_bytes()
    big = PolicySnapshot(version=2, table={b"\x04name" + str(i).encode() + b"\x00": 1 for i in range(3 * persist.SLICE)}, rules=rules)
    asked = count()
    with pytest.raises(persist.SaveStopped):
        persist.save(path, big, "fp", None, stop=lambda: next(asked) == 1)  # stop before the second slice
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [persist.FILENAME]


async def test_a_start_up_write_cut_short_by_shutdown_is_recorded_at_the_next_start(tmp_path: Path) -> None:
    (tmp_path / "cz.txt").write_text("sazka.test\nfortuna.test\n")
    agencies = [{"id": "cz-mf", "sources": [{"kind": "file", "path": "cz.txt", "format": "plain"}]}]
    first = Node(tmp_path, agencies)
    await first.m.start()  # the list in force; its store write queued until after the start
    await first.m.flush()
    first.m.close()
    # What an interrupted start-up write leaves: the store without the list's version (its one
    # transaction rolled back), beside the saved snapshot that holds the list.
    store = FeedStore(tmp_path / "var" / "feeds.sqlite")
    with store.lock:
        for table in ("entries", "versions", "audit"):
            store.db.execute(f"DELETE FROM {table}")
    store.close()
    second = Node(tmp_path, agencies)
    await second.m.start()  # from the saved snapshot, at once
    assert blocked(second.snap, "sazka.test") == ("cz-mf",)
    task = asyncio.ensure_future(second.m.run())
    try:
        await asyncio.wait_for(second.m.loaded.wait(), 30)
        assert second.m.store is not None
        assert [(v["status"], v["entries"]) for v in second.m.store.versions("cz-mf")] == [("active", 2)]
        assert blocked(second.snap, "fortuna.test") == ("cz-mf",)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        second.m.close()
