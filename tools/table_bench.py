"""Micro-benchmark: the memory-mapped policy table (feeds.table) against the dict it replaces.

Prints, for one generated list (default 1M names like the bench's: 60 % two labels, 30 %
three, 10 % four; a few percent ALLOW and (self, below) pairs):

- write: ``write_table`` (wall and CPU seconds, best of 3), beside a save of the same snapshot
  in the saved snapshot's format before format 5 (marshalled dicts, SHA-256, fsync); open:
  ``open_table`` (CRC check of the whole file included) beside loading that marshal back into
  a dict (what a restart did before the saved snapshot became a table file); ``--write-only``
  adds what each allocates at its peak;
- ns per lookup: the pipeline's suffix walk (a fresh slice per suffix, every suffix until the
  first listed one) over 200,000 queries (3-4 labels, 90 % not listed) through ``dict.get``
  and ``PolicyTable.get``, best of 7 alternating rounds, minus the same walk calling a Python
  function that does nothing (the call of a dict method is cheaper than that: dict.get's
  figure is a little low);
- memory: N worker-like processes (each imports the resolver, loads the policy and, for the
  table, reads a byte of every page, so that all of it counts, as after long use) holding the
  table or each its own dict; RSS and PSS (``/proc/PID/smaps_rollup``: shared pages divided
  among the processes that map them) per process and summed, and a process with no policy.

    .venv/bin/python tools/table_bench.py [--names 1000000] [--workers 1,2,4]

Writes only under a temporary directory.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feeds.snapshot import ALLOW, PolicySnapshot, Rule, pair  # noqa: E402
from feeds.table import open_table, write_table  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
STEMS = ("lucky", "bet", "slot", "spin", "jackpot", "royal", "ace", "odds", "vegas", "bingo")
TLDS = ("bet", "casino", "com", "net", "pl", "it", "io")


def wire(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def listed(rng: random.Random, i: int) -> str:
    r = rng.random()
    base = f"{rng.choice(STEMS)}{''.join(rng.choices(LETTERS, k=3))}-{i:x}.{rng.choice(TLDS)}"
    if r < 0.6:
        return base
    if r < 0.9:
        return f"{''.join(rng.choices(LETTERS, k=3))}.{base}"
    return f"{''.join(rng.choices(LETTERS, k=2))}.{''.join(rng.choices(LETTERS, k=4))}.{base}"


def snapshot(n: int) -> PolicySnapshot:
    rng = random.Random(42)
    values = [1] * 90 + [ALLOW] * 3 + [pair(1, 0)] * 4 + [pair(0, 1)] * 3
    table = {wire(listed(rng, i)): rng.choice(values) for i in range(n)}
    rules = (None, Rule(1, ("a",), "A", "nxdomain"))
    return PolicySnapshot(version=1, table=table, rules=rules, stats={"names": n})


def queries(snap: PolicySnapshot, count: int) -> list[bytes]:
    """``count`` query names, 3-4 labels, 10 % listed names or names below them."""
    rng = random.Random(7)
    names = list(snap.table)
    out = []
    for i in range(count):
        if rng.random() < 0.1:
            out.append(rng.choice((b"", wire("www")[:-1])) + rng.choice(names))
        else:
            out.append(wire(f"{rng.choice(('www', 'cdn', 'api', 'img'))}.{''.join(rng.choices(LETTERS, k=8))}{i % 5000}"
                            f".{rng.choice(('com', 'org', 'example.net'))}"))
    return out


def walk(get: object, names: list[bytes]) -> int:
    """The pipeline's policy walk (resolver.pipeline): every suffix, a fresh slice each, until
    the first one in the table. Returns the number of lookups."""
    n = 0
    for name in names:
        off = 0
        while name[off]:
            n += 1
            if get(name[off:]) is not None:  # type: ignore[operator]
                break
            off += name[off] + 1
    return n


def _nothing(name: bytes, default: object = None) -> None:
    return None


def ns_per_lookup(gets: dict[str, object], names: list[bytes], rounds: int = 7) -> tuple[dict[str, float], int]:
    """ns per lookup of each ``get`` in the walk, best of ``rounds`` alternating rounds, minus the
    same walk calling a Python function that does nothing ("loop": slices, calls, the loop)."""
    best = {name: float("inf") for name in gets}
    loop = float("inf")
    count = walk(_nothing, names[:10])
    for _ in range(rounds):
        t = time.perf_counter()
        count = walk(_nothing, names)
        loop = min(loop, time.perf_counter() - t)
        for name, get in gets.items():
            t = time.perf_counter()
            walk(get, names)
            best[name] = min(best[name], time.perf_counter() - t)
    return {name: (s - loop) / count * 1e9 for name, s in best.items()} | {"loop": loop / count * 1e9}, count


def timed(fn, repeat: int = 3) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    wall = cpu = float("inf")
    out = None
    for _ in range(repeat):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t), min(cpu, time.process_time() - c)
    return wall, cpu, out


CHILD = r"""
import marshal, sys, time
sys.path.insert(0, sys.argv[3])
import resolver.pipeline  # a worker's imports
from pathlib import Path
kind, path = sys.argv[1], Path(sys.argv[2])
if kind == "table":
    from feeds.table import open_table
    table = open_table(path).table
    mm = table._mm
    sum(mm[i] for i in range(0, len(mm), 4096))  # every page touched: the worst case
elif kind == "dict":
    with open(path, "rb") as f:
        table = {}
        while True:
            try:
                table.update(marshal.load(f))
            except EOFError:
                break
print("ready", flush=True)
sys.stdin.read()
"""


def rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        out[key] = int(value.split()[0])
    return out


def memory(kind: str, path: Path, n: int) -> tuple[list[int], list[int]]:
    """RSS and PSS (KiB) of ``n`` processes holding the policy as ``kind`` at the same time."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, kind, str(path), str(ROOT)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        stats = [rollup(p.pid) for p in procs]
    finally:
        for p in procs:
            p.communicate("")
    return [s["Rss"] for s in stats], [s["Pss"] for s in stats]


def marshal_save(path: Path, snap: PolicySnapshot) -> None:
    """The saved snapshot's format before format 5 (the peer): the table as marshalled dicts of
    32,768 names, a SHA-256 of it all, fsynced."""
    import hashlib
    import marshal

    digest = hashlib.sha256()
    with open(path, "wb") as f:
        items = iter(snap.table.items())
        for _ in range(0, len(snap.table), 32768):
            data = marshal.dumps(dict(islice(items, 32768)))
            digest.update(data)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def marshal_load(path: Path) -> dict[bytes, int]:
    import hashlib
    import marshal

    table: dict[bytes, int] = {}
    with open(path, "rb") as f:
        hashlib.sha256(f.read())
        f.seek(0)
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            table.update(marshal.load(f))
    return table


def peak(fn) -> float:  # type: ignore[no-untyped-def]
    """MiB that ``fn`` allocates at its peak (Python objects and numpy arrays: both report to tracemalloc)."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200_000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--write-only", action="store_true", help="only the write and open figures (for 10M names)")
    args = ap.parse_args()
    snap = snapshot(args.names)
    with tempfile.TemporaryDirectory(prefix="table-bench-") as tmp:
        d = Path(tmp)
        tpath, spath = d / "policy.table", d / "snapshot.marshal"
        w_wall, w_cpu, _ = timed(lambda: write_table(snap, tpath))
        s_wall, s_cpu, _ = timed(lambda: marshal_save(spath, snap))
        o_wall, o_cpu, opened = timed(lambda: open_table(tpath))
        l_wall, l_cpu, _ = timed(lambda: marshal_load(spath))
        size = tpath.stat().st_size
        print(f"{args.names:,} names; table file {size / 2**20:.1f} MiB ({size / args.names:.1f} B/name), "
              f"saved snapshot {spath.stat().st_size / 2**20:.1f} MiB")
        print(f"write_table   {w_wall:.2f} s wall, {w_cpu:.2f} s CPU | marshal save (format 4) {s_wall:.2f} s wall, {s_cpu:.2f} s CPU")
        print(f"open_table    {o_wall:.3f} s wall, {o_cpu:.3f} s CPU | marshal load (format 4) {l_wall:.2f} s wall, {l_cpu:.2f} s CPU")
        if args.write_only:
            del opened
            print(f"memory above the snapshot while writing (tracemalloc peak): write_table {peak(lambda: write_table(snap, tpath)):.0f} MiB"
                  f" | marshal save {peak(lambda: marshal_save(spath, snap)):.0f} MiB")
            return

        names = queries(snap, args.queries)
        table = opened.table  # type: ignore[attr-defined]
        assert all(opened.match(q) == snap.match(q) for q in names)  # type: ignore[attr-defined]
        ns, count = ns_per_lookup({"dict.get": snap.table.get, "PolicyTable.get": table.get}, names)
        print(f"lookups: {count:,} in the walks of {args.queries:,} queries; ns per lookup, the walk without lookups "
              f"({ns['loop']:.0f} ns) subtracted: dict.get {ns['dict.get']:.0f}, PolicyTable.get {ns['PolicyTable.get']:.0f} "
              f"({ns['PolicyTable.get'] / ns['dict.get']:.1f}x)")

        # the dict children's input: the table as persist's slices of marshal
        import marshal

        with open(d / "policy.dict", "wb") as f:
            items = list(snap.table.items())
            for i in range(0, len(items), 32768):
                marshal.dump(dict(items[i : i + 32768]), f)
        del opened, table
        gc.collect()
        base_rss, base_pss = memory("none", d / "policy.table", 1)
        print(f"memory (MiB): a worker with no policy RSS {base_rss[0] / 1024:.0f}, PSS {base_pss[0] / 1024:.0f}")
        print("| workers | policy | RSS each | RSS sum | PSS sum | PSS over no-policy workers |")
        print("|--:|---|--:|--:|--:|--:|")
        for n in map(int, args.workers.split(",")):
            for kind, path in (("table", d / "policy.table"), ("dict", d / "policy.dict")):
                rss, pss = memory(kind, path, n)
                print(f"| {n} | {kind} | {max(rss) / 1024:.0f} | {sum(rss) / 1024:.0f} | {sum(pss) / 1024:.0f} | "
                      f"{(sum(pss) - n * base_pss[0]) / 1024:.0f} |", flush=True)


if __name__ == "__main__":
    main()
