"""The policy snapshot: the control plane's only output to the data plane.

Owns ``Rule`` (what to answer for a listed name, and which agencies listed it) and
``PolicySnapshot`` (an immutable table from lower-case wire-format names to rule ids, with
``match`` in O(labels)). Snapshots are built by ``feeds.compile`` and swapped whole.

Must not import the resolver, aiohttp, SQL or the format parsers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ALLOW = 0  # rule id of allowlist entries: the name and its subdomains are never blocked

Action = Literal["redirect", "nxdomain", "nodata", "refused"]


@dataclass(frozen=True, slots=True)
class Rule:
    """How a listed name is answered. Shared by every name with the same agencies and action."""

    id: int
    agencies: tuple[str, ...]  # every agency that listed the name, the winning one first
    agency_name: str  # the winner's display name (Extended DNS Error text)
    action: Action
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    ttl: int = 300

    @property
    def agency(self) -> str:
        return self.agencies[0]


@dataclass(frozen=True, slots=True)
class Match:
    """Why a name is blocked: the rule and the listed name that matched."""

    rule: Rule
    listed: bytes  # lower-case wire name of the matching entry
    offset: int  # where ``listed`` starts inside the queried wire name


@dataclass(frozen=True)
class PolicySnapshot:
    """An immutable, versioned blocklist. ``table`` maps wire names to rule ids (ALLOW = 0)."""

    version: int
    table: dict[bytes, int]
    rules: tuple[Rule | None, ...]  # index = rule id; index 0 (ALLOW) is None
    stats: dict[str, int] = field(default_factory=dict)

    def match(self, name: bytes) -> Match | None:
        """The entry that blocks ``name`` (lower-case wire format), or None when it is not blocked.

        The most specific entry wins; an allowlist entry at or above the name unblocks it.
        """
        get = self.table.get
        off = 0
        while name[off]:
            rid = get(name[off:])
            if rid is not None:
                if rid == ALLOW:
                    return None
                rule = self.rules[rid]
                assert rule is not None
                return Match(rule, name[off:], off)
            off += name[off] + 1
        return None

    def __len__(self) -> int:
        return len(self.table)


EMPTY = PolicySnapshot(version=0, table={}, rules=(None,))
