#!/usr/bin/env python3
"""How fast a real ``betblock serve`` is ready with a big list, what it peaks at, how fast it stops.

Owns the start-up measurement of issue 11's targets ("1M list ready in <= 3 s, <= 300 MiB for one
worker; 10M ready in <= 20 s from cold and <= 5 s from the saved snapshot, peak <= 1.5 GiB;
SIGTERM done in <= 5 s at any list size"). For each worker count it runs ``betblock serve`` (one
agency, one plain list file of SIZE names made by ``bench/gen_data.py``'s name generator, under
``--data``, never in the repository) three times:

- ``cold/during``: an empty data directory; ready = the list's last name answered NXDOMAIN over
  UDP (asked every 10 ms from the moment the process is started); then SIGTERM 0.5 s later, while the
  start-up store write and the snapshot save still run in the background;
- ``cold/after``: an empty data directory again; after ready, wait until the process tree is idle
  (for 3 s its CPU under 5 % and its writes under 1 MiB/s: store written, snapshot saved),
  then SIGTERM;
- ``saved/after``: the data directory ``cold/after`` left (its saved snapshot); the same.

Reported per run: seconds to ready, peak RSS and PSS summed over every betblock process (the
control plane and its workers; sampled every 100 ms from /proc/PID/smaps_rollup, so a peak
shorter than that may be missed), seconds until idle, and seconds from SIGTERM until every
process is gone. Not part of ``make test``: a 10M run takes minutes.

    .venv/bin/python tools/ready_bench.py --size 1m --workers 0,1,2
    .venv/bin/python tools/ready_bench.py --size 10m --workers 1 --runs saved

Standard library plus the project's own interpreter (it runs ``python -m betblock.cli``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _gen_data():  # bench/gen_data.py is a script, not a package
    spec = importlib.util.spec_from_file_location("gen_data", ROOT / "bench" / "gen_data.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def make_list(data: Path, tag: str, seed: int = 42) -> Path:
    """``data/list-TAG.txt``: the names ``gen_data`` lists for TAG (the same seed, the same
    names as bench's ``blocklist-TAG.txt``), written once."""
    path = data / f"list-{tag}.txt"
    if path.exists():
        return path
    gen = _gen_data()
    import random

    n = gen.parse_size(tag)
    rng = random.Random(f"list/{seed}")
    data.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="ascii") as f:
        for start in range(0, n, 100_000):
            f.writelines(f"{gen.listed_name(rng, i)}\n" for i in range(start, min(n, start + 100_000)))
    tmp.replace(path)
    return path


def last_name(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, 2) - 512))
        return f.read().split()[-1].decode()


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def query(name: str, qid: int) -> bytes:
    wire = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + wire + struct.pack(">HH", 1, 1)


def write_config(run: Path, listed: Path, port: int) -> Path:
    cfg = run / "betblock.toml"
    cfg.write_text(f"""
data_dir = "{run / 'var'}"
[dns]
listen = ["127.0.0.1:{port}"]
[http]
listen = "127.0.0.1:0"
[warning_page]
enabled = false
[upstream]
servers = ["127.0.0.1:9"]
[[agencies]]
id = "pl-mf"
action = "nxdomain"
[[agencies.sources]]
kind = "file"
path = "{listed}"
max_bytes = {1 << 31}
""")
    return cfg


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the DNS workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return out


def rollup(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes; (0, 0) once the process is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def written(pid: int) -> int:
    """Bytes the tree of ``pid`` has written through system calls (``wchar``)."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    """Peak RSS and PSS summed over the process tree, and its CPU, every 100 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_rss = self.peak_pss = 0
        self.cpu_by_pid: dict[int, float] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.1):
            pids = tree(self.pid)
            rss = pss = 0
            for p in pids:
                r, s = rollup(p)
                rss, pss = rss + r, pss + s
                self.cpu_by_pid[p] = max(self.cpu_by_pid.get(p, 0.0), cpu(p))
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)

    def cpu(self) -> float:
        return sum(self.cpu_by_pid.values())


def one_run(size: str, listed: Path, run: Path, workers: int, start: str, term: str, timeout: float) -> dict:
    if start == "cold":
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = write_config(run, listed, port)
    env = dict(os.environ, BETBLOCK_DNS__WORKERS=str(workers))
    logs = run.parent / "logs"  # beside the run's directory, which the next cold run wipes
    logs.mkdir(exist_ok=True)
    log = (logs / f"{run.name}-{start}-{term}.log").open("w")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.01)
    target = last_name(listed)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "betblock.cli", "serve", "--config", str(cfg), "--log-format", "json"],
                            cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT)
    sampler = Sampler(proc.pid)
    sampler.start()
    out: dict = {"size": size, "workers": workers, "start": start, "term": term}
    qid = 0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"betblock serve exited with {proc.returncode}; see {log.name}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"not ready after {timeout} s; see {log.name}")
            qid = (qid + 1) & 0xFFFF
            try:
                sock.sendto(query(target, qid), ("127.0.0.1", port))
                reply = sock.recv(512)
            except OSError:  # refused before the listener opens, or no answer within 10 ms
                continue
            # any of our queries' answers will do (all ask the same name; a late one may come in
            # after the next query went out)
            if len(reply) > 3 and reply[3] & 0x0F == 3:
                break
        out["ready_s"] = round(time.monotonic() - started, 2)
        out["rss_ready_mib"] = round(sum(rollup(p)[0] for p in tree(proc.pid)) / MiB)
        if term == "after":
            # idle: for 3 s in a row, the tree's CPU grows by under 5 % of a core and it writes
            # under 1 MiB a second (a write stalled on a loaded disk takes no CPU)
            last, quiet = (sampler.cpu(), written(proc.pid)), 0
            while time.monotonic() - started < timeout and quiet < 3:
                time.sleep(1.0)
                now = (sampler.cpu(), written(proc.pid))
                quiet = quiet + 1 if now[0] - last[0] < 0.05 and now[1] - last[1] < MiB else 0
                last = now
            out["idle_s"] = round(time.monotonic() - started - 3.0, 1)
        else:
            # "during": half a second after ready, so that SIGTERM finds its handler installed
            # (a SIGTERM before the listeners opened ends the process at once: nothing to flush)
            time.sleep(0.5)
        out["cpu_s"] = round(sampler.cpu(), 1)
        pids = tree(proc.pid)
        stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=max(timeout, 200))
        while any(Path(f"/proc/{p}").exists() and Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] != "Z" for p in pids):
            time.sleep(0.01)
        out["term_s"] = round(time.monotonic() - stop, 2)
        out["exit"] = proc.returncode
    finally:
        sampler.halt.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    out["peak_rss_mib"] = round(sampler.peak_rss / MiB)
    out["peak_pss_mib"] = round(sampler.peak_pss / MiB)
    return out


PEER = """
import sys
names = set(open(sys.argv[1], 'rb').read().lower().split())
"""


def peer(listed: Path) -> float:
    """Seconds a bare interpreter takes to start, read the list and hold its names in a set:
    the floor any Python resolver pays, measured in the same run so that a loaded machine
    shows in both (report ratios to it)."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", PEER, str(listed)], check=True)
    return round(time.monotonic() - started, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1m", help="list size tag as bench/gen_data.py takes it (1m, 10m, 100k)")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated dns.workers values")
    ap.add_argument("--runs", default="cold/during,cold/after,saved/after",
                    help="which runs, in order (saved/* reuses the data directory the run before left)")
    ap.add_argument("--data", type=Path, default=Path("/tmp/betblock-ready"), help="where lists and data directories go")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take to be ready or idle")
    a = ap.parse_args()
    listed = make_list(a.data, a.size)
    print(f"# {a.size}: {listed} ({listed.stat().st_size / MiB:.0f} MiB), last name {last_name(listed)}", flush=True)
    print(json.dumps({"peer_s": peer(listed)}), flush=True)
    for workers in (int(w) for w in a.workers.split(",")):
        for spec in a.runs.split(","):
            start, term = spec.split("/")
            run = a.data / f"run-{a.size}-w{workers}"
            print(json.dumps(one_run(a.size, listed, run, workers, start, term, a.timeout)), flush=True)
        print(json.dumps({"peer_s": peer(listed)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
