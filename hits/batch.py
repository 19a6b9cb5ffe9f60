"""A batch of hits as the hot path leaves it: a flat buffer, and its columns for the writers.

Owns ``FlatHits`` (the recorder's buffer), ``HitBuffer`` (the bounded append and the per-second
counts beyond it, the one ``record`` on the hot path of the control plane's recorder and of each
DNS worker's batcher) and ``hit_columns`` (seven column lists, with the aggregated rows after the
plain hits), shared by the store writer and the JSON-lines formatter. A hit's fields are
``hits.record.Hit``'s, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from hits.record import FIELDS, Counts, HitTuple

HIT_FIELDS = FIELDS  # ts, client, qname wire, qtype, rule, listed wire, policy version (``Hit``)
_COLUMNS = [itemgetter(i) for i in range(HIT_FIELDS)]


class FlatHits(list):  # type: ignore[type-arg]
    """The buffer: hits laid end to end, ``HIT_FIELDS`` fields each.

    Extending a list with a hit's fields allocates nothing the garbage collector tracks, while a
    tuple per hit, kept alive until the next flush, made every collection walk the whole buffer:
    measured at about 1 us per blocked query on the hot path. Columns are plain slices.
    """

    __slots__ = ()

    def hits(self) -> int:
        return len(self) // HIT_FIELDS


class HitBuffer:
    """A bounded buffer of hits: ``record`` appends while there is room (``cap`` hits), then
    counts per (second, client, name, type, rule, entry, policy), then, with ``4 x cap`` keys
    counted, drops and counts the drop. ``HitRecorder`` (the hit log) and ``HitBatcher`` (a DNS
    worker) are both one, so that the overload rules are written once."""

    def __init__(self, enabled: bool, cap: int) -> None:
        self.enabled = enabled
        self.cap = cap
        self.buffer = FlatHits()
        self._cap_fields = cap * HIT_FIELDS
        self.aggregated: Counts = {}
        self.dropped = 0  # hits lost: the buffer and the counts were full

    def record(self, hit: HitTuple) -> None:
        """Hot path: one append while there is room, else count it per (client, name, type, entry, second).

        The entry point for every hit, whichever process answered: a plain tuple in ``Hit``'s order."""
        if not self.enabled:
            return
        if len(self.buffer) < self._cap_fields:
            self.buffer.extend(hit)
            return
        key = (int(hit[0]), hit[1], hit[2], hit[3], hit[4], hit[5], hit[6])  # count_key, without the call
        agg = self.aggregated
        if key in agg:
            agg[key] += 1
        elif len(agg) < self.cap * 4:
            agg[key] = 1
        else:
            self.dropped += 1

    def add_counts(self, agg: Counts) -> None:
        """Counts made elsewhere (a worker's, or hits folded before), under the same bound."""
        target = self.aggregated
        limit = self.cap * 4
        for key, count in agg.items():
            if key in target:
                target[key] += count
            elif len(target) < limit:
                target[key] = count
            else:
                self.dropped += count

    def take(self) -> tuple[FlatHits, Counts]:
        """Everything buffered, leaving the buffers empty (called on the event loop)."""
        batch, self.buffer = self.buffer, FlatHits()
        agg, self.aggregated = self.aggregated, {}
        return batch, agg


# What a flush hands to the writers: the flat buffer, or hit tuples (tests, retries).
HitBatch = FlatHits | list[HitTuple]


def batch_size(batch: HitBatch) -> int:
    """Hits in a batch: a FlatHits buffer, or a list of hit tuples (tests, retries)."""
    return batch.hits() if isinstance(batch, FlatHits) else len(batch)


def hit_columns(batch: HitBatch | Iterable[HitTuple], agg: Counts) -> tuple[list[list[Any]], int]:
    """The seven columns of a batch (in ``Hit``'s order) plus its aggregated rows, and how many
    plain hits lead them."""
    if isinstance(batch, FlatHits):
        cols = [batch[i::HIT_FIELDS] for i in range(HIT_FIELDS)]
        plain = batch.hits()
    else:
        hits = batch if isinstance(batch, list) else list(batch)
        # One column at a time: zip(*hits) would build a tuple as wide as the batch per field.
        cols = [list(map(g, hits)) for g in _COLUMNS]
        plain = len(hits)
    if agg:
        keys = list(agg)
        cols[0].extend(float(k[0]) for k in keys)  # aggregated rows carry their whole second
        for i in range(1, HIT_FIELDS):
            cols[i].extend(map(itemgetter(i), keys))
    return cols, plain


