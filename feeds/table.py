"""The compiled policy as one memory-mapped file that every worker process reads.

Owns the file format (``write_table``) and the reader (``open_table``, ``PolicyTable``). The
control plane writes one file per snapshot version; each data-plane worker maps it read-only
and shared, so N workers hold one copy of the table in the page cache instead of N dicts. A
worker swaps by opening the new file and dropping its reference to the old snapshot; the
mapping is unmapped when the last reference goes (never closed under a reader's feet). The
file is replaced by rename, never rewritten in place, so a mapped file never shrinks (which
would be SIGBUS, not an exception).

Layout (little-endian, every section 8-byte aligned, in this order)::

    header   HEADER: magic, format, version, counts, section lengths, CRC-32 of the body,
             CRC-32 of the header itself
    doc      JSON: the snapshot's other fields (stats, ...), the rules, the distinct values
    filter   2**fbits bytes: filter[hash & (2**fbits - 1)] is 0 when no name has such a hash
    buckets  nbuckets + 1 u32: entries of bucket b are [buckets[b], buckets[b + 1])
    hashes   count u32: CRC-32 of each name, grouped by bucket (bucket = hash >> shift)
    entries  count (u32 offset of the name in the heap, u32 index into the values << 8 | the
             name's length), in the order of the hashes
    heap     the names, lower-case wire format, back to back, in the snapshot's order

The hash is ``zlib.crc32`` of the wire name, the same in every process (``hash()`` of bytes
is salted per process). Buckets, not open addressing, because a lookup is a few Python
operations and most lookups are misses: the filter (4 to 8 bytes a name) answers most
misses with one subscript of the mapping, and a bucket is read with two ``unpack_from`` and a
tuple ``in``. A hash match is confirmed by comparing the name bytes, so a collision never blocks
another name. Values (rule ids, or ``(self, below)`` pairs as negative ints, see
``feeds.snapshot``) are few and distinct ones are stored once in the doc.

The CRC of the body is checked at open (read through the file, not the mapping, so a worker's
RSS only grows by the pages its lookups touch), and every section size is derived from the
counts and checked against the file size, so a damaged, truncated or extended file is refused
with ``TableDamaged`` before a lookup reads a byte of it.

Must not import the resolver, aiohttp or SQL.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate, islice
from pathlib import Path
from typing import Any
from zlib import crc32

from config.errors import BetblockError
from feeds.snapshot import PolicySnapshot, Rule

MAGIC = b"BBPTABLE"
FORMAT = 1
# magic, format, header size, version, count, nbuckets, max bucket size, log2 of the filter's
# size, doc length, heap length, body CRC-32, header CRC-32 (of every byte before it); 72 bytes
HEADER = struct.Struct("<8sIIqQQIIQQII")
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_CHUNK = 1 << 20
_SLICE = 1 << 15  # names per step of a writer's pass: a few milliseconds with the GIL held
_LE32 = "<u4"  # numpy's type of every number in the file: little-endian whatever the machine
# filter bytes per name, rounded up to a power of two: 4 to 8, so that 12 to 22 % of the
# misses get past it (1 - exp(-names / size)) to the two unpacks of a bucket
_FILTER_BYTES = 4


class TableDamaged(BetblockError):
    """The file is not an intact policy table of this format (the message says what is wrong)."""


def _align(n: int) -> int:
    return (n + 7) & ~7


def _buckets_for(count: int) -> int:
    """A power of two at least ``count``: half to one name per bucket on average, so a bucket's
    run of hashes is one to a few numbers. Only lookups that pass the filter read a bucket."""
    n = 1
    while n < count:
        n <<= 1
    return n


def _slices(values: Iterable[Any]) -> Iterator[list[Any]]:
    """``values`` in lists of ``_SLICE``."""
    it = iter(values)
    while part := list(islice(it, _SLICE)):
        yield part


def _rule_doc(rule: Rule | None) -> dict[str, Any] | None:
    return None if rule is None else {f.name: getattr(rule, f.name) for f in dataclasses.fields(rule)}


def _json_default(value: object) -> object:
    # sets (e.g. a snapshot's agencies in some mode) go as sorted lists; _revive turns them back
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} cannot go into a policy table's header")


def _revive(cls: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc``'s values for ``cls``'s fields with JSON's lists back as the field's collection
    type: the type of its default when that is a set or tuple, else a tuple."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        value = doc[f.name]
        if isinstance(value, list):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else ())
            value = type(default)(value) if isinstance(default, (set, frozenset, tuple)) else tuple(value)
        out[f.name] = value
    return out


def _rule_from(doc: dict[str, Any] | None) -> Rule | None:
    return None if doc is None else Rule(**_revive(Rule, doc))


class WriteStopped(BetblockError):
    """``write_table`` was asked to stop (shutdown): the file at the path, if any, is the one before."""


def write_table(snapshot: PolicySnapshot, path: Path, *, extra: dict[str, Any] | None = None, fsync: bool = False,
                stop: Callable[[], bool] = lambda: False) -> None:
    """Write ``snapshot`` as a table file at ``path``: a temporary file beside it, then a
    rename, so a reader sees the old file or the new one, whole. ``extra`` (JSON) goes into
    the doc for the caller (``PolicyTable.extra``: the saved snapshot's fingerprint). ``fsync``
    before the rename when the file must survive a power cut (the saved snapshot; the workers'
    hand-over files are rewritten when lost). ``stop`` is asked between slices: when it says so
    the temporary file is removed and ``WriteStopped`` raised."""
    import numpy as np  # here, not at the top: workers only read tables, and numpy costs each one ~20 MiB

    table = snapshot.table
    count = len(table)
    nbuckets = _buckets_for(count)
    shift = 32 - nbuckets.bit_length() + 1
    fbits = max(_buckets_for(count * _FILTER_BYTES).bit_length() - 1, 3)
    # One C-level pass over the dict per per-name number (CRC-32, length, value), each into a
    # numpy array (4 bytes a name, a slice at a time so that a writer in a thread lets the event
    # loop run between slices); everything after is numpy over those arrays: the filter by one
    # scatter, bucket sizes by bincount, the per-name records into bucket order by one stable
    # argsort (the heap keeps the dict's order). At 10M names this is seconds, where a Python
    # pass per step over arrays took a minute.
    hashes = _numbers(map(crc32, table), count, stop)
    lengths = _numbers(map(len, table), count, stop)
    if count and int(lengths.max()) > 255:
        raise ValueError("a name longer than 255 bytes is not a wire name")
    distinct: set[int] = set()
    for part in _slices(table.values()):
        distinct.update(part)
    value_ids = {v: i for i, v in enumerate(distinct)}
    if len(value_ids) >= 1 << 24:
        raise ValueError(f"{len(value_ids)} distinct table values, more than the format holds")
    heap_len = int(lengths.sum(dtype=np.uint64))
    if heap_len >= 1 << 32:
        raise ValueError("names too long for 32-bit heap offsets")
    starts = np.zeros(count, _LE32)
    if count > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    # value index above the name's length: (vid << 8) | length
    packed = _numbers(map(value_ids.__getitem__, table.values()), count, stop)
    packed <<= 8
    packed |= lengths
    del lengths
    filt = np.zeros(1 << fbits, np.uint8)
    filt[hashes & ((1 << fbits) - 1)] = 1
    ids = hashes >> shift
    sizes = np.bincount(ids, minlength=nbuckets)
    buckets = np.zeros(nbuckets + 1, _LE32)
    np.cumsum(sizes, out=buckets[1:])
    longest = int(sizes.max()) if count else 0
    del sizes
    order = np.argsort(ids, kind="stable")  # by bucket, in the dict's order within one
    del ids
    hashes = hashes[order]
    entries = np.empty((count, 2), _LE32)
    entries[:, 0] = starts[order]
    entries[:, 1] = packed[order]
    del order, starts, packed
    others = {f.name: getattr(snapshot, f.name) for f in dataclasses.fields(snapshot) if f.name not in ("table", "rules")}
    doc = json.dumps(
        {"snapshot": others, "rules": [_rule_doc(r) for r in snapshot.rules], "values": list(value_ids),
         **({"extra": extra} if extra is not None else {})},
        separators=(",", ":"), default=_json_default,
    ).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(HEADER.size))  # written last, once the body's CRC is known
            body_crc = 0

            def put(data: Any) -> None:
                nonlocal body_crc
                body_crc = crc32(data, body_crc)
                f.write(data)

            def pad(n: int) -> None:
                put(bytes(_align(n) - n))

            put(doc)
            pad(len(doc))
            # the arrays as bytes without a copy (little-endian and contiguous); each dropped once written
            for array_ in (filt, buckets, hashes, entries):
                put(memoryview(array_.reshape(-1).view(np.uint8)))
                pad(array_.nbytes)
            del filt, buckets, hashes, entries, array_
            # The heap, streamed in the dict's order: never the whole of it in memory.
            for part in _slices(table):
                if stop():
                    raise WriteStopped(str(path))
                put(b"".join(part))
            pad(heap_len)
            head = HEADER.pack(MAGIC, FORMAT, HEADER.size, snapshot.version, count, nbuckets, longest, fbits,
                               len(doc), heap_len, body_crc, 0)
            f.seek(0)
            f.write(head[:-4] + _U32.pack(crc32(head[:-4])))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _numbers(values: Iterator[int], count: int, stop: Callable[[], bool]) -> Any:
    """The first ``count`` of ``values`` as a little-endian uint32 numpy array, filled
    ``_SLICE`` values at a time: between slices a thread can hand over the GIL, so a writer in
    a thread holds it for milliseconds, not a whole pass."""
    import numpy as np

    out = np.empty(count, _LE32)
    for at in range(0, count, _SLICE):
        if stop():
            raise WriteStopped("stopped")
        n = min(_SLICE, count - at)
        out[at : at + n] = np.fromiter(values, _LE32, n)
    return out


def open_table(path: Path) -> PolicySnapshot:
    """The snapshot stored at ``path``, its ``table`` a ``PolicyTable`` over a shared read-only
    mapping of the file. Raises ``TableDamaged`` when the file is not intact (and
    ``FileNotFoundError`` when it is not there)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise TableDamaged(f"{path}: {len(head)} bytes, shorter than the {HEADER.size}-byte header")
        magic, fmt, hsize, version, count, nbuckets, maxb, fbits, doc_len, heap_len, body_crc, head_crc = HEADER.unpack(head)
        if magic != MAGIC:
            raise TableDamaged(f"{path}: not a policy table (bad magic)")
        if fmt != FORMAT or hsize != HEADER.size:
            raise TableDamaged(f"{path}: format {fmt} (header {hsize} bytes), this reader reads format {FORMAT}")
        if crc32(head[:-4]) != head_crc:
            raise TableDamaged(f"{path}: header CRC-32 does not match (changed bytes)")
        if not 3 <= fbits <= 32 or nbuckets < 1 or nbuckets & (nbuckets - 1) or nbuckets > 1 << 32 or count >= 1 << 32 or maxb > count:
            raise TableDamaged(f"{path}: impossible counts ({count} names, {nbuckets} buckets)")
        lengths = (doc_len, 1 << fbits, 4 * (nbuckets + 1), 4 * count, 8 * count, heap_len)
        offsets = list(accumulate((_align(n) for n in lengths), initial=HEADER.size))
        if size != offsets[-1]:
            raise TableDamaged(f"{path}: {size} bytes where the header says {offsets[-1]} (truncated or extended)")
        crc = 0
        f.seek(offsets[0])
        while chunk := f.read(_CHUNK):
            crc = crc32(chunk, crc)
        if crc != body_crc:
            raise TableDamaged(f"{path}: CRC-32 of the contents does not match the header (changed bytes)")
        f.seek(offsets[0])
        try:
            doc = json.loads(f.read(doc_len))
            rules = tuple(_rule_from(r) for r in doc["rules"])
            values = tuple(int(v) for v in doc["values"])
            others = _revive(PolicySnapshot, doc["snapshot"])
        except (ValueError, KeyError, TypeError) as exc:  # CRC right, contents not: another build
            raise TableDamaged(f"{path}: unreadable rules ({type(exc).__name__}: {exc})") from None
        mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        inode = os.fstat(f.fileno()).st_ino
    others["version"] = version
    table = PolicyTable(mm, count, nbuckets, maxb, fbits, offsets, values)
    table.path, table.inode, table.extra = Path(path), inode, doc.get("extra")
    if _U32.unpack_from(mm, offsets[2])[0] != 0 or _U32.unpack_from(mm, offsets[2] + 4 * nbuckets)[0] != count:
        raise TableDamaged(f"{path}: bucket index does not cover the {count} names")
    return PolicySnapshot(table=table, rules=rules, **others)  # type: ignore[arg-type]


class PolicyTable(Mapping[bytes, int]):
    """A read-only mapping from wire names to table values over a mapped table file: ``get``
    has exactly ``dict.get``'s answers. ``get`` is a closure with everything it needs bound as
    locals (no attribute lookups on the hot path); iteration (exporters, tests) is slow and
    meant for the control plane."""

    def __init__(self, mm: mmap.mmap | None, count: int, nbuckets: int, maxb: int, fbits: int, offsets: list[int],
                 values: tuple[int, ...]) -> None:
        self._mm = mm
        self._count = count
        # set by open_table: the file and its inode (the hand-over links that very file rather
        # than writing another: ``betblock.handover``), and the writer's ``extra``
        self.path: Path | None = None
        self.inode: int | None = None
        self.extra: Any = None
        self._offsets = offsets
        self._values = values
        self.get: Callable[..., int | None] = _lookup(mm, nbuckets, maxb, fbits, offsets, values) if count else _empty

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, name: bytes) -> int:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, bytes) and self.get(name) is not None

    def __iter__(self) -> Iterator[bytes]:
        return (name for name, _ in self.items())  # type: ignore[attr-defined]

    def items(self) -> Iterator[tuple[bytes, int]]:  # type: ignore[override]
        mm = self._mm
        if mm is None or not self._count:
            return
        entries, heap = self._offsets[4], self._offsets[5]
        values = self._values
        ents = array("I")
        ents.frombytes(mm[entries : entries + 8 * self._count])
        if sys.byteorder != "little":
            ents.byteswap()
        for i in range(0, len(ents), 2):
            start, packed = heap + ents[i], ents[i + 1]
            yield mm[start : start + (packed & 255)], values[packed >> 8]

    def values(self) -> Iterator[int]:  # type: ignore[override]
        return (value for _, value in self.items())

    def keys(self) -> Iterator[bytes]:  # type: ignore[override]
        return iter(self)


def _empty(name: bytes, default: int | None = None) -> int | None:
    return default


def _lookup(mm: Any, nbuckets: int, maxb: int, fbits: int, offsets: list[int], values: tuple[int, ...]) -> Callable[..., int | None]:
    """``get(name, default=None)`` over the mapped sections. Kept to the fewest Python steps:
    CRC and one byte of the filter (most misses end here); then one unpack of the bucket's
    bounds, one of its hashes, and only on a hash match an unpack of the entry and a slice of
    the name."""
    shift = 32 - nbuckets.bit_length() + 1
    filt, buckets, hashes, entries, heap = offsets[1:6]
    fmask = (1 << fbits) - 1
    runs = [struct.Struct(f"<{n}I").unpack_from for n in range(maxb + 1)]

    def get(name: bytes, default: int | None = None, _crc: Callable[[bytes], int] = crc32,
            _bounds: Callable[..., tuple[int, int]] = _U32X2.unpack_from, _runs: list[Callable[..., tuple[int, ...]]] = runs,
            _mm: Any = mm, _f: int = filt, _fmask: int = fmask, _shift: int = shift, _b: int = buckets, _h: int = hashes, _e: int = entries,
            _heap: int = heap, _values: tuple[int, ...] = values) -> int | None:
        h = _crc(name)
        if not _mm[_f + (h & _fmask)]:
            return default
        s, e = _bounds(_mm, _b + (h >> _shift << 2))
        if s == e:
            return default
        run = _runs[e - s](_mm, _h + (s << 2))
        if h not in run:
            return default
        i = run.index(h)
        while True:
            start, packed = _bounds(_mm, _e + (s + i << 3))
            start += _heap
            if _mm[start : start + (packed & 255)] == name:
                return _values[packed >> 8]
            try:  # another name with the same hash (rare): look further along the run
                i = run.index(h, i + 1)
            except ValueError:
                return default

    return get
