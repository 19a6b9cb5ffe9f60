"""How a policy snapshot travels from the control plane to the worker processes.

Owns ``write`` (control plane: the snapshot into ``directory``, returning where) and ``read``
(worker: that file back into a ``PolicySnapshot``) and ``prune``. Today a file per version: the
table in ``marshal`` slices as ``feeds.persist`` does (each slice holds the GIL for a few milliseconds,
so the worker's event loop goes on answering while it reads in a thread), without the fsync:
the file only lives as long as the run, and a crash makes the control plane write it anew. Each
worker holds its own copy of the table in memory. The memory-mapped table of ``feeds.table``
(one copy for all workers) replaces these functions' bodies when it lands; callers keep them.

Must not import the resolver.
"""

from __future__ import annotations

import dataclasses
import itertools
import marshal
import os
import pickle
from pathlib import Path

from feeds.snapshot import PolicySnapshot

FORMAT = 2  # 2: the fields beside the table pickled whole
SLICE = 32768  # keys per marshal call (see feeds.persist)


def write(snapshot: PolicySnapshot, directory: Path) -> Path:
    """Write ``snapshot`` for the workers (temporary file, then rename); its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"policy-{snapshot.version}.marshal"
    tmp = path.with_name(path.name + ".tmp")
    # Every field but the table as it is (pickle: the rules and whatever a snapshot carries,
    # so a field added to PolicySnapshot or Rule reaches the workers without a change here).
    head = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot) if f.name != "table"}
    table = snapshot.table
    slices = (len(table) + SLICE - 1) // SLICE
    with open(tmp, "wb") as f:
        pickle.dump((FORMAT, head, slices), f, protocol=pickle.HIGHEST_PROTOCOL)
        items = iter(table.items())
        for _ in range(slices):
            marshal.dump(dict(itertools.islice(items, SLICE)), f)
    os.replace(tmp, path)
    return path


def read(path: Path | str) -> PolicySnapshot:
    """The snapshot ``write`` put at ``path`` (written by this program's control plane into its
    own private data directory, so unpickling it is unpickling our own data)."""
    with open(path, "rb") as f:
        fmt, head, slices = pickle.load(f)
        if fmt != FORMAT:
            raise ValueError(f"{path}: hand-over format {fmt}, expected {FORMAT}")
        table: dict[bytes, int] = {}
        for _ in range(slices):
            table.update(marshal.load(f))
    return PolicySnapshot(table=table, **head)


def prune(directory: Path, keep: Path) -> None:
    """Remove every hand-over file in ``directory`` but ``keep`` (all workers run it now)."""
    for old in directory.glob("policy-*.marshal*"):
        if old != keep:
            try:
                old.unlink()
            except OSError:
                pass
