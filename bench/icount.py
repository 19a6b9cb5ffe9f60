#!/usr/bin/env python3
"""Instructions per answered query, counted by valgrind's callgrind: a figure the load of a
shared machine does not move.

Owns one measurement: each peer (betblock in a few configurations, PowerDNS Recursor, Unbound)
runs under ``valgrind --tool=callgrind --instr-atstart=no --trace-children=yes`` with the same
list and upstream as ``bench/bench.py``; after its list is loaded and (for the cached mix) every
allowed name was asked once, counting is switched on in every one of its processes, dnsperf
sends each query of the mix's file once, and the counters are dumped (``miss``: unique names
under NSD's wildcard zone, so every query goes upstream; NSD's own instructions are not counted). Instructions ÷ answered
queries is the figure, summed over the peer's processes (betblock's control plane included).

Instructions are not CPU time (a cache miss or a system call costs more than its count says,
and the kernel's share is not counted at all: callgrind sees user space only), but the same
binary, input and configuration give the same count on every run, loaded machine or not: this
is the tool to tell whether a change made the answering path cheaper or dearer, and by how much
against PowerDNS and Unbound in the same run. Wall-clock figures stay ``bench/bench.py``'s.

Standard library, valgrind and dnsperf; loopback only; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gen_data
import peers
import procs
from bench import BenchError, dnsperf, first_word, last_word, log, parse_dnsperf, wait_until  # noqa: F401

BENCH = Path(__file__).resolve().parent
DATA, RUNS = BENCH / "data", BENCH / "run" / "icount"
# betblock configurations: environment over the bench TOML (bench/peers.py).
VARIANTS = {
    "betblock-plain": {},  # the bench TOML alone: a build that predates a setting below
    "betblock": {"BETBLOCK_DNS__WORKERS": "0"},  # one process, JSON-lines hits (bench config)
    "betblock-w1": {"BETBLOCK_DNS__WORKERS": "1"},  # control plane + one worker, JSON-lines hits
    "betblock-default": {"BETBLOCK_DNS__WORKERS": "1", "BETBLOCK_HITS__STORE": "sqlite"},  # + the default SQLite store
}
QUERY_FILE = {"blocked": "q-blocked-{size}.txt", "allowed": "q-allowed.txt", "hot": "q-allowed.txt", "miss": "q-miss.txt"}
HOT_REPEAT = 10  # "hot": each allowed name this many times in a row (betblock's per-second memo)


def callgrind(args: list[str], pid: int) -> str:
    done = subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def totals(out_dir: Path) -> dict[int, int]:
    """pid → instructions of its newest dump (``cg.PID.N``)."""
    newest: dict[int, tuple[int, Path]] = {}
    for f in out_dir.glob("cg.*.*"):
        _, pid, n = f.name.split(".")[:3]
        if n.isdigit() and (int(pid) not in newest or int(n) > newest[int(pid)][0]):
            newest[int(pid)] = (int(n), f)
    got = {}
    for pid, (_, f) in newest.items():
        m = re.search(r"^(?:summary|totals):\s+(\d+)", f.read_text(errors="replace"), re.M)
        got[pid] = int(m.group(1)) if m else 0
    return got


def settle(server: procs.Server, limit: float) -> float:
    """Seconds until ``server`` spends under 5 % of a CPU over a second (at most ``limit``)."""
    start, hz = time.monotonic(), os.sysconf("SC_CLK_TCK")
    while time.monotonic() - start < limit:
        t0 = server.cpu_ticks()
        time.sleep(1.0)
        if server.cpu_ticks() - t0 < 0.05 * hz:
            break
    return time.monotonic() - start


def measure(a: argparse.Namespace, peer: str, size: str, upstream_port: int) -> dict:
    base = "betblock" if peer.startswith("betblock") else peer
    run_dir = RUNS / f"{peer}-{size}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = a.base_port + {"unbound": 1, "pdns": 3}.get(peer, 10)
    job = peers.Job(base, size, port, upstream_port, run_dir, DATA / f"blocklist-{size}.txt", DATA / f"rpz-{size}.zone")
    launch = peers.launch(job, a.betblock_cmd)
    cg = run_dir / "cg"
    cg.mkdir()
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--trace-children=yes",
            f"--callgrind-out-file={cg}/cg.%p", *launch.argv]
    saved = dict(os.environ)
    os.environ.update(VARIANTS.get(peer, {}))
    try:
        server = procs.Server(peer, argv, a.server_cpu, run_dir / "server.log", launch.cwd)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    rec: dict = {"peer": peer, "size": size}
    try:
        last = last_word(job.blocklist)
        rec["load_s"] = wait_until(server, f"NXDOMAIN for {last}",
                                   lambda: (r := procs.query(port, last, timeout=1)) is not None and r.blocked,
                                   a.ready_timeout)
        allowed = DATA / "q-allowed.txt"
        head = run_dir / "q-allowed.txt"
        head.write_text("".join(allowed.read_text().splitlines(keepends=True)[: a.queries]))
        # What a server does after it answers (betblock writes the list into its feed store in
        # the background) must not be counted: wait until it uses under 5 % of a CPU.
        rec["idle_s"] = settle(server, a.ready_timeout)
        log(f"{peer} {size}: loaded in {rec['load_s']:.1f} s, idle {rec['idle_s']:.1f} s later; warming the cache")
        dnsperf(a, port, head, ["-n", "1", "-Q", "2000"], 600)
        for mix in a.mixes:
            qfile = run_dir / f"q-{mix}.txt"
            src = DATA / QUERY_FILE[mix].format(size=size)
            lines = src.read_text().splitlines(keepends=True)
            if mix == "hot":
                lines = [ln for ln in lines[: a.queries // HOT_REPEAT] for _ in range(HOT_REPEAT)]
            qfile.write_text("".join(lines[: a.queries]))
            settle(server, a.ready_timeout)  # the last mix's hits are written by now
            pids = server.pids()
            for pid in pids:
                callgrind(["-i", "on"], pid)
                callgrind(["-z"], pid)
            res = dnsperf(a, port, qfile, ["-n", "1"], 900)
            for pid in pids:
                callgrind(["-d"], pid)
                callgrind(["-i", "off"], pid)
            by_pid = totals(cg)
            instr = sum(by_pid.get(p, 0) for p in pids)
            answered = res["completed"] or 0
            rec[mix] = {"answered": answered, "lost": res["lost"], "instructions": instr,
                        "per_query": instr / answered if answered else None,
                        "processes": len(pids), "rcodes": res["rcodes"]}
            log(f"{peer} {size} {mix}: {answered} answered, {rec[mix]['per_query'] or 0:,.0f} instructions/query "
                f"over {len(pids)} processes")
            for f in cg.glob("cg.*.*"):
                if a.keep:
                    f.rename(run_dir / f"{mix}.{f.name}")  # for callgrind_annotate
                else:
                    f.unlink()  # the next mix reads only its own dumps
    except BenchError as exc:
        rec["error"] = str(exc)
        log(f"{peer} {size}: {exc}")
    finally:
        server.stop(grace=60)
    return rec


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="100k", help="list size tag (default: 100k)")
    ap.add_argument("--peers", default="pdns,unbound,betblock,betblock-w1,betblock-default",
                    help="comma-separated: pdns, unbound and betblock variants " + ", ".join(VARIANTS))
    ap.add_argument("--mixes", default="blocked,allowed,hot",
                    help="blocked; allowed: cached names, each once (the cache's full path); "
                         "hot: cached names, each 10 times in a row (the memo's path); "
                         "miss: unique names under NSD's wildcard zone, each a cache miss (not in the default)")
    ap.add_argument("--betblock-cmd", default=peers.BETBLOCK_CMD, help="as bench/bench.py's")
    ap.add_argument("--queries", type=int, default=5000, help="queries per mix, each sent once (default: 5000)")
    ap.add_argument("--keep", action="store_true", help="keep each mix's callgrind dumps in bench/run/icount/PEER-SIZE/")
    ap.add_argument("--base-port", type=int, default=5400)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--perf-cpu", type=int, default=1)
    ap.add_argument("--ready-timeout", type=int, default=600)
    a = ap.parse_args(argv)
    a.peers, a.mixes = a.peers.split(","), a.mixes.split(",")
    a.clients, a.qmax = 1, 20  # dnsperf_args reads these; a valgrinded server answers slowly
    for tool in ("valgrind", "callgrind_control", "dnsperf", "nsd", "taskset"):
        if not shutil.which(tool):
            print(f"missing program: {tool}", file=sys.stderr)
            return 2
    gen_data.ensure([a.size], 42, DATA)
    RUNS.mkdir(parents=True, exist_ok=True)
    up_dir = RUNS / "nsd"
    shutil.rmtree(up_dir, ignore_errors=True)
    up_dir.mkdir(parents=True)
    zones = [(z, DATA / f"{z}.zone") for z in (gen_data.ALLOWED_ZONE, gen_data.MISS_ZONE)]
    nsd = procs.Server("nsd", peers.nsd(up_dir, a.base_port, zones), a.perf_cpu, up_dir / "nsd.log", up_dir)
    results = []
    try:
        first = first_word(DATA / "q-allowed.txt")
        wait_until(nsd, "the upstream", lambda: (r := procs.query(a.base_port, first)) is not None and r.resolved, 30)
        for peer in a.peers:
            results.append(measure(a, peer, a.size, a.base_port))
    finally:
        nsd.stop()
    print(f"\n# Instructions per answered query (callgrind, user space, all processes), {a.size} list, "
          f"{a.queries} queries per mix\n")
    ref = {m: next((r[m]["per_query"] for r in results if r["peer"] == "pdns" and m in r), None) for m in a.mixes}
    print("| peer | " + " | ".join(f"{m} instr/q | ÷ PowerDNS" for m in a.mixes) + " |")
    print("|---|" + "--:|--:|" * len(a.mixes))
    for r in results:
        cells = []
        for m in a.mixes:
            v = r.get(m, {}).get("per_query")
            cells += ["—" if v is None else f"{v:,.0f}",
                      "—" if v is None or not ref[m] else f"{v / ref[m]:.2f}×"]
        print(f"| {r['peer']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
