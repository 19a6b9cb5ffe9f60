"""How a policy snapshot travels from the control plane to the worker processes.

Owns ``write`` (control plane: the snapshot into ``directory``, returning where), ``read``
(worker: that file back into a ``PolicySnapshot``) and ``prune``. The file is the memory-mapped
table of ``feeds.table``: every worker maps the same file read-only and shared, so N workers
hold one copy of the policy in the page cache, and opening a version costs a header check and
a CRC pass instead of rebuilding a dict. No fsync: the file only lives as long as the run, and
a crash makes the control plane write it anew.

Must not import the resolver.
"""

from __future__ import annotations

import os
from pathlib import Path

from feeds.snapshot import PolicySnapshot
from feeds.table import PolicyTable, open_table, write_table


def write(snapshot: PolicySnapshot, directory: Path) -> Path:
    """Write ``snapshot`` for the workers (``write_table`` writes a temporary file and renames
    it, so a worker never maps a half-written table); its path. A snapshot that is itself a
    mapped table file (the saved snapshot a start maps, ``feeds.persist``) is hard-linked
    instead: no second write, and the page cache holds one copy for every process."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"policy-{snapshot.version}.table"
    if not _link(snapshot, path):
        write_table(snapshot, path)
    return path


def _link(snapshot: PolicySnapshot, path: Path) -> bool:
    """Link the file ``snapshot``'s table maps to ``path`` when that file is still at its path
    (a save may have renamed another over it since); False when it cannot be."""
    table = snapshot.table
    source, inode = getattr(table, "path", None), getattr(table, "inode", None)
    if not isinstance(table, PolicyTable) or source is None:
        return False
    tmp = path.with_name(f"{path.name}.link{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        if os.stat(tmp).st_ino != inode:  # another file is at that path now: write ours
            tmp.unlink()
            return False
        os.replace(tmp, path)
    except OSError:  # another file system, no hard links: write it
        tmp.unlink(missing_ok=True)
        return False
    return True


def read(path: Path | str) -> PolicySnapshot:
    """The snapshot ``write`` put at ``path``, its table mapped from the file."""
    return open_table(Path(path))


def prune(directory: Path, keep: Path) -> None:
    """Remove every hand-over file in ``directory`` but ``keep`` (all workers run it now). A
    worker still mapping an old file keeps its pages until it drops the mapping: unlinking a
    mapped file is safe, shrinking it would not be."""
    for old in directory.glob("policy-*"):
        if old != keep:
            try:
                old.unlink()
            except OSError:
                pass
