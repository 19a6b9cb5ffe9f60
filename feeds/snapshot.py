"""The policy snapshot: the control plane's only output to the data plane.

Owns ``Rule`` (what to answer for a listed name, and which agencies listed it),
``PolicySnapshot`` (an immutable table from lower-case wire-format names to rule ids, with
``match`` in O(labels)) and the meaning of a table value. Snapshots are built by
``feeds.compile`` and swapped whole.

A table value says what a listed name decides for two positions: the name itself ("self") and
any name below it that has no entry of its own ("below"). The walk from the query name up stops
at the first name in the table (the closest encloser, RFC 4592, as Unbound and BIND apply RPZ
wildcards); there the value for the position decides: a rule id blocks, 0 does not. Most names
decide the same for both positions (scope subtree): the value is that rule id (0 is ALLOW).
Otherwise the value is ``~(self | below << 32)``, a negative int; ``CompiledEntry`` gives the
typed view (scope and rule per position) that exporters use.

Must not import the resolver, aiohttp, SQL or the format parsers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

OBSERVE_PREFIX = "observe:"  # of a hit's stored action when its rule only observes (Rule.hit_action)
ALLOW = 0  # rule id of allowlist entries: the name and its subdomains are never blocked

# redirect/nxdomain/nodata/refused: an agency's action or an RPZ rule's; drop (rpz-drop.: no
# answer at all) and tcp-only (rpz-tcp-only.: TC=1 over UDP, answered normally over TCP) come
# only from RPZ rules.
Action = Literal["redirect", "nxdomain", "nodata", "refused", "drop", "tcp-only"]
Scope = Literal["exact", "subtree", "below"]
SCOPES: tuple[Scope, ...] = ("exact", "subtree", "below")
_LOW = 0xFFFFFFFF


def pair(self_rid: int, below_rid: int) -> int:
    """The table value for a name that decides ``self_rid`` for itself and ``below_rid`` below."""
    if self_rid == below_rid:
        return self_rid
    return ~(self_rid | below_rid << 32)


def split(value: int) -> tuple[int, int]:
    """``(self, below)`` rule ids of a table value."""
    if value >= 0:
        return value, value
    value = ~value
    return value & _LOW, value >> 32


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
    # Observe mode (RPZ's "log only"): the name resolves as if unlisted and each hit is recorded
    # as "would block". A flag beside the action rather than an action of its own: ``action``
    # stays what enforcing would answer (lookup shows it, the sinkhole is built from it, and a
    # switch to enforce changes nothing else), and the resolver tests the flag only on its
    # no-answer branch (``resolver.sinkhole``), never for an enforced or an unlisted name.
    observe: bool = False

    @property
    def agency(self) -> str:
        return self.agencies[0]

    @property
    def hit_action(self) -> str:
        """The action as the hit log stores it: ``observe:<action>`` for an observed rule, so
        that the mode travels with every stored hit (and its hash chain) without a schema
        change."""
        return OBSERVE_PREFIX + self.action if self.observe else self.action


@dataclass(frozen=True, slots=True)
class Match:
    """Why a name is blocked: the rule and the listed name that matched."""

    rule: Rule
    listed: bytes  # lower-case wire name of the matching entry
    offset: int  # where ``listed`` starts inside the queried wire name


@dataclass(frozen=True, slots=True)
class CompiledEntry:
    """One name of a snapshot, typed: the rule for the name itself and for the names below it
    (None: not blocked there, as an RPZ ``rpz-passthru.``)."""

    name: bytes  # lower-case wire format
    self_rule: Rule | None
    below_rule: Rule | None

    @property
    def scope(self) -> Scope | None:
        """exact/below/subtree when one rule covers the positions it blocks; None when both
        positions block with different rules or neither blocks (an exception)."""
        if self.self_rule is not None and self.below_rule is None:
            return "exact"
        if self.self_rule is None and self.below_rule is not None:
            return "below"
        if self.self_rule is not None and self.self_rule is self.below_rule:
            return "subtree"
        return None


@dataclass(frozen=True)
class PolicySnapshot:
    """An immutable, versioned blocklist. ``table`` maps wire names to rule ids (ALLOW = 0)."""

    version: int
    table: dict[bytes, int]
    rules: tuple[Rule | None, ...]  # index = rule id; index 0 (ALLOW) is None
    stats: dict[str, int] = field(default_factory=dict)
    # Agencies compiled in observe mode (their rules observe), sorted. A tuple, not a set: every
    # writer of a snapshot (persist, the mmap table's JSON) stores it as it stores the rules.
    observing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.observing) is not tuple:  # read back from JSON as a list
            object.__setattr__(self, "observing", tuple(self.observing))

    def match(self, name: bytes) -> Match | None:
        """The entry that blocks ``name`` (lower-case wire format), or None when it is not blocked.

        The closest name in the table at or above ``name`` decides (see the module docstring).
        """
        get = self.table.get
        off = 0
        while name[off]:
            rid = get(name[off:])
            if rid is not None:
                if rid < 0:
                    rid = ~rid & _LOW if not off else ~rid >> 32
                if rid == ALLOW:
                    return None
                rule = self.rules[rid]
                assert rule is not None
                return Match(rule, name[off:], off)
            off += name[off] + 1
        return None

    def decider(self, name: bytes) -> tuple[bytes, int, int] | None:
        """The closest table name at or above ``name`` (wire), its offset in ``name`` and the
        rule id it decides there (0: not blocked); None when no table name encloses it."""
        get = self.table.get
        off = 0
        while name[off]:
            value = get(name[off:])
            if value is not None:
                self_rid, below_rid = split(value)
                return name[off:], off, below_rid if off else self_rid
            off += name[off] + 1
        return None

    def entries(self) -> Iterator[CompiledEntry]:
        """Every name of the table with its rules, typed (for exporters such as RPZ zones)."""
        rules = self.rules
        for name, value in self.table.items():
            s, b = split(value)
            yield CompiledEntry(name, rules[s], rules[b])

    def __len__(self) -> int:
        return len(self.table)


EMPTY = PolicySnapshot(version=0, table={}, rules=(None,))
