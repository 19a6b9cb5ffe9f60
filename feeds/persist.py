"""The compiled snapshot on disk, so that a restart answers at once, before any source is
reachable and before the store is read.

Owns what the saved file holds and when it is trusted. The file is a policy table
(``feeds.table``, the same format the DNS workers map), with the configuration's fingerprint
and the next listing or removal date in its ``extra``. A start maps it instead of loading it:
ready in the time of a CRC-32 pass over the file, whatever the list size (a marshalled dict of
10M names took seconds to load and 1 GiB of memory), and with workers the hand-over links the
very file instead of writing another. It is written to a temporary file, fsynced and renamed
into place, so a crash never leaves half a snapshot; both CRC-32s and every section size are
checked before a byte of it is used, so a damaged file (a changed byte, a bit flip, a renamed
key, a truncation) is rejected whole with a reason rather than loaded as another policy or
crashing the start. The checks guard against damage, not against someone who can write the
data directory (they could edit the feed store as well).

A file of an earlier format (the marshal of formats 2 to 4), another configuration (a
different fingerprint) or one a date has passed since is ignored, never trusted: the caller
compiles from the store. The name ``snapshot.marshal`` stays from those formats, so that a
data directory keeps its one saved file (and ``feeds.ondisk`` its evidence that a store existed).

Must not import aiohttp, SQL or resolver code.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.errors import BetblockError
from config.settings import AgencySettings, PolicySettings, Settings
from feeds.snapshot import PolicySnapshot
from feeds.table import MAGIC as TABLE_MAGIC
from feeds.table import TableDamaged, WriteStopped, open_table, write_table

FORMAT = 5  # 5: a feeds.table file; 4: marshal, table values may be (self, below) pairs (feeds.snapshot)
FILENAME = "snapshot.marshal"
SLICE = 32768  # names per step of a save: a few milliseconds with the GIL held (tests size lists by it)
SaveStopped = WriteStopped  # save was asked to stop (shutdown): the file before it stays


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


def save(path: Path, snapshot: PolicySnapshot, fp: str, next_change: float | None,
         stop: Callable[[], bool] = lambda: False) -> None:
    """Write ``snapshot`` atomically (temporary file, fsync, rename) as a policy table.
    ``stop`` is asked between slices: when it says so, the temporary file is removed and
    ``SaveStopped`` raised (SIGTERM need not wait for a save of millions of names)."""
    write_table(snapshot, path, extra={"format": FORMAT, "fingerprint": fp, "next_change": next_change},
                fsync=True, stop=stop)


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
    head = f.read(len(TABLE_MAGIC))
    if head != TABLE_MAGIC:
        if head[:6] == b"BBSNAP" or head[:1] in (b"{", b"\xfb"):  # the marshal of formats 4 and before
            return None
        raise SnapshotDamaged("not a betblock snapshot (bad magic)")
    try:
        snapshot = open_table(Path(f.name))
    except TableDamaged as exc:
        raise SnapshotDamaged(str(exc).split(": ", 1)[-1]) from None
    extra = snapshot.table.extra  # type: ignore[attr-defined]
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise SnapshotDamaged("the table inside is not a saved snapshot")
    if extra.get("fingerprint") != fp:
        return None
    next_change = extra.get("next_change")
    if next_change is not None and next_change <= now:
        return None
    return snapshot
