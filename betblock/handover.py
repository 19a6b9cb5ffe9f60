"""How a policy snapshot travels from the control plane to the worker processes.

Owns ``write`` (control plane: the snapshot into ``directory``, returning where) and ``read``
(worker: that file back into a ``PolicySnapshot``) and ``prune``. Today a file per version:
``marshal`` in slices as ``feeds.persist`` does (each slice holds the GIL for a few milliseconds,
so the worker's event loop goes on answering while it reads in a thread), without the fsync:
the file only lives as long as the run, and a crash makes the control plane write it anew. Each
worker holds its own copy of the table in memory. The memory-mapped table of ``feeds.table``
(one copy for all workers) replaces these functions' bodies when it lands; callers keep them.

Must not import the resolver.
"""

from __future__ import annotations

import itertools
import marshal
import os
from pathlib import Path

from feeds.snapshot import PolicySnapshot, Rule

FORMAT = 1
SLICE = 32768  # keys per marshal call (see feeds.persist)


def write(snapshot: PolicySnapshot, directory: Path) -> Path:
    """Write ``snapshot`` for the workers (temporary file, then rename); its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"policy-{snapshot.version}.marshal"
    tmp = path.with_name(path.name + ".tmp")
    rules = [None if r is None else (r.id, r.agencies, r.agency_name, r.action, r.ipv4, r.ipv6, r.ttl) for r in snapshot.rules]
    table = snapshot.table
    slices = (len(table) + SLICE - 1) // SLICE
    with open(tmp, "wb") as f:
        marshal.dump((FORMAT, snapshot.version, rules, snapshot.stats, slices), f)
        items = iter(table.items())
        for _ in range(slices):
            marshal.dump(dict(itertools.islice(items, SLICE)), f)
    os.replace(tmp, path)
    return path


def read(path: Path | str) -> PolicySnapshot:
    """The snapshot ``write`` put at ``path``."""
    with open(path, "rb") as f:
        fmt, version, rules, stats, slices = marshal.load(f)
        if fmt != FORMAT:
            raise ValueError(f"{path}: hand-over format {fmt}, expected {FORMAT}")
        table: dict[bytes, int] = {}
        for _ in range(slices):
            table.update(marshal.load(f))
    return PolicySnapshot(
        version=version,
        table=table,
        rules=tuple(
            None if r is None else Rule(id=r[0], agencies=r[1], agency_name=r[2], action=r[3], ipv4=r[4], ipv6=r[5], ttl=r[6])
            for r in rules
        ),
        stats=stats,
    )


def prune(directory: Path, keep: Path) -> None:
    """Remove every hand-over file in ``directory`` but ``keep`` (all workers run it now)."""
    for old in directory.glob("policy-*.marshal*"):
        if old != keep:
            try:
                old.unlink()
            except OSError:
                pass
