"""What a hit is when it reaches the hit log: the typed record and the rule it names.

Owns ``Hit`` (the seven fields the hot path hands to ``HitRecorder.record``), ``HitTuple`` (the
same fields as the plain tuple the hot path builds), ``Counts`` (hits folded per key under
overload) and ``RuleLike`` (what the hit log reads of a matched rule). The resolver builds a plain
tuple, not a ``Hit``: a NamedTuple's constructor is a Python call per blocked answer, and the
buffer stores the fields flat anyway (``hits.batch.FlatHits``); ``Hit`` names the fields for the
code that reads them. Imports nothing of the project: feeds' ``Rule`` satisfies ``RuleLike``
without the hit log importing feeds, and the resolver may import this module.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class RuleLike(Protocol):
    """What the hit log reads of a matched rule (``feeds.snapshot.Rule`` is one). The writers
    key their memos on the rule object's identity: a snapshot shares one rule among every name
    with the same agencies and action, so a batch holds few distinct rules."""

    @property
    def agency(self) -> str:
        """The agency whose entry decided the answer."""

    @property
    def agencies(self) -> tuple[str, ...]:
        """Every agency whose entry matched, the deciding one first."""

    @property
    def action(self) -> str:
        """How the name is answered when its agency enforces (``redirect``, ``nxdomain``, ...)."""

    @property
    def hit_action(self) -> str:
        """The action as the hit log stores it: ``action``, or ``observe:<action>`` for a hit of
        an agency in observe mode (answered as unlisted, recorded as would-block)."""


class Hit(NamedTuple):
    """One blocked answer as the hot path hands it over; names stay in wire form (lower-case)
    until the writer thread turns them into text."""

    ts: float  # wall-clock seconds; a key of ``Counts`` holds the whole second
    client: str  # the client address, before ``hits.privacy`` is applied
    qname: bytes  # the queried name, wire form
    qtype: int
    rule: RuleLike
    listed: bytes  # the listed entry that matched, wire form (a suffix of qname, except after CNAME inspection)
    policy_version: int


# The plain tuple the resolver builds; a ``Hit`` is one, so every reader may take either.
HitTuple = tuple[float, str, bytes, int, RuleLike, bytes, int]

# Hits counted per (whole second, client, qname, qtype, rule, listed, policy version): the
# recorder's overload table, and the counts that go with every batch to the writers.
Counts = dict[HitTuple, int]

FIELDS = len(Hit._fields)  # fields per hit in the flat buffer


def count_key(hit: HitTuple) -> HitTuple:
    """The key a hit is counted under when it is folded: its time cut to the whole second."""
    return (int(hit[0]), hit[1], hit[2], hit[3], hit[4], hit[5], hit[6])
