#!/usr/bin/env python3
"""betblock benchmark: betblock against Unbound and PowerDNS Recursor, same list, same upstream,
same load.

One command builds the data (bench/data/), starts an NSD upstream on 127.0.0.1:BASE_PORT,
then for every list size runs each peer in turn, pinned to the server CPU:

  1. start it; time until the last listed name is answered NXDOMAIN (list load time);
  2. check a listed name, a subdomain of one and an allowed name; RSS once loaded;
  3. ask 2,000 unique names under the upstream's wildcard zone one at a time, through the
     peer and straight to NSD: what a cache miss adds to the round trip (median, p99);
  4. for each mix, run dnsperf from the other CPU and record QPS, loss, latency, the
     server's CPU time per answered query and its RSS (allowed and mix after a warm-up; miss:
     unique names, each asked once, so every query is a cache miss);
  5. stop it by PID, then empty its run directory (unless --keep).

The records go to bench/results/RUN.jsonl, the table to bench/results/RUN.md and stdout.
Everything stays on 127.0.0.1; every process started here is stopped by PID; every step has a
time limit. See bench/README.md.

Standard library only. betblock is started as a program and never imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gen_data
import peers
import procs
import report

BENCH = Path(__file__).resolve().parent
DATA, RUNS, RESULTS = BENCH / "data", BENCH / "run", BENCH / "results"
MIXES = report.MIX_ORDER
QUERY_FILE = {"blocked": "q-blocked-{size}.txt", "allowed": "q-allowed.txt", "mix": "q-mix-{size}.txt",
              "miss": "q-miss.txt"}
POLL_S = 0.02
IDLE_PCT = 3.0  # foreign CPU time (% of one core, both CPUs together) that counts as idle
WARMUP_QPS = 5000


class BenchError(Exception):
    """A peer could not be measured; recorded, and the run goes on with the next peer."""


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---------------------------------------------------------------------------- dnsperf
def dnsperf_args(a: argparse.Namespace) -> list[str]:
    return ["-s", "127.0.0.1", "-p", "{port}", "-d", "{file}", "-c", str(a.clients), "-T", "1",
            "-q", str(a.qmax), "-t", "2"]


def dnsperf(a: argparse.Namespace, port: int, qfile: Path, extra: list[str], limit: float) -> dict:
    """Run dnsperf pinned to the client CPU; its figures plus its own CPU time."""
    args = [w.replace("{port}", str(port)).replace("{file}", str(qfile)) for w in dnsperf_args(a)]
    cmd = ["taskset", "-c", str(a.perf_cpu), "dnsperf", *args, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        # On timeout subprocess.run kills dnsperf (by its PID) and waits for it.
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise BenchError(f"dnsperf did not finish within {limit:.0f} s") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = parse_dnsperf(done.stdout)
    if res["qps"] is None:
        raise BenchError(f"dnsperf gave no result (rc {done.returncode}): {done.stdout[-500:]!r}")
    res["client_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return res


def parse_dnsperf(text: str) -> dict:
    def num(pattern: str, cast=float):
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else None

    rcodes = {}
    m = re.search(r"Response codes:\s*(.*)", text)
    if m:
        rcodes = {code: int(n) for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1))}
    latency = num(r"Average Latency \(s\):\s+([\d.]+)")
    return {"sent": num(r"Queries sent:\s+(\d+)", int),
            "completed": num(r"Queries completed:\s+(\d+)", int),
            "lost": num(r"Queries lost:\s+(\d+)", int),
            "qps": num(r"Queries per second:\s+([\d.]+)"),
            "run_s": num(r"Run time \(s\):\s+([\d.]+)"),
            "latency_ms": None if latency is None else latency * 1000,
            "rcodes": rcodes}


# ---------------------------------------------------------------------------- one peer
def wait_idle(a: argparse.Namespace, ours: list[procs.Server]) -> float:
    """Wait (at most --wait-idle s) until other programs leave both CPUs alone; seconds waited.

    Samples one second at a time: task time on each CPU minus our own processes' time. A run
    started while something else is busy measures that program as much as the server.
    """
    t0 = time.monotonic()
    said = False
    while True:
        c0 = {c: procs.core_ticks(c) for c in (a.server_cpu, a.perf_cpu)}
        own0, self0 = sum(s.cpu_ticks() for s in ours), os.times()
        time.sleep(1.0)
        c1 = {c: procs.core_ticks(c) for c in (a.server_cpu, a.perf_cpu)}
        own1, self1 = sum(s.cpu_ticks() for s in ours), os.times()
        own = (own1 - own0) + (self1.user + self1.system - self0.user - self0.system) * procs.CLK_TCK
        busy = sum(c1[c]["task"] + c1[c]["steal"] - c0[c]["task"] - c0[c]["steal"] for c in c0) - own
        total = max(1, min(c1[c]["total"] - c0[c]["total"] for c in c0))
        pct = 100 * busy / total
        waited = time.monotonic() - t0
        if pct < IDLE_PCT:
            if said:
                log(f"  CPUs {a.server_cpu},{a.perf_cpu} idle after {waited:.0f} s")
            return waited
        if waited > a.wait_idle:
            log(f"  !! other programs still use {pct:.0f} % of a CPU after {waited:.0f} s: measuring anyway")
            return waited
        if not said:
            log(f"  other programs use {pct:.0f} % of a CPU: waiting up to {a.wait_idle} s for quiet")
            said = True


def wait_until(server: procs.Server, what: str, probe, limit: float) -> float:
    """Call `probe` every POLL_S until it is true; seconds since the server started."""
    while True:
        if not server.alive():
            raise BenchError(f"{server.name} exited (rc {server.proc.returncode}) before {what}")
        if probe():
            return time.monotonic() - server.started
        if time.monotonic() - server.started > limit:
            raise BenchError(f"{server.name}: no {what} within {limit:.0f} s")
        time.sleep(POLL_S)


def first_word(path: Path) -> str:
    with path.open() as f:
        return f.readline().split()[0]


def last_word(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
        return f.read().decode().split()[-1]


COUNT_FIELD = re.compile(rb'"count":\s*(\d+)')


def count_hits(path: Path | None) -> dict:
    """Lines, bytes and hits of a hits.jsonl; a line with a "count" field stands for that many.
    None (or no such file): nothing to count."""
    if path is None or not path.exists():
        return {"hits_lines": None, "hits_bytes": None, "hits_counted": None}
    lines = hits = 0
    rest = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            body, rest = chunk[:cut], chunk[cut:]
            n = body.count(b"\n")
            counts = COUNT_FIELD.findall(body)
            lines += n
            hits += sum(int(c) for c in counts) + (n - len(counts))  # no count field: one hit
    return {"hits_lines": lines, "hits_bytes": path.stat().st_size, "hits_counted": hits}


def measure(a: argparse.Namespace, job: peers.Job, server: procs.Server, upstream: procs.Server,
            mix: str, qfile: Path, extra: list[str] = (), idle: bool = True) -> dict:
    """One closed-loop dnsperf run and what the server, the upstream and both CPUs did meanwhile
    (after waiting for other programs to go idle, unless ``idle`` is false)."""
    waited = wait_idle(a, [server, upstream]) if idle else 0.0
    everyone0 = procs.all_ticks()
    core0, ticks0, up0 = procs.core_ticks(a.server_cpu), server.cpu_ticks(), upstream.cpu_ticks()
    pcore0, self0 = procs.core_ticks(a.perf_cpu), os.times()
    r = dnsperf(a, job.port, qfile, ["-l", str(a.duration), *extra], limit=a.duration + 30)
    core1, ticks1, up1 = procs.core_ticks(a.server_cpu), server.cpu_ticks(), upstream.cpu_ticks()
    pcore1, self1 = procs.core_ticks(a.perf_cpu), os.times()
    everyone1 = procs.all_ticks()
    if not server.alive():
        raise BenchError(f"{job.peer} exited (rc {server.proc.returncode}) during the {mix} run")
    core = {k: core1[k] - core0[k] for k in core0}
    pcore = {k: pcore1[k] - pcore0[k] for k in pcore0}
    cpu_ticks = ticks1 - ticks0
    # A process's stime includes the softirq ticks that hit it, while /proc/stat files them
    # under softirq, so foreign time is task + softirq minus our processes. On the client CPU
    # ours are dnsperf, NSD and this harness.
    ours = (r["client_cpu_s"] + self1.user + self1.system - self0.user - self0.system) * procs.CLK_TCK \
        + (up1 - up0)
    run_s = r["run_s"] or a.duration
    cpu_s = cpu_ticks / procs.CLK_TCK

    def share(ticks: float, total: int) -> float:
        return round(100 * max(0.0, ticks) / max(total, 1), 1)

    # Who else ran during the run (a process that started or ended meanwhile is not seen).
    mine = set(server.pids()) | set(upstream.pids()) | {os.getpid()}
    others = sorted(((everyone1[p][1] - everyone0[p][1], everyone1[p][0], p) for p in everyone1
                     if p in everyone0 and p not in mine), reverse=True)
    r["others_top"] = [f"`{procs.command_line(pid, name)}` (pid {pid}) {share(t, pcore['total'])} %"
                       for t, name, pid in others[:3]
                       if t >= 0.01 * pcore["total"]]
    r.update(type="run", peer=job.peer, size=job.size, mix=mix, query_file=qfile.name,
             waited_idle_s=round(waited, 1),
             server_cpu_s=round(cpu_s, 2), server_cpu_pct=round(100 * cpu_s / run_s, 1),
             client_cpu_pct=round(100 * r["client_cpu_s"] / run_s, 1),
             # Near zero when the peer's cache works: the allowed names were warmed.
             upstream_cpu_pct=round(100 * (up1 - up0) / procs.CLK_TCK / run_s, 1),
             # Other programs on either CPU, and time the hypervisor took: both make the
             # server (or dnsperf) look slower than it is.
             foreign_pct=share(core["task"] + core["softirq"] - cpu_ticks, core["total"]),
             steal_pct=share(core["steal"], core["total"]),
             softirq_pct=share(core["softirq"], core["total"]),
             client_foreign_pct=share(pcore["task"] + pcore["softirq"] - ours, pcore["total"]),
             server_core_idle_pct=share(core["idle"], core["total"]),
             client_core_idle_pct=share(pcore["idle"], pcore["total"]),
             server_core_ticks=core, client_core_ticks=pcore,
             client_steal_pct=share(pcore["steal"], pcore["total"]),
             us_per_query=round(cpu_s / r["completed"] * 1e6, 2) if r["completed"] else None,
             rss_after_kib=server.rss_kib(), pss_after_kib=server.pss_kib(),
             server_procs=len(server.pids()))
    return r


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def miss_latency(a: argparse.Namespace, job: peers.Job, server: procs.Server, upstream: procs.Server) -> dict:
    """Round trips of unique names (each a cache miss) through the peer, and of the same names
    straight to NSD just before: the difference is what the peer adds to a miss."""
    names = [n for n in (DATA / "q-miss-probe.txt").read_text().split() if n]
    waited = wait_idle(a, [server, upstream])
    direct, direct_lost = procs.round_trips(job.upstream_port, names)
    via, via_lost = procs.round_trips(job.port, names)
    rec: dict = {"type": "latency", "peer": job.peer, "size": job.size, "names": len(names),
                 "waited_idle_s": round(waited, 1), "direct_lost": direct_lost, "lost": via_lost}
    for key, values in (("direct", direct), ("via", via)):
        for label, q in (("median", 0.5), ("p99", 0.99)):
            v = _percentile(values, q)
            rec[f"{key}_{label}_us"] = round(v * 1e6, 1) if v is not None else None
    for label in ("median", "p99"):
        d, v = rec[f"direct_{label}_us"], rec[f"via_{label}_us"]
        rec[f"added_{label}_us"] = round(v - d, 1) if d is not None and v is not None else None
    return rec


def run_peer(a: argparse.Namespace, job: peers.Job, upstream: procs.Server, emit,
             mixes: list[str] | None = None, ready: bool = False) -> None:
    """Start ``job``'s server, check it, run each mix, stop it. ``ready``: the mixes start 1 s
    after the last listed name is answered, without waiting for the server's own background
    work or other programs to finish (what an ISP that restarts a node at peak gets); the
    records' peer is then ``PEER@ready``."""
    mixes = a.mixes if mixes is None else mixes
    if ready:
        label = f"{job.peer}@ready"
        inner = emit

        def emit(rec: dict) -> None:  # noqa: F811 - the same records, under the peer's ready label
            if rec.get("peer") == job.peer:
                rec = {**rec, "peer": label}
            inner(rec)
    wait_idle(a, [upstream])
    shutil.rmtree(job.run_dir, ignore_errors=True)  # no cache or state left from an earlier run
    job.run_dir.mkdir(parents=True)
    if not procs.port_free(job.port):
        raise BenchError(f"port {job.port} is already in use")
    launch = peers.launch(job, a.betblock_cmd)
    if not shutil.which(launch.argv[0]):
        raise BenchError(f"{launch.argv[0]!r} is not an executable")
    listed, last = first_word(job.blocklist), last_word(job.blocklist)
    allowed = first_word(DATA / "q-allowed.txt")
    log_path = RUNS / f"{job.peer}-{job.size}.log"
    core0 = procs.core_ticks(a.server_cpu)
    server = procs.Server(job.peer, launch.argv, a.server_cpu, log_path, launch.cwd)
    STARTED.append(server)
    try:
        # The last name: a server that loads its list in order has loaded all of it by then.
        load_s = wait_until(server, f"NXDOMAIN for {last}",
                            lambda: (r := procs.query(job.port, last, timeout=0.2)) is not None and r.blocked,
                            a.ready_timeout)
        core1, load_ticks = procs.core_ticks(a.server_cpu), server.cpu_ticks()
        # Other programs on the server's CPU while it loaded stretch the load time.
        load_foreign = 100 * max(0, core1["task"] + core1["softirq"] + core1["steal"] - core0["task"]
                                 - core0["softirq"] - core0["steal"] - load_ticks) / max(1, core1["total"] - core0["total"])
        sub = "zz9." + listed
        got = {"listed": procs.query(job.port, listed, timeout=2, edns=True),
               "subdomain": procs.query(job.port, sub, timeout=2, edns=True),
               "allowed": procs.query(job.port, allowed, timeout=3, edns=True)}
        ok = (got["listed"] is not None and got["listed"].blocked and got["subdomain"] is not None
              and got["subdomain"].blocked and got["allowed"] is not None and got["allowed"].resolved)
        checks = {"listed": [listed, str(got["listed"])], "subdomain": [sub, str(got["subdomain"])],
                  "allowed": [allowed, str(got["allowed"])]}
        time.sleep(1.0)  # let the allocator settle after the load before reading RSS
        rss_ready, pss_ready, nprocs = server.rss_kib(), server.pss_kib(), len(server.pids())
        # Work a server does after it answers (betblock writes the lists into its feed store in
        # the background) must not eat into the first measured run: wait until its own CPU
        # use falls under 5 % for half a second, at most 120 s, and report when that was.
        settle_t0 = time.monotonic()
        while not ready and time.monotonic() - settle_t0 < 120:
            before = server.cpu_ticks()
            time.sleep(0.5)
            if (server.cpu_ticks() - before) / procs.CLK_TCK < 0.025:
                break
        settle_s = round(load_s + 1.0 + time.monotonic() - settle_t0, 2)
        log(f"{job.peer} {job.size}: pid {server.pid} on :{job.port} loaded in {load_s:.2f} s "
            f"({load_ticks / procs.CLK_TCK:.2f} s CPU, others {load_foreign:.0f} % of its CPU meanwhile), "
            f"RSS {rss_ready / 1024:,.0f} MiB, PSS {pss_ready / 1024:,.0f} MiB over {nprocs} processes; " + "; ".join(f"{k} {v[1]}" for k, v in checks.items())
            + f"; idle again {settle_s:.1f} s after start" + ("" if ok else "  <-- CHECK FAILED"))
        load_rec = {"type": "load", "peer": job.peer, "size": job.size, "port": job.port,
                    "pid": server.pid, "cmd": shlex.join(launch.argv), "answer": launch.describe,
                    # betblock's tree may change between peers of one run: the rev it started from.
                    "rev": git_rev() if job.peer.startswith("betblock") else None,
                    "load_s": round(load_s, 3), "load_cpu_s": round(load_ticks / procs.CLK_TCK, 2),
                    "settle_s": settle_s,
                    "load_foreign_pct": round(load_foreign, 1), "rss_ready_kib": rss_ready, "checks": checks,
                    "pss_ready_kib": pss_ready, "server_procs": nprocs,
                    "checks_ok": ok}
        emit(load_rec)

        if "miss" in mixes:
            lat = miss_latency(a, job, server, upstream)
            emit(lat)
            log(f"  miss latency (2,000 names one at a time): median {lat['via_median_us']} µs, p99 "
                f"{lat['via_p99_us']} µs; NSD direct {lat['direct_median_us']} / {lat['direct_p99_us']} µs; "
                f"added {lat['added_median_us']} / {lat['added_p99_us']} µs; lost {lat['lost']}")

        warmed = False
        for mix in mixes:
            if mix in ("allowed", "mix") and not warmed:
                # Every allowed name once, at a bounded rate: each is a cache miss forwarded
                # to NSD. Afterwards the allowed names in the allowed and mix runs are hits.
                w = dnsperf(a, job.port, DATA / "q-allowed.txt", ["-n", "1", "-Q", str(WARMUP_QPS)],
                            limit=gen_data.N_ALLOWED / WARMUP_QPS + 30)
                emit({"type": "warmup", "peer": job.peer, "size": job.size, **w})
                log(f"  warm-up  {w['completed']:,} answered in {w['run_s']:.2f} s, lost {w['lost']}, "
                    f"{w['rcodes']}")
                warmed = True
            qfile = DATA / QUERY_FILE[mix].format(size=job.size)
            # Misses: each name once (-n 1), and no repeat, since a second pass would hit the cache.
            extra, retries = (["-n", "1"], 0) if mix == "miss" else ([], a.retries)
            for attempt in range(1, retries + 2):
                r = measure(a, job, server, upstream, mix, qfile, extra, idle=not ready)
                r["attempt"] = attempt
                emit(r)
                log(f"  {mix:8s} {r['qps']:>10,.0f} qps  {r['us_per_query']} µs/q  server CPU "
                    f"{r['server_cpu_pct']}%  dnsperf CPU {r['client_cpu_pct']}%  NSD CPU "
                    f"{r['upstream_cpu_pct']}%  other/steal on CPU {a.server_cpu} {r['foreign_pct']}/"
                    f"{r['steal_pct']}%, on CPU {a.perf_cpu} {r['client_foreign_pct']}/{r['client_steal_pct']}%  "
                    f"lost {r['lost']}  lat {r['latency_ms']:.3f} ms  {r['rcodes']}  "
                    f"RSS {r['rss_after_kib'] / 1024:,.0f} MiB")
                if not report.disturbed(r):
                    break
                if attempt <= retries:
                    log(f"  {mix}: other programs shared the CPUs during the run; repeating it "
                        f"({attempt}/{a.retries})")
    finally:
        server.stop()
        STARTED.remove(server)
    rc = server.proc.returncode
    if rc not in (0, -signal.SIGTERM):
        log(f"  note: {job.peer} exited with rc {rc} after SIGTERM")
    # From ready, each mix has a start of its own: the hits file holds the last one's only, so
    # it is not set against the answers of all of them.
    hits = count_hits(job.run_dir / "hits.jsonl") if not ready else count_hits(None)
    if hits["hits_lines"] is not None:
        log(f"  hits.jsonl: {hits['hits_lines']:,} lines, {hits['hits_counted']:,} hits, "
            f"{hits['hits_bytes'] / 2**20:,.0f} MiB")
    emit({"type": "stop", "peer": job.peer, "size": job.size, "exit_rc": rc, **hits})


# ---------------------------------------------------------------------------- main
STARTED: list[procs.Server] = []


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def versions() -> str:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    pkgs = out(["dpkg-query", "-W", "-f", "${Package} ${Version}, ", "unbound", "pdns-recursor", "nsd", "dnsperf"])
    return pkgs.rstrip(", ")


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(peers.REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", help="list sizes, comma-separated (default: 100k,1m; --quick: 10k)")
    ap.add_argument("--duration", type=int, help="seconds per dnsperf run, -l (default: 15; --quick: 3)")
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma-separated from {','.join(MIXES)}")
    ap.add_argument("--peers", default="unbound,pdns,betblock",
                    help="comma-separated from unbound,pdns,betblock,betblock-default (betblock as "
                         "shipped: hits into the SQLite store)")
    ap.add_argument("--after", default="idle",
                    help="when the mixes start: idle (after the server's background work and other "
                         "programs went quiet), ready (a fresh start per mix, from 1 s after the last "
                         "listed name is answered; rows PEER@ready), or idle,ready (default: idle)")
    ap.add_argument("--quick", action="store_true", help="smoke check: 10k list, 3 s runs")
    ap.add_argument("--betblock-cmd", default=peers.BETBLOCK_CMD,
                    help="command that starts betblock in the foreground; placeholders {config}, "
                         "{port}, {dir}, {blocklist}, {upstream} (default: %(default)s)")
    ap.add_argument("--base-port", type=int, default=5300,
                    help="NSD upstream port; unbound uses +1, pdns +3, betblock +10 (default: 5300)")
    ap.add_argument("--server-cpu", type=int, default=0, help="CPU of the server under test (default: 0)")
    ap.add_argument("--perf-cpu", type=int, default=1,
                    help="CPU of dnsperf, the NSD upstream and this harness (default: 1)")
    ap.add_argument("--clients", type=int, default=10, help="dnsperf -c (default: 10)")
    ap.add_argument("--qmax", type=int, default=100, help="dnsperf -q, queries in flight (default: 100)")
    ap.add_argument("--ready-timeout", type=int, default=300,
                    help="seconds a peer may take to load its list (default: 300)")
    ap.add_argument("--seed", type=int, default=42, help="data seed (default: 42)")
    ap.add_argument("--keep", action="store_true", help="keep run directories (configs, hits.jsonl)")
    ap.add_argument("--retries", type=int, default=2,
                    help="repeat a run disturbed by other programs up to this many times; the table "
                         "shows the least disturbed attempt, the JSON keeps all (default: 2)")
    ap.add_argument("--wait-idle", type=int, default=120,
                    help="before each load and run, wait up to this many seconds for other programs "
                         "to leave both CPUs idle; 0 only checks (default: 120)")
    a = ap.parse_args(argv)
    a.sizes = [s.strip().lower() for s in (a.sizes or ("10k" if a.quick else "100k,1m")).split(",") if s.strip()]
    a.duration = a.duration or (3 if a.quick else 15)
    a.mixes = [m for m in MIXES if m in {x.strip() for x in a.mixes.split(",")}]
    a.peers = [p.strip() for p in a.peers.split(",") if p.strip()]
    try:
        for s in a.sizes:
            gen_data.parse_size(s)
    except ValueError as exc:
        ap.error(str(exc))
    if not a.mixes:
        ap.error(f"--mixes: choose from {','.join(MIXES)}")
    a.after = [t for t in a.after.split(",") if t]
    if not a.after or set(a.after) - {"idle", "ready"}:
        ap.error("--after: idle, ready or idle,ready")
    if bad := [p for p in a.peers if p not in peers.PEERS]:
        ap.error(f"--peers: unknown {bad}; choose from {','.join(peers.PEERS)}")
    if not 1 <= a.duration <= 600:
        ap.error("--duration must be 1..600")
    if not 1024 <= a.base_port <= 65000:
        ap.error("--base-port must be 1024..65000")
    cpus = os.sched_getaffinity(0)
    if a.server_cpu not in cpus or a.perf_cpu not in cpus or a.server_cpu == a.perf_cpu:
        ap.error(f"--server-cpu and --perf-cpu must be two different CPUs of {sorted(cpus)}")
    return a


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    tools = ["taskset", "dnsperf", "nsd"] + [peers.BINARY[p] for p in a.peers if p in peers.BINARY]
    if missing := [t for t in tools if not shutil.which(t)]:
        print(f"missing programs: {' '.join(missing)} (apt-get install dnsperf nsd unbound pdns-recursor)",
              file=sys.stderr)
        return 2
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally below stops every server.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    # The harness polls and waits on the client CPU, never on the server's.
    os.sched_setaffinity(0, {a.perf_cpu})

    gen_data.ensure(a.sizes, a.seed, DATA)
    for d in (RUNS, RESULTS):
        d.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d-%H%M%S")
    jsonl = RESULTS / f"{run_id}.jsonl"
    records: list[dict] = []

    def emit(rec: dict) -> None:
        records.append(rec)
        with jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "?")
    emit({"type": "meta", "run_id": run_id, "argv": argv, "sizes": a.sizes, "peers": a.peers, "after": a.after,
          "mixes": a.mixes, "duration": a.duration, "server_cpu": a.server_cpu, "perf_cpu": a.perf_cpu,
          "dnsperf_args": " ".join(dnsperf_args(a) + ["-l", str(a.duration)])
                          .replace("{port}", "PORT").replace("{file}", "FILE"),
          "host": f"{os.cpu_count()} CPUs ({cpu_model}), kernel {os.uname().release}, "
                  f"load average at start {Path('/proc/loadavg').read_text().split()[0]}",
          "versions": versions(), "betblock_rev": git_rev(), "seed": a.seed})
    log(f"run {run_id}: peers {','.join(a.peers)}, sizes {','.join(a.sizes)}, mixes "
        f"{','.join(a.mixes)}, {a.duration} s per run")
    status = "complete"
    try:
        up_dir = RUNS / "nsd-upstream"
        shutil.rmtree(up_dir, ignore_errors=True)
        up_dir.mkdir(parents=True)
        if not procs.port_free(a.base_port):
            print(f"port {a.base_port} (upstream) is in use: pick another --base-port", file=sys.stderr)
            return 2
        zones = [(z, DATA / f"{z}.zone") for z in (gen_data.ALLOWED_ZONE, gen_data.MISS_ZONE)]
        nsd = procs.Server("nsd", peers.nsd(up_dir, a.base_port, zones),
                           a.perf_cpu, RUNS / "nsd-upstream.log", up_dir)
        STARTED.append(nsd)
        allowed = first_word(DATA / "q-allowed.txt")
        try:
            wait_until(nsd, f"an A record for {allowed}",
                       lambda: (r := procs.query(a.base_port, allowed)) is not None and r.resolved, 30)
        except BenchError as exc:
            print(f"{exc}\n{tail(RUNS / 'nsd-upstream.log')}", file=sys.stderr)
            return 1
        # A peer that forwards a listed name must not get an NXDOMAIN that looks like a block.
        outside = procs.query(a.base_port, first_word(DATA / f"blocklist-{a.sizes[0]}.txt"))
        log(f"upstream nsd pid {nsd.pid} on 127.0.0.1:{a.base_port}; a listed name there gets "
            f"{outside} (must not be NXDOMAIN)")
        if outside is not None and outside.blocked:
            print("the upstream answers NXDOMAIN outside its zone: load times would be wrong", file=sys.stderr)
            return 1

        for size in a.sizes:
            for peer in a.peers:
                job = peers.Job(peer, size, a.base_port + peers.PORT_OFFSET[peer], a.base_port,
                                RUNS / f"{peer}-{size}", DATA / f"blocklist-{size}.txt", DATA / f"rpz-{size}.zone")
                try:
                    if "idle" in a.after:
                        run_peer(a, job, nsd, emit)
                    if "ready" in a.after:
                        # One fresh start per mix, so each is measured from 1 s after ready.
                        for mix in (m for m in a.mixes if m != "miss"):
                            run_peer(a, job, nsd, emit, mixes=[mix], ready=True)
                except BenchError as exc:
                    log(f"!! {peer} {size}: {exc}")
                    log_tail = tail(RUNS / f"{peer}-{size}.log")
                    if log_tail:
                        print(log_tail, flush=True)
                    emit({"type": "error", "peer": peer, "size": size, "error": str(exc),
                          "log_tail": log_tail})
                finally:
                    if not a.keep:
                        shutil.rmtree(job.run_dir, ignore_errors=True)
    except BaseException as exc:  # Ctrl-C, SIGTERM, a bug: still stop everything and report
        status = f"interrupted ({type(exc).__name__}: {exc})"
        raise
    finally:
        for server in reversed(STARTED):
            server.stop()
        STARTED.clear()
        log("every started process is stopped")
        emit({"type": "end", "status": status})
        md = report.write(jsonl, records)
        print()
        print(md.read_text())
        log(f"records {jsonl}\n         table   {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
