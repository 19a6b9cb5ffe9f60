#!/usr/bin/env python3
"""Figures for the hit log (issue 4): writer cost, sustained recording under dnsperf, query
latency and size over a bulk-loaded store. Benchmarks, not tests: run by hand, on an idle box.

    .venv/bin/python bench/hitlog.py writer  [--hits 1000000]             # writer µs per hit, per store
    .venv/bin/python bench/hitlog.py dnsperf [--seconds 20] [--qps N] [--list 10k|100k]  # blocked QPS, server CPU per query, recording off/on, hits lost
    .venv/bin/python bench/hitlog.py query   [--rows 10000000] [--store sqlite|postgres]
    .venv/bin/python bench/hitlog.py all

PostgreSQL: BETBLOCK_BENCH_POSTGRES_DSN (default postgresql://postgres@127.0.0.1:5432/test); each
run uses a scratch schema and drops it. Scratch files go to bench/run/hitlog/ (not kept).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procs import _cpu_ticks, tree_pids  # noqa: E402  (bench/procs.py, beside this file)
from config.settings import HitsSettings  # noqa: E402
from feeds.compile import to_wire  # noqa: E402
from feeds.snapshot import Rule  # noqa: E402
from hits.privacy import ClientPrivacy  # noqa: E402
from hits.query import Filters  # noqa: E402
from hits.recorder import HitRecorder  # noqa: E402
from hits.store import HitStore  # noqa: E402
from hits.writer import HitWriter  # noqa: E402

RUN = ROOT / "bench" / "run" / "hitlog"
PG_DSN = os.environ.get("BETBLOCK_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
RULES = [
    (0.50, Rule(1, ("pl-mf",), "PL", "redirect", ipv4=("192.0.2.1",))),
    (0.30, Rule(2, ("it-adm",), "IT", "redirect", ipv4=("192.0.2.2",))),
    (0.19, Rule(3, ("cz-mf",), "CZ", "nxdomain")),
    (0.01, Rule(4, ("pl-mf", "ch-gespa"), "PL", "redirect", ipv4=("192.0.2.1",))),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Synth:
    """Hits shaped like a flood against a blocklist: Zipf over sites, a few names per site,
    clients from a pool of subscriber addresses, agencies by share."""

    def __init__(self, sites: int = 100_000, clients: int = 20_000, seed: int = 4) -> None:
        rnd = random.Random(seed)
        self.rnd = rnd
        self.sites = [f"s{i}-{rnd.randrange(1 << 30):x}.test" for i in range(sites)]
        weights = [1 / (i + 1) ** 1.1 for i in range(sites)]
        total = sum(weights)
        self.cum = []
        acc = 0.0
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.clients = [f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}" for _ in range(clients)]
        self.rule_of = [self._rule(rnd.random()) for _ in range(sites)]
        self.wires: dict[str, bytes] = {}

    @staticmethod
    def _rule(x: float) -> Rule:
        acc = 0.0
        for share, rule in RULES:
            acc += share
            if x < acc:
                return rule
        return RULES[-1][1]

    def wire(self, name: str) -> bytes:
        w = self.wires.get(name)
        if w is None:
            w = self.wires[name] = to_wire(name.encode())
        return w

    def site_index(self) -> int:
        import bisect

        return min(bisect.bisect_left(self.cum, self.rnd.random()), len(self.sites) - 1)

    def hits(self, n: int, t0: float, span: float) -> list[tuple]:
        rnd = self.rnd
        out = []
        for i in range(n):
            s = self.site_index()
            site = self.sites[s]
            prefix = ("", "www.", "m.", "api.")[rnd.randrange(4)]
            out.append(
                (t0 + span * i / n, self.clients[rnd.randrange(len(self.clients))], self.wire(prefix + site),
                 (1, 1, 1, 28, 65)[rnd.randrange(5)], self.rule_of[s], self.wire(site), 1795800000000)
            )
        return out


async def open_store(kind: str, tag: str) -> HitStore:
    if kind == "sqlite":
        from hits.sqlite import SqliteStore

        path = RUN / f"{tag}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        st: HitStore = SqliteStore(path)
    else:
        from hits.postgres import PostgresStore

        st = PostgresStore(PG_DSN, f"bench_{tag}_{os.getpid()}")
    await st.open()
    return st


async def drop_store(st: HitStore) -> None:
    await st.close()
    if st.kind == "postgres":
        await st.drop_schema()  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- writer
async def bench_writer(a: argparse.Namespace) -> dict:
    synth = Synth()
    per_batch = 100_000  # one flush at 100k blocked queries/s
    batches = [synth.hits(per_batch, 1795800000 + i, 1.0) for i in range(max(1, a.hits // per_batch))]
    n = sum(len(b) for b in batches)
    out: dict = {"hits": n}
    # JSON lines (the SIEM output) alone.
    rec = HitRecorder(HitsSettings(jsonl_path=RUN / "w.jsonl"))
    t = time.perf_counter()
    for b in batches:
        rec.format(b, {})
    out["jsonl_format_us"] = (time.perf_counter() - t) / n * 1e6
    rec.close()
    for kind in a.stores:
        st = await open_store(kind, "writer")
        w = HitWriter(st, ClientPrivacy("full"), "bench")
        await asyncio.to_thread(w.write, batches[0][:10], {})
        enc = store = 0.0

        def one(b: list[tuple]) -> tuple[float, float]:
            t0 = time.perf_counter()
            enc_batch = w.encode(b, {})
            t1 = time.perf_counter()
            st.write_batch(enc_batch)  # type: ignore[arg-type]
            return t1 - t0, time.perf_counter() - t1

        for b in batches:
            e, s_ = await asyncio.to_thread(one, b)
            enc += e
            store += s_
        out[f"{kind}_first_pass_us"] = (enc + store) / n * 1e6  # every name and client new to the store
        enc = store = 0.0
        for b in batches:  # steady state: the same names and clients again (a flood repeats them)
            e, s_ = await asyncio.to_thread(one, [(h[0] + 86400,) + h[1:] for h in b])
            enc += e
            store += s_
        out[f"{kind}_encode_us"] = enc / n * 1e6
        out[f"{kind}_store_us"] = store / n * 1e6
        out[f"{kind}_hits_per_s"] = n / (enc + store)
        out[f"{kind}_bytes_per_hit"] = (await st.size_bytes() or 0) / (2 * n)
        await drop_store(st)
        log(f"writer {kind}: encode {out[f'{kind}_encode_us']:.2f} µs/hit, store {out[f'{kind}_store_us']:.2f} µs/hit, "
            f"{out[f'{kind}_hits_per_s']:,.0f} hits/s")
    log(f"jsonl format: {out['jsonl_format_us']:.2f} µs/hit")
    return out


# ----------------------------------------------------------------------------- dnsperf
def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def run_dnsperf(a: argparse.Namespace, mode: str) -> dict:
    """One betblock (CPU 0) with recording ``mode``, dnsperf (CPU 1) at full speed."""
    d = RUN / f"dnsperf-{mode}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    port = _free_port(socket.SOCK_DGRAM)
    http = _free_port(socket.SOCK_STREAM)
    schema = f"bench_dnsperf_{os.getpid()}"
    hits = {
        "off": "enabled = false",
        "sqlite": f'store = "sqlite"\nsqlite_path = "{d / "hits.sqlite"}"',
        "postgres": f'store = "postgres"\npostgres_dsn = "{PG_DSN}"\npostgres_schema = "{schema}"',
        "jsonl": f'store = "none"\njsonl_path = "{d / "hits.jsonl"}"',
    }[mode]
    cfg = d / "betblock.toml"
    cfg.write_text(f"""
data_dir = "{d}"
[dns]
listen = ["127.0.0.1:{port}"]
tcp = false
[http]
listen = "127.0.0.1:{http}"
[warning_page]
enabled = false
[upstream]
servers = ["127.0.0.1:9"]
[log]
level = "warning"
[hits]
{hits}
[[agencies]]
id = "pl-mf"
action = "nxdomain"
lists = ["{ROOT / f'bench/data/blocklist-{a.list}.txt'}"]
""")
    proc = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg)],
        stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "wb"), cwd=ROOT,
    )
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        # Server CPU from here to its exit (the hits flushed at SIGTERM included): every process
        # of its tree now, then the reaped process's own and its reaped workers' rusage.
        cpu_before = sum(_cpu_ticks(p) for p in tree_pids(proc.pid)) / os.sysconf("SC_CLK_TCK")
        perf = subprocess.run(
            ["taskset", "-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(ROOT / f"bench/data/q-blocked-{a.list}.txt"),
             "-c", "10", "-T", "1", "-q", "500", "-t", "2", "-l", str(a.seconds)] + (["-Q", str(a.qps)] if a.qps else []),
            capture_output=True, text=True, timeout=a.seconds + 60,
        )
        qps = float(re.search(r"Queries per second:\s+([0-9.]+)", perf.stdout).group(1))  # type: ignore[union-attr]
        completed = int(re.search(r"Queries completed:\s+(\d+)", perf.stdout).group(1))  # type: ignore[union-attr]
        blocked = _metric(f"http://127.0.0.1:{http}/metrics", 'betblock_answers_total{kind="blocked"}')
        dropped_live = _metric(f"http://127.0.0.1:{http}/metrics", "betblock_hits_dropped_total")
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 120
        while True:
            pid, _status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        proc.returncode = 0 if pid else None
        stop_s = time.perf_counter() - t
        cpu = usage.ru_utime + usage.ru_stime - cpu_before if pid else float("nan")
    finally:
        if proc.returncode is None and proc.poll() is None:
            proc.kill()
    out = {"mode": mode, "qps": qps, "completed": completed, "blocked": int(blocked), "dropped": int(dropped_live), "stop_s": stop_s,
           "cpu_s": cpu, "cpu_us_per_query": cpu * 1e6 / completed}
    if mode in ("sqlite", "postgres"):
        status = subprocess.run([sys.executable, "-m", "betblock.cli", "hits", "--config", str(cfg), "status"],
                                capture_output=True, text=True, cwd=ROOT)
        st = json.loads(status.stdout)
        out.update(stored_hits=st["hits"], stored_rows=st["rows"], lost=int(blocked) - st["hits"], size_bytes=st["size_bytes"])
        if mode == "postgres":
            from hits.postgres import PostgresStore

            asyncio.run(PostgresStore(PG_DSN, schema).drop_schema())
    if mode == "jsonl":
        n = 0
        with open(d / "hits.jsonl", "rb") as f:
            for line in f:
                n += int(json.loads(line)["count"])
        out.update(stored_hits=n, lost=int(blocked) - n)
    log(f"dnsperf {mode}: {qps:,.0f} qps, {out['cpu_us_per_query']:.2f} µs server CPU per query, blocked {int(blocked):,}, " + ", ".join(f"{k} {v}" for k, v in out.items() if k in ("stored_hits", "stored_rows", "lost", "dropped")))
    return out


async def bench_dnsperf(a: argparse.Namespace) -> dict:
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf missing: tools/apt-install.sh dnsperf")
    return {m: await asyncio.to_thread(run_dnsperf, a, m) for m in a.modes}


# ----------------------------------------------------------------------------- query
async def bench_query(a: argparse.Namespace) -> dict:
    synth = Synth()
    st = await open_store(a.store, "query")
    w = HitWriter(st, ClientPrivacy("truncate"), "bench")
    days = 30
    t_end = time.time()
    t0 = t_end - days * 86400
    per_batch = 20_000
    nb = a.rows // per_batch
    started = time.perf_counter()
    for i in range(nb):
        b = synth.hits(per_batch, t0 + (t_end - t0) * i / nb, (t_end - t0) / nb)
        await asyncio.to_thread(w.write, b, {})
        if i % 50 == 0:
            log(f"  loaded {(i + 1) * per_batch:,} rows ({time.perf_counter() - started:.0f} s)")
    load_s = time.perf_counter() - started
    if a.store == "sqlite":
        await asyncio.to_thread(lambda: st._w.execute("ANALYZE"))  # type: ignore[attr-defined]
    else:
        await st.fetch("ANALYZE")
    size = await st.size_bytes() or 0
    rows = (await st.status())["rows"]
    out: dict = {"store": a.store, "rows": rows, "load_s": load_s, "bytes_per_row": size / rows, "mb_per_million": size / rows * 1e6 / 2**20}
    log(f"{a.store}: {rows:,} rows in {load_s:.0f} s, {size / rows:.1f} bytes/row")
    if a.store == "sqlite":  # where the bytes are (dbstat: pages per table and index); the WAL apart
        out["bytes_per_row_db_file"] = Path(st.path).stat().st_size / rows  # type: ignore[attr-defined]
        log(f"  database file {out['bytes_per_row_db_file']:.1f} bytes/row (the rest is the WAL)")
        per = await st.fetch("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        out["bytes_per_row_by_table"] = {name: round(b / rows, 2) for name, b in per if b / rows >= 0.05}
        log("  " + ", ".join(f"{k} {v}" for k, v in out["bytes_per_row_by_table"].items()))
    rnd = random.Random(9)

    async def timed(f: Filters, pages: int = 1) -> float:
        t = time.perf_counter()
        cursor = None
        for _ in range(pages):
            _hits, cursor = await st.page(f, 100, cursor)
            if cursor is None:
                break
        return (time.perf_counter() - t) * 1000

    cases = {
        "name (popular site)": lambda: Filters(name=synth.sites[rnd.randrange(20)]),
        "name (any site)": lambda: Filters(name=synth.sites[synth.site_index()]),
        "name (rare site)": lambda: Filters(name=synth.sites[rnd.randrange(50_000, 100_000)]),
        "agency": lambda: Filters(agency=rnd.choice(["pl-mf", "it-adm", "cz-mf"])),
        "agency (1% share)": lambda: Filters(agency="ch-gespa"),
        "agency + last day": lambda: Filters(agency=rnd.choice(["pl-mf", "it-adm", "cz-mf"]), since=t_end - 86400),
        "name + agency": lambda: Filters(name=synth.sites[synth.site_index()], agency="pl-mf"),
        "client network": lambda: Filters(client=f"{synth.clients[rnd.randrange(len(synth.clients))].rsplit('.', 1)[0]}.0/24"),
        "no filter, page 10": lambda: Filters(),
    }
    lat: dict = {}
    for label, make in cases.items():
        samples = [await timed(make(), 10 if "page 10" in label else 1) for _ in range(a.samples)]
        samples.sort()
        lat[label] = {"p50_ms": statistics.median(samples), "p95_ms": samples[int(len(samples) * 0.95) - 1], "max_ms": samples[-1]}
        log(f"  {label:22s} p50 {lat[label]['p50_ms']:7.1f} ms  p95 {lat[label]['p95_ms']:7.1f} ms  max {lat[label]['max_ms']:7.1f} ms")
    t = time.perf_counter()
    stats = await st.stats(30, 20)
    out["stats_ms"] = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    exported = 0
    async for chunk in st.iterate(Filters(agency="ch-gespa")):
        exported += len(chunk)
    out["export_rows_per_s"] = exported / (time.perf_counter() - t)
    out["latency"] = lat
    assert stats["per_agency_day"]
    if a.keep:
        log(f"kept store: {getattr(st, 'path', None) or getattr(st, 'schema', None)}")
        await st.close()
    else:
        await drop_store(st)
        if a.store == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(str(RUN / "query.sqlite") + suffix).unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["writer", "dnsperf", "query", "all"])
    ap.add_argument("--hits", type=int, default=1_000_000, help="writer: hits written")
    ap.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], help="writer: stores")
    ap.add_argument("--seconds", type=int, default=20, help="dnsperf: seconds per run")
    ap.add_argument("--modes", nargs="+", default=["off", "jsonl", "sqlite", "postgres"], help="dnsperf: recording modes")
    ap.add_argument("--qps", type=int, default=0, help="dnsperf: queries per second (-Q; default full speed)")
    ap.add_argument("--list", default="10k", help="dnsperf: list and query file size tag (bench/gen_data.py)")
    ap.add_argument("--rows", type=int, default=10_000_000, help="query: rows bulk-loaded")
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite", help="query: store")
    ap.add_argument("--samples", type=int, default=100, help="query: queries per case")
    ap.add_argument("--keep", action="store_true", help="query: keep the loaded store")
    a = ap.parse_args()
    RUN.mkdir(parents=True, exist_ok=True)
    results = {}
    if a.what in ("writer", "all"):
        results["writer"] = asyncio.run(bench_writer(a))
    if a.what in ("dnsperf", "all"):
        results["dnsperf"] = asyncio.run(bench_dnsperf(a))
    if a.what in ("query", "all"):
        results["query"] = asyncio.run(bench_query(a))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
