"""The hand-over of a snapshot to the DNS workers (``betblock.handover``): a snapshot mapped from
the saved file is linked, not written again; any other is written as a table file."""

from __future__ import annotations

import os
from pathlib import Path

from betblock import handover
from feeds import persist
from feeds.snapshot import PolicySnapshot, Rule

RULES = (None, Rule(1, ("pl-mf",), "MF", "nxdomain"))


def _snap(version: int, names: list[bytes]) -> PolicySnapshot:
    return PolicySnapshot(version=version, table=dict.fromkeys(names, 1), rules=RULES)


def test_a_mapped_saved_snapshot_is_linked_and_a_replaced_one_is_written(tmp_path: Path) -> None:
    saved = tmp_path / persist.FILENAME
    persist.save(saved, _snap(1, [b"\x03bad\x04test\x00"]), "fp", None)
    mapped = persist.load(saved, "fp", 0.0)
    assert mapped is not None
    out = handover.write(mapped, tmp_path / "workers")
    assert os.stat(out).st_ino == os.stat(saved).st_ino  # the same file: no second write
    assert dict(handover.read(out).table) == {b"\x03bad\x04test\x00": 1}
    # A later save renames another file over the path: the mapped snapshot is written instead
    persist.save(saved, _snap(2, [b"\x05other\x04test\x00"]), "fp", None)
    (tmp_path / "workers" / out.name).unlink()
    out = handover.write(mapped, tmp_path / "workers")
    assert os.stat(out).st_ino != os.stat(saved).st_ino
    assert dict(handover.read(out).table) == {b"\x03bad\x04test\x00": 1}
    assert handover.read(out).version == 1
    # a compiled snapshot (a dict) is written
    out = handover.write(_snap(3, [b"\x03new\x04test\x00"]), tmp_path / "workers")
    assert dict(handover.read(out).table) == {b"\x03new\x04test\x00": 1}
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == ["policy-1.table", "policy-3.table"]
