"""Typed outcomes of a query and their counters.

Every answer the pipeline produces is counted under exactly one ``Kind`` at the point where the
decision is made; metrics and logs read these counters, never strings. The hot path increments a
list slot instead of allocating an outcome object per packet.
"""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    BLOCKED = 0  # sinkholed by policy (including CNAME inspection)
    CACHED = 1  # served from the answer cache
    FORWARDED = 2  # answered by an upstream
    REFUSED = 3  # client not allowed by the ACL
    FORMERR = 4  # malformed question
    NOTIMP = 5  # opcode other than QUERY
    SERVFAIL = 6  # upstreams failed, or our own error
    DROPPED = 7  # unreadable header or a response packet: no answer at all
    MINIMAL_ANY = 8  # QTYPE=ANY answered with a synthesized HINFO (RFC 8482), never forwarded
    STALE = 9  # an expired cache entry served because every upstream failed (RFC 8767)


class Counters:
    """Answers by kind; ``counts`` is indexed by ``Kind``. ``observed`` counts queries for names
    that only observing agencies list (a hit "would block"): not a kind, since each of them is
    also answered, and counted, as an unlisted name would be (cached, forwarded, ...)."""

    __slots__ = ("counts", "observed")

    def __init__(self) -> None:
        self.counts = [0] * len(Kind)
        self.observed = 0

    def snapshot(self) -> dict[str, int]:
        return {k.name.lower(): self.counts[k] for k in Kind}
