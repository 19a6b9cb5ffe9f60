"""The compiled snapshot on disk, so that a restart answers at once, before any source is
reachable and before the store is read.

Owns the file format: ``marshal`` of plain values (a header with the rules as tuples, then the
table, a dict of bytes to ints, in slices), written to a temporary file and renamed into place,
so a crash never leaves half a snapshot. Slices, because one ``marshal.dump`` of a million-key
dict holds the GIL for a third of a second, and the resolver's event loop with it. ``marshal`` rather than ``pickle``: loading it runs no code, and it is the
fastest way CPython has to read a million-key dict. A file from another Python version, another
format or another configuration (a different fingerprint) is ignored, never trusted.

Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import marshal
import os
import sys
from pathlib import Path
from typing import Any

from config.settings import Settings
from feeds.snapshot import PolicySnapshot, Rule

FORMAT = 2
FILENAME = "snapshot.marshal"
SLICE = 32768  # keys per marshal call: a few milliseconds with the GIL held


def fingerprint(settings: Settings) -> str:
    """What the snapshot's rules depend on in the configuration. A file compiled under another
    configuration (an agency's action changed, an allowlist entry added) is not loaded."""
    doc = {
        "format": FORMAT,
        "python": sys.version_info[:2],
        "ttl": settings.policy.sinkhole_ttl,
        "allow": settings.policy.allowlist,
        "allow_files": [str(settings.resolve_path(p)) for p in settings.policy.allowlist_files],
        "protected": settings.policy.protected,
        "protected_files": [str(settings.resolve_path(p)) for p in settings.policy.protected_files],
        "agencies": [
            {
                "id": a.id,
                "name": a.display_name,
                "precedence": a.precedence,
                "action": a.action,
                "ipv4": [str(ip) for ip in a.redirect_ipv4],
                "ipv6": [str(ip) for ip in a.redirect_ipv6],
                "sources": sorted(s.key for s in a.all_sources()),
            }
            for a in settings.agencies
        ],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def save(path: Path, snapshot: PolicySnapshot, fp: str, next_change: float | None) -> None:
    """Write ``snapshot`` atomically (temporary file, fsync, rename)."""
    rules = [None if r is None else (r.id, r.agencies, r.agency_name, r.action, r.ipv4, r.ipv6, r.ttl) for r in snapshot.rules]
    table = snapshot.table
    doc = {
        "format": FORMAT,
        "fingerprint": fp,
        "version": snapshot.version,
        "rules": rules,
        "stats": snapshot.stats,
        "next_change": next_change,
        "slices": (len(table) + SLICE - 1) // SLICE,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        marshal.dump(doc, f)
        items = iter(table.items())
        for _ in range(doc["slices"]):
            marshal.dump(dict(itertools.islice(items, SLICE)), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: Path, fp: str, now: float) -> PolicySnapshot | None:
    """The saved snapshot when it was compiled under this configuration and no listing or
    removal date has passed since; otherwise None (the caller compiles from the store)."""
    try:
        with open(path, "rb") as f:
            doc: Any = marshal.load(f)
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("fingerprint") != fp:
                return None
            next_change = doc.get("next_change")
            if next_change is not None and next_change <= now:
                return None
            table: dict[bytes, int] = {}
            for _ in range(doc["slices"]):
                table.update(marshal.load(f))
    except (OSError, EOFError, ValueError, TypeError, KeyError):
        return None
    rules = tuple(
        None if r is None else Rule(id=r[0], agencies=r[1], agency_name=r[2], action=r[3], ipv4=r[4], ipv6=r[5], ttl=r[6])
        for r in doc["rules"]
    )
    return PolicySnapshot(version=doc["version"], table=table, rules=rules, stats=doc["stats"])
