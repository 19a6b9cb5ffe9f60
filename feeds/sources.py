"""The configured sources and what each holds now: its list in force, the version waiting in
quarantine, and how fetching it has gone.

Owns ``SourceRuntime`` (one source) in three typed parts, each changed in one place: ``InForce``
(the list, its version and hash, replaced whole by ``enforce``), ``Pending`` (the version held
for an admin, replaced whole; ``enforce`` and ``reject`` settle it) and ``FetchState`` (the
scheduler's bookkeeping); ``SourceTable``, every source by (agency, key), with the lookup the
API and the services use and the read of each source's state from the store at start-up; and
``SourceWriter``, what the two parts that change the sources share (the update lock among it).

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.settings import AgencySettings, SourceSettings
from feeds.compile import AgencyList, Timed
from feeds.formats import scope_of
from feeds.lists import SourceList
from feeds.outcomes import NotFound
from feeds.snapshot import Scope
from feeds.status import source_status
from feeds.store import FeedStore
from feeds.xfr_source import ZoneFollower

if TYPE_CHECKING:
    from feeds.builder import PolicyBuilder
    from feeds.policyfiles import PolicyFiles
    from feeds.storegate import StoreGate


@dataclass(frozen=True, slots=True)
class InForce:
    """The list a source enforces, with its version, hash and when it last changed."""

    list: SourceList = field(default_factory=SourceList)
    timed: tuple[Timed, ...] = ()  # the compile's view of the list's rich entries
    version: int | None = None
    sha256: str | None = None
    changed_at: float | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """The version held in quarantine until an admin approves or rejects it."""

    version: int
    sha256: str
    reason: str | None


@dataclass(slots=True)
class FetchState:
    """How fetching or reading a source has gone (the scheduler keeps it; the status shows it)."""

    etag: str | None = None
    last_modified: str | None = None
    last_attempt: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    failures: int = 0
    results: dict[str, int] = field(default_factory=dict)  # fetches, reads and pushes by result
    stat: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of a watched file

    def count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    def succeeded(self, now: float) -> None:
        self.last_success, self.last_error, self.failures = now, None, 0

    def failed(self, error: str) -> None:
        self.count("failed")
        self.failures += 1
        self.last_error = error


@dataclass(eq=False)
class SourceRuntime:
    """One configured source: its list in force, what waits in quarantine, how fetching goes."""

    agency: AgencySettings
    settings: SourceSettings
    key: str
    path: Path | None = None  # file sources, resolved
    follower: ZoneFollower | None = None  # kind xfr: the followed zone
    in_force: InForce = field(default_factory=InForce)
    pending: Pending | None = None
    rejected_sha: str | None = None  # the last list an admin rejected: sent again, it changes nothing
    fetch: FetchState = field(default_factory=FetchState)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # poll or re-read now

    @property
    def current(self) -> SourceList:
        return self.in_force.list

    @property
    def version(self) -> int | None:
        return self.in_force.version

    @property
    def sha256(self) -> str | None:
        return self.in_force.sha256

    @property
    def scope(self) -> Scope:
        """What this source's plain names cover (its format's reading, else the agency's)."""
        return scope_of(self.settings.format, False, self.agency.scope)

    def enforce(self, new: SourceList, version: int | None, sha256: str | None, at: float | None) -> None:
        """``new`` is the list in force from now on; nothing waits in quarantine any more."""
        fmt, default = self.settings.format, self.agency.scope
        timed = tuple(Timed.of(e, scope_of(fmt, e.wildcard, default)) for e in new.rich.values())
        self.in_force = InForce(new, timed, version, sha256, at)
        self.pending = None

    def reject(self, sha256: str) -> None:
        """An admin refused the version in quarantine: the list in force stays."""
        self.rejected_sha = sha256
        self.pending = None

    def status(self, now: float) -> dict[str, Any]:
        return source_status(self, now)


class SourceTable(dict[tuple[str, str], SourceRuntime]):
    """Every configured source by (agency id, source key), in the configuration's order."""

    def __init__(self, agencies: list[AgencySettings], resolve: Callable[[Path], Path], follow_dir: Path) -> None:
        super().__init__()
        self.agency_list = list(agencies)
        self.agencies = {a.id: a for a in agencies}
        for agency in agencies:
            for src in agency.all_sources():
                path = resolve(src.path) if src.path is not None else None
                follower = ZoneFollower(src, follow_dir) if src.kind == "xfr" else None
                self[(agency.id, src.key)] = SourceRuntime(agency, src, src.key, path, follower)

    def of(self, agency: str) -> list[SourceRuntime]:
        return [rt for (aid, _k), rt in self.items() if aid == agency]

    def runtime(self, agency: str, source: str | None = None) -> SourceRuntime:
        """One source of an agency (its push source when ``source`` is None); NotFound otherwise."""
        if agency not in self.agencies:
            raise NotFound(f"no agency {agency!r}")
        if source is None:
            push = self.agencies[agency].push_source()
            if push is None:
                raise NotFound(f"agency {agency!r} has no push source")
            source = push.key
        rt = self.get((agency, source))
        if rt is None:
            raise NotFound(f"agency {agency!r} has no source {source!r}")
        return rt

    def compile_lists(self) -> list[AgencyList]:
        return [AgencyList(rt.agency, rt.current.plain, rt.in_force.timed, rt.scope) for rt in self.values()]

    def versions(self) -> list[tuple[str, str, int]]:
        """(agency, source, version) of every source with a version in force."""
        return [(aid, key, rt.version) for (aid, key), rt in self.items() if rt.version is not None]

    def load(self, store: FeedStore) -> None:
        """Each source's list in force, pending version and fetch state, as the store holds them
        (in a thread: a million-entry list takes a while to read)."""
        for (agency_id, key), rt in self.items():
            active = store.active(agency_id, key)
            st = store.source_state(agency_id, key)
            version, sha = (active["version"], active["sha256"]) if active is not None else (None, None)
            rt.enforce(store.live(agency_id, key), version, sha, st.get("last_change"))
            latest = store.latest(agency_id, key)
            if latest is not None and latest["status"] == "quarantined":
                rt.pending = Pending(latest["version"], latest["sha256"], latest["reason"])
            elif latest is not None and latest["status"] == "rejected":
                rt.rejected_sha = latest["sha256"]
            f = rt.fetch
            f.etag, f.last_modified, f.last_success = st.get("etag"), st.get("last_modified"), st.get("last_success")
            f.last_error, f.failures = st.get("last_error"), st.get("failures") or 0


class SourceWriter:
    """What the parts that change the sources (``UpdateService``, ``AdminDecisions``) work with:
    the sources, the store, the one lock that serialises every change (the manager makes it and
    hands the same one to both, so an update and a decision never interleave), the node's policy
    files, the builder that compiles a change, and the clock."""

    def __init__(
        self,
        sources: SourceTable,
        gate: StoreGate,
        *,
        lock: asyncio.Lock,
        files: PolicyFiles,
        builder: PolicyBuilder,
        clock: Callable[[], float],
    ) -> None:
        self.sources, self.gate, self.clock = sources, gate, clock
        self.lock = lock
        self.files = files  # protected names, the admin allowlist
        self.builder = builder  # a change applied asks it for a compile
