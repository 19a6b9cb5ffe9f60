#!/usr/bin/env python3
"""Where a hit's µs go, stage by stage, in one process (issue 11): the worker's append, its
batch to the control plane (framing and unpickling), the control plane's mapping of rules,
the writer's encoding and the store's transaction (each statement apart), and the checkpoint.

    .venv/bin/python bench/hitcost.py [--hits 400000] [--batch 50000] [--names 10000] [--clients 1000]

Hits are shaped like the bench's blocked mix seen by a worker: the memo path hands over the same
name, entry and client objects again and again (``Pipeline.answer``'s memo of blocked answers,
``resolver.udp``'s memo of client texts), one rule, A and AAAA. A batch is one second of hits at
``--batch`` blocked queries/s. CPU time of this process (``time.process_time``), the mean over a round's batches, best of
``--rounds``; benchmarks, not tests. ``--breakdown`` times the statements of today's transaction
one by one (after the rounds, on the same store). Scratch files under bench/run/hitcost/ (removed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from betblock import channel  # noqa: E402
from betblock.worker import HitBatcher  # noqa: E402
from betblock.workers import Workers  # noqa: E402
from config.settings import HitsSettings  # noqa: E402
from feeds.compile import to_wire  # noqa: E402
from feeds.snapshot import Rule  # noqa: E402
from hits.checkpoint import Checkpointer, CheckpointLog  # noqa: E402
from hits.privacy import ClientPrivacy  # noqa: E402
from hits.recorder import HitRecorder  # noqa: E402
from hits.sqlite import SqliteStore  # noqa: E402
from hits.writer import HitWriter  # noqa: E402

RUN = ROOT / "bench" / "run" / "hitcost"
RULE = Rule(1, ("pl-mf",), "pl-mf", "nxdomain")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Capture:
    """A channel writer that keeps what is written (the worker's side of the pipe)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.transport = SimpleNamespace(get_write_buffer_size=lambda: 0)

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.frames.append(data)


def make_inputs(a: argparse.Namespace) -> tuple[list[bytes], list[bytes], list[str]]:
    rnd = random.Random(7)
    sites = [f"lucky-{rnd.randrange(1 << 20):x}.bet".encode() for _ in range(a.names)]
    listed = [to_wire(s) for s in sites]
    prefixes = (b"", b"www.", b"m.", b"api.")
    qnames = [to_wire(prefixes[i % 4] + s) if i % 10 < 3 else listed[i] for i, s in enumerate(sites)]
    clients = [f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(a.clients)]
    return qnames, listed, clients


def timed(fn, *args) -> tuple[float, object]:
    gc.collect()
    t = time.process_time()
    out = fn(*args)
    return time.process_time() - t, out


def run(a: argparse.Namespace) -> dict[str, float]:
    qnames, listed, clients = make_inputs(a)
    rnd = random.Random(11)
    nb = a.hits // a.batch
    picks = [[(rnd.randrange(len(qnames)), rnd.randrange(len(clients)), (1, 28)[rnd.randrange(2)]) for _ in range(a.batch)] for _ in range(nb)]
    t0 = 1795800000.0
    RUN.mkdir(parents=True, exist_ok=True)
    stages: dict[str, list[float]] = {}

    def add(stage: str, seconds: float, hits: int) -> None:
        # Summed over the round's batches (a batch that writes deferred roll-ups pays for the
        # others), the best round kept.
        per = stages.setdefault(stage, [])
        if len(per) <= rnd_i:
            per.append(0.0)
        per[rnd_i] += seconds / (hits * nb) * 1e9

    rnd_i = 0
    for rnd_i in range(a.rounds):
        shutil.rmtree(RUN, ignore_errors=True)
        RUN.mkdir(parents=True)
        store = SqliteStore(RUN / "hits.sqlite")
        asyncio.run(store.open())
        cps = CheckpointLog(RUN / "hits.checkpoints")
        store.seal = cps.seal
        checkpointer = Checkpointer(store, cps)
        writer = HitWriter(store, ClientPrivacy("full"), "bench")
        recorder = HitRecorder(HitsSettings(buffer_size=1 << 22, flush_interval=1.0), writer=writer)
        pool = SimpleNamespace(rules={7: (None, RULE)}, recorder=recorder, unmapped=0)
        batcher = HitBatcher(True, 1 << 22)
        cap = Capture()
        batcher.writer = cap  # type: ignore[assignment]
        # Warm the writer's memos and the store's dictionaries (steady state: a flood repeats names).
        warm = [(t0 - 10, clients[i % len(clients)], qnames[i % len(qnames)], 1, RULE, listed[i % len(qnames)], 7) for i in range(max(len(qnames), len(clients)))]
        if not a.cold:
            writer.write(warm, {})
        for bi, pick in enumerate(picks):
            base = t0 + bi
            n = len(pick)
            step = 1.0 / n
            rec = batcher.record

            def append() -> None:
                for i, (q, c, qt) in enumerate(pick):
                    rec((base + i * step, clients[c], qnames[q], qt, RULE, listed[q], 7))

            s, _ = timed(append)
            add("1 worker: record() append (with the loop and the tuple)", s, n)
            s, _ = timed(batcher.flush)
            add("2 worker: flush (rule ids, pickle frame)", s, n)
            frame = cap.frames.pop()
            s, msg = timed(lambda: channel.pickle.loads(frame[4:]))
            add("3 control: unpickle", s, n)
            s, _ = timed(Workers._hits, pool, msg[1], msg[2], msg[3])  # type: ignore[index]
            add("4 control: map rule ids, record_batch", s, n)
            batch, agg = recorder.take()
            s, enc = timed(writer.encode, batch, agg)
            add("5 writer: HitWriter.encode", s, n)
            s, _ = timed(store.write_batch, enc)
            add("6 store: write_batch (SQLite transaction)", s, n)
            s, _ = timed(checkpointer.record)
            add("7 checkpoint line", s, n)
            writer._first_seen.update(enc.first_seen)  # type: ignore[union-attr]
        if a.breakdown and rnd_i == 0:
            stages.update(breakdown(store, writer, picks, qnames, listed, clients, t0 + len(picks)))
        recorder.close()
        asyncio.run(store.close())
    return {k: min(v) for k, v in stages.items()}


def breakdown(store, writer, picks, qnames, listed, clients, t0) -> dict[str, list[float]]:
    """The SQLite transaction statement by statement (the same statements as ``write_batch``)."""
    from hits.sqlite import _INSERT_ID, _insert_rows, _pairs, _rollups

    conn = store._w
    out: dict[str, list[float]] = {}
    for bi, pick in enumerate(picks):
        n = len(pick)
        hits = [(t0 + bi + i / n, clients[c], qnames[q], qt, RULE, listed[q], 7) for i, (q, c, qt) in enumerate(pick)]
        enc = writer.encode(hits, {})
        conn.execute("BEGIN IMMEDIATE")
        first = (conn.execute("SELECT MAX(id) FROM hits").fetchone()[0] or 0) + 1
        rows = enc.rows()

        def ins() -> None:
            conn.execute(_INSERT_ID, (first, *next(rows)))
            _insert_rows(conn, enc.columns)

        parts = [
            ("6a   hits rows", ins),
            ("6b   name_hits (sorted INSERT SELECT)", lambda: conn.execute("INSERT INTO name_hits (n, hid) SELECT name, id FROM hits WHERE id >= ? ORDER BY name, id", (first,))),
            ("6c   client_blocks", lambda: conn.executemany("INSERT INTO client_blocks (client, block) VALUES (?,?) ON CONFLICT DO NOTHING", enc.client_blocks(first))),
            ("6d   chain digest", lambda: enc.digest(b"\0" * 32, first)),
            ("6e   rule_blocks", lambda: conn.executemany("INSERT INTO rule_blocks (rule, block) VALUES (?,?) ON CONFLICT DO NOTHING", enc.rule_blocks(first))),
            ("6f   name_rules, first_seen", lambda: _pairs(conn, enc)),
            ("6g   roll-ups, if written per batch", lambda: _rollups(conn, {"daily_rule": enc.daily_rule, "daily_name": enc.daily_name, "daily_net": enc.daily_net})),
            ("6h   COMMIT", lambda: conn.execute("COMMIT")),
        ]
        for label, fn in parts:
            s, _ = timed(fn)
            out.setdefault(label, [0.0])[0] += s / (n * len(picks)) * 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hits", type=int, default=400_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--names", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=1_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="no warm-up: the first batches meet every name and client new")
    ap.add_argument("--breakdown", action="store_true", help="time each statement of the SQLite transaction")
    a = ap.parse_args()
    res = run(a)
    total = sum(v for k, v in res.items() if k[0].isdigit() and not k.startswith("6") or k.startswith("6 "))
    for k, v in sorted(res.items()):
        log(f"{k:55s} {v:8.0f} ns/hit")
    log(f"{'total (stages 1-7)':55s} {total:8.0f} ns/hit")
    shutil.rmtree(RUN, ignore_errors=True)
    print(json.dumps({"ns_per_hit": res, "total": total}))


if __name__ == "__main__":
    main()
