"""The compiled snapshot on disk, so that a restart answers at once, before any source is
reachable and before the store is read.

Owns the file format: a fixed header (magic and format version, the SHA-256 of the payload, the
payload's length), then the payload: ``marshal`` of plain values (a document with the rules as
tuples, then the table, a dict of bytes to ints, in slices). It is written to a temporary file
and renamed into place, so a crash never leaves half a snapshot; the digest is checked before a
byte of the payload is unmarshalled, so a damaged file (a changed byte, a bit flip, a renamed
key, a truncation) is rejected whole with a reason rather than loaded as another policy or
crashing the start. The digest guards against damage, not against someone who can write the
data directory (they could edit the feed store as well).

Slices, because one ``marshal.dump`` of a million-key dict holds the GIL for a third of a second,
and the resolver's event loop with it. ``marshal`` rather than ``pickle``: loading it runs no
code, and it is the fastest way CPython has to read a million-key dict. A file from another
Python version, another format or another configuration (a different fingerprint) is ignored,
never trusted.

Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import marshal
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.errors import BetblockError
from config.settings import AgencySettings, PolicySettings, Settings
from feeds.snapshot import PolicySnapshot, Rule

FORMAT = 4  # 4: table values may be (self, below) pairs (feeds.snapshot)
FILENAME = "snapshot.marshal"
SLICE = 32768  # keys per marshal call: a few milliseconds with the GIL held
MAGIC = b"BBSNAP"
HEADER = struct.Struct(">6sH32sQ")  # magic, format, SHA-256 of the payload, payload length
CHUNK = 1 << 20


class SnapshotDamaged(BetblockError):
    """The file is there but is not an intact snapshot (the message says what is wrong)."""


def fingerprint(settings: Settings) -> str:
    """What the snapshot's rules depend on in the configuration. A file compiled under another
    configuration (an agency's action changed, an allowlist entry added) is not loaded."""
    return fingerprint_of(settings.policy, settings.agencies, settings.resolve_path)


def fingerprint_of(policy: PolicySettings, agencies: list[AgencySettings], resolve: Callable[[Path], Path]) -> str:
    """``fingerprint`` from the sections it reads (the feeds plane holds these, not ``Settings``)."""
    doc = {
        "format": FORMAT,
        "python": sys.version_info[:2],
        "ttl": policy.sinkhole_ttl,
        "allow": policy.allowlist,
        "allow_files": [str(resolve(p)) for p in policy.allowlist_files],
        "protected": policy.protected,
        "protected_files": [str(resolve(p)) for p in policy.protected_files],
        "agencies": [
            {
                "id": a.id,
                "name": a.display_name,
                "precedence": a.precedence,
                "action": a.action,
                "mode": a.mode,
                "scope": a.scope,
                "ipv4": [str(ip) for ip in a.redirect_ipv4],
                "ipv6": [str(ip) for ip in a.redirect_ipv6],
                "sources": sorted(s.key for s in a.all_sources()),
            }
            for a in agencies
        ],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


class SaveStopped(Exception):
    """``save`` was asked to stop (shutdown): the file in place, if any, is the one before."""


def save(path: Path, snapshot: PolicySnapshot, fp: str, next_change: float | None,
         stop: Callable[[], bool] = lambda: False) -> None:
    """Write ``snapshot`` atomically (temporary file, fsync, rename), digest in the header.
    ``stop`` is asked between slices: when it says so, the temporary file is removed and
    ``SaveStopped`` raised (at 10M names a save takes seconds; SIGTERM need not wait for it)."""
    rules = [
        None if r is None else (r.id, r.agencies, r.agency_name, r.action, r.ipv4, r.ipv6, r.ttl, r.observe)
        for r in snapshot.rules
    ]
    table = snapshot.table
    doc = {
        "format": FORMAT,
        "fingerprint": fp,
        "version": snapshot.version,
        "rules": rules,
        "stats": snapshot.stats,
        "observing": sorted(snapshot.observing),
        "next_change": next_change,
        "slices": (len(table) + SLICE - 1) // SLICE,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    length = 0
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, FORMAT, bytes(32), 0))  # rewritten once the payload is known

            def put(value: Any) -> None:
                nonlocal length
                data = marshal.dumps(value)
                digest.update(data)
                f.write(data)
                length += len(data)

            put(doc)
            items = iter(table.items())
            for _ in range(doc["slices"]):
                if stop():
                    raise SaveStopped(str(path))
                put(dict(itertools.islice(items, SLICE)))
            f.seek(0)
            f.write(HEADER.pack(MAGIC, FORMAT, digest.digest(), length))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load(path: Path, fp: str, now: float) -> PolicySnapshot | None:
    """The saved snapshot when it is intact, was compiled under this configuration and no
    listing or removal date has passed since; otherwise None (the caller compiles from the
    store)."""
    try:
        return load_checked(path, fp, now)
    except SnapshotDamaged:
        return None


def load_checked(path: Path, fp: str, now: float) -> PolicySnapshot | None:
    """As ``load``, but a file that is there and damaged raises ``SnapshotDamaged`` (with what
    is wrong) instead of returning None, so that the caller can say so."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotDamaged(f"cannot read it: {exc}") from None
    with f:
        try:
            return _read(f, fp, now)
        except SnapshotDamaged:
            raise
        except OSError as exc:
            raise SnapshotDamaged(f"cannot read it: {exc}") from None
        except Exception as exc:  # digest right, contents not: written by another build
            raise SnapshotDamaged(f"unreadable contents ({type(exc).__name__}: {exc})") from None


def _read(f: Any, fp: str, now: float) -> PolicySnapshot | None:
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        raise SnapshotDamaged(f"{len(head)} bytes, shorter than the {HEADER.size}-byte header")
    magic, fmt, want, length = HEADER.unpack(head)
    if magic != MAGIC:
        if head[:1] in (b"{", b"\xfb"):  # the headerless marshal of format 2 and before
            return None
        raise SnapshotDamaged("not a betblock snapshot (bad magic)")
    if fmt != FORMAT:
        return None  # another format: ignored, the caller compiles
    size = os.fstat(f.fileno()).st_size
    if size != HEADER.size + length:
        raise SnapshotDamaged(f"{size} bytes where the header says {HEADER.size + length} (truncated or extended)")
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
    if digest.digest() != want:
        raise SnapshotDamaged("SHA-256 of the contents does not match the header (changed bytes)")
    f.seek(HEADER.size)
    doc: Any = marshal.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise SnapshotDamaged("the document inside is not a snapshot")
    if doc.get("fingerprint") != fp:
        return None
    next_change = doc.get("next_change")
    if next_change is not None and next_change <= now:
        return None
    table: dict[bytes, int] = {}
    for _ in range(doc["slices"]):
        table.update(marshal.load(f))
    if f.tell() != size:
        raise SnapshotDamaged("bytes left over after the table")
    rules = tuple(
        # r[7], observe, is absent from files written before observe mode (all enforced)
        None if r is None else Rule(id=r[0], agencies=r[1], agency_name=r[2], action=r[3], ipv4=r[4], ipv6=r[5], ttl=r[6],
                                    observe=len(r) > 7 and bool(r[7]))
        for r in doc["rules"]
    )
    return PolicySnapshot(
        version=doc["version"], table=table, rules=rules, stats=doc["stats"], observing=tuple(doc.get("observing", ()))
    )
