"""The hash chain over written batches: tamper evidence for the hit log.

Owns the canonical bytes of a batch and its digest. Each batch's digest covers the previous
batch's digest, every row of the batch (as the integers stored) and the text of every dictionary
entry the rows refer to (names, clients, agencies, nodes, policy versions), so that editing,
deleting or inserting a row, or editing a dictionary entry, breaks the chain at that batch.

Two formats, recorded per batch (``batches.format``): 1 for batches written up to schema 2
(rows as 9 integers, absolute time, listed entry as a names id), 2 since schema 3 (the batch's
node, first id, base time and row count, then each column of the compact rows packed as
fixed-width integers: one ``array`` per column instead of Python work per row).
Shared by the SQLite and PostgreSQL stores. Must not import the resolver.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Mapping, Sequence
from itertools import chain

GENESIS = b"\x00" * 32  # prev of the first batch ever written
# dictionary kind of each row column that refers to one (listed shares the names dictionary)
REFS = {1: "node", 2: "client", 3: "name", 5: "name", 6: "rule", 7: "policy"}

# A format-1 row: ts (ms), node, client, name, qtype, listed (names id), rule, policy, count.
Row = tuple[int, int, int, int, int, int, int, int, int]


def referenced(rows: Sequence[Row]) -> dict[str, set[int]]:
    """The dictionary ids the rows refer to, by kind."""
    out: dict[str, set[int]] = {"node": set(), "client": set(), "name": set(), "rule": set(), "policy": set()}
    if not rows:
        return out
    cols = list(zip(*rows))
    for col, kind in REFS.items():
        out[kind].update(cols[col])
    return out


# Format 2: the stored columns of a hit row, in this order.
COLUMNS = ("ts", "client", "name", "qtype", "listed", "rule", "policy", "cnt")
_TYPECODES = ("q", "i", "i", "i", "i", "i", "i", "q")  # ts (ms after the batch's base) and count 64-bit


def referenced_v2(node: int, columns: Sequence[Sequence[int]]) -> dict[str, set[int]]:
    """The dictionary ids a format-2 batch refers to (a negative ``listed`` is a names id)."""
    _ts, client, name, _qtype, listed, rule, policy, _cnt = columns
    names = set(name)
    names.update(-x for x in set(listed) if x < 0)
    return {"node": {node}, "client": set(client), "name": names, "rule": set(rule), "policy": set(policy)}


def digest_v2(prev: bytes, node: int, first: int, base_ts: int, columns: Sequence[Sequence[int]], block: bytes) -> bytes:
    """sha256 over prev, the batch header, each column packed, and the dictionary lines."""
    n = len(columns[0])
    h = hashlib.sha256(prev)
    h.update(b"betblock-hits-2 %d %d %d %d\n" % (n, node, first, base_ts))
    for code, col in zip(_TYPECODES, columns, strict=True):
        packed = array(code, col)
        if sys.byteorder != "little":  # pragma: no cover - the same digest on every machine
            packed.byteswap()
        h.update(packed.tobytes())
    h.update(block)
    return h.digest()


def text_line(kind: str, ident: int, text: str) -> bytes:
    """One dictionary entry as the digest covers it (the writer memoises these per entry)."""
    return b"%s\t%d\t%s\n" % (kind.encode(), ident, text.encode("utf-8", "surrogateescape"))


def text_block(texts: Mapping[str, Mapping[int, str]]) -> bytes:
    """Every referenced dictionary entry: kinds in name order, ids ascending."""
    return b"".join(text_line(kind, ident, texts[kind][ident]) for kind in sorted(texts) for ident in sorted(texts[kind]))


def digest(prev: bytes, rows: Sequence[Row], texts: Mapping[str, Mapping[int, str]] | None = None, *, block: bytes | None = None) -> bytes:
    """sha256 over prev, the rows in id order, and the referenced dictionary texts (``texts``,
    or the same bytes already made by ``text_block``)."""
    h = hashlib.sha256(prev)
    h.update(b"betblock-hits-1 %d\n" % len(rows))
    flat = array("q", chain.from_iterable(rows))
    if sys.byteorder != "little":  # pragma: no cover - the same digest on every machine
        flat.byteswap()
    h.update(flat.tobytes())
    h.update(block if block is not None else text_block(texts or {}))
    return h.digest()
