"""What the feeds control plane answers its callers: the typed outcome of an update and the errors
a caller may meet (the API maps each to its status code).

Must not import the resolver, hits or betblock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.errors import BetblockError
from feeds.entry import Reject

MAX_REJECTS_SHOWN = 1000


class Refused(BetblockError):
    """Nothing valid remains of an update (every line rejected): it is not recorded as a version."""

    def __init__(self, message: str, rejects: list[Reject]) -> None:
        super().__init__(message)
        self.rejects = rejects


class NotFound(BetblockError):
    """No such agency, source or version."""


class StoreUnavailable(BetblockError):
    """The feed store cannot take or give what was asked (damaged, missing, or a write it
    refused); nothing was changed. The API answers 503."""


class Conflict(BetblockError):
    """The request does not fit the state (approving a version that is not quarantined)."""


@dataclass
class UpdateResult:
    """What became of one update, for the API, the CLI and the log."""

    status: str  # applied | unchanged | quarantined
    agency: str
    source: str
    version: int | None
    entries: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    rejects: list[Reject] = field(default_factory=list)
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "agency": self.agency,
            "source": self.source,
            "version": self.version,
            "entries": self.entries,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "reason": self.reason,
            "rejected": len(self.rejects),
            "rejects": [reject_json(r) for r in self.rejects[:MAX_REJECTS_SHOWN]],
        }


def reject_json(r: Reject) -> dict[str, Any]:
    return {"line": r.line, "text": r.text, "reason": r.reason}
